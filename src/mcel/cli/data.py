"""``mcel data``: which datasets mcel knows, which of them it finds here, and what a
dataset file of your own holds, before a training run needs them."""

from __future__ import annotations

import argparse


def _where(name: str, data_dir: str | None) -> str:
    """Where dataset ``name`` is read from, or why it is not: its test split is read, so a
    folder of another dataset's files with the same names (MNIST's for Fashion-MNIST's)
    or a broken file shows here, not in a training run."""
    from mcel.data import DATASETS, load_arrays, resolve_data_dir
    from mcel.errors import MCELError

    if DATASETS.get(name).embedded:
        return f"embedded ({DATASETS.get(name).info.source})"
    try:
        folder = resolve_data_dir(name, data_dir)
    except MCELError:
        return "not found (pass --data-dir DIR or set MCEL_DATA)"
    try:
        load_arrays(name, "test", data_dir)
    except MCELError as e:
        return f"unusable: {e}"
    return str(folder)


def cmd_data(args: argparse.Namespace) -> int:
    from rich.table import Table

    from mcel.cli.common import console
    from mcel.data import dataset_file, dataset_info, is_own, list_datasets

    names = args.names or list_datasets()
    t = Table(title="datasets" if not args.names else None)
    for col in ("dataset", "input (C, H, W)", "classes", "train / test", "read from"):
        t.add_column(col)
    details = []
    for name in names:
        info = dataset_info(name, args.data_dir)  # your own file: read and checked here
        where = str(dataset_file(name, args.data_dir)) if is_own(name) \
            else _where(name, args.data_dir)
        t.add_row(name, str(info.in_shape), str(info.num_classes),
                  f"{info.num_samples[0]:,} / {info.num_samples[1]:,}", where)
        if args.names:
            stats = ", ".join(f"{m:.4g} / {s:.4g}" for m, s in zip(info.mean[:8], info.std))
            stats += f", ... ({len(info.mean)} channels)" if len(info.mean) > 8 else ""
            details.append(f"{name}: {info.description}; per-channel mean / std {stats}")
    out = console()
    out.print(t)
    for line in details:
        out.print(line, highlight=False)
    return 0


def register(sub) -> None:
    d = sub.add_parser("data", help="the datasets mcel knows and where it finds them; what "
                                    "a .npz file of your own holds")
    d.add_argument("names", nargs="*", metavar="DATASET",
                   help="dataset names or .npz files of your own (default: every "
                        "registered dataset)")
    d.add_argument("--data-dir", default=None,
                   help="folder with the dataset files (default: $MCEL_DATA, then "
                        "~/.cache/mcel/datasets)")
    d.set_defaults(func=cmd_data)
