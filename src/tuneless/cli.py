"""The `tuneless` command: a thin layer over the Python API, one module per sub-command."""

from __future__ import annotations

import argparse
import importlib
import shlex
import sys

from tuneless.errors import TunelessError

# Each module in tuneless.commands provides add_parser(subparsers) and run(args) -> int.
COMMANDS = ["demo", "train", "average", "eval", "inspect", "compress", "bench"]


def build_parser() -> tuple[argparse.ArgumentParser, dict]:
    parser = argparse.ArgumentParser(
        prog="tuneless",
        description="Compress trained PyTorch networks without data and without fine-tuning.",
    )
    parser.add_argument("--traceback", action="store_true", help="show full tracebacks on error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    runners = {}
    for name in COMMANDS:
        try:
            mod = importlib.import_module(f"tuneless.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"tuneless.commands.{name}":
                continue
            raise
        mod.add_parser(sub)
        runners[name] = mod.run
    return parser, runners


def main(argv: list[str] | None = None) -> int:
    parser, runners = build_parser()
    args = parser.parse_args(argv)
    # the exact command, for provenance stamps (sys.argv is wrong when main() is called directly)
    args.command_line = "tuneless " + shlex.join(sys.argv[1:] if argv is None else argv)
    if not args.command:
        parser.print_help()
        return 2
    try:
        return int(runners[args.command](args) or 0)
    except TunelessError as exc:
        if args.traceback:
            raise
        print(f"tuneless {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
