"""The ``lstmx`` command line (``python -m lstmx`` or the ``lstmx`` script).

Subcommands: ``demo`` (train a small classifier), ``bench`` (benchmarks) and ``info`` (build
and run-time configuration). Arguments after ``demo`` and ``bench`` go to those commands.
"""

from __future__ import annotations

import argparse
import importlib
import sys


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="lstmx", description="lstmx: a fast LSTM for the CPU.",
        epilog="Arguments after 'demo' or 'bench' go to that command; see 'lstmx demo --help'.")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    # No help option of their own: '--help' after them reaches demo.main / bench.main.
    sub.add_parser("demo", add_help=False,
                   help="train a small LSTM classifier with lstmx; report loss and accuracy")
    sub.add_parser("bench", add_help=False, help="run the lstmx benchmarks")
    sub.add_parser("info", help="print the build and run-time configuration")
    return ap


def main(argv: list[str] | None = None) -> int:
    """Run the ``lstmx`` command line with ``argv`` (default ``sys.argv[1:]``); returns the exit
    status."""
    ap = _parser()
    ns, rest = ap.parse_known_args(argv)
    if ns.command not in ("demo", "bench") and rest:
        ap.error(f"unrecognized arguments: {' '.join(rest)}")
    if ns.command == "demo":
        from . import demo
        return demo.main(rest)
    if ns.command == "bench":
        try:  # imported only here, so that the other commands never need it
            bench = importlib.import_module("lstmx.bench")
        except ModuleNotFoundError as e:
            if e.name != "lstmx.bench":
                raise
            print("lstmx bench: this installation has no lstmx.bench module", file=sys.stderr)
            return 1
        return int(bench.main(rest))
    if ns.command == "info":
        from . import show_config
        show_config()
        return 0
    ap.print_help(sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
