"""A training run's settings: ``TrainConfig`` holds every choice that decides a run,
validates it, and names the run (``digest``, its run id); ``build_model`` and
``build_loss`` make what it names. Training (`mcel.train`), run folders (`mcel.runs`),
grids and the command line all read configs from here, without the trainer.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from mcel.data import dataset_info
from mcel.errors import MCELError
from mcel.losses import DEFAULT_SCALE, NORMALIZATIONS, create_loss
from mcel.models import create_model
from mcel.precision import DEFAULT_PRECISION, check_precision
from mcel.quant import QuantSpec, quantize_model
from mcel.registry import did_you_mean

OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("cosine", "step", "none")


@dataclass
class TrainConfig:
    """Everything that decides a training run. Unknown keys are errors."""

    dataset: str = "digits"
    data_dir: str | None = None
    model: str = "mlp"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    quant: str = "int4"
    fmt: str = "twos_complement"
    granularity: str = "tensor"
    act_bits: int | None = None
    quant_exclude: list[str] = field(default_factory=list)
    quant_layers: dict[str, str] = field(default_factory=dict)
    loss: str = "ce"
    margin: float | None = None
    normalize: str = "none"
    scale: float = DEFAULT_SCALE
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "cosine"
    epochs: int = 10
    batch_size: int = 128
    seed: int = 0
    device: str = "auto"
    train_ber: float = 0.0
    train_error_model: str | None = None
    limit_train: int | None = None
    limit_test: int | None = None
    clip: float | None = None
    clip_rel: float | None = None
    clip_auto: float | None = None
    precision: str = DEFAULT_PRECISION
    init: str | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        from mcel.data import is_own, list_datasets
        from mcel.losses import list_losses
        from mcel.models import resolve_model

        def one_of(value: str, valid, what: str) -> None:
            if value not in valid:
                hint = did_you_mean(value, valid)
                raise MCELError(f"unknown {what} '{value}'{hint}; valid: {', '.join(valid)}")

        _check_types(self)
        if not is_own(self.dataset):  # your own .npz file is found and read when loaded
            one_of(self.dataset, list_datasets(), "dataset")
        resolve_model(self.model)  # a registered name, or your own module:function
        one_of(self.loss, list_losses(), "loss")
        one_of(self.optimizer, OPTIMIZERS, "optimizer")
        one_of(self.schedule, SCHEDULES, "schedule")
        one_of(self.normalize, NORMALIZATIONS, "normalize")
        self.quant_spec()  # validates scheme, format, granularity, act bits, clip
        _check_sizes(self)
        for name in ("lr", "weight_decay", "momentum", "scale", "train_ber"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise MCELError(f"{name} must be a finite number >= 0, got {v!r}")
        for name in ("lr", "scale"):  # zero would train nothing / divide the logits by 0
            if getattr(self, name) == 0:
                raise MCELError(f"{name} must be > 0, got 0")
        if self.train_ber > 1:
            raise MCELError(f"train_ber is a bit error rate in [0, 1], got {self.train_ber}")
        if self.margin is not None and not (math.isfinite(self.margin) and self.margin >= 0):
            raise MCELError(f"margin must be a finite number >= 0, got {self.margin}")
        if self.loss == "ce" and self.margin is not None:
            raise MCELError(f"loss ce takes no margin (got {self.margin}); use loss mcel")
        if not 0 <= self.seed < 2**63:  # what torch and numpy both take
            raise MCELError(f"seed must be an integer in [0, 2^63), got {self.seed}")
        check_device_name(self.device)
        check_precision(self.precision)
        if self.quant_spec().clipped and self.quant == "float":
            raise MCELError("clip fixes the range of quantized weights; it needs a quantized "
                            "model (quant int4, say), not quant float")
        for name in ("limit_train", "limit_test"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise MCELError(f"{name} must be a positive number of samples, got {v}")
        em = self.error_model()  # a bad train_error_model fails here, before any file exists
        if em is not None:
            if self.quant == "float":
                raise MCELError("error-injection training flips stored codes: it needs a "
                                "quantized model (quant int4, say), not quant float")
            if self.train_error_model and self.train_ber > 0:
                raise MCELError("give train_ber or train_error_model, not both")
            if "biases" in em.targets:
                raise MCELError("error-injection training flips weights and activations, "
                                "not biases; drop 'biases' from targets")
            if "activations" in em.targets and self.act_bits is None:
                raise MCELError("error injection into activations needs quantized "
                                "activations; set act_bits (--act-bits K)")

    def quant_spec(self) -> QuantSpec:
        return QuantSpec(self.quant, fmt=self.fmt, granularity=self.granularity,
                         act_bits=self.act_bits, exclude=tuple(self.quant_exclude),
                         clip=self.clip, clip_rel=self.clip_rel, clip_auto=self.clip_auto,
                         layers=tuple(self.quant_layers.items()))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            hint = did_you_mean(unknown[0], known)
            raise MCELError(f"unknown config key '{unknown[0]}'{hint}")
        return cls(**d)

    def digest(self) -> str:
        """Hash of everything that changes the trained weights (not where data lives).

        Keys added after 0.1.0 count only when they differ from their default, so the
        run ids of earlier runs and sweeps stay valid (a sweep resumes across versions).
        """
        d = weights_keys(self.to_dict())
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    def error_model(self):
        """The transient error model of error-injection training, or None."""
        from mcel.faults import BitErrorModel, parse_error_model

        if self.train_error_model:
            em = parse_error_model(self.train_error_model)
            return dataclasses.replace(em, mode="transient")
        if self.train_ber > 0:
            return BitErrorModel(ber=self.train_ber, mode="transient")
        return None


# config keys added after 0.1.0, with the default that leaves a run id unchanged
_LATER_KEYS: dict[str, Any] = {"clip": None, "clip_rel": None, "clip_auto": None,
                               "precision": DEFAULT_PRECISION, "init": None,
                               "quant_layers": {}}


def weights_keys(config: dict[str, Any]) -> dict[str, Any]:
    """The keys of a config dict that decide the trained weights, as run ids hash them:
    not where data lives or runs (``data_dir``, ``device``), and keys added after 0.1.0
    only where they differ from their default, so a config written before a key existed
    and one written after it, at its default, compare equal.

    >>> weights_keys({"loss": "ce", "device": "cpu", "clip_auto": None, "quant_layers": {}})
    {'loss': 'ce'}
    """
    return {k: v for k, v in config.items() if k not in ("data_dir", "device")
            and not (k in _LATER_KEYS and v == _LATER_KEYS[k])}


def _check_sizes(config: TrainConfig) -> None:
    """Epochs and batch size are positive; 0 epochs only measures ``init`` weights."""
    for name in ("epochs", "batch_size"):
        v = getattr(config, name)
        if not isinstance(v, int) or v < 1:
            if name == "epochs" and v == 0 and config.init:
                continue  # measure the init weights as they are, quantized
            raise MCELError(f"{name} must be a positive integer, got {v!r}" + (
                " (0 epochs takes init weights to quantize and measure: set --init)"
                if name == "epochs" and v == 0 else ""))
    if config.init is not None and not config.init.strip():
        raise MCELError("init is empty; give a weights file or a run folder, or leave it out")


def _check_types(config: TrainConfig) -> None:
    """Each field has the type its annotation names (YAML and JSON can hold anything)."""
    import types
    import typing

    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        value, hint = getattr(config, f.name), hints[f.name]
        union = typing.get_origin(hint) in (typing.Union, types.UnionType)
        allowed = tuple(typing.get_origin(a) or a for a in (typing.get_args(hint) if union
                                                             else (hint,)))
        if float in allowed and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
            setattr(config, f.name, value)
        ok = isinstance(value, allowed) and not (isinstance(value, bool) and bool not in allowed)
        if not ok:
            names = " or ".join("null" if a is type(None) else a.__name__ for a in allowed)
            raise MCELError(f"config key '{f.name}' must be {names}, got {value!r}")


def check_device_name(device: str) -> None:
    """A device this tool runs on, by name (whether it is present is checked at use)."""
    if device == "auto":
        return
    try:
        kind = torch.device(device).type
    except (RuntimeError, TypeError):
        kind = None
    if kind not in ("cpu", "cuda"):
        raise MCELError(f"unknown device '{device}'; use auto, cpu, cuda or cuda:N")


def resolve_device(device: str) -> torch.device:
    check_device_name(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise MCELError("device 'cuda' asked for, but no CUDA GPU is available; use --device cpu")
    return dev


def build_model(config: TrainConfig) -> nn.Module:
    info = dataset_info(config.dataset, config.data_dir)
    model = create_model(config.model, num_classes=info.num_classes, in_shape=info.in_shape,
                         **config.model_kwargs)
    return quantize_model(model, config.quant_spec())


def build_loss(config: TrainConfig) -> nn.Module:
    return create_loss(config.loss, margin=config.margin, normalize=config.normalize,
                       scale=config.scale)


__all__ = ["TrainConfig", "build_model", "build_loss", "resolve_device", "check_device_name",
           "weights_keys",
           "OPTIMIZERS", "SCHEDULES"]
