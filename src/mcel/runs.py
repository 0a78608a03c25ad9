"""Run folders: what a training run leaves on disk, and how it is read back.

::

    RUN_DIR/config.json       the full resolved config
    RUN_DIR/model.safetensors the trained weights (latent floats + BN statistics)
    RUN_DIR/metrics.json      per-epoch loss/accuracy, clean test accuracy, timings
    RUN_DIR/last.safetensors  model + optimizer + RNG state after the last finished epoch
    RUN_DIR/state.json        progress; rerunning the same config resumes from here

``load_run(RUN_DIR)`` rebuilds the model exactly, and refuses a checkpoint whose
recorded config differs from config.json. Evaluation, margins and the command line
load runs from here without the trainer; `mcel.train` writes and resumes them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mcel.config import TrainConfig, build_model, resolve_device
from mcel.errors import MCELError
from mcel.io import load_metadata, load_tensors, read_json, save_tensors, write_json


def save_run(out: Path, config: TrainConfig, model: nn.Module, metrics: dict[str, Any]) -> None:
    """The finished run: weights, metrics and config."""
    # One metadata key: safetensors writes several in random order, and the same
    # config and seed must give the same file, byte for byte.
    save_tensors(out / "model.safetensors", model.state_dict(),
                 metadata={"config": json.dumps(config.to_dict(), sort_keys=True)})
    write_json(out / "metrics.json", metrics)
    write_json(out / "config.json", config.to_dict())  # (again: repairs a lost one)


def save_checkpoint(out: Path, config: TrainConfig, model: nn.Module, *,
                    opt: torch.optim.Optimizer, gen: torch.Generator, metrics: dict,
                    epoch: int) -> None:
    """After each epoch: what resuming needs (model, optimizer and RNG states, progress)."""
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


def config_diff(out: Path, config: TrainConfig) -> str:
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


def resume(out: Path, config: TrainConfig, model: nn.Module, *, opt: torch.optim.Optimizer,
           gen: torch.Generator, metrics: dict) -> int:
    """Load ``out``'s checkpoint of this config into ``model``, ``opt``, ``gen`` and
    ``metrics``; returns the epochs already trained (0: nothing to resume). A folder of
    another config is refused, not overwritten."""
    ckpt = out / "last.safetensors"
    if not ckpt.exists():
        differs = config_diff(out, config)
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
        differs = config_diff(out, config) or "see its config.json"
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
    if not run_dir.exists():
        raise MCELError(f"run folder {run_dir} is missing; train one with 'mcel train --out "
                        "DIR' first")
    if not (run_dir / "model.safetensors").exists():
        raise MCELError(f"{run_dir} is not a finished run folder (no model.safetensors); "
                        "train it with 'mcel train --out DIR' first")
    raw = read_json(run_dir / "config.json")
    if not isinstance(raw, dict):
        raise MCELError(f"{run_dir / 'config.json'} must hold a JSON object of training "
                        "settings; was it written by mcel?")
    config = TrainConfig.from_dict(raw)
    check_checkpoint_config(run_dir, config)
    model = build_model(config)
    tensors = load_tensors(run_dir / "model.safetensors")
    try:
        model.load_state_dict(tensors)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise MCELError(f"checkpoint in {run_dir} does not match its config ({first})") from None
    return model.to(resolve_device(device)).eval(), config


def check_checkpoint_config(run_dir: Path, config: TrainConfig) -> None:
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


__all__ = ["load_run", "save_run", "save_checkpoint", "resume", "config_diff",
           "check_checkpoint_config"]
