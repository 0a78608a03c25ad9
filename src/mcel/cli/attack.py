"""``mcel attack``: the fewest bit flips that break a run (progressive bit search,
`mcel.attack`)."""

from __future__ import annotations

import argparse

from mcel.cli.common import JSON_UNITS, add_device_flag, floats, listed


def cmd_attack(args: argparse.Namespace) -> int:
    import torch

    from mcel.attack import bit_flip_attack
    from mcel.data import dataset_info, load_dataset
    from mcel.io import write_json
    from mcel.quant import set_format
    from mcel.runs import load_run

    model, config = load_run(args.run_dir, args.device)
    if args.fmt:
        set_format(model, args.fmt)
    data_dir = args.data_dir or config.data_dir
    # the attacker's batch comes from the training split, drawn with the seed; accuracy
    # is measured on held-out test images
    x_tr, y_tr = load_dataset(config.dataset, "train", data_dir)
    pick = torch.randperm(len(y_tr), generator=torch.Generator().manual_seed(args.seed))
    pick = pick[:args.attack_samples]
    x_te, y_te = load_dataset(config.dataset, "test", data_dir, limit=args.test_samples)
    chance = 1.0 / dataset_info(config.dataset).num_classes
    levels = args.levels if args.levels is not None else [0.5, round(1.1 * chance, 4)]
    res = bit_flip_attack(model, (x_tr[pick], y_tr[pick]), (x_te, y_te), budget=args.budget,
                          candidates=args.candidates, layers=args.layers or ("*",),
                          stop_at=min(levels) if args.stop else None)
    reached = {f"{lv:g}": res.flips_to(lv) for lv in levels}
    res.meta.update(run_dir=str(args.run_dir), fmt=args.fmt or config.fmt, seed=args.seed,
                    flips_to=reached, units=JSON_UNITS)
    acc = res.accuracy
    print(f"{len(res.flips)} flips ({res.meta['fmt']}, {len(y_te)} test images, attack batch "
          f"of {len(pick)} training images, seed {args.seed}, {res.seconds:.1f} s): accuracy "
          f"{100 * acc[0]:.2f}% -> {100 * acc[-1]:.2f}%")
    for lv, n in reached.items():
        print(f"  accuracy <= {100 * float(lv):.1f}%: "
              + (f"after {n} flips" if n is not None else f"not within {len(res.flips)} flips"))
    if args.json:
        write_json(args.json, res.to_dict())
        print(f"wrote {args.json}")
    return 0


def register(sub) -> None:
    from mcel.quant import list_formats

    a = sub.add_parser("attack", help="worst-case bit flips: how few break a trained run")
    a.add_argument("run_dir", help="a run folder written by 'mcel train'")
    a.add_argument("--budget", type=int, default=20, help="most bits to flip")
    a.add_argument("--candidates", type=int, default=5,
                   help="gradient-ranked candidate bits tried per layer and flip")
    a.add_argument("--fmt", default=None, metavar=listed(list_formats()),
                   help="attack the codes stored in this number format (default: the run's "
                        "own)")
    a.add_argument("--layers", action="append", default=None, metavar="PATTERN",
                   help="only flip bits in layers matching this name pattern (repeatable; "
                        "default: every quantized layer)")
    a.add_argument("--attack-samples", type=int, default=128,
                   help="training images whose loss the search raises")
    a.add_argument("--test-samples", type=int, default=1000,
                   help="first N test images on which accuracy is measured after each flip")
    a.add_argument("--levels", type=floats, default=None,
                   help="accuracies to report the flip count for, fractions (default 0.5 and "
                        "1.1x chance)")
    a.add_argument("--stop", action="store_true",
                   help="stop once accuracy reaches the lowest level")
    a.add_argument("--seed", type=int, default=0, help="seed of the attack batch draw")
    add_device_flag(a)
    a.add_argument("--data-dir", default=None,
                   help="folder with the dataset files (default: the run's own)")
    a.add_argument("--json", default=None, help="write every flip and accuracy (fractions) "
                   "here (default: none)")
    a.set_defaults(func=cmd_attack)
