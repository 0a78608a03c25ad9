"""Dataset registry: where each dataset's files live, how to read and normalise them.

`load_dataset(name, split)` returns `(x, y)`: x float32 (N, C, H, W), y int64 (N,).
Pixels are scaled to [0, 1] and standardised per channel with fixed constants (the
usual train-set channel statistics), so every run and every split sees the same
transform, with no statistics pass over the data.

Files are looked up in, in order: the `data_dir` argument, `$MCEL_DATA`, then
`~/.cache/mcel/datasets`. Each may be the dataset's folder itself, a parent holding
`<name>/`, or torchvision's layout (`MNIST/raw/`, `FashionMNIST/raw/`,
`cifar-10-batches-py/`, `cifar-100-python/`); the first folder holding every file wins.

Your own data: a dataset name ending in ``.npz`` is a NumPy archive of your own
(`mcel.data.own`): ``x_train``, ``y_train``, ``x_test``, ``y_test``, read from that path,
or else from the same folders by its file name.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mcel.data import own, readers
from mcel.errors import MCELError
from mcel.registry import Registry

SPLITS = ("train", "test")
ENV_VAR = "MCEL_DATA"
DEFAULT_CACHE = Path("~/.cache/mcel/datasets")

Arrays = tuple[np.ndarray, np.ndarray]  # images uint8 (N, C, H, W), labels int64 (N,)


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset, and which files it comes from.

    `files` lists the upstream file names (IDX files may also be uncompressed);
    `mean`/`std` are the per-channel constants applied after scaling pixels to [0, 1];
    `num_samples` is (train, test) in the upstream release.
    """

    name: str
    num_classes: int
    in_shape: tuple[int, int, int]
    description: str
    files: tuple[str, ...]
    source: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_samples: tuple[int, int]


@dataclass(frozen=True)
class _Spec:
    info: DatasetInfo
    split_files: dict[str, tuple[str, ...]]  # split -> files read for it, in order
    read: Callable[[list[Path], str], Arrays]  # (the split's files, split) -> arrays
    layouts: tuple[str, ...] = ()  # sub-folders of a base dir to search, "" = itself
    extra_dirs: tuple[Path, ...] = ()  # system-wide copies, searched last
    pixel_max: float = 255.0
    path: Path | None = None  # a dataset of one file of its own (.npz): read from there

    @property
    def embedded(self) -> bool:  # shipped inside a library: no files, no folder
        return not self.info.files


DATASETS: Registry[_Spec] = Registry("dataset")


# --- readers per family ------------------------------------------------------------------


# SHA-256 of the label bytes (after the IDX header) of the upstream releases: MNIST and
# Fashion-MNIST use the same file names, so a --data-dir pointing at the other one would
# otherwise be read without complaint
_IDX_LABELS_SHA256 = {
    "1feba77c54802fa5339a11837ea4b2866434b83314ec45192930f1df69120c13": "mnist",
    "ddeff807876a9661a1110d45c266c86239a3a1b7d37da0c3716a7a683c852ff5": "mnist",
    "657fbd221bfc9f4198cc14b5619cc33ec57c58dd0e47af4d99d6650759e869a7": "fashion-mnist",
    "3d0e6c6ea990b53b6f8f500a41cac93881d981b315f84578b7d915342ade01e9": "fashion-mnist",
}


def _read_idx_pair(paths: list[Path], split: str, hw: tuple[int, int], name: str) -> Arrays:
    images_path, labels_path = paths
    images = readers.read_idx(images_path, readers.IDX_IMAGES)
    labels = readers.read_idx(labels_path, readers.IDX_LABELS)
    other = _IDX_LABELS_SHA256.get(hashlib.sha256(labels.astype(np.uint8).tobytes()).hexdigest())
    if other is not None and other != name:
        raise MCELError(f"{labels_path} belongs to {other}, not {name}; point --data-dir at "
                        f"the {name} files")
    if images.shape[1:] != hw:
        raise MCELError(f"{images_path}: images are {images.shape[1:]}, expected {hw}")
    if len(images) != len(labels):
        raise MCELError(
            f"{images_path} holds {len(images)} images but {labels_path} holds "
            f"{len(labels)} labels; the files are from different releases, re-download them"
        )
    return images[:, None], labels.astype(np.int64)


def _read_cifar(paths: list[Path], split: str, label_key: str) -> Arrays:
    batches = [readers.read_cifar_batch(p, label_key) for p in paths]
    return np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])


def _read_svhn(paths: list[Path], split: str) -> Arrays:
    return readers.read_svhn_mat(paths[0])


def _read_digits(paths: list[Path], split: str) -> Arrays:
    # 1797 8x8 images with values 0..16. Split: a RandomState(0) permutation (the legacy
    # generator, whose stream numpy keeps frozen); its first 1437 (80%) are train, the
    # remaining 360 are test.
    from sklearn.datasets import load_digits

    d = load_digits()
    perm = np.random.RandomState(0).permutation(len(d.target))
    idx = perm[:1437] if split == "train" else perm[1437:]
    return d.images[idx, None].astype(np.uint8), d.target[idx].astype(np.int64)


# --- the registry --------------------------------------------------------------------------

SplitFiles = dict[str, tuple[str, ...]]


def _add(
    name: str,
    split_files: SplitFiles,
    read: Callable[[list[Path], str], Arrays],
    *,
    layouts: tuple[str, ...] = (),
    extra_dirs: tuple[Path, ...] = (),
    pixel_max: float = 255.0,
    **info: Any,
) -> None:
    files = tuple(f for s in SPLITS for f in split_files[s])
    info_ = DatasetInfo(name=name, files=files, **info)
    DATASETS.add(name, _Spec(info_, split_files, read, layouts, extra_dirs, pixel_max))


_add(
    "digits",
    {"train": (), "test": ()},
    _read_digits,
    pixel_max=16.0,
    num_classes=10,
    in_shape=(1, 8, 8),
    description="scikit-learn's 8x8 handwritten digits (UCI), embedded",
    source="scikit-learn (sklearn.datasets.load_digits)",
    mean=(0.3054,),
    std=(0.3759,),
    num_samples=(1437, 360),
)
_IDX: SplitFiles = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_add(
    "mnist",
    _IDX,
    partial(_read_idx_pair, hw=(28, 28), name="mnist"),
    layouts=("", "mnist", "MNIST/raw", "mnist/MNIST/raw"),
    num_classes=10,
    in_shape=(1, 28, 28),
    description="MNIST handwritten digits, 28x28 grey",
    source="the MNIST site, yann.lecun.com/exdb/mnist, or a mirror",
    mean=(0.1307,),
    std=(0.3081,),
    num_samples=(60000, 10000),
)
_add(
    "fashion-mnist",
    _IDX,
    partial(_read_idx_pair, hw=(28, 28), name="fashion-mnist"),
    layouts=("", "fashion-mnist", "FashionMNIST/raw", "fashion-mnist/FashionMNIST/raw"),
    extra_dirs=(Path("/usr/share/datasets/fashion-mnist"),),  # Debian's package
    num_classes=10,
    in_shape=(1, 28, 28),
    description="Zalando Fashion-MNIST clothing, 28x28 grey",
    source="github.com/zalandoresearch/fashion-mnist",
    mean=(0.2860,),
    std=(0.3530,),
    num_samples=(60000, 10000),
)
_add(
    "cifar10",
    {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)},
    partial(_read_cifar, label_key="labels"),
    layouts=("", "cifar-10-batches-py", "cifar10", "cifar10/cifar-10-batches-py"),
    num_classes=10,
    in_shape=(3, 32, 32),
    description="CIFAR-10 tiny colour images, 10 classes",
    source="www.cs.toronto.edu/~kriz/cifar.html, python version",
    mean=(0.4914, 0.4822, 0.4465),
    std=(0.2470, 0.2435, 0.2616),
    num_samples=(50000, 10000),
)
_add(
    "cifar100",
    {"train": ("train",), "test": ("test",)},
    partial(_read_cifar, label_key="fine_labels"),
    layouts=("", "cifar-100-python", "cifar100", "cifar100/cifar-100-python"),
    num_classes=100,
    in_shape=(3, 32, 32),
    description="CIFAR-100 tiny colour images, 100 fine classes",
    source="www.cs.toronto.edu/~kriz/cifar.html, python version",
    mean=(0.5071, 0.4865, 0.4409),
    std=(0.2673, 0.2564, 0.2762),
    num_samples=(50000, 10000),
)
_add(
    "svhn",
    {"train": ("train_32x32.mat",), "test": ("test_32x32.mat",)},
    _read_svhn,
    layouts=("", "svhn", "SVHN"),
    num_classes=10,
    in_shape=(3, 32, 32),
    description="SVHN street-view house numbers, cropped digits",
    source="ufldl.stanford.edu/housenumbers, format 2",
    mean=(0.4377, 0.4438, 0.4728),
    std=(0.1980, 0.2010, 0.1970),
    num_samples=(73257, 26032),
)


# --- public API ------------------------------------------------------------------------------


def list_datasets(pattern: str = "*") -> list[str]:
    """Registered dataset names, sorted.

    >>> list_datasets()
    ['cifar10', 'cifar100', 'digits', 'fashion-mnist', 'mnist', 'svhn']
    """
    return DATASETS.names(pattern)


def dataset_info(name: str, data_dir: str | os.PathLike[str] | None = None) -> DatasetInfo:
    """Shape, classes, files and normalisation constants of dataset `name` (of your own
    .npz file: read from it, found as `load_dataset` finds it).

    >>> dataset_info("mnist").in_shape
    (1, 28, 28)
    """
    return _spec(name, data_dir).info


def dataset_file(name: str, data_dir: str | os.PathLike[str] | None = None) -> Path | None:
    """The file your own dataset `name` is read from (None for a registered dataset)."""
    return _spec(name, data_dir).path


def is_own(name: str) -> bool:
    """Whether dataset `name` is a .npz file of your own rather than a registered name."""
    return name.endswith(".npz")


def _spec(name: str, data_dir: str | os.PathLike[str] | None) -> _Spec:
    """The registered dataset, or the one your .npz file holds (found and checked)."""
    if not is_own(name):
        return DATASETS.get(name)
    path = own.find(name, _search_bases(data_dir))
    st = path.stat()
    return _own_spec(name, path, st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=8)
def _own_spec(name: str, path: Path, mtime_ns: int, size: int) -> _Spec:
    """Your .npz file as a dataset, read and checked once per version of the file (its
    modification time and size key the cache)."""
    d = own.describe(path)
    info = DatasetInfo(name=name, num_classes=d.num_classes, in_shape=d.in_shape,
                       description=f"your own arrays in {path.name}", files=(path.name,),
                       source=str(path), mean=d.mean, std=d.std, num_samples=d.num_samples)
    return _Spec(info, {s: (path.name,) for s in SPLITS},
                 partial(own.read, in_shape=d.in_shape), ("",), pixel_max=d.pixel_max,
                 path=path)


def _locate(folder: Path, name: str) -> Path | None:
    # IDX files are often stored gunzipped (torchvision keeps both): accept either.
    names = (name.removesuffix(".gz"), name) if name.endswith(".gz") else (name,)
    return next((folder / n for n in names if (folder / n).is_file()), None)


def _search_bases(data_dir: str | os.PathLike[str] | None) -> list[Path]:
    """`data_dir`, `$MCEL_DATA`, `~/.cache/mcel/datasets`: where dataset files are sought."""
    env = os.environ.get(ENV_VAR) or None
    return [Path(b).expanduser() for b in (data_dir, env, DEFAULT_CACHE) if b is not None]


def _candidates(spec: _Spec, data_dir: str | os.PathLike[str] | None) -> list[Path]:
    bases = _search_bases(data_dir)
    dirs = [b / layout for b in bases for layout in spec.layouts] + list(spec.extra_dirs)
    return list(dict.fromkeys(dirs))  # drop duplicates, keep order


def resolve_data_dir(name: str, data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The first folder holding all of dataset `name`'s files.

    Searched in order: `data_dir`, `$MCEL_DATA`, `~/.cache/mcel/datasets`, each as the
    dataset folder itself, as a parent of `<name>/`, and in torchvision's layout.
    Raises `MCELError` listing the searched folders when none has the files, and for
    datasets embedded in a library (digits), which have no folder.
    """
    spec = _spec(name, data_dir)
    if spec.path is not None:
        return spec.path.parent
    if spec.embedded:
        raise MCELError(f"dataset '{name}' is embedded in {spec.info.source} and has no files")
    dirs = _candidates(spec, data_dir)
    found = next((d for d in dirs if all(_locate(d, f) for f in spec.info.files)), None)
    if found is None:
        gz = any(f.endswith(".gz") for f in spec.info.files)
        gz_note = " (the .gz files may also be uncompressed)" if gz else ""
        raise MCELError(
            f"dataset '{name}' not found: expected {', '.join(spec.info.files)}{gz_note} "
            f"in one of: {', '.join(map(str, dirs))}; pass --data-dir DIR or set {ENV_VAR} "
            f"(get the files from {spec.info.source})"
        )
    return found


def load_arrays(
    name: str, split: str = "train", data_dir: str | os.PathLike[str] | None = None
) -> Arrays:
    """Raw (images uint8 (N, C, H, W), labels int64 (N,)) of one split, unnormalised
    (your own .npz file's x may also be float)."""
    spec = _spec(name, data_dir)
    if split not in SPLITS:
        raise MCELError(f"unknown split '{split}' for dataset '{name}'; valid: {', '.join(SPLITS)}")
    paths: list[Path] = []
    if spec.path is not None:
        paths = [spec.path]
    elif not spec.embedded:
        folder = resolve_data_dir(name, data_dir)
        paths = [p for f in spec.split_files[split] if (p := _locate(folder, f)) is not None]
    images, labels = spec.read(paths, split)
    info = spec.info
    if images.shape[1:] != info.in_shape:
        raise MCELError(
            f"dataset '{name}' {split}: images are {images.shape[1:]}, "
            f"expected {info.in_shape}; re-download the files"
        )
    if len(labels) and not (0 <= labels.min() and labels.max() < info.num_classes):
        raise MCELError(
            f"dataset '{name}' {split}: labels span {labels.min()}..{labels.max()}, "
            f"expected 0..{info.num_classes - 1}; re-download the files"
        )
    return images, labels


def load_dataset(
    name: str,
    split: str = "train",
    data_dir: str | os.PathLike[str] | None = None,
    *,
    limit: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One split as (x float32 (N, C, H, W), y int64 (N,)), standardised per channel.

    x = (pixel / pixel_max - mean[c]) / std[c] with the constants in `dataset_info(name)`.
    `limit` keeps the first `limit` samples (files are still read and checked whole).

    >>> x, y = load_dataset("digits", "test", limit=5)
    >>> tuple(x.shape), x.dtype, y.tolist()
    ((5, 1, 8, 8), torch.float32, [7, 9, 4, 7, 0])
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise MCELError(f"limit must be a non-negative integer or None, got {limit!r}")
    spec = _spec(name, data_dir)
    images, labels = load_arrays(name, split, data_dir)
    images, labels = images[:limit], labels[:limit]  # slice first: normalise only what is kept
    mean = torch.tensor(spec.info.mean, dtype=torch.float32).view(-1, 1, 1)
    std = torch.tensor(spec.info.std, dtype=torch.float32).view(-1, 1, 1)
    # astype copies: the tensors never alias (possibly read-only) reader buffers.
    x = torch.from_numpy(images.astype(np.float32)) / spec.pixel_max
    return (x - mean) / std, torch.from_numpy(labels.astype(np.int64))
