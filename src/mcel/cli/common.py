"""What the commands share: list-valued flags, the training settings as flags (from a
YAML file, flags overriding it), error models from flags, and a console for tables.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from mcel.errors import MCELError
from mcel.losses import DEFAULT_MARGIN, DEFAULT_SCALE, MHL_MARGIN


def split_list(text: str, cast, what: str) -> list:
    """A comma-separated command-line list, each item through ``cast``."""
    items = text.split(",")
    if any(not v.strip() for v in items) and text.strip():
        raise argparse.ArgumentTypeError(f"empty item in '{text}'")
    try:
        vals = [cast(v) for v in items if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got '{text}'") from None
    if not vals:
        raise argparse.ArgumentTypeError(f"expected at least one value, got '{text}'")
    return vals


def floats(text: str) -> list[float]:
    return split_list(text, float, "numbers")


def ints(text: str) -> list[int]:
    vals = split_list(text, int, "integers")
    if min(vals) < 0:
        raise argparse.ArgumentTypeError(f"expected non-negative integers, got '{text}'")
    return vals


def load_yaml(path: str) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise MCELError(f"config file {path} does not exist") from None
    except OSError as e:  # a folder, no permission
        raise MCELError(f"cannot read config file {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise MCELError(f"config file {path} is not text (UTF-8 YAML expected)") from None
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise MCELError(f"config file {path} is not valid YAML{at}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise MCELError(f"config file {path} must hold a mapping of keys to values")
    return data


def positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{text}'") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{text}'")
    return v


# -- training settings ----------------------------------------------------------------

TRAIN_FLAGS = {
    # flag: (config key, type, help)
    "dataset": (str, "dataset name (digits, mnist, fashion-mnist, cifar10, cifar100, svhn)"),
    "data_dir": (str, "folder with the dataset files (else $MCEL_DATA, then "
                      "~/.cache/mcel/datasets)"),
    "model": (str, "model name (mlp, lenet5, vgg3, vgg7, resnet20)"),
    "quant": (str, "weight scheme: binary, ternary, int2..int8, int16, float"),
    "fmt": (str, "number format: twos_complement, sign_magnitude, offset_binary"),
    "granularity": (str, "scale per 'tensor' or per output 'channel'"),
    "act_bits": (int, "quantize layer inputs to K-bit integers"),
    "loss": (str, "ce, mcel or mhl"),
    "margin": (float, f"margin of mcel (default {DEFAULT_MARGIN:g}) or mhl (default "
                      f"{MHL_MARGIN:g}), in logit units of the chosen scale"),
    "normalize": (str, "logit scale of the MCEL margin: none, l2, std"),
    "scale": (float, f"logit scale s for normalize l2/std (default {DEFAULT_SCALE:g})"),
    "optimizer": (str, "adam or sgd"),
    "lr": (float, "learning rate"),
    "momentum": (float, "SGD momentum"),
    "weight_decay": (float, "weight decay"),
    "schedule": (str, "cosine, step or none"),
    "epochs": (int, "training epochs"),
    "batch_size": (int, "batch size"),
    "seed": (int, "random seed"),
    "device": (str, "auto, cpu, cuda, cuda:N"),
    "train_ber": (float, "error-injection training: transient bit error rate in the weights"),
    "train_error_model": (str, "error-injection training with a full error-model spec"),
    "limit_train": (int, "use only the first N training samples"),
    "limit_test": (int, "use only the first N test samples"),
    "clip": (float, "weight clipping: keep weights in [-W, W] and fix the k-bit range to W"),
    "precision": (str, "forward-pass precision: fp32 or bf16 (autocast; pays on CPUs with "
                       "AMX/avx512_bf16 and on GPUs; weights, loss, optimizer stay fp32)"),
}


def add_train_flags(p: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """The training settings as flags (all default to the config file / `TrainConfig`);
    ``skip``: settings the command chooses itself."""
    p.add_argument("--config", help="YAML file of training settings; flags override it")
    for key, (typ, help_) in TRAIN_FLAGS.items():
        if key in skip:
            continue
        p.add_argument("--" + key.replace("_", "-"), dest=key, type=typ, default=None, help=help_)
    p.add_argument("--quant-exclude", action="append", default=None,
                   help="keep layers matching this name pattern in float (repeatable)")


def train_config(args: argparse.Namespace, base: dict[str, Any] | None = None):
    from mcel.config import TrainConfig

    d: dict[str, Any] = dict(base or {})
    if getattr(args, "config", None):
        d.update(load_yaml(args.config))
    for key in TRAIN_FLAGS:
        v = getattr(args, key, None)
        if v is not None:
            d[key] = v
    if getattr(args, "data_dir", None):  # the run folder must work from any directory
        d["data_dir"] = str(Path(args.data_dir).absolute())
    if getattr(args, "quant_exclude", None):
        d["quant_exclude"] = args.quant_exclude
    return TrainConfig.from_dict(d)


def error_model(spec: str | None):
    """The error model of an ``--error-model`` spec, or None for the default."""
    from mcel.faults import parse_error_model

    return parse_error_model(spec) if spec else None


def console():
    from rich.console import Console

    # Piped or captured output has no width of its own; rich's 80 columns would wrap
    # the tables into unreadable cells.
    return Console() if sys.stdout.isatty() else Console(width=140)


__all__ = ["TRAIN_FLAGS", "add_train_flags", "console", "error_model", "floats", "ints",
           "load_yaml", "positive_int", "split_list", "train_config"]
