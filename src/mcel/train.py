"""Training: a quantized model, a loss (CE, MCEL, MHL), optional error injection.

``TrainConfig`` holds every choice; ``train(config)`` runs it and, with ``out`` set,
keeps a run folder::

    RUN_DIR/config.json      the full resolved config
    RUN_DIR/model.safetensors the trained weights (latent floats + BN statistics)
    RUN_DIR/metrics.json     per-epoch loss/accuracy, clean test accuracy, timings
    RUN_DIR/last.safetensors  model + optimizer + RNG state after the last finished epoch
    RUN_DIR/state.json       progress; rerunning the same config resumes from here

``load_run(RUN_DIR)`` rebuilds the model exactly, and refuses a checkpoint whose
recorded config differs from config.json. Under ``torchrun`` the same ``train`` runs
data-parallel over the processes (`mcel.distributed`); rank 0 writes the run folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mcel.data import dataset_info, load_dataset
from mcel.errors import MCELError
from mcel.io import (
    check_writable,
    load_metadata,
    load_tensors,
    read_json,
    save_tensors,
    write_json,
)
from mcel.losses import DEFAULT_SCALE, NORMALIZATIONS, create_loss
from mcel.models import create_model
from mcel.precision import (
    DEFAULT_PRECISION,
    autocast,
    check_precision,
    check_runs_on,
    memory_format,
    slow_warning,
)
from mcel.quant import QuantSpec, clip_weights, quantize_model
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
    precision: str = DEFAULT_PRECISION

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        from mcel.data import list_datasets
        from mcel.losses import list_losses
        from mcel.models import list_models

        def one_of(value: str, valid, what: str) -> None:
            if value not in valid:
                hint = did_you_mean(value, valid)
                raise MCELError(f"unknown {what} '{value}'{hint}; valid: {', '.join(valid)}")

        _check_types(self)
        one_of(self.dataset, list_datasets(), "dataset")
        one_of(self.model, list_models(), "model")
        one_of(self.loss, list_losses(), "loss")
        one_of(self.optimizer, OPTIMIZERS, "optimizer")
        one_of(self.schedule, SCHEDULES, "schedule")
        one_of(self.normalize, NORMALIZATIONS, "normalize")
        self.quant_spec()  # validates scheme, format, granularity, act bits
        for name in ("epochs", "batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise MCELError(f"{name} must be a positive integer, got {v!r}")
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
        if self.clip is not None and not (math.isfinite(self.clip) and self.clip > 0):
            raise MCELError(f"clip must be a finite number > 0, got {self.clip}")
        if self.clip is not None and self.quant == "float":
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
                         clip=self.clip)

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
        d = self.to_dict()
        d.pop("data_dir")
        d.pop("device")
        for key, default in _LATER_KEYS.items():
            if d[key] == default:
                d.pop(key)
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
_LATER_KEYS: dict[str, Any] = {"clip": None, "precision": DEFAULT_PRECISION}


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
    info = dataset_info(config.dataset)
    model = create_model(config.model, num_classes=info.num_classes, in_shape=info.in_shape,
                         **config.model_kwargs)
    return quantize_model(model, config.quant_spec())


def build_loss(config: TrainConfig) -> nn.Module:
    return create_loss(config.loss, margin=config.margin, normalize=config.normalize,
                       scale=config.scale)


def _optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                           weight_decay=config.weight_decay)


def _lr_factor(config: TrainConfig, epoch: int) -> float:
    if config.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * epoch / config.epochs))
    if config.schedule == "step":
        return 0.1 ** (epoch // max(1, config.epochs // 3))
    return 1.0


@torch.inference_mode()
def predict_logits(model: nn.Module, x: Tensor, batch_size: int = 1024) -> Tensor:
    was = model.training
    model.eval()
    dev = next(model.parameters()).device
    out = torch.cat([model(x[i:i + batch_size].to(dev)) for i in range(0, len(x), batch_size)])
    model.train(was)
    return out


def accuracy(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 1024) -> float:
    """Top-1 accuracy of ``model`` (in its current mode) on ``(x, y)``."""
    from mcel.evaluate import check_data, check_labels_fit

    x, y = check_data(x, y)
    logits = predict_logits(model, x, batch_size)
    check_labels_fit(int(y.max()), logits)
    return (logits.argmax(1).cpu() == y.cpu()).float().mean().item()


def _progress(enabled: bool):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                    disable=not enabled, transient=True)


def train(config: TrainConfig, out: str | Path | None = None, *, progress: bool = False,
          log=None) -> tuple[nn.Module, dict[str, Any]]:
    """Train ``config``; with ``out``, write (and resume) a run folder.

    Returns the trained model (eval mode) and its metrics. Under ``torchrun`` (env
    ``WORLD_SIZE > 1``) the model is trained data-parallel (see `mcel.distributed`);
    every rank returns the same weights, but BatchNorm statistics and activation ranges
    are each rank's own (from its shard); only rank 0 writes ``out``.
    """
    from mcel.distributed import dist_info, process_group, rank_device

    info = dist_info()
    device = rank_device(resolve_device(config.device), info)
    # Data first: a missing or broken dataset fails before the run folder exists.
    x_tr, y_tr = load_dataset(config.dataset, "train", config.data_dir, limit=config.limit_train)
    x_te, y_te = load_dataset(config.dataset, "test", config.data_dir, limit=config.limit_test)
    made = [] if out is None else [p for p in (Path(out), *Path(out).parents) if not p.exists()]
    out = check_writable(out) if out is not None else None
    try:
        with process_group(info, device):
            model, metrics = _train(config, out, device, info, (x_tr, y_tr), (x_te, y_te),
                                    progress=progress and info.is_main,
                                    log=log if info.is_main else None)
    except BaseException:
        for folder in made:  # a failure before the first checkpoint leaves no empty folder
            try:
                folder.rmdir()
            except OSError:
                break  # not empty (a checkpoint to resume from), or not ours
        raise
    return model, metrics


def _train(config: TrainConfig, out: Path | None, device: torch.device, info, train_data,
           test_data, *, progress: bool, log) -> tuple[nn.Module, dict[str, Any]]:
    from mcel.distributed import all_sum, shard, shard_weight

    torch.manual_seed(config.seed)
    check_runs_on(config.precision, device)
    warning = slow_warning(config.precision, device)
    if warning:
        if log:
            log(f"warning: {warning}")
        else:
            warnings.warn(warning, stacklevel=3)
    model = build_model(config).to(device)
    layout = memory_format(config.precision, model)
    model = model.to(memory_format=layout)  # fp32: a no-op, the same tensors
    loss_fn = build_loss(config)
    opt = _optimizer(config, model)
    (x_tr, y_tr), (x_te, y_te) = train_data, test_data
    if len(x_tr) < info.world:
        raise MCELError(f"{len(x_tr)} training samples cannot be shared by {info.world} "
                        "processes; use more samples or fewer processes")
    x_tr, y_tr = x_tr.to(device), y_tr.to(device)
    gen = torch.Generator().manual_seed(config.seed)
    metrics: dict[str, Any] = {"epochs": [], "config_hash": config.digest()}
    start_epoch = 0
    if out is not None:
        start_epoch = _maybe_resume(out, config, model, opt, gen, metrics)
    writer = out if info.is_main else None  # one rank writes the run folder
    net: nn.Module = model
    if info.enabled:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                      else None)

    from mcel.engine import TRAINING_STEP, transient_weight_faults

    em = config.error_model()
    if em is not None:
        from mcel.engine import quant_layers
        from mcel.evaluate import check_targets

        if not quant_layers(model):  # e.g. quant_exclude took every layer
            raise MCELError("error-injection training needs quantized layers, and every "
                            "layer was kept in float")
        check_targets(model, em)  # an include pattern that matches nothing trains clean
    steps_per_epoch = math.ceil(len(x_tr) / config.batch_size)
    with _progress(progress) as bar:
        task = bar.add_task(f"train {config.model}/{config.loss}", total=config.epochs,
                            completed=start_epoch, info="")
        for epoch in range(start_epoch, config.epochs):
            for g in opt.param_groups:
                g["lr"] = config.lr * _lr_factor(config, epoch)
            model.train()
            t0 = time.perf_counter()
            # Every rank draws the same permutation (same generator state) and takes its
            # shard of each global batch.
            perm = torch.randperm(len(x_tr), generator=gen).to(device)
            total, correct, seen = 0.0, 0, 0
            with transient_weight_faults(model, em, seed=config.seed,
                                         first_call=epoch * steps_per_epoch,
                                         targets=em.targets if em else ("weights",),
                                         step=TRAINING_STEP):
                for i in range(0, len(x_tr), config.batch_size):
                    batch = perm[i:i + config.batch_size]
                    if len(batch) < info.world:
                        continue  # a last batch too small to give every rank a sample
                    idx = shard(batch, info)
                    xb, yb = x_tr[idx], y_tr[idx]
                    if xb.dim() == 4:
                        xb = xb.contiguous(memory_format=layout)
                    with autocast(config.precision, device):
                        logits = net(xb)
                    loss = loss_fn(logits.float(), yb)  # the loss is always fp32
                    opt.zero_grad(set_to_none=True)
                    (loss * shard_weight(len(idx), len(batch), info)).backward()
                    opt.step()
                    if config.clip is not None:
                        clip_weights(model)
                    total += loss.item() * len(idx)
                    correct += (logits.argmax(1) == yb).sum().item()
                    seen += len(idx)
            total, correct, seen = all_sum([total, correct, seen], device, info)
            seconds = time.perf_counter() - t0
            test_acc = accuracy(model, x_te, y_te)
            row = {"epoch": epoch + 1, "loss": total / seen, "train_acc": correct / seen,
                   "test_acc": test_acc, "seconds": seconds}
            metrics["epochs"].append(row)
            bar.update(task, advance=1, info=f"loss {row['loss']:.3f} test {test_acc:.3f}")
            if log:
                log(f"epoch {epoch + 1}/{config.epochs} loss {row['loss']:.4f} "
                    f"train {row['train_acc']:.4f} test {test_acc:.4f} ({seconds:.1f}s)")
            if writer is not None:
                _save_state(writer, config, model, opt, gen, metrics, epoch + 1)
    model.eval()
    metrics["test_acc"] = accuracy(model, x_te, y_te)
    metrics["train_seconds"] = sum(r["seconds"] for r in metrics["epochs"])
    if info.enabled:
        metrics["world_size"] = info.world
    if writer is not None:
        # One metadata key: safetensors writes several in random order, and the same
        # config and seed must give the same file, byte for byte.
        save_tensors(writer / "model.safetensors", model.state_dict(),
                     metadata={"config": json.dumps(config.to_dict(), sort_keys=True)})
        write_json(writer / "metrics.json", metrics)
        write_json(writer / "config.json", config.to_dict())  # (again: repairs a lost one)
    return model, metrics


def _save_state(out: Path, config: TrainConfig, model: nn.Module, opt: torch.optim.Optimizer,
                gen: torch.Generator, metrics: dict, epoch: int) -> None:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    opt_state = opt.state_dict()
    for pid, st in opt_state["state"].items():
        for k, v in st.items():
            if isinstance(v, Tensor):
                tensors[f"opt.{pid}.{k}"] = v
    tensors["rng.gen"] = gen.get_state()
    tensors["rng.torch"] = torch.get_rng_state()
    # The checkpoint carries its own progress: a kill between the two writes below must
    # not pair epoch k+1 weights with "epoch k" (one epoch would be trained twice).
    state = {"epoch": epoch, "config_hash": config.digest(), "metrics": metrics}
    save_tensors(out / "last.safetensors", tensors, metadata={"state": json.dumps(state)})
    write_json(out / "config.json", config.to_dict())
    write_json(out / "state.json", state)


def _config_diff(out: Path, config: TrainConfig) -> str:
    """The settings in which ``out/config.json`` differs from ``config`` (data_dir and
    device do not count), e.g. "epochs 2 there, 3 here"; "" when it agrees or is absent
    or unreadable (then the checkpoint decides)."""
    try:
        there = json.loads((out / "config.json").read_text())
    except (OSError, ValueError):
        return ""
    if not isinstance(there, dict):
        return ""
    try:  # through the config class: lists and tuples, ints and floats compare as saved
        there = TrainConfig.from_dict(there).to_dict()
    except (MCELError, TypeError):
        return ""
    here = config.to_dict()
    keys = [k for k in here if k not in ("data_dir", "device") and there.get(k) != here[k]]
    return "; ".join(f"{k} {there.get(k)!r} there, {here[k]!r} here" for k in keys[:3])


def _maybe_resume(out: Path, config: TrainConfig, model: nn.Module, opt: torch.optim.Optimizer,
                  gen: torch.Generator, metrics: dict) -> int:
    ckpt = out / "last.safetensors"
    if not ckpt.exists():
        differs = _config_diff(out, config)
        if differs:  # a finished run whose checkpoint was deleted: not ours to overwrite
            raise MCELError(f"{out} holds a run of another config ({differs}); use a new "
                            "--out folder")
        return 0
    meta = load_metadata(ckpt)  # a foreign file (a pickle, say) fails here, unread
    try:
        state = json.loads(meta.get("state", "{}"))
    except ValueError:
        state = None
    if not isinstance(state, dict):
        raise MCELError(f"{ckpt} has no readable progress record; it was not written by "
                        "mcel train: delete it to start over")
    if state.get("config_hash") != config.digest():
        differs = _config_diff(out, config) or "see its config.json"
        raise MCELError(f"{out} holds a run of another config ({differs}); use a new "
                        "--out folder")
    tensors = load_tensors(ckpt)
    try:
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        opt_state = opt.state_dict()
        for key, v in tensors.items():
            if key.startswith("opt."):
                _, pid, name = key.split(".", 2)
                opt_state["state"].setdefault(int(pid), {})[name] = v
        opt.load_state_dict(opt_state)
        gen.set_state(tensors["rng.gen"])
        torch.set_rng_state(tensors["rng.torch"])
        metrics.update(state["metrics"])
        return int(state["epoch"])
    except (KeyError, ValueError, TypeError, RuntimeError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise MCELError(f"{ckpt} does not fit this run ({first}); delete it to start "
                        "over") from None


def load_run(run_dir: str | Path, device: str = "cpu") -> tuple[nn.Module, TrainConfig]:
    """Rebuild a trained model from its run folder (no code is executed from files)."""
    run_dir = Path(run_dir)
    if not (run_dir / "model.safetensors").exists():
        raise MCELError(f"{run_dir} is not a finished run folder (no model.safetensors); "
                        "train it with 'mcel train --out DIR' first")
    raw = read_json(run_dir / "config.json")
    if not isinstance(raw, dict):
        raise MCELError(f"{run_dir / 'config.json'} must hold a JSON object of training "
                        "settings; was it written by mcel?")
    config = TrainConfig.from_dict(raw)
    _check_checkpoint_config(run_dir, config)
    model = build_model(config)
    tensors = load_tensors(run_dir / "model.safetensors")
    try:
        model.load_state_dict(tensors)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise MCELError(f"checkpoint in {run_dir} does not match its config ({first})") from None
    return model.to(resolve_device(device)).eval(), config


def _check_checkpoint_config(run_dir: Path, config: TrainConfig) -> None:
    """The weights were trained with the config that config.json names.

    ``model.safetensors`` carries the full config it was trained with (older files: its
    hash). A config.json edited to another model or quantization would otherwise load
    silently whenever the tensor shapes agree (int4 and int8 weights are both floats).
    Where the data lives and which device trained it do not count.
    """
    meta = load_metadata(run_dir / "model.safetensors")
    now = config.to_dict()
    ignore = ("data_dir", "device")
    try:
        saved = json.loads(meta["config"]) if "config" in meta else None
    except ValueError:
        saved = None
    if isinstance(saved, dict):
        try:  # through the config class: keys added since then read as their defaults
            saved = TrainConfig.from_dict(saved).to_dict()
        except (MCELError, TypeError):
            pass
        diffs = [f"{k}={saved.get(k)!r}, config.json says {now.get(k)!r}"
                 for k in sorted(set(saved) | set(now))
                 if k not in ignore and saved.get(k) != now.get(k)]
    elif "config_hash" in meta:
        diffs = ([] if meta["config_hash"] == config.digest() else
                 [f"config hash {meta['config_hash']}, config.json's is {config.digest()}"])
    else:
        return  # no record of its config: the shape check of load_state_dict still runs
    if diffs:
        raise MCELError(f"checkpoint in {run_dir} does not match its config.json (trained "
                        f"with {'; '.join(diffs[:3])}); restore config.json or retrain")


__all__ = ["TrainConfig", "train", "load_run", "build_model", "build_loss", "accuracy",
           "predict_logits", "resolve_device", "check_device_name"]
