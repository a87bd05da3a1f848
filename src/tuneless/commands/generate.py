"""`tuneless generate MODEL "prompt"`: continue a prompt with a language model (original or
compressed), to see what compression did to it."""

from __future__ import annotations

import argparse

from tuneless.errors import TunelessError


def add_parser(sub) -> None:
    p = sub.add_parser("generate", help="continue a prompt with a language model (greedy)")
    p.add_argument("model", metavar="MODEL",
                   help="a Hugging Face folder (e.g. a tuneless compress output), a .gguf "
                        "file, a Hub id (ORG/NAME) or 'smollm2'")
    p.add_argument("prompt", help="the text to continue")
    p.add_argument("--max-new-tokens", type=int, default=40, help="tokens to add (default 40)")
    p.add_argument("--trust-code", action="store_true",
                   help="let a folder's own modeling file run (per-layer folded outputs of "
                        "other tools; tuneless's own load without it)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")


def run(args: argparse.Namespace) -> int:
    import torch

    from tuneless.llm.source import load_llm

    if args.max_new_tokens < 1:
        raise TunelessError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    if not args.prompt.strip():
        raise TunelessError("the prompt is empty")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise TunelessError(f"--device {args.device}: no CUDA device is available here")
    model, tok = load_llm(args.model, trust_code=args.trust_code, device=args.device,
                          need_tokenizer=True)
    enc = tok(args.prompt, return_tensors="pt").to(args.device)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=args.max_new_tokens, do_sample=False,
                             pad_token_id=pad)
    print(tok.decode(out[0], skip_special_tokens=True))
    return 0
