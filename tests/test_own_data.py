"""Datasets of your own: a .npz file of x_train, y_train, x_test, y_test (mcel.data.own)."""

import json
import os

import numpy as np
import pytest
import torch

from mcel.cli import main
from mcel.data import dataset_file, dataset_info, is_own, load_dataset
from mcel.errors import MCELError


def _signals(n: int, rng, features: int = 24):
    """Three classes: which third of the features carries a bump."""
    y = rng.integers(0, 3, n)
    x = rng.normal(0, 1, (n, features)).astype(np.float32)
    for c in range(3):
        x[y == c, c * features // 3:(c + 1) * features // 3] += 1.5
    return x, y


@pytest.fixture
def signals(tmp_path):
    rng = np.random.default_rng(0)
    (xt, yt), (xs, ys) = _signals(600, rng), _signals(150, rng)
    path = tmp_path / "sig.npz"
    np.savez(path, x_train=xt, y_train=yt, x_test=xs, y_test=ys)
    return path


@pytest.mark.parametrize("shape, in_shape", [((40, 3, 8, 9), (3, 8, 9)),
                                             ((40, 8, 9), (1, 8, 9)), ((40, 17), (17, 1, 1))])
def test_shapes_pixels_and_statistics(tmp_path, shape, in_shape):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, shape, dtype=np.uint8)
    y = np.arange(40) % 4
    path = tmp_path / "px.npz"
    np.savez(path, x_train=x, y_train=y, x_test=x[:10], y_test=y[:10])
    info = dataset_info(str(path))
    assert info.in_shape == in_shape and info.num_classes == 4 and info.num_samples == (40, 10)
    xt, yt = load_dataset(str(path), "train")
    assert xt.shape == (40,) + in_shape and yt.tolist() == y.tolist()
    # uint8 pixels scaled by 1/255, then each channel standardised with the train split's
    per_channel = xt.transpose(0, 1).reshape(in_shape[0], -1)
    assert torch.allclose(per_channel.mean(1), torch.zeros(in_shape[0]), atol=1e-5)
    assert torch.allclose(per_channel.std(1, unbiased=False), torch.ones(in_shape[0]), atol=1e-4)
    flat = x.reshape(40, in_shape[0], -1)[:, 0].astype(np.float64) / 255
    assert np.isclose(info.mean[0], flat.mean()) and np.isclose(info.std[0], flat.std())


def test_the_files_own_statistics_and_classes_are_used(tmp_path):
    x = np.random.default_rng(2).normal(5, 2, (30, 2, 8, 8)).astype(np.float32)
    y = np.zeros(30, np.int64)
    y[::2] = 1
    path = tmp_path / "own.npz"
    np.savez(path, x_train=x, y_train=y, x_test=x, y_test=y, mean=np.array([1.0, 2.0]),
             std=np.array([4.0, 8.0]), num_classes=np.int64(5))
    info = dataset_info(str(path))
    assert info.mean == (1.0, 2.0) and info.std == (4.0, 8.0) and info.num_classes == 5
    xt, _ = load_dataset(str(path), "test")  # floats are taken as they are, no 1/255
    assert torch.allclose(xt[:, 1], (torch.from_numpy(x[:, 1]) - 2.0) / 8.0)
    for extra, needle in [({"num_classes": np.int64(1)}, "num_classes must be one integer >= 2"),
                          ({"mean": np.zeros(3), "std": np.ones(3)}, "one value per channel"),
                          ({"mean": np.zeros(2)}, "mean and std must come together")]:
        np.savez(path, x_train=x, y_train=y, x_test=x, y_test=y, **extra)
        with pytest.raises(MCELError, match=needle):
            dataset_info(str(path))


def test_found_by_name_in_the_data_folders_and_reread_when_changed(tmp_path, monkeypatch):
    x, y = np.zeros((8, 8, 8), np.uint8), np.arange(8) % 2
    np.savez(tmp_path / "mine.npz", x_train=x, y_train=y, x_test=x, y_test=y)
    monkeypatch.chdir(tmp_path.parent)  # not in the current folder: looked up by name
    assert is_own("mine.npz") and not is_own("mnist")
    assert dataset_info("mine.npz", tmp_path).num_classes == 2
    assert dataset_file("mine.npz", tmp_path) == (tmp_path / "mine.npz").resolve()
    monkeypatch.setenv("MCEL_DATA", str(tmp_path))
    assert dataset_info("mine.npz").num_samples == (8, 8)
    np.savez(tmp_path / "mine.npz", x_train=x, y_train=y + 1, x_test=x, y_test=y)
    os.utime(tmp_path / "mine.npz", ns=(1, 1))  # a new version even on a coarse clock
    assert dataset_info("mine.npz").num_classes == 3
    monkeypatch.delenv("MCEL_DATA")
    with pytest.raises(MCELError, match="dataset file mine.npz not found"):
        dataset_info("mine.npz")


@pytest.mark.parametrize("write, needle", [
    (lambda p: np.save(p, np.zeros(3)), "holds a single array"),
    (lambda p: p.write_text("not an archive"), "is not a dataset archive"),
    (lambda p: np.savez(p, x_train=np.zeros((4, 8, 8)), y_train=np.zeros(4),
                        x_test=np.zeros((4, 8, 8)), y_test=np.zeros(4)),
     "y_train is float64 of shape \\(4,\\); expected a 1-D array of integer class labels"),
    (lambda p: np.savez(p, x_train=np.full((4, 5), np.nan), y_train=np.arange(4),
                        x_test=np.zeros((4, 5)), y_test=np.arange(4)), "NaN or infinite"),
    (lambda p: np.savez(p, x_train=np.zeros((4, 5)), y_train=np.arange(3),
                        x_test=np.zeros((4, 5)), y_test=np.arange(4)), "4 samples but y_train 3"),
    (lambda p: np.savez(p, x_train=np.zeros((4, 5)), y_train=np.arange(4),
                        x_test=np.zeros((4, 6)), y_test=np.arange(4)), "same shape and dtype"),
    (lambda p: np.savez(p, x_train=np.zeros((4, 5), np.int32), y_train=np.arange(4),
                        x_test=np.zeros((4, 5), np.int32), y_test=np.arange(4)),
     "expected uint8 pixels or floats"),
])
def test_broken_files_are_one_line(tmp_path, write, needle):
    path = tmp_path / "bad.npz"
    write(path)
    if not path.exists():  # np.save appends .npy
        (tmp_path / "bad.npz.npy").rename(path)
    with pytest.raises(MCELError, match=needle):
        load_dataset(str(path), "train")


def test_train_evaluate_and_resume_on_your_own_file(signals, tmp_path, capsys, monkeypatch):
    """The CLI end to end on feature vectors: an MLP trains, evaluates under faults; the
    run records the file's absolute path and hash, and a resume after the file changed
    is refused."""
    run = tmp_path / "run"
    monkeypatch.chdir(tmp_path)
    argv = ["train", "--dataset", "sig.npz", "--model", "mlp", "--quant", "int4",
            "--epochs", "2", "--threads", "1", "--out", str(run)]
    assert main(argv) == 0
    assert json.loads((run / "config.json").read_text())["dataset"] == str(signals)
    monkeypatch.chdir(tmp_path.parent)  # the run works from any folder
    metrics = json.loads((run / "metrics.json").read_text())
    assert len(metrics["data_sha256"]) == 64
    assert metrics["epochs"][-1]["test_acc"] > 0.9  # three separable classes
    out = tmp_path / "eval.json"
    assert main(["evaluate", str(run), "--ber", "0.05", "--trials", "3", "--json",
                 str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["results"][0]["ber"] == 0.05 and len(result["results"][0]["accuracies"]) == 3
    assert result["meta"]["data_sha256"] == metrics["data_sha256"]
    rng = np.random.default_rng(9)
    (xt, yt), (xs, ys) = _signals(600, rng), _signals(150, rng)
    np.savez(signals, x_train=xt, y_train=yt, x_test=xs, y_test=ys)
    capsys.readouterr()
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2  # the same command again: the run's data is not this file
    assert "the dataset file" in capsys.readouterr().err
    with pytest.raises(MCELError, match="at least 8 for this model"):
        from mcel.config import TrainConfig, build_model

        build_model(TrainConfig(dataset=str(signals), model="vgg3"))


def test_the_data_command_lists_datasets_and_describes_your_file(signals, tmp_path, capsys,
                                                                 monkeypatch):
    monkeypatch.setenv("MCEL_DATA", str(tmp_path / "empty"))
    assert main(["data"]) == 0
    out = capsys.readouterr().out
    assert "embedded" in out and "not found" in out and "mnist" in out
    assert main(["data", str(signals)]) == 0
    out = capsys.readouterr().out
    assert "(24, 1, 1)" in out and "600 / 150" in out and "per-channel mean / std" in out
    # a folder with MNIST's file names but an HTML page for the test images: found, and
    # said to be unusable, with the reader's reason
    folder = tmp_path / "mnist"
    folder.mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (folder / name).write_bytes(b"")
    (folder / "t10k-images-idx3-ubyte").write_bytes(b"<!DOCTYPE html><html></html>")
    assert main(["data", "mnist", "--data-dir", str(folder)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "unusable:" in out  # with the reader's one line (wrapped in the table)
    assert main(["data", "nope.npz"]) == 2
    assert "dataset file nope.npz not found" in capsys.readouterr().err
