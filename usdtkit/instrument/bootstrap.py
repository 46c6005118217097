"""``import usdtkit.instrument.bootstrap``: instrument this process if ``USDTKIT_INSTRUMENT=1``.

Put the import where a service starts (its first module, a gunicorn config file); without the
variable it does nothing, so the same code runs instrumented or not by deployment.  ``python -m
usdtkit.instrument`` sets the variable, and the scope's variables, for every program it starts.
"""
from __future__ import annotations

from . import enable_from_environment

instrumentation = enable_from_environment()
