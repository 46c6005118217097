"""``usdtkit doctor``: one line per requirement, OK/WARN/FAIL, with a fix for what is wrong."""
from __future__ import annotations

import argparse
import json
import sys

from .examples import HelpFormatter, epilog


def add_parser(subparsers: "argparse._SubParsersAction") -> None:
    parser = subparsers.add_parser(
        "doctor",
        help="check that this machine can trace, and say how to fix what is missing",
        description="Check kernel config, privileges, bcc, kernel headers, the uprobe PMU, semaphore "
        "refcounts, tracefs and the native library, then attach a real uprobe as a self-test. "
        "Exit status 0 only when tracing works.",
        epilog=epilog("usdtkit doctor", "usdtkit doctor --json --no-self-test"),
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--no-self-test", action="store_true", help="skip the live uprobe self-test")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .. import doctor

    results = doctor.run_checks(self_test=not args.no_self_test)
    ok = all(r.status != doctor.FAIL for r in results)
    if not args.no_self_test:
        ok = ok and doctor.tracing_possible(results)
    if args.json:
        json.dump({"ok": ok, "checks": [r.to_json() for r in results]}, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0 if ok else 1
    width = max(len(r.name) for r in results)
    for r in results:
        print(f"{r.status:<4}  {r.name:<{width}}  {r.detail}")
        if r.status in (doctor.FAIL, doctor.WARN) and r.fix:
            print(f"{'':<4}  {'':<{width}}  fix: {r.fix}")
    print("tracing works" if ok else "tracing cannot work here: fix the FAIL lines above")
    return 0 if ok else 1
