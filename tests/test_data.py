"""Tests for mcel.data: file formats, folder lookup, normalisation, and the real files.

Synthetic files are written in the exact upstream formats (IDX, Python 2 CIFAR pickles,
MATLAB v5 SVHN) and read back byte for byte. Real MNIST / Fashion-MNIST tests run when
$MCEL_TEST_DATA points at a folder holding `mnist/` and `fashion-mnist/`.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
import pickle
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch

from mcel.data import (
    DATASETS,
    dataset_info,
    list_datasets,
    load_arrays,
    load_dataset,
    resolve_data_dir,
)
from mcel.data import datasets as ds
from mcel.data.readers import IDX_IMAGES, IDX_LABELS, load_pickle
from mcel.errors import MCELError

IDX_NAMES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Neither the user's $MCEL_DATA nor their ~/.cache may leak into these tests.
    monkeypatch.delenv(ds.ENV_VAR, raising=False)
    monkeypatch.setattr(ds, "DEFAULT_CACHE", tmp_path / "default-cache")


# --- writers for the upstream formats ------------------------------------------------------


def idx_bytes(arr: np.ndarray, magic: int) -> bytes:
    return struct.pack(f">i{arr.ndim}i", magic, *arr.shape) + arr.astype(np.uint8).tobytes()


def write_idx_set(folder: Path, n: int = 12, hw: int = 28, gz: bool = True, seed: int = 0) -> dict:
    """Both splits of an MNIST-like dataset; returns the arrays written, per split."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for split, (img_name, lab_name) in IDX_NAMES.items():
        images = rng.integers(0, 256, (n, hw, hw), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        for name, arr, magic in ((img_name, images, IDX_IMAGES), (lab_name, labels, IDX_LABELS)):
            data = idx_bytes(arr, magic)
            if gz:
                (folder / f"{name}.gz").write_bytes(gzip.compress(data))
            else:
                (folder / name).write_bytes(data)
        written[split] = (images, labels)
    return written


def _py2_str(b: bytes) -> bytes:  # SHORT_BINSTRING / BINSTRING: a Python 2 str
    return b"U" + bytes([len(b)]) + b if len(b) < 256 else b"T" + struct.pack("<i", len(b)) + b


def _py2_int(i: int) -> bytes:
    return b"J" + struct.pack("<i", i)


def _py2_ndarray(a: np.ndarray) -> bytes:
    # What Python 2 cPickle protocol 2 wrote for a numpy 1.x uint8 array.
    assert a.dtype == np.uint8
    shape = b"(" + b"".join(map(_py2_int, a.shape)) + b"t"
    dtype = (
        b"cnumpy\ndtype\n"
        + _py2_str(b"u1")
        + b"K\x00K\x01\x87R"
        + b"(K\x03"
        + _py2_str(b"|")
        + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
    )
    return (
        b"cnumpy.core.multiarray\n_reconstruct\n"
        + b"cnumpy\nndarray\nK\x00\x85"
        + _py2_str(b"b")
        + b"\x87R"
        + b"(K\x01"
        + shape
        + dtype
        + b"\x89"
        + _py2_str(a.tobytes())
        + b"tb"
    )


def py2_pickle(d: dict[bytes, object]) -> bytes:
    """A dict of str -> (uint8 array | list of int | list of str | str), as Python 2 did."""

    def value(v: object) -> bytes:
        if isinstance(v, np.ndarray):
            return _py2_ndarray(v)
        if isinstance(v, bytes):
            return _py2_str(v)
        assert isinstance(v, list)
        items = (_py2_int(i) if isinstance(i, int) else _py2_str(i) for i in v)
        return b"](" + b"".join(items) + b"e"

    return b"\x80\x02}(" + b"".join(_py2_str(k) + value(v) for k, v in d.items()) + b"u."


def cifar_batch(n: int, label_key: bytes, num_classes: int, rng: np.random.Generator) -> dict:
    batch: dict[bytes, object] = {
        b"batch_label": b"training batch 1 of 5",
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        label_key: [int(i) for i in rng.integers(0, num_classes, n)],
        b"filenames": [f"img_{i}.png".encode() for i in range(n)],
    }
    if label_key == b"fine_labels":
        batch[b"coarse_labels"] = [int(i) % 20 for i in batch[label_key]]  # type: ignore[attr-defined]
    return batch


def write_pickle(path: Path, batch: dict, fmt: str) -> None:
    if fmt == "py2":
        path.write_bytes(py2_pickle(batch))
    else:  # re-pickled under Python 3: str keys, protocol 2 (bytes via _codecs) or 5
        proto = {"py3-p2": 2, "py3-p5": 5}[fmt]
        path.write_bytes(pickle.dumps({k.decode(): v for k, v in batch.items()}, protocol=proto))


def write_cifar10(folder: Path, n: int = 4, fmt: str = "py2") -> dict[str, list[dict]]:
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True, exist_ok=True)
    batches: dict[str, list[dict]] = {"train": [], "test": []}
    for split, names in DATASETS.get("cifar10").split_files.items():
        for name in names:
            b = cifar_batch(n, b"labels", 10, rng)
            write_pickle(folder / name, b, fmt)
            batches[split].append(b)
    return batches


# --- registry and info ------------------------------------------------------------------------


def test_list_datasets() -> None:
    assert list_datasets() == ["cifar10", "cifar100", "digits", "fashion-mnist", "mnist", "svhn"]
    assert list_datasets("*mnist") == ["fashion-mnist", "mnist"]


@pytest.mark.parametrize("name", list(DATASETS))
def test_info_is_consistent(name: str) -> None:
    info = dataset_info(name)
    assert info.name == name
    channels = info.in_shape[0]
    assert len(info.in_shape) == 3 and len(info.mean) == len(info.std) == channels
    assert all(0 < m < 1 and 0 < s < 1 for m, s in zip(info.mean, info.std, strict=True))
    assert info.num_classes >= 10 and info.source
    assert set(DATASETS.get(name).split_files) == set(ds.SPLITS)


def test_unknown_dataset_suggests() -> None:
    with pytest.raises(MCELError, match="did you mean 'mnist'"):
        load_dataset("mnits")


# --- digits (embedded) ------------------------------------------------------------------------


def test_digits_needs_no_files(tmp_path: Path) -> None:
    from sklearn.datasets import load_digits

    xtr, ytr = load_dataset("digits", "train", tmp_path / "nothing-here")
    xte, yte = load_dataset("digits", "test")
    assert xtr.shape == (1437, 1, 8, 8) and xte.shape == (360, 1, 8, 8)
    assert xtr.dtype == torch.float32 and ytr.dtype == torch.int64
    assert set(ytr.tolist()) == set(yte.tolist()) == set(range(10))
    # The two splits partition sklearn's 1797 images: same multiset of (image, label) rows.
    d = load_digits()
    itr, lab_tr = load_arrays("digits", "train")
    ite, lab_te = load_arrays("digits", "test")
    pairs = zip(np.concatenate([itr, ite]), np.concatenate([lab_tr, lab_te]), strict=True)
    ours = sorted(im.tobytes() + bytes([lab]) for im, lab in pairs)
    ref_pairs = zip(d.images.astype(np.uint8)[:, None], d.target, strict=True)
    ref = sorted(im.tobytes() + bytes([t]) for im, t in ref_pairs)
    assert ours == ref
    # The hard-coded constants are the train split's statistics.
    assert abs(float(xtr.mean())) < 1e-3 and abs(float(xtr.std()) - 1) < 1e-3
    # Deterministic: a second load is identical.
    assert torch.equal(load_dataset("digits", "test")[0], xte)


def test_digits_has_no_folder() -> None:
    with pytest.raises(MCELError, match="embedded"):
        resolve_data_dir("digits")


def test_split_and_limit_checked() -> None:
    with pytest.raises(MCELError, match="unknown split 'val'.*train, test"):
        load_dataset("digits", "val")
    for bad in (-1, 1.5, True, "3"):
        with pytest.raises(MCELError, match="limit"):
            load_dataset("digits", limit=bad)  # type: ignore[arg-type]
    x, y = load_dataset("digits", limit=7)
    assert len(x) == len(y) == 7 and torch.equal(x, load_dataset("digits")[0][:7])
    assert load_dataset("digits", limit=0)[0].shape == (0, 1, 8, 8)


# --- IDX -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [True, False])
def test_idx_round_trip(tmp_path: Path, gz: bool) -> None:
    written = write_idx_set(tmp_path / "mnist", gz=gz)
    for split in ds.SPLITS:
        images, labels = load_arrays("mnist", split, tmp_path)
        assert np.array_equal(images[:, 0], written[split][0])
        assert np.array_equal(labels, written[split][1]) and labels.dtype == np.int64
        x, y = load_dataset("mnist", split, tmp_path, limit=5)
        expect = (written[split][0][:5, None] / 255.0 - 0.1307) / 0.3081
        assert x.shape == (5, 1, 28, 28)
        assert torch.allclose(x, torch.from_numpy(expect).float(), atol=1e-5)
        assert y.tolist() == written[split][1][:5].tolist()


def _single_line(e: pytest.ExceptionInfo[MCELError]) -> str:
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_idx_truncated(tmp_path: Path) -> None:
    folder = tmp_path / "mnist"
    write_idx_set(folder, gz=False)
    f = folder / "train-images-idx3-ubyte"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(MCELError) as e:
        load_dataset("mnist", "train", folder)
    msg = _single_line(e)
    assert str(f) in msg and "truncated" in msg and "re-download" in msg
    load_dataset("mnist", "test", folder)  # the other split is still fine


def test_idx_truncated_gzip(tmp_path: Path) -> None:
    folder = tmp_path / "fashion-mnist"
    write_idx_set(folder, gz=True)
    f = folder / "t10k-labels-idx1-ubyte.gz"
    f.write_bytes(f.read_bytes()[:-10])
    with pytest.raises(MCELError, match="t10k-labels.*gunzip.*truncated"):
        load_dataset("fashion-mnist", "test", folder)


def test_idx_wrong_magic(tmp_path: Path) -> None:
    folder = tmp_path / "mnist"
    write_idx_set(folder, gz=False)
    # Labels where images belong: a plausible mix-up.
    shutil.copy(folder / "train-labels-idx1-ubyte", folder / "train-images-idx3-ubyte")
    with pytest.raises(MCELError, match="magic number is 2049, expected 2051"):
        load_dataset("mnist", "train", folder)
    (folder / "t10k-images-idx3-ubyte").write_bytes(b"<html>404 Not Found</html>")
    with pytest.raises(MCELError, match="t10k-images-idx3-ubyte: IDX magic"):
        load_dataset("mnist", "test", folder)


def test_idx_count_mismatch(tmp_path: Path) -> None:
    folder = tmp_path / "mnist"
    write_idx_set(folder, gz=False)
    (folder / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(11), IDX_LABELS))
    with pytest.raises(MCELError, match="12 images but .* 11 labels"):
        load_dataset("mnist", "train", folder)


def test_idx_wrong_size_and_labels(tmp_path: Path) -> None:
    folder = tmp_path / "mnist"
    write_idx_set(folder, hw=27, gz=False)
    with pytest.raises(MCELError, match=r"\(27, 27\), expected \(28, 28\)"):
        load_dataset("mnist", "test", folder)
    write_idx_set(folder, gz=False)
    (folder / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.full(12, 10), IDX_LABELS))
    with pytest.raises(MCELError, match="labels span 10..10, expected 0..9"):
        load_dataset("mnist", "test", folder)


# --- lookup --------------------------------------------------------------------------------------


def test_missing_dataset_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ds.ENV_VAR, str(tmp_path / "env"))
    with pytest.raises(MCELError) as e:
        load_dataset("mnist", "test", tmp_path / "nope")
    msg = _single_line(e)
    assert msg.startswith("dataset 'mnist' not found: expected train-images-idx3-ubyte.gz")
    for part in (tmp_path / "nope", tmp_path / "env" / "mnist", ds.DEFAULT_CACHE / "MNIST/raw"):
        assert str(part) in msg
    assert "--data-dir DIR" in msg and "MCEL_DATA" in msg and "yann.lecun.com" in msg


@pytest.mark.parametrize(
    ("name", "layout"),
    [
        ("mnist", "."),
        ("mnist", "mnist"),
        ("mnist", "MNIST/raw"),  # torchvision
        ("fashion-mnist", "fashion-mnist"),
        ("fashion-mnist", "FashionMNIST/raw"),  # torchvision
    ],
)
def test_layouts(tmp_path: Path, name: str, layout: str) -> None:
    write_idx_set(tmp_path / layout, gz=layout.endswith("raw"))
    assert resolve_data_dir(name, tmp_path) == tmp_path / layout
    assert load_dataset(name, "test", tmp_path)[0].shape == (12, 1, 28, 28)


def test_resolution_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    arg, env, default = tmp_path / "arg", tmp_path / "env", ds.DEFAULT_CACHE
    for i, d in enumerate((arg, env, default)):
        write_idx_set(d / "mnist", seed=i)
    monkeypatch.setenv(ds.ENV_VAR, str(env))
    assert resolve_data_dir("mnist", arg) == arg / "mnist"
    assert resolve_data_dir("mnist") == env / "mnist"
    monkeypatch.setenv(ds.ENV_VAR, "")  # empty counts as unset
    assert resolve_data_dir("mnist") == default / "mnist"
    # The data really comes from the chosen folder.
    expect = write_idx_set(tmp_path / "check", seed=0)["test"][1]
    assert load_arrays("mnist", "test", arg)[1].tolist() == expect.tolist()
    # A folder missing one file is passed over.
    (arg / "mnist" / "t10k-labels-idx1-ubyte.gz").unlink()
    monkeypatch.setenv(ds.ENV_VAR, str(env))
    assert resolve_data_dir("mnist", arg) == env / "mnist"


def test_path_types(tmp_path: Path) -> None:
    write_idx_set(tmp_path / "mnist")
    assert resolve_data_dir("mnist", str(tmp_path)) == tmp_path / "mnist"


# --- CIFAR ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["py2", "py3-p2", "py3-p5"])
def test_cifar10_round_trip(tmp_path: Path, fmt: str) -> None:
    batches = write_cifar10(tmp_path / "cifar-10-batches-py", fmt=fmt)
    assert resolve_data_dir("cifar10", tmp_path) == tmp_path / "cifar-10-batches-py"
    for split in ds.SPLITS:
        images, labels = load_arrays("cifar10", split, tmp_path)
        data = np.concatenate([b[b"data"] for b in batches[split]])
        assert images.shape == (len(data), 3, 32, 32)
        # Row layout: 1024 red, then 1024 green, then 1024 blue bytes, each plane row-major.
        for c in range(3):
            plane = data[:, c * 1024 : (c + 1) * 1024]
            assert np.array_equal(images[:, c].reshape(len(data), -1), plane)
        assert images[1, 2, 3, 4] == data[1, 2 * 1024 + 3 * 32 + 4]
        assert labels.tolist() == [i for b in batches[split] for i in b[b"labels"]]
    x, _ = load_dataset("cifar10", "test", tmp_path)
    info = dataset_info("cifar10")
    pixels = x * torch.tensor(info.std).view(3, 1, 1) + torch.tensor(info.mean).view(3, 1, 1)
    raw = torch.from_numpy(load_arrays("cifar10", "test", tmp_path)[0])
    assert torch.equal((pixels * 255).round().to(torch.uint8), raw)


def test_cifar100_round_trip(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(2)
    batches = {split: cifar_batch(6, b"fine_labels", 100, rng) for split in ds.SPLITS}
    batches["train"][b"fine_labels"][0] = 99  # the top class must load
    for split, b in batches.items():
        (folder / split).write_bytes(py2_pickle(b))
    for split in ds.SPLITS:
        images, labels = load_arrays("cifar100", split, tmp_path)
        assert np.array_equal(images.reshape(6, -1), batches[split][b"data"])  # type: ignore[arg-type]
        assert labels.tolist() == batches[split][b"fine_labels"]  # fine, not coarse
    assert load_dataset("cifar100", "train", folder)[1][0] == 99


@pytest.mark.parametrize("payload", ["os.system", "builtins.eval", "subprocess.call"])
def test_malicious_pickle_rejected(tmp_path: Path, payload: str) -> None:
    marker = tmp_path / "pwned"
    command = f"touch {marker}"

    class Evil:
        def __reduce__(self) -> tuple:
            import builtins
            import subprocess

            return {
                "os.system": (os.system, (command,)),
                "builtins.eval": (builtins.eval, (f"__import__('os').system({command!r})",)),
                "subprocess.call": (subprocess.call, (command.split(),)),
            }[payload]

    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10(folder)
    (folder / "test_batch").write_bytes(pickle.dumps({"data": Evil(), "labels": [0]}, protocol=2))
    with pytest.raises(MCELError, match="refusing to unpickle") as e:
        load_dataset("cifar10", "test", folder)
    assert str(folder / "test_batch") in str(e.value)
    assert not marker.exists()
    # The same bytes really are harmful to a plain unpickler: the test can fail.
    pickle.loads((folder / "test_batch").read_bytes())
    assert marker.exists()


def test_broken_pickles(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10(folder)
    f = folder / "data_batch_3"
    f.write_bytes(f.read_bytes()[:500])
    with pytest.raises(MCELError, match="data_batch_3: not a readable pickle.*truncated"):
        load_dataset("cifar10", "train", folder)
    f.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(MCELError, match="expected a dict"):
        load_dataset("cifar10", "train", folder)
    f.write_bytes(pickle.dumps({"data": np.zeros((2, 100), np.uint8), "labels": [0, 1]}))
    with pytest.raises(MCELError, match=r"expected uint8 \(N, 3072\)"):
        load_dataset("cifar10", "train", folder)
    f.write_bytes(pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [0]}))
    with pytest.raises(MCELError, match="'labels' has shape"):
        load_dataset("cifar10", "train", folder)


def test_load_pickle_allows_plain_containers(tmp_path: Path) -> None:
    p = tmp_path / "ok.pkl"
    obj = {"a": [1, 2.5, "x", (3, None)], "b": np.arange(5, dtype=np.int64), "c": np.float64(2)}
    p.write_bytes(pickle.dumps(obj))
    back = load_pickle(p)
    assert back["a"] == obj["a"] and np.array_equal(back["b"], np.arange(5)) and back["c"] == 2.0


# --- SVHN -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("ydtype", [np.uint8, np.float64])
def test_svhn_round_trip(tmp_path: Path, ydtype: type) -> None:
    rng = np.random.default_rng(3)
    written = {}
    for split in ds.SPLITS:
        n = 7
        x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        y: np.ndarray = np.array([[10], [1], [9], [10], [5], [2], [3]], dtype=ydtype)
        scipy.io.savemat(tmp_path / f"{split}_32x32.mat", {"X": x, "y": y})
        written[split] = (x, y)
    for split in ds.SPLITS:
        images, labels = load_arrays("svhn", split, tmp_path)
        x, _ = written[split]
        assert labels.tolist() == [0, 1, 9, 0, 5, 2, 3]  # 10 is the digit 0
        assert images.shape == (7, 3, 32, 32)
        assert images[4, 2, 5, 17] == x[5, 17, 2, 4]  # (H, W, C, N) -> (N, C, H, W)
        assert np.array_equal(images, np.moveaxis(x, (3, 2), (0, 1)))
    assert load_dataset("svhn", "test", tmp_path)[0].shape == (7, 3, 32, 32)


def test_svhn_bad_labels(tmp_path: Path) -> None:
    x = np.zeros((32, 32, 3, 2), np.uint8)
    for split in ds.SPLITS:
        scipy.io.savemat(tmp_path / f"{split}_32x32.mat", {"X": x, "y": np.array([[0], [3]])})
    with pytest.raises(MCELError, match="test_32x32.mat: 'y' must hold 2 labels in 1..10"):
        load_dataset("svhn", "test", tmp_path)
    (tmp_path / "test_32x32.mat").write_bytes(b"not matlab at all")
    with pytest.raises(MCELError, match="test_32x32.mat: not a readable MATLAB v5 file.*truncated"):
        load_dataset("svhn", "test", tmp_path)


# --- the real files ------------------------------------------------------------------------------


@pytest.fixture
def real_data() -> Path:
    root = os.environ.get("MCEL_TEST_DATA")
    if not root:
        pytest.skip("real-data tests need MCEL_TEST_DATA=<folder with mnist/, fashion-mnist/>")
    return Path(root)


@functools.cache
def _real(name: str, split: str, root: str) -> tuple[torch.Tensor, torch.Tensor]:
    return load_dataset(name, split, root)


@pytest.fixture(autouse=True, scope="module")
def _free_real_cache():  # type: ignore[no-untyped-def]
    yield
    _real.cache_clear()  # ~0.5 GB of float tensors


REAL = ["mnist", "fashion-mnist"]


@pytest.mark.parametrize("name", REAL)
def test_real_shapes_and_statistics(real_data: Path, name: str) -> None:
    for split, n in (("train", 60000), ("test", 10000)):
        x, y = _real(name, split, str(real_data))
        assert x.shape == (n, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
        counts = torch.bincount(y, minlength=10)
        assert len(counts) == 10 and int(counts.sum()) == n
        if name == "fashion-mnist":  # balanced by construction
            assert counts.tolist() == [n // 10] * 10
        else:
            assert int(counts.min()) > 0.08 * n and int(counts.max()) < 0.12 * n
    # The constants are the train set's own channel statistics.
    x, _ = _real(name, "train", str(real_data))
    assert abs(float(x.mean())) < 1e-3 and abs(float(x.std()) - 1) < 1e-3


def test_real_known_labels(real_data: Path) -> None:
    # First training labels as published with the datasets.
    root = str(real_data)
    assert _real("mnist", "train", root)[1][:8].tolist() == [5, 0, 4, 1, 9, 2, 1, 3]
    assert _real("fashion-mnist", "train", root)[1][:8].tolist() == [9, 0, 0, 3, 0, 2, 7, 2]


@pytest.mark.parametrize("name", REAL)
def test_real_gz_equals_raw_in_torchvision_layout(
    real_data: Path, tmp_path: Path, name: str
) -> None:
    raw = tmp_path / ("MNIST" if name == "mnist" else "FashionMNIST") / "raw"
    raw.mkdir(parents=True)
    src = resolve_data_dir(name, real_data)
    for f in dataset_info(name).files:
        (raw / f.removesuffix(".gz")).write_bytes(gzip.decompress((src / f).read_bytes()))
    assert resolve_data_dir(name, tmp_path) == raw
    for split in ds.SPLITS:
        x, y = load_dataset(name, split, tmp_path)
        x_gz, y_gz = _real(name, split, str(real_data))
        assert torch.equal(x, x_gz) and torch.equal(y, y_gz)


def test_real_checksums(real_data: Path) -> None:
    sums = real_data / "SHA256SUMS"
    if not sums.is_file():
        pytest.skip(f"no {sums}")
    lines = [line.split() for line in sums.read_text().splitlines() if line.strip()]
    assert {rel.split("/")[0] for _, rel in lines} >= set(REAL)
    for digest, rel in lines:
        assert hashlib.sha256((real_data / rel).read_bytes()).hexdigest() == digest, rel


def test_real_files_of_the_other_dataset_are_refused(real_data: Path) -> None:
    # MNIST and Fashion-MNIST share their file names: a --data-dir at the wrong one is
    # caught by the labels' checksum, not read as the dataset asked for
    for asked, other in (("mnist", "fashion-mnist"), ("fashion-mnist", "mnist")):
        with pytest.raises(MCELError, match=f"belongs to {other}, not {asked}"):
            load_dataset(asked, "test", real_data / other)
