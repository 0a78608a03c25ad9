"""Training: a quantized model, a loss (CE, MCEL, MHL), optional error injection.

``train(config)`` runs a `TrainConfig` (`mcel.config`) and, with ``out`` set, keeps a
run folder (`mcel.runs`): a checkpoint after every epoch, so rerunning the same config
resumes. Under ``torchrun`` the same ``train`` runs data-parallel over the processes
(`mcel.distributed`); rank 0 writes the run folder.

``TrainConfig``, ``load_run`` and the other names that lived here are still importable
from this module.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mcel.checks import check_targets
from mcel.config import (
    OPTIMIZERS,
    SCHEDULES,
    TrainConfig,
    build_loss,
    build_model,
    check_device_name,
    resolve_device,
)
from mcel.console import progress as progress_bar
from mcel.data import dataset_file, is_own, load_dataset
from mcel.engine import faults_during
from mcel.errors import MCELError
from mcel.evaluate import accuracy, predict_logits
from mcel.io import check_writable
from mcel.precision import autocast, check_runs_on, memory_format, slow_warning
from mcel.pretrained import calibrate_activations, file_sha256, pretrained_model, weights_file
from mcel.quant import clip_weights, quant_layers
from mcel.runs import load_run, resume, save_checkpoint, save_run


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
            model, metrics = _train(config, out, device=device, info=info,
                                    train_data=(x_tr, y_tr), test_data=(x_te, y_te),
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


def _train(config: TrainConfig, out: Path | None, *, device: torch.device, info, train_data,
           test_data, progress: bool, log) -> tuple[nn.Module, dict[str, Any]]:
    from mcel.distributed import all_sum

    torch.manual_seed(config.seed)
    _check_precision(config, device, log)
    model = (pretrained_model(config) if config.init else build_model(config)).to(device)
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
    start_epoch = 0 if out is None else resume(out, config, model, opt=opt, gen=gen,
                                                metrics=metrics)
    _check_threads(metrics, device, log)  # (nothing to check on a fresh run)
    _check_files(config, metrics)
    writer = out if info.is_main else None  # one rank writes the run folder
    net = _data_parallel(model, device, info)

    em = _check_injection(model, config.error_model())
    steps_per_epoch = math.ceil(len(x_tr) / config.batch_size)
    with progress_bar(progress) as bar:
        task = bar.add_task(f"train {config.model}/{config.loss}", total=config.epochs,
                            completed=start_epoch, info="")
        for epoch in range(start_epoch, config.epochs):
            for g in opt.param_groups:
                g["lr"] = config.lr * _lr_factor(config, epoch)
            model.train()
            t0 = time.perf_counter()
            perm = torch.randperm(len(x_tr), generator=gen).to(device)
            with (faults_during(model, em, seed=config.seed, step=epoch * steps_per_epoch)
                  if em is not None else contextlib.nullcontext()):
                sums = _epoch(config, model, net, loss_fn=loss_fn, opt=opt, data=(x_tr, y_tr),
                              perm=perm, info=info, layout=layout, device=device)
            total, correct, seen = all_sum(sums, device, info)
            seconds = time.perf_counter() - t0
            test_acc = accuracy(model, x_te, y_te)
            row = {"epoch": epoch + 1, "loss": total / seen, "train_acc": correct / seen,
                   "test_acc": test_acc, "seconds": seconds,  # CPU sums depend on these:
                   "threads": torch.get_num_threads(),
                   "cpu": torch.backends.cpu.get_cpu_capability()}
            metrics["epochs"].append(row)
            bar.update(task, advance=1, info=f"loss {row['loss']:.3f} test {test_acc:.3f}")
            if log:
                log(f"epoch {epoch + 1}/{config.epochs} loss {row['loss']:.4f} "
                    f"train {row['train_acc']:.4f} test {test_acc:.4f} ({seconds:.1f}s)")
            if writer is not None:
                save_checkpoint(writer, config, model, opt=opt, gen=gen, metrics=metrics,
                                epoch=epoch + 1)
    model = model.to(memory_format=torch.contiguous_format)  # the layout is a training detail
    _finish(config, model, metrics, test_data=(x_te, y_te), info=info, writer=writer,
            calibration=x_tr)
    _check_margin_reached(config, model, (x_te, y_te), log)
    return model, metrics


def _check_files(config: TrainConfig, metrics: dict[str, Any]) -> None:
    """A run records the hashes of the files it starts from (init weights, your own
    dataset file): resuming it after one changed would mix two starting points or two
    datasets in one run, so it is refused."""
    files = []
    if config.init:
        files.append(("init_sha256", weights_file(config.init), f"the init weights {config.init}"))
    if is_own(config.dataset):
        files.append(("data_sha256", dataset_file(config.dataset, config.data_dir),
                      f"the dataset file {config.dataset}"))
    for key, path, what in files:
        digest = file_sha256(path)
        before = metrics.get(key)
        if before is not None and before != digest:
            raise MCELError(f"{what} changed since this run started; train into a new --out "
                            "folder")
        metrics[key] = digest


def _check_threads(metrics: dict[str, Any], device: torch.device, log) -> None:
    """A run resumed at another CPU thread count goes on with other float sums: it will
    not equal an uninterrupted run. Say so; the epoch rows record each count."""
    before = {r.get("threads") for r in metrics["epochs"]} - {None}
    now = torch.get_num_threads()
    if log and device.type == "cpu" and before and before != {now}:
        log(f"warning: this run was trained with {', '.join(map(str, sorted(before)))} CPU "
            f"thread(s) so far and resumes with {now}; its weights will differ from an "
            "uninterrupted run's (set --threads to resume as it was)")


def _finish(config: TrainConfig, model: nn.Module, metrics: dict[str, Any], *,
            test_data: tuple[Tensor, Tensor], info, writer: Path | None,
            calibration: Tensor) -> None:
    """The trained model in eval mode, its final metrics, and the finished run folder
    (written by rank 0 only: ``writer`` is None on the others). Untrained init weights
    (0 epochs) take their input ranges from the ``calibration`` images."""
    if config.epochs == 0:
        metrics["calibration_images"] = calibrate_activations(model, calibration,
                                                              config.batch_size)
    model.eval()
    metrics["test_acc"] = accuracy(model, *test_data)
    metrics["train_seconds"] = sum(r["seconds"] for r in metrics["epochs"])
    if info.enabled:
        metrics["world_size"] = info.world
    if writer is not None:
        save_run(writer, config, model, metrics)


def _data_parallel(model: nn.Module, device: torch.device, info) -> nn.Module:
    """The model as each step calls it: wrapped for DDP under torchrun, else itself."""
    if not info.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                   else None)


def _check_precision(config: TrainConfig, device: torch.device, log) -> None:
    check_runs_on(config.precision, device)
    warning = slow_warning(config.precision, device)
    if warning:
        if log:
            log(f"warning: {warning}")
        else:
            warnings.warn(warning, stacklevel=4)  # at the caller of train()


def _check_margin_reached(config: TrainConfig, model: nn.Module,
                          test_data: tuple[Tensor, Tensor], log) -> None:
    """Warn when a clip kept MCEL's raw margin out of reach: clipped weights bound the
    logits, and a margin the model cannot reach never lets the loss settle (a ResNet-20
    with clip 0.025 reached median margins of 3 for m=10 and lost 12 clean points;
    every MCEL + clip run that trained well reached about m or more)."""
    from mcel.losses import DEFAULT_MARGIN

    margin = DEFAULT_MARGIN if config.margin is None else config.margin
    clipped = config.quant_spec().clipped
    trained = config.epochs > 0  # 0 epochs: init weights measured, no loss at work
    if not (trained and config.loss == "mcel" and config.normalize == "none" and clipped
            and margin):
        return
    from mcel.analysis import output_margins

    x, y = test_data
    median = float(output_margins(model, x[:2000], y[:2000]).median())
    if median < margin / 2:
        warning = (f"MCEL's margin {margin:g} is out of reach under the weight clip: "
                   f"the median clean output margin is {median:.1f} logits; a smaller "
                   "--margin or a looser clip (e.g. --clip-auto 2) fits the bounded logits")
        if log:
            log(f"warning: {warning}")
        else:
            warnings.warn(warning, stacklevel=4)


def _check_injection(model: nn.Module, em):
    """Error-injection training (``em``; None: none) has codes to flip in every layer it
    targets; returns ``em``."""
    if em is None:
        return None
    if not quant_layers(model):  # e.g. quant_exclude took every layer
        raise MCELError("error-injection training needs quantized layers, and every "
                        "layer was kept in float")
    check_targets(model, em)  # an include pattern that matches nothing trains clean
    return em


def _epoch(config: TrainConfig, model: nn.Module, net: nn.Module, *, loss_fn: nn.Module,
           opt: torch.optim.Optimizer, data: tuple[Tensor, Tensor], perm: Tensor, info,
           layout: torch.memory_format, device: torch.device) -> list[float]:
    """One pass over ``perm``'s batches; this rank's summed loss, correct and seen counts.
    Every rank draws the same permutation (same generator state) and takes its shard of
    each global batch."""
    from mcel.distributed import shard, shard_weight

    x_tr, y_tr = data
    total, correct, seen = 0.0, 0, 0
    clipped = config.quant_spec().clipped
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
        if clipped:
            clip_weights(model)
        total += loss.item() * len(idx)
        correct += (logits.argmax(1) == yb).sum().item()
        seen += len(idx)
    return [total, correct, seen]


__all__ = ["TrainConfig", "train", "load_run", "build_model", "build_loss", "accuracy",
           "predict_logits", "resolve_device", "check_device_name", "OPTIMIZERS", "SCHEDULES"]
