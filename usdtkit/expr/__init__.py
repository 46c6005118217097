"""The expression language of usdtkit: fields a probe hit carries (:mod:`.fields`) and filters over them
(:mod:`.filters`, parsed into the typed tree of :mod:`.tree`).

It sits below both the trace model (:mod:`usdtkit.plan`) and the code generator (:mod:`usdtkit.bpf`):
the CLI, the Python API and exporter configs hand it text and get the same typed values back.  Only
:mod:`usdtkit.bpf.filter_c` and :mod:`usdtkit.bpf.codegen` turn those values into C, and they never
copy user text.
"""
