"""The expression language of usdtkit: fields a probe hit carries and predicates over them.

It sits below both the trace model (:mod:`usdtkit.plan`) and the code generator (:mod:`usdtkit.bpf`):
the CLI, the Python API and (later) exporter configs hand it text and get the same typed values back.
Only :mod:`usdtkit.bpf.codegen` turns those values into C, and it never copies user text.
"""
