"""``usdtkit exporter``: Prometheus metrics from USDT probes and uprobes, as a long-running service.

:mod:`.config` reads and validates the YAML file, :mod:`.metrics` turns each metric into a trace
request, :mod:`.collector` reads the kernel maps at scrape time, and :mod:`.service` keeps one session
per metric in step with the file (SIGHUP) and the targets (replaced binaries, exited processes).
"""
