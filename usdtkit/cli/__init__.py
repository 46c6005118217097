"""The ``usdtkit`` command line: one module per sub-command, dispatched by :mod:`usdtkit.cli.main`."""
