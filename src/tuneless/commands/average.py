"""`tuneless average`: the mean of several trained checkpoints' weights, BatchNorm re-estimated."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser(
        "average",
        help="average the weights of checkpoints of one architecture (a model soup)",
        description="Average the weights of two or more tuneless checkpoints of one architecture "
                    "(e.g. the stages of one training run), re-estimate BatchNorm statistics on "
                    "the training split, measure test accuracy and write a new checkpoint.",
    )
    p.add_argument("checkpoints", nargs="+", help="tuneless checkpoints to average (two or more)")
    p.add_argument("-o", "--out", required=True, help="checkpoint path to write (a new file)")
    p.add_argument("--data",
                   help="dataset path (ImageFolder, .tar.gz, cifar-10-batches-py, idx folder)")
    p.add_argument("--batch-size", type=int, default=128, help="batch size of the BatchNorm pass")
    p.add_argument("--seed", type=int, default=0, help="order and augmentation of the BN pass")
    p.add_argument("--threads", type=int, help="torch threads")


def run(args: argparse.Namespace) -> int:
    import torch

    from tuneless.average import average_checkpoints

    if args.threads:
        torch.set_num_threads(args.threads)
    meta = average_checkpoints(args.checkpoints, args.out, data=args.data,
                               batch_size=args.batch_size, seed=args.seed)
    print(f"{args.out}: test accuracy {meta['test_accuracy']:.4f} ({meta['dataset']})")
    return 0
