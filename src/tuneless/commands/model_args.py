"""Arguments shared by commands that read one MODEL file (inspect, compress, export)."""

from __future__ import annotations

import argparse
import os

from tuneless.errors import TunelessError


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL",
                   help="tuneless checkpoint or saved model, a pickled nn.Module (with "
                        "--unsafe-pickle), a state_dict file (with --arch); compress and "
                        "inspect also take a language model: a Hugging Face folder, a .gguf "
                        "file, a Hub id (ORG/NAME) or 'smollm2'")
    add_loading_arguments(p)
    p.add_argument("--weights", help="with MODEL = torchvision:NAME, a weights enum name "
                                     "(DEFAULT, IMAGENET1K_V1, ...); with timm:NAME, "
                                     "'pretrained' (both download: needs the internet)")
    p.add_argument("--input-shape", help="input shape C,H,W (default: known for zoo and "
                                         "torchvision models)")


def add_loading_arguments(p: argparse.ArgumentParser) -> None:
    """How a MODEL file may be read: its architecture for a state_dict, and the two opt-ins
    that run code (every command that reads models takes the same four)."""
    p.add_argument("--arch", help="architecture of a state_dict file: a zoo name, "
                                  "torchvision:NAME or pkg.module:Class")
    p.add_argument("--arch-kwargs", help="constructor arguments for --arch, as JSON")
    p.add_argument("--unsafe-pickle", action="store_true",
                   help="allow loading pickled nn.Module files (runs code: trusted files only)")
    p.add_argument("--trust-code", action="store_true",
                   help="let a model file import the architecture or module classes it names "
                        "(runs code: trusted files only)")


def load_from_args(args: argparse.Namespace):
    """(model, example input) from the shared arguments."""
    from tuneless.arch import build_arch, is_reference
    from tuneless.modelio import example_input, load_model, parse_kwargs

    weights = getattr(args, "weights", None)
    if is_reference(args.model) and not os.path.exists(args.model):
        kwargs = parse_kwargs(args.arch_kwargs)
        if weights is not None:
            kwargs["pretrained" if args.model.startswith("timm:") else "weights"] = (
                True if args.model.startswith("timm:") else weights)
        model = build_arch(args.model, kwargs).eval()
        return model, example_input(model, args.input_shape)
    if weights is not None:
        raise TunelessError("--weights goes with MODEL = torchvision:NAME or timm:NAME")
    model = load_model(args.model, arch=args.arch, arch_kwargs=args.arch_kwargs,
                       allow_pickle=args.unsafe_pickle, trust_code=args.trust_code)
    return model, example_input(model, args.input_shape)
