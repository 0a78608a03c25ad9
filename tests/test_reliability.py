"""Reliability: bad input to every command, safe loading, determinism, a sweep under load.

Every user mistake, whatever the command, is one line ``mcel <command>: error: ...`` on
stderr, exit code 2, and leaves the file system as it was (no folder, no database, no
half-written file). The table in docs/reliability.md lists each case of `CASES` with its
exact message.
"""

from __future__ import annotations

import gzip
import json
import pickle
import shutil
import sqlite3
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mcel.cli import main
from mcel.errors import MCELError
from mcel.io import read_json
from mcel.train import TrainConfig, load_run, train

# -- fixtures: a digits run, a run on a small valid MNIST, broken copies of that MNIST ----

TRAIN = ["train", "--dataset", "digits", "--model", "mlp", "--epochs", "1", "--lr", "0.01",
         "--batch-size", "64", "--limit-train", "200", "--limit-test", "100"]
MNIST_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", 64),
               "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", 32)}


def _idx(magic: int, shape: tuple[int, ...], body: bytes) -> bytes:
    return struct.pack(f">i{len(shape)}i", magic, *shape) + body


def write_mnist(folder: Path, variant: str = "good") -> Path:
    """A small MNIST in the upstream IDX layout; ``variant`` breaks one file of it."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for img_name, lbl_name, n in MNIST_FILES.values():
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8).tobytes()
        labels = (np.arange(n) % 10).astype(np.uint8).tobytes()
        (folder / img_name).write_bytes(_idx(2051, (n, 28, 28), images))
        (folder / lbl_name).write_bytes(_idx(2049, (n,), labels))
    target = folder / "t10k-images-idx3-ubyte"  # the test split is read by every command
    data = target.read_bytes()
    if variant == "wrong-magic":  # a labels file saved under the images name
        target.write_bytes(_idx(2049, (32,), bytes(32)))
    elif variant == "short-read":  # a download cut off mid-body
        target.write_bytes(data[: len(data) - 100])
    elif variant == "truncated-gzip":
        target.unlink()
        (folder / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(data)[:2000])
    elif variant == "foreign":  # an HTML error page saved by a proxy
        target.write_bytes(b"<!DOCTYPE html><html><body>404 Not Found</body></html>\n")
    return folder


GRID = """\
name: rel
base: {{dataset: {dataset}, model: mlp, model_kwargs: {{hidden: 16}}, quant: {quant},
       epochs: 1, limit_train: 64, limit_test: 32{extra}}}
grid: {{seed: [0]}}
eval: {{bers: {bers}, trials: 2}}
"""


def _grid(dataset="digits", quant="int4", bers="[0, 0.01]", extra=""):
    return GRID.format(dataset=dataset, quant=quant, bers=bers, extra=extra)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return build_base(tmp_path_factory.mktemp("base"))


def build_base(b: Path) -> Path:
    """Everything the bad-input cases point at, built once in the empty folder ``b``."""
    (b / "file").write_text("a regular file, not a folder\n")
    import torch

    torch.save(torch.nn.Linear(2, 2), b / "module.pt")  # a pickled module, not weights
    run = b / "run"
    assert main(TRAIN + ["--out", str(run)]) == 0
    data = write_mnist(b / "data" / "good" / "mnist")
    for variant in ("wrong-magic", "short-read", "truncated-gzip", "foreign"):
        write_mnist(b / "data" / variant / "mnist", variant)
    mrun = b / "mnist-run"
    assert main(["train", "--dataset", "mnist", "--data-dir", str(data.parent), "--model",
                 "mlp", "--epochs", "1", "--out", str(mrun)]) == 0
    # run folders whose config.json was edited after training
    for name, change in [("edited-model", {"model": "lenet5"}),
                         ("edited-quant", {"quant": "int8"}),
                         ("edited-fmt", {"fmt": "sign_magnitude"})]:
        shutil.copytree(run, b / name)
        cfg = json.loads((run / "config.json").read_text())
        cfg.update(change)
        (b / name / "config.json").write_text(json.dumps(cfg))
    shutil.copytree(run, b / "config-not-json")
    (b / "config-not-json" / "config.json").write_bytes(pickle.dumps({"model": "mlp"}))
    shutil.copytree(run, b / "config-a-list")
    (b / "config-a-list" / "config.json").write_text("[1, 2]")
    shutil.copytree(run, b / "ckpt-foreign")
    (b / "ckpt-foreign" / "model.safetensors").write_bytes(b"\x00" * 64)
    yamls = {"bad.yaml": "epochs: [1,\n", "list.yaml": "- 1\n- 2\n",
             "typo.yaml": "epoch: 3\n", "type.yaml": "epochs: three\n"}
    for name, text in yamls.items():
        (b / name).write_text(text)
    maps = {"map-1d": {"p": np.zeros(64)}, "map-range": {"p": np.full((4, 32), 1.5)},
            "map-no-cells": {"row_rate": np.float64(0.1)},
            "map-stuck": {"stuck": np.full((4, 32), 2, np.int8)},
            "map-cols": {"p": np.zeros((4, 30))}}
    for name, arrays in maps.items():
        np.savez(b / f"{name}.npz", **arrays)
    x, y = np.zeros((4, 8, 8), np.uint8), np.arange(4) % 2
    own = {"own-missing": {"x_train": x, "y_train": y},
           "own-objects": {"x_train": x, "y_train": np.array([0, 1, "a", None], object),
                           "x_test": x, "y_test": y},
           "own-labels": {"x_train": x, "y_train": y, "x_test": x, "y_test": y - 1}}
    for name, arrays in own.items():
        np.savez(b / f"{name}.npz", **arrays)
    grids = {
        "good": _grid(),
        "ber-negative": _grid(bers="[0, -0.1]"),
        "ber-above-1": _grid(bers="[0, 1.5]"),
        "ber-nan": _grid(bers="[0, .nan]"),
        "no-int9": _grid(quant="int9"),
        "no-scheme": _grid(quant="quaternary"),
        "no-dataset": _grid(dataset="mnsit"),
        "train-ber-nan": _grid(extra=", train_ber: .nan"),
        "no-loss": _grid(extra=", loss: mcl"),
        "mnist-missing": _grid(dataset="mnist", extra=f", data_dir: {b / 'nowhere'}"),
        "mnist-magic": _grid(dataset="mnist", extra=f", data_dir: {b / 'data' / 'wrong-magic'}"),
        "mnist-short": _grid(dataset="mnist", extra=f", data_dir: {b / 'data' / 'short-read'}"),
        "malformed": "base: {dataset: digits\ngrid: {seed: [0]}\n",
    }
    for name, text in grids.items():
        (b / f"grid-{name}.yaml").write_text(text)
    db = b / "results.db"
    from mcel.experiments.store import connect

    connect(db).close()  # a results database with no runs yet
    return b


def _tree(*roots: Path) -> dict[str, tuple[int, int]]:
    """Every file (size, mtime) under ``roots``. Folders are left out: a temporary write
    test touches their mtime, and an empty folder holds nothing half-written. SQLite's
    -wal/-shm companions of a database opened read-only are left out too."""
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns)
            for r in roots for p in sorted(r.rglob("*"))
            if p.is_file() and not p.name.endswith(("-wal", "-shm"))}


# (case id, argv, text the one-line message must hold). Placeholders: {b} the base
# folder above, {tmp} an empty folder of the test.
CASES = [
    # train
    ("train-ber-negative", TRAIN + ["--train-ber", "-0.1", "--out", "{tmp}/x"],
     "train_ber must be a finite number >= 0, got -0.1"),
    ("train-ber-above-1", TRAIN + ["--train-ber", "1.5", "--out", "{tmp}/x"],
     "train_ber is a bit error rate in [0, 1], got 1.5"),
    ("train-ber-nan", TRAIN + ["--train-ber", "nan", "--out", "{tmp}/x"],
     "train_ber must be a finite number >= 0, got nan"),
    ("train-error-model-rate", TRAIN + ["--train-error-model", "ber=2", "--out", "{tmp}/x"],
     "ber=2.0 is not a valid rate; allowed: a number in [0, 1]"),
    ("train-bit-width", TRAIN + ["--quant", "int0", "--out", "{tmp}/x"],
     "unknown quantization 'int0' (did you mean 'int8'?); valid: float, binary, ternary"),
    ("train-scheme", TRAIN + ["--quant", "quaternary", "--out", "{tmp}/x"],
     "unknown quantization 'quaternary' (did you mean 'ternary'?)"),
    ("train-model", TRAIN + ["--model", "mlpp", "--out", "{tmp}/x"],
     "unknown model 'mlpp' (did you mean 'mlp'?); valid: lenet5, mlp, resnet20, vgg3, vgg7"),
    ("train-dataset", TRAIN + ["--dataset", "fashion_mnist", "--out", "{tmp}/x"],
     "unknown dataset 'fashion_mnist' (did you mean 'fashion-mnist'?); valid: cifar10"),
    ("train-loss", TRAIN + ["--loss", "hinge", "--out", "{tmp}/x"],
     "unknown loss 'hinge'"),
    ("train-fmt", TRAIN + ["--fmt", "sign-magnitude", "--out", "{tmp}/x"],
     "unknown number format 'sign-magnitude' (did you mean 'sign_magnitude'?)"),
    ("train-limit-zero", TRAIN + ["--limit-train", "0", "--out", "{tmp}/x"],
     "--limit-train must be a positive integer, got 0"),
    ("train-yaml-malformed", TRAIN + ["--config", "{b}/bad.yaml", "--out", "{tmp}/x"],
     "bad.yaml is not valid YAML at line 2"),
    ("train-yaml-not-mapping", TRAIN + ["--config", "{b}/list.yaml", "--out", "{tmp}/x"],
     "list.yaml must hold a mapping of keys to values"),
    ("train-yaml-unknown-key", TRAIN + ["--config", "{b}/typo.yaml", "--out", "{tmp}/x"],
     "unknown config key 'epoch' (did you mean 'epochs'?)"),
    ("train-yaml-wrong-type", ["train", "--config", "{b}/type.yaml", "--out", "{tmp}/x"],
     "config key 'epochs' must be int, got 'three'"),
    ("train-data-missing", TRAIN + ["--dataset", "mnist", "--data-dir", "{b}/nowhere",
                                    "--out", "{tmp}/x"],
     "dataset 'mnist' not found: expected train-images-idx3-ubyte.gz"),
    ("train-data-wrong-magic", TRAIN + ["--dataset", "mnist", "--data-dir",
                                        "{b}/data/wrong-magic", "--out", "{tmp}/x"],
     "t10k-images-idx3-ubyte: IDX magic number is 2049, expected 2051 (images, uint8); "
     "the file is truncated or foreign, re-download it"),
    ("train-quant-layer-no-scheme", TRAIN + ["--quant-layer", "classifier.0", "--out",
                                             "{tmp}/x"],
     "--quant-layer 'classifier.0': give PATTERN=SCHEME, e.g. features.0=int8"),
    ("train-quant-layer-overlap", TRAIN + ["--quant-layer", "classifier.*=int8",
                                           "--quant-layer", "classifier.0=int2", "--out",
                                           "{tmp}/x"],
     "layer 'classifier.0' matches 2 of the per-layer schemes (classifier.*, classifier.0); "
     "make them disjoint"),
    ("train-own-data-missing", TRAIN + ["--dataset", "{b}/nope.npz", "--out", "{tmp}/x"],
     "dataset file {b}/nope.npz not found (looked for {b}/nope.npz"),
    ("train-own-data-arrays", TRAIN + ["--dataset", "{b}/own-missing.npz", "--out", "{tmp}/x"],
     "own-missing.npz holds x_train, y_train; a dataset file needs x_train, y_train, x_test, "
     "y_test (missing: x_test, y_test)"),
    ("train-own-data-objects", TRAIN + ["--dataset", "{b}/own-objects.npz", "--out",
                                        "{tmp}/x"],
     "own-objects.npz is not a dataset archive: it holds Python objects"),
    ("train-own-data-labels", TRAIN + ["--dataset", "{b}/own-labels.npz", "--out", "{tmp}/x"],
     "own-labels.npz: y_test holds the label -1; labels are 0..K-1"),
    ("train-data-short-read", TRAIN + ["--dataset", "mnist", "--data-dir",
                                       "{b}/data/short-read", "--out", "{tmp}/x"],
     "t10k-images-idx3-ubyte: holds 24988 data bytes, header says 25088"),
    ("train-data-truncated-gzip", TRAIN + ["--dataset", "mnist", "--data-dir",
                                           "{b}/data/truncated-gzip", "--out", "{tmp}/x"],
     "t10k-images-idx3-ubyte.gz: cannot gunzip"),
    ("train-data-foreign", TRAIN + ["--dataset", "mnist", "--data-dir", "{b}/data/foreign",
                                    "--out", "{tmp}/x"],
     "IDX magic number is 1008813135, expected 2051"),
    ("train-out-unwritable", TRAIN + ["--out", "{b}/file/run"],
     "cannot write to {b}/file/run: Not a directory; choose another --out"),
    ("train-init-missing", TRAIN + ["--init", "{b}/nope.pt", "--out", "{tmp}/x"],
     "init weights {b}/nope.pt do not exist; give a .safetensors or .pt file"),
    ("train-init-pickled-module", TRAIN + ["--init", "{b}/module.pt", "--out", "{tmp}/x"],
     "holds a Python object (torch.nn.modules.linear.Linear), not only tensors"),
    ("train-init-other-model", TRAIN + ["--init", "{b}/run", "--model", "lenet5", "--out",
                                        "{tmp}/x"], "do not fit this model: keys"),
    ("train-epochs-zero-without-init", TRAIN + ["--epochs", "0", "--out", "{tmp}/x"],
     "epochs must be a positive integer, got 0 (0 epochs takes init weights"),
    ("train-resume-other-config", TRAIN[:-4] + ["--limit-train", "100", "--limit-test", "100",
                                                "--out", "{b}/run"],
     "{b}/run holds a run of another config (limit_train 200 there, 100 here); use a new "
     "--out folder"),
    # evaluate
    ("evaluate-ber-negative", ["evaluate", "{b}/run", "--ber", "0,-0.1"],
     "BER -0.1 is outside [0, 1]"),
    ("evaluate-ber-above-1", ["evaluate", "{b}/run", "--ber", "1.5"], "BER 1.5 is outside [0, 1]"),
    ("evaluate-ber-nan", ["evaluate", "{b}/run", "--ber", "nan"], "BER nan is outside [0, 1]"),
    ("evaluate-trial-batch-zero", ["evaluate", "{b}/run", "--trial-batch", "0"],
     "--trial-batch must be a positive integer, got 0"),
    ("evaluate-trial-batch-transient", ["evaluate", "{b}/run", "--transient", "--trial-batch",
                                        "4"], "trial_batch > 1 needs persistent faults"),
    ("evaluate-error-model-nan", ["evaluate", "{b}/run", "--error-model", "p01=nan,p10=0.01"],
     "p01=nan is not a valid rate; allowed: a number in [0, 1]"),
    ("evaluate-error-model-syntax", ["evaluate", "{b}/run", "--error-model", "flip everything"],
     "cannot parse error model 'flip everything'"),
    ("evaluate-map-missing", ["evaluate", "{b}/run", "--error-model", "map={b}/none.npz"],
     "error map {b}/none.npz cannot be read (No such file or directory); write one with "
     "'mcel make-map'"),
    ("evaluate-map-not-npz", ["evaluate", "{b}/run", "--error-model", "map={b}/bad.yaml"],
     "error map {b}/bad.yaml is not a .npz file of arrays (numpy.savez)"),
    ("evaluate-map-shape", ["evaluate", "{b}/run", "--error-model", "map={b}/map-1d.npz"],
     "error map {b}/map-1d.npz: 'p' has shape (64,); allowed: (rows, cols) or (banks, "
     "rows, cols)"),
    ("evaluate-map-range", ["evaluate", "{b}/run", "--error-model", "map={b}/map-range.npz"],
     "'p' must hold probabilities in [0, 1], found 1.5 at cell (0, 0, 0); clip it"),
    ("evaluate-map-no-cells", ["evaluate", "{b}/run", "--error-model",
                               "map={b}/map-no-cells.npz"],
     "has neither 'p' (flip probabilities) nor 'stuck' (stuck values)"),
    ("evaluate-map-stuck", ["evaluate", "{b}/run", "--error-model", "map={b}/map-stuck.npz"],
     "'stuck' holds 2 at cell (0, 0, 0); allowed: -1 (working), 0 or 1"),
    ("evaluate-map-word-bits", ["evaluate", "{b}/run", "--error-model",
                                "map={b}/map-cols.npz,word_bits=8"],
     "has 30 columns (bits per row), not a multiple of word_bits=8"),
    ("evaluate-map-transient", ["evaluate", "{b}/run", "--transient", "--error-model",
                                "map={b}/map-cols.npz,word_bits=2"],
     "an error map holds persistent faults of stored weights and biases"),
    ("make-map-rate", ["make-map", "--rows", "4", "--cols", "32", "--cell-ber", "2", "--out",
                       "{tmp}/m.npz"], "cell_ber=2.0 and stuck_rate=0.0 must be in [0, 1]"),
    ("make-map-rows-zero", ["make-map", "--rows", "0", "--cols", "32", "--out", "{tmp}/m.npz"],
     "banks, rows, cols must be >= 1"),
    ("evaluate-fmt", ["evaluate", "{b}/run", "--fmt", "ones_complement"],
     "unknown number format 'ones_complement'"),
    ("evaluate-not-a-run", ["evaluate", "{b}", "--ber", "0.1"],
     "is not a finished run folder (no model.safetensors)"),
    ("evaluate-config-edited-model", ["evaluate", "{b}/edited-model"],
     "checkpoint in {b}/edited-model does not match its config.json (trained with "
     "model='mlp', config.json says 'lenet5'); restore config.json or retrain"),
    ("evaluate-config-edited-quant", ["evaluate", "{b}/edited-quant"],
     "trained with quant='int4', config.json says 'int8'"),
    ("evaluate-config-not-json", ["evaluate", "{b}/config-not-json"],
     "JSON file {b}/config-not-json/config.json is not text (byte 0x80 at offset 0 is not "
     "UTF-8)"),
    ("evaluate-config-not-object", ["evaluate", "{b}/config-a-list"],
     "config.json must hold a JSON object of training settings"),
    ("evaluate-checkpoint-foreign", ["evaluate", "{b}/ckpt-foreign"],
     "ckpt-foreign/model.safetensors is not a valid safetensors checkpoint"),
    ("evaluate-json-unwritable", ["evaluate", "{b}/run", "--ber", "0", "--json",
                                  "{b}/file/eval.json"],
     "cannot write {b}/file/eval.json: {b}/file is a file, not a folder"),
    ("evaluate-batch-size-zero", ["evaluate", "{b}/run", "--batch-size", "0"],
     "--batch-size must be a positive integer, got 0"),
    ("evaluate-adaptive-negative", ["evaluate", "{b}/run", "--adaptive", "-0.01"],
     "--adaptive is a 95% half-width of an accuracy, in (0, 1) (e.g. 0.005 for +-0.5 "
     "points), got -0.01"),
    ("evaluate-data-wrong-magic", ["evaluate", "{b}/mnist-run", "--data-dir",
                                   "{b}/data/wrong-magic"], "IDX magic number is 2049"),
    ("evaluate-data-short-read", ["evaluate", "{b}/mnist-run", "--data-dir",
                                  "{b}/data/short-read"], "header says 25088"),
    ("evaluate-dumps-short", ["evaluate", "{b}/run", "--dumps", "{b}/file"],
     "holds 29 bytes; this run's memory image is"),
    ("evaluate-dumps-adaptive", ["evaluate", "{b}/run", "--dumps", "{b}/file", "--adaptive",
                                 "0.01"], "--dumps measures the bits the dumps hold"),
    ("evaluate-by-bit-and-layer", ["evaluate", "{b}/run", "--by-bit", "--by-layer"],
     "--by-bit and --by-layer each split the faults one way: give one"),
    ("evaluate-ecc-transient", ["evaluate", "{b}/run", "--error-model", "ber=0,ecc=64",
                                "--transient"], "ecc corrects words stored in memory"),
    ("evaluate-burst-asymmetric", ["evaluate", "{b}/run", "--error-model",
                                   "p01=1e-3,p10=1e-2,burst=2"], "burst needs a uniform rate"),
    # export
    ("export-out-unwritable", ["export", "{b}/run", "--out", "{b}/file/e"],
     "cannot write to {b}/file/e: Not a directory"),
    ("export-run-missing", ["export", "{b}/nope", "--out", "{tmp}/e"],
     "run folder {b}/nope is missing"),
    # sweep
    ("sweep-ber-negative", ["sweep", "{b}/grid-ber-negative.yaml", "--out", "{tmp}/s"],
     "eval.bers: -0.1 is not a bit error rate in [0, 1]"),
    ("sweep-ber-above-1", ["sweep", "{b}/grid-ber-above-1.yaml", "--out", "{tmp}/s"],
     "eval.bers: 1.5 is not a bit error rate in [0, 1]"),
    ("sweep-ber-nan", ["sweep", "{b}/grid-ber-nan.yaml", "--out", "{tmp}/s"],
     "eval.bers: nan is not a bit error rate in [0, 1]"),
    ("sweep-train-ber-nan", ["sweep", "{b}/grid-train-ber-nan.yaml", "--out", "{tmp}/s"],
     "grid point seed=0: train_ber must be a finite number >= 0, got nan"),
    ("sweep-bit-width", ["sweep", "{b}/grid-no-int9.yaml", "--out", "{tmp}/s"],
     "unknown quantization 'int9'"),
    ("sweep-scheme", ["sweep", "{b}/grid-no-scheme.yaml", "--out", "{tmp}/s"],
     "unknown quantization 'quaternary' (did you mean 'ternary'?)"),
    ("sweep-dataset", ["sweep", "{b}/grid-no-dataset.yaml", "--out", "{tmp}/s"],
     "unknown dataset 'mnsit' (did you mean 'mnist'?)"),
    ("sweep-loss", ["sweep", "{b}/grid-no-loss.yaml", "--out", "{tmp}/s"],
     "unknown loss 'mcl' (did you mean 'mcel'?)"),
    ("sweep-yaml-malformed", ["sweep", "{b}/grid-malformed.yaml", "--out", "{tmp}/s"],
     "grid-malformed.yaml is not valid YAML at line 2"),
    ("sweep-data-missing", ["sweep", "{b}/grid-mnist-missing.yaml", "--out", "{tmp}/s"],
     "dataset 'mnist' not found"),
    ("sweep-data-wrong-magic", ["sweep", "{b}/grid-mnist-magic.yaml", "--out", "{tmp}/s"],
     "IDX magic number is 2049, expected 2051"),
    ("sweep-data-short-read", ["sweep", "{b}/grid-mnist-short.yaml", "--out", "{tmp}/s"],
     "holds 24988 data bytes, header says 25088"),
    ("sweep-out-unwritable", ["sweep", "{b}/grid-good.yaml", "--out", "{b}/file/s"],
     "cannot write to {b}/file/s: Not a directory"),
    ("sweep-backend", ["sweep", "{b}/grid-good.yaml", "--out", "{tmp}/s", "--backend", "dask"],
     "unknown sweep backend 'dask'; valid: local, ray"),
    ("sweep-address-without-ray", ["sweep", "{b}/grid-good.yaml", "--out", "{tmp}/s",
                                   "--address", "auto"],
     "backend 'local' takes no options (address); --address is for --backend ray"),
    # report
    ("report-missing-db", ["report", "{b}/nope.db", "--out", "{tmp}/r"],
     "results database {b}/nope.db does not exist"),
    ("report-foreign-db", ["report", "{b}/run/model.safetensors", "--out", "{tmp}/r"],
     "is not an SQLite database"),
    ("report-empty-db", ["report", "{b}/results.db", "--out", "{tmp}/r"],
     "results.db holds no runs yet; fill it with a sweep first"),
    # margins
    ("margins-ber-negative", ["margins", "{b}/run", "--ber", "-0.1"],
     "BER -0.1 is outside [0, 1]"),
    ("margins-ber-above-1", ["margins", "{b}/run", "--ber", "1.5"], "BER 1.5 is outside [0, 1]"),
    ("margins-ber-nan", ["margins", "{b}/run", "--ber", "nan"], "BER nan is outside [0, 1]"),
    ("margins-config-edited-quant", ["margins", "{b}/edited-quant"],
     "trained with quant='int4', config.json says 'int8'"),
    ("margins-config-edited-fmt", ["margins", "{b}/edited-fmt"],
     "trained with fmt='twos_complement', config.json says 'sign_magnitude'"),
    ("margins-out-unwritable", ["margins", "{b}/run", "--out", "{b}/file/m"],
     "cannot write to {b}/file/m: Not a directory"),
    ("margins-batch-size-zero", ["margins", "{b}/run", "--batch-size", "0"],
     "--batch-size must be a positive integer, got 0"),
    ("margins-data-foreign", ["margins", "{b}/mnist-run", "--data-dir", "{b}/data/foreign"],
     "IDX magic number is 1008813135"),
    # tune-margin
    ("tune-margin-ber-negative", ["tune-margin", "--dataset", "digits", "--ber", "-0.1"],
     "BER -0.1 is outside [0, 1]"),
    ("tune-margin-ber-above-1", ["tune-margin", "--dataset", "digits", "--ber", "2"],
     "BER 2.0 is outside [0, 1]"),
    ("tune-margin-ber-nan", ["tune-margin", "--dataset", "digits", "--ber", "nan"],
     "BER nan is outside [0, 1]"),
    ("tune-margin-margin-nan", ["tune-margin", "--ber", "0.01", "--margins", "1,nan"],
     "margins must be finite numbers >= 0, got nan"),
    ("tune-margin-dataset", ["tune-margin", "--dataset", "cifar", "--ber", "0.01"],
     "unknown dataset 'cifar' (did you mean 'cifar10'?)"),
    ("tune-margin-bit-width", ["tune-margin", "--quant", "int32", "--ber", "0.01"],
     "unknown quantization 'int32'"),
    ("tune-margin-data-truncated-gzip", ["tune-margin", "--dataset", "mnist", "--data-dir",
                                         "{b}/data/truncated-gzip", "--ber", "0.01"],
     "cannot gunzip"),
    ("tune-margin-json-unwritable", ["tune-margin", "--ber", "0.01", "--json",
                                     "{b}/file/t.json"],
     "cannot write {b}/file/t.json: {b}/file is a file, not a folder"),
    # demo
    ("demo-out-unwritable", ["demo", "--out", "{b}/file/demo"],
     "cannot write to {b}/file/demo: Not a directory"),
    ("demo-epochs-zero", ["demo", "--epochs", "0", "--out", "{tmp}/demo"],
     "--epochs must be a positive integer, got 0"),
    ("demo-trials-zero", ["demo", "--trials", "0", "--out", "{tmp}/demo"],
     "--trials must be a positive integer, got 0"),
]


@pytest.mark.parametrize("argv,needle", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(argv, needle, base, tmp_path,
                                                         capsys):
    fill = {"b": base, "tmp": tmp_path}
    argv = [a.format(**fill) for a in argv]
    before = _tree(base, tmp_path)
    assert main(argv) == 2
    out, err = capsys.readouterr()
    command = argv[0]
    assert err.startswith(f"mcel {command}: error: ") and err.count("\n") == 1, err
    assert needle.format(**fill) in err, err
    assert "Traceback" not in err + out
    assert _tree(base, tmp_path) == before  # nothing created, nothing half-written
    assert not any(tmp_path.iterdir())  # not even an empty output folder


def test_ray_backend_without_ray_says_how_to_install(base, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    grid = base / "grid-good.yaml"
    assert main(["sweep", str(grid), "--out", str(tmp_path / "s"), "--backend", "ray"]) == 2
    err = capsys.readouterr().err
    assert err == ("mcel sweep: error: the ray backend needs Ray: "
                   "pip install 'mcel[ray]'\n")
    assert not (tmp_path / "s").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_cuda_without_gpu(tmp_path, capsys):
    assert main(TRAIN + ["--device", "cuda", "--out", str(tmp_path / "x")]) == 2
    assert "no CUDA GPU is available; use --device cpu" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


# -- safe loading: files never run code ---------------------------------------------------

class _Payload:
    """Unpickling this writes a marker file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


@pytest.mark.parametrize("how", ["pickle", "torch.save"])
@pytest.mark.parametrize("name", ["model.safetensors", "last.safetensors"])
def test_malicious_checkpoint_is_rejected_and_never_runs(base, tmp_path, how, name):
    run = tmp_path / "run"
    shutil.copytree(base / "run", run)
    marker = tmp_path / "pwned"
    evil = {"fc.weight": _Payload(marker)}
    if how == "pickle":
        (run / name).write_bytes(pickle.dumps(evil))
    else:
        torch.save(evil, run / name)
    with pytest.raises(MCELError, match="is not a valid safetensors checkpoint"):
        if name == "model.safetensors":
            load_run(run)
        else:  # the resume path reads last.safetensors
            config = TrainConfig.from_dict(json.loads((run / "config.json").read_text()))
            train(config, run)
    assert not marker.exists()
    # the same bytes are live for a plain unpickler: the test can fail
    if how == "pickle":
        pickle.loads((run / name).read_bytes())
    else:  # (torch.load hands a *.safetensors name to safetensors: load a copy)
        shutil.copy(run / name, tmp_path / "evil.pt")
        torch.load(tmp_path / "evil.pt", weights_only=False)
    assert marker.exists()


def test_results_json_that_is_not_json_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "eval.json"
    path.write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(MCELError, match="is not text"):
        read_json(path)
    path.write_text('{"results": [1, 2')  # cut off mid-write (by another tool)
    with pytest.raises(MCELError, match="is not valid JSON"):
        read_json(path)
    with pytest.raises(MCELError, match="cannot read"):
        read_json(tmp_path)  # a folder
    assert not marker.exists()


def test_every_text_file_reader_says_the_same(tmp_path):
    """read_text is the one reader of the user's text files: a missing file, a folder and
    bytes that are not UTF-8 get one wording, whichever reader meets them."""
    from mcel.cli.common import load_yaml
    from mcel.energy import read_voltage_curve
    from mcel.experiments.grid import load_grid
    from mcel.io import read_text

    binary = tmp_path / "latin1.txt"
    binary.write_bytes("name: \u00b5\n".encode("latin-1"))  # a micro sign, in Latin-1
    cases = {tmp_path / "nope.txt": "{what} {p} does not exist",
             tmp_path: "cannot read {what} {p}: Is a directory",
             binary: "{what} {p} is not text (byte 0xb5 at offset 6 is not UTF-8); save it "
                     "as UTF-8, or check that it is the right file"}
    readers = {"grid file": load_grid, "config file": load_yaml, "JSON file": read_json,
               "voltage curve": read_voltage_curve, "notes": lambda p: read_text(p, "notes")}
    for p, wording in cases.items():
        for what, read in readers.items():
            with pytest.raises(MCELError) as info:
                read(p)
            assert str(info.value) == wording.format(what=what, p=p)
    ok = tmp_path / "ok.txt"
    ok.write_bytes("name: \u00b5\n".encode())
    assert read_text(ok, "notes") == "name: \u00b5\n"  # UTF-8, whatever the locale


# -- determinism ---------------------------------------------------------------------------

def test_same_config_and_seed_same_run_and_same_evaluation(base, tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    args = TRAIN + ["--loss", "mcel", "--train-ber", "0.01", "--seed", "3"]
    assert main(args + ["--out", str(a)]) == 0
    assert main(args + ["--out", str(b)]) == 0
    # the checkpoints are byte for byte the same file (weights, BN statistics, metadata)
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    ma, mb = load_run(a)[0].state_dict(), load_run(b)[0].state_dict()
    assert all(torch.equal(ma[k], mb[k]) for k in ma) and ma.keys() == mb.keys()
    results = []
    for i in range(2):
        js = tmp_path / f"eval{i}.json"
        assert main(["evaluate", str(a), "--ber", "0,0.01,0.05", "--trials", "5", "--seed",
                     "7", "--json", str(js)]) == 0
        res = json.loads(js.read_text())
        results.append([(r["ber"], r["accuracies"], r["empirical_rates"])
                        for r in res["results"]])
    assert results[0] == results[1]
    assert results[0][2][1] != results[0][0][1]  # BER 0.05 did change something
    capsys.readouterr()


# -- a sweep of many small cells (the small version of benchmarks/bench_load.py) -----------

LOAD_GRID = """\
name: load
base: {dataset: digits, model: mlp, model_kwargs: {hidden: 16}, epochs: 1, lr: 0.01,
       batch_size: 64, limit_train: 200, limit_test: 100}
grid:
  method: [{loss: ce}, {loss: mcel, margin: 2}]
  quant: [int4, int8]
  seed: [0, 1, 2, 3, 4, 5]
eval: {bers: [0, 0.02], trials: 3, seed: 0}
"""


@pytest.fixture(scope="module")
def load_sweep(tmp_path_factory):
    from mcel.experiments.sweep import run_sweep

    folder = tmp_path_factory.mktemp("load")
    grid = folder / "load.yaml"
    grid.write_text(LOAD_GRID)
    summary = run_sweep(grid, folder / "out", 2)
    return grid, folder / "out", summary


def test_many_cells_with_two_jobs_complete_and_consistent(load_sweep):
    from mcel.experiments.sweep import audit, run_sweep

    grid, out, s = load_sweep
    assert (s.cells, s.done, s.runs_written, s.evals_written, s.trials_written) == (
        24, 24, 24, 48, 144)
    a = audit(grid, out)
    assert a["problems"] == []
    assert (a["runs"], a["evals"], a["trials"]) == (24, 48, 144)
    assert a["evals"] == a["expected_evals"] and a["trials"] == a["expected_trials"]
    again = run_sweep(grid, out, 2)
    assert (again.done, again.skipped, again.evals_written) == (0, 24, 0)


def test_audit_finds_what_is_missing(load_sweep, tmp_path):
    from mcel.experiments.sweep import audit

    grid, out, _ = load_sweep
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    con = sqlite3.connect(copy / "load.db")
    eval_id = con.execute("SELECT eval_id FROM evals WHERE ber > 0 LIMIT 1").fetchone()[0]
    con.execute("DELETE FROM trials WHERE eval_id = ? AND trial = 2", (eval_id,))
    con.execute("DELETE FROM evals WHERE eval_id = (SELECT MAX(eval_id) FROM evals)")
    con.commit()
    con.close()
    problems = audit(grid, copy)["problems"]
    assert any(f"eval {eval_id}: 2 trials rows, evals row says 3" in p for p in problems)
    assert any("no evals row" in p for p in problems)
    assert any("trials groups without an evals row" in p for p in problems)


def test_report_names_seeds_versions_and_config_hashes(load_sweep, tmp_path, capsys):
    grid, out, s = load_sweep
    assert main(["report", str(out / "load.db"), "--out", str(tmp_path / "r")]) == 0
    md = (tmp_path / "r" / "report.md").read_text()
    for run_id in s.run_ids:  # run_id = hash of the full training config
        assert run_id in md
    assert f"torch {torch.__version__}" in md and "python " in md and "mcel 0.1.0" in md
    assert "training seeds 0, 1, 2, 3, 4, 5" in md and "evaluation seeds 0" in md
    assert "test images 100," in md  # limit_test of the grid, read from the evals rows
    capsys.readouterr()


def test_report_out_unwritable(load_sweep, base, capsys):
    # tests run as root, who ignores permission bits: a regular file in the path is what
    # makes a folder impossible to create
    _, out, _ = load_sweep
    before = _tree(base)
    assert main(["report", str(out / "load.db"), "--out", str(base / "file" / "r")]) == 2
    err = capsys.readouterr().err
    assert err == (f"mcel report: error: cannot write to {base / 'file' / 'r'}: Not a "
                   "directory; choose another --out\n")
    assert _tree(base) == before
