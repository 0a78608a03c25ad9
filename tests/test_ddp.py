"""Data-parallel training: ``torchrun --nproc_per_node 2 -m mcel.cli train`` (gloo, CPU).

Two processes train one model on shards of each global batch; rank 0 alone writes the
run folder, which must load like any other and hold a model as good as a
single-process one.
"""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from mcel.distributed import DistInfo, dist_info, shard, shard_weight
from mcel.train import load_run

ARGS = ["train", "--dataset", "digits", "--model", "mlp", "--epochs", "2", "--lr", "0.01",
        "--batch-size", "64", "--limit-train", "600", "--seed", "0",
        "--device", "cpu"]  # gloo on CPU, also on a machine with one GPU


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(args: list[str], cwd, nproc: int = 2) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           "-m", "mcel.cli", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_torchrun_two_processes_train_one_model(tmp_path):
    out = tmp_path / "run"
    r = _torchrun(ARGS + ["--out", str(out)], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    # one rank prints the summary, one rank logs the epochs
    assert r.stdout.count("clean test accuracy") == 1, r.stdout
    assert r.stderr.count("epoch 2/2") == 1, r.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json", "last.safetensors", "metrics.json", "model.safetensors", "state.json"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and len(metrics["epochs"]) == 2
    model, config = load_run(out)
    assert config.limit_train == 600 and config.epochs == 2
    from mcel.data import load_dataset
    from mcel.train import accuracy

    x, y = load_dataset("digits", "test")
    acc = accuracy(model, x, y)
    assert acc == pytest.approx(metrics["test_acc"], abs=1e-6)
    assert acc > 0.85  # a single process reaches ~0.95 with these settings
    assert not list(out.glob(".*"))  # no temporary files left by either rank


def test_shards_cover_each_global_batch_once():
    idx = torch.randperm(61, generator=torch.Generator().manual_seed(0))
    for world in (1, 2, 3, 4):
        parts = [shard(idx, DistInfo(r, r, world)) for r in range(world)]
        assert torch.equal(torch.cat(parts), idx)  # every sample once, in order
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
        weights = [shard_weight(len(p), len(idx), DistInfo(r, r, world))
                   for r, p in enumerate(parts)]
        # DDP averages the ranks' gradients: the weighted means average to the global mean
        assert sum(weights) / world == pytest.approx(1.0)


def test_dist_info_reads_torchrun_environment(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert dist_info() == DistInfo(0, 0, 1) and dist_info().is_main
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert dist_info() == DistInfo(3, 1, 4) and not dist_info().is_main
    monkeypatch.setenv("RANK", "4")
    from mcel.errors import MCELError

    with pytest.raises(MCELError, match="outside 0..3"):
        dist_info()
