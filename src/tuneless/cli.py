"""The `tuneless` command: a thin layer over the Python API, one module per sub-command."""

from __future__ import annotations

import argparse
import importlib
import shlex
import sys

from tuneless import __version__
from tuneless.errors import TunelessError

# Each module in tuneless.commands provides add_parser(subparsers) and run(args) -> int.
COMMANDS = ["demo", "train", "average", "eval", "inspect", "compress", "generate", "export",
            "bench"]


def build_parser() -> tuple[argparse.ArgumentParser, dict]:
    parser = argparse.ArgumentParser(
        prog="tuneless",
        description="Compress trained PyTorch networks without data and without fine-tuning.",
    )
    parser.add_argument("--traceback", action="store_true", help="show full tracebacks on error")
    parser.add_argument("--quiet", action="store_true",
                        help="no progress displays (also TUNELESS_PROGRESS=0)")
    parser.add_argument("--version", action="version", version=f"tuneless {__version__}")
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


# Optional dependencies by import name -> the extra that installs them.
OPTIONAL_EXTRAS = {
    "torchvision": "vision", "PIL": "vision", "transformers": "llm", "safetensors": "llm",
    "gguf": "llm", "accelerate": "llm", "huggingface_hub": "llm", "matplotlib": "bench",
    "scipy": "bench", "sklearn": "bench", "timm": "timm", "onnx": "export", "onnxruntime": "export",
}


def missing_dependency(name: str) -> str:
    """One line naming a missing optional dependency and the extra that installs it."""
    extra = OPTIONAL_EXTRAS.get(name, "all")
    return f"this needs {name}, which is not installed: pip install 'tuneless[{extra}]'"


def check_threads(args: argparse.Namespace) -> None:
    """--threads, where a command (or a bench suite) has it: at least 1."""
    threads = getattr(args, "threads", None)
    if threads is not None and (isinstance(threads, bool) or threads < 1):
        raise TunelessError(f"--threads must be at least 1, got {threads}")


def _check_common(args: argparse.Namespace) -> None:
    """Options many commands share, checked before any work: threads, output paths."""
    from tuneless.io_atomic import check_target

    check_threads(args)
    if args.command == "bench":  # bench's --out is a folder of tables
        return
    for attr in ("out", "json"):
        value = getattr(args, attr, None)
        if isinstance(value, str):
            check_target(value)


def main(argv: list[str] | None = None) -> int:
    parser, runners = build_parser()
    args = parser.parse_args(argv)
    # the exact command, for provenance stamps (sys.argv is wrong when main() is called directly)
    args.command_line = "tuneless " + shlex.join(sys.argv[1:] if argv is None else argv)
    if not args.command:
        parser.print_help()
        return 2
    restore = None  # what --quiet changed in the Hugging Face libraries, put back at the end
    if args.quiet:
        from tuneless.progress import set_progress

        set_progress(False)
        restore = _quiet_hub_bars()
    try:
        _check_common(args)
        return int(runners[args.command](args) or 0)
    except ModuleNotFoundError as exc:
        top = (exc.name or "").split(".")[0]
        if args.traceback or top not in OPTIONAL_EXTRAS:
            raise
        print(f"tuneless {args.command}: error: {missing_dependency(top)}", file=sys.stderr)
        return 1
    except TunelessError as exc:
        if args.traceback:
            raise
        print(f"tuneless {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        if restore is not None:
            restore()


def _quiet_hub_bars():
    """--quiet also silences the Hugging Face libraries' own bars (loading and writing
    weights): through the environment for libraries imported later in the command, through
    transformers' switch if it is already imported. Returns what puts both back."""
    import os

    key = "HF_HUB_DISABLE_PROGRESS_BARS"
    old = os.environ.get(key)
    os.environ[key] = "1"
    hf = sys.modules.get("transformers.utils.logging")
    was_on = hf is not None and hf.is_progress_bar_enabled()
    if was_on:
        hf.disable_progress_bar()

    def restore() -> None:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old
        if was_on:
            hf.enable_progress_bar()

    return restore


if __name__ == "__main__":
    sys.exit(main())
