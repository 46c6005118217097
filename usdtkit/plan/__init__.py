"""The trace model: what the user asked (:mod:`.request`), probe references (:mod:`.refs`), and what one
run found (:mod:`.resolve`, :mod:`.plan`), on files opened once (:mod:`.objects`).

Below :mod:`usdtkit.bpf` (which generates code from a plan) and above :mod:`usdtkit.elf` and
:mod:`usdtkit.expr`; it never imports bcc.
"""
