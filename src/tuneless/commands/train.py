"""`tuneless train`: train a zoo model, resumable, with an optional smoothness penalty."""

from __future__ import annotations

import argparse
import json

from tuneless.errors import TunelessError


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train a zoo model (resumes if interrupted)")
    p.add_argument("arch", help="zoo architecture, e.g. resnet20, resnet56, vgg11_bn, lenet5, mlp")
    p.add_argument("-o", "--out", required=True, help="checkpoint path to write (e.g. model.pt)")
    p.add_argument("--dataset", choices=["cifar10", "fashion-mnist"],
                   help="default: the arch's own")
    p.add_argument("--data",
                   help="dataset path (ImageFolder, .tar.gz, cifar-10-batches-py, idx folder)")
    p.add_argument("--width", type=float, help="width multiplier")
    p.add_argument("--arch-kwargs", default="{}", help="extra constructor arguments as JSON")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--schedule", choices=["onecycle", "cosine"], default="onecycle")
    p.add_argument("--label-smoothing", type=float, default=0.0)
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--pad", type=int, default=4,
                   help="zero padding of the random-crop augmentation (4 for CIFAR, 2 for 28x28)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="torch threads (use 1 per background job)")
    p.add_argument("--smooth", choices=["d1", "d2", "nuc"], help="smoothness penalty")
    p.add_argument("--smooth-lambda", type=float, default=0.0, help="penalty weight")
    p.add_argument("--smooth-relative", action="store_true",
                   help="lambda is relative to the penalty at initialisation (scale-free)")
    p.add_argument("--smooth-every", type=int, default=1, help="apply the penalty every N steps")
    p.add_argument("--eval-every", type=int, default=1,
                   help="measure test accuracy every N epochs (always after the last); "
                        "does not change what is trained, so a resumed run may change it")
    p.add_argument("--swa-epochs", type=int, default=0, metavar="N",
                   help="stochastic weight averaging: keep the learning rate at --swa-lr for the "
                        "last N epochs and save the average of their weights (BN re-estimated)")
    p.add_argument("--swa-lr", type=float, default=0.01,
                   help="learning rate of the averaged epochs (the schedule anneals to it)")
    p.add_argument("--init", metavar="CKPT",
                   help="start from this trained checkpoint's weights (same arch) with a fresh "
                        "optimizer and schedule: a second training cycle or a fine-tune")


def run(args: argparse.Namespace) -> int:
    from tuneless.train import TrainConfig, train

    try:
        kwargs = json.loads(args.arch_kwargs)
    except json.JSONDecodeError as exc:
        raise TunelessError(f"--arch-kwargs is not valid JSON: {exc}") from exc
    if args.width is not None:
        kwargs["width"] = args.width
    cfg = TrainConfig(
        arch=args.arch, arch_kwargs=kwargs, dataset=args.dataset, data=args.data,
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, momentum=args.momentum,
        weight_decay=args.weight_decay, schedule=args.schedule,
        label_smoothing=args.label_smoothing, augment=not args.no_augment, pad=args.pad,
        seed=args.seed,
        threads=args.threads, smooth=args.smooth, smooth_lambda=args.smooth_lambda,
        smooth_relative=args.smooth_relative, smooth_every=args.smooth_every,
        eval_every=args.eval_every, init=args.init, swa_epochs=args.swa_epochs,
        swa_lr=args.swa_lr,
    )
    extra = None
    if cfg.smooth and cfg.smooth_lambda > 0:
        from tuneless.smooth import penalty_for_training

        extra = penalty_for_training(cfg)
    meta = train(cfg, args.out, extra_loss=extra)
    print(f"{args.out}: test accuracy {meta['test_accuracy']:.4f} ({meta['dataset']})")
    return 0
