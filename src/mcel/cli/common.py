"""What the commands share: list-valued flags, the training settings as flags (from a
YAML file, flags overriding it), error models from flags, and a console for tables.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from mcel.errors import MCELError
from mcel.io import JSON_UNITS  # re-exported: the commands import it from here
from mcel.losses import DEFAULT_MARGIN, MHL_MARGIN


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

    from mcel.io import read_text

    text = read_text(path, "config file")
    try:
        data = yaml.safe_load(text)
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

def listed(names) -> str:
    """Valid names as a flag's metavar, ``{a,b,c}``: shown like argparse's choices, while
    the registries check the value (with "did you mean"), for flags and files alike."""
    return "{" + ",".join(names) + "}"


def _names(module: str, attr: str):
    """The valid names of a setting, read from where they are defined (a registry's
    ``list_*`` function or a tuple), when the parser is built."""
    def names() -> list[str]:
        import importlib

        found = getattr(importlib.import_module(module), attr)
        return list(found() if callable(found) else found)

    return names


DEVICE_HELP = ("auto (a CUDA GPU when there is one, else cpu), cpu, cuda or cuda:N; results "
               "on a GPU may differ from the CPU's in the last float bits")


TRAIN_FLAGS = {
    # flag: (type, help, its valid names or None); the default shown is TrainConfig's,
    # and a help that says "default" itself explains what an unset value means
    "dataset": (str, "dataset name, or your own .npz file of x_train, y_train, x_test, "
                     "y_test (see README)", _names("mcel.data", "list_datasets")),
    "data_dir": (str, "folder with the dataset files (default: $MCEL_DATA, then "
                      "~/.cache/mcel/datasets)", None),
    "model": (str, "model name, or your own as package.module:function or "
                   "file.py:function (a function returning the float model)",
              _names("mcel.models", "list_models")),
    "quant": (str, "weight quantization ('float': none)", _names("mcel.quant", "scheme_words")),
    "fmt": (str, "number format of the stored codes", _names("mcel.quant", "list_formats")),
    "granularity": (str, "scale per 'tensor' or per output 'channel'",
                    _names("mcel.quant.core", "GRANULARITIES")),
    "act_bits": (int, "quantize layer inputs to K-bit integers (default: float inputs)", None),
    "loss": (str, "training loss", _names("mcel.losses", "list_losses")),
    "margin": (float, f"margin of mcel (default {DEFAULT_MARGIN:g}) or mhl (default "
                      f"{MHL_MARGIN:g}), in logit units of the chosen scale", None),
    "normalize": (str, "logit scale of the MCEL margin",
                  _names("mcel.losses", "NORMALIZATIONS")),
    "scale": (float, "logit scale s for normalize l2/std", None),
    "optimizer": (str, "optimizer", _names("mcel.config", "OPTIMIZERS")),
    "lr": (float, "learning rate", None),
    "momentum": (float, "SGD momentum", None),
    "weight_decay": (float, "weight decay", None),
    "schedule": (str, "learning-rate schedule", _names("mcel.config", "SCHEDULES")),
    "epochs": (int, "training epochs (0 with --init: quantize and measure those weights, "
                    "no training)", None),
    "batch_size": (int, "batch size", None),
    "seed": (int, "random seed", None),
    "device": (str, DEVICE_HELP, None),
    "train_ber": (float, "error-injection training: transient bit error rate in the weights, "
                         "a fraction (0.01 = 1%%; 0: off)", None),
    "train_error_model": (str, "error-injection training with a full error-model spec "
                               "(default: none)", None),
    "limit_train": (int, "use only the first N training samples (default: all)", None),
    "limit_test": (int, "use only the first N test samples (default: all)", None),
    "clip": (float, "weight clipping: keep weights in [-W, W] and fix the k-bit range to W "
                    "(default: no clipping)", None),
    "clip_rel": (float, "weight clipping per layer at C / sqrt(fan_in), the range of "
                        "PyTorch's default initialisation (1 = that range; instead of --clip)",
                 None),
    "clip_auto": (float, "weight clipping with one range for the whole model, C / sqrt(the "
                         "median fan_in of its layers) (instead of --clip)", None),
    "init": (str, "start from these weights: a state_dict() of the float model in a "
                  ".safetensors or .pt/.pth file (read with torch.load(weights_only=True)), "
                  "or a run folder (default: random initialisation)", None),
    "precision": (str, "forward-pass precision (autocast; bf16 pays on CPUs with "
                       "AMX/avx512_bf16 and on GPUs; weights, loss, optimizer stay fp32)",
                  _names("mcel.precision", "PRECISIONS")),
}


def add_train_flags(p: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """The training settings as flags; ``skip``: settings the command chooses itself.

    The flags default to None (unset), so a ``--config`` file's values stand unless a
    flag overrides them; their help shows `TrainConfig`'s default and the valid names,
    which the registries check (with "did you mean"), for flags and files alike."""
    from mcel.config import TrainConfig

    p.add_argument("--config", help="YAML file of training settings; flags override it "
                                    "(default: none)")
    for key, (typ, help_, names) in TRAIN_FLAGS.items():
        if key in skip:
            continue
        metavar = listed(names()) if names is not None else None
        if "default" not in help_:
            help_ += f" (default {_shown(getattr(TrainConfig, key))})"
        p.add_argument("--" + key.replace("_", "-"), dest=key, type=typ, default=None,
                       metavar=metavar, help=help_)
    p.add_argument("--quant-exclude", action="append", default=None,
                   help="keep layers matching this name pattern in float (repeatable; "
                        "default: none)")
    p.add_argument("--quant-layer", action="append", default=None, metavar="PATTERN=SCHEME",
                   help="give the layers matching PATTERN their own scheme (mixed precision, "
                        "e.g. features.0=int8; repeatable; default: --quant for every layer)")


def _shown(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def add_threads_flag(p: argparse.ArgumentParser) -> None:
    """``--threads``: torch's CPU threads for this command (applied by `mcel.cli.app`)."""
    p.add_argument("--threads", dest="torch_threads", type=int, default=None, metavar="N",
                   help="torch CPU threads; float sums on a CPU depend on the count, so the "
                        "same seed gives the same numbers only at the same count, which is "
                        "recorded with the result (default: torch's, one per core)")


def add_device_flag(p: argparse.ArgumentParser) -> None:
    """``--device`` with the one default every command shares: `TrainConfig`'s."""
    from mcel.config import TrainConfig

    p.add_argument("--device", default=TrainConfig.device, help=DEVICE_HELP)


def train_config(args: argparse.Namespace, base: dict[str, Any] | None = None):
    from mcel.config import TrainConfig

    d: dict[str, Any] = dict(base or {})
    if getattr(args, "config", None):
        d.update(load_yaml(args.config))
    for key in TRAIN_FLAGS:
        v = getattr(args, key, None)
        if v is not None:
            d[key] = v
    for key in ("data_dir", "init"):  # the run folder must work from any directory
        if getattr(args, key, None):
            d[key] = str(Path(getattr(args, key)).absolute())
    from mcel.data import is_own

    own = str(d.get("dataset", ""))
    if is_own(own) and Path(own).expanduser().is_file():  # your file, found here
        d["dataset"] = str(Path(own).expanduser().absolute())
    if getattr(args, "quant_exclude", None):
        d["quant_exclude"] = args.quant_exclude
    if getattr(args, "quant_layer", None):
        d["quant_layers"] = dict(_pattern_scheme(s) for s in args.quant_layer)
    return TrainConfig.from_dict(d)


def _pattern_scheme(text: str) -> tuple[str, str]:
    """``--quant-layer PATTERN=SCHEME`` -> (pattern, scheme)."""
    pattern, sep, scheme = text.rpartition("=")
    if not sep or not pattern or not scheme:
        raise MCELError(f"--quant-layer {text!r}: give PATTERN=SCHEME, e.g. features.0=int8")
    return pattern, scheme


def error_model(spec: str | None):
    """The error model of an ``--error-model`` spec, or None for the default."""
    from mcel.faults import parse_error_model

    return parse_error_model(spec) if spec else None


def console():
    from rich.console import Console

    # Piped or captured output has no width of its own; rich's 80 columns would wrap
    # the tables into unreadable cells.
    return Console() if sys.stdout.isatty() else Console(width=140)


__all__ = ["DEVICE_HELP", "JSON_UNITS", "TRAIN_FLAGS", "add_device_flag", "add_threads_flag",
           "add_train_flags",
           "console", "error_model", "floats", "ints", "listed", "load_yaml", "positive_int",
           "split_list", "train_config"]
