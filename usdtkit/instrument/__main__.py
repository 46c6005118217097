"""``python -m usdtkit.instrument``: :mod:`usdtkit.instrument.runner`."""
import sys

from usdtkit.instrument.runner import main

if __name__ == "__main__":
    sys.exit(main())
