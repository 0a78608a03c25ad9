"""Datasets of your own: one NumPy ``.npz`` archive of four arrays.

    np.savez("mydata.npz", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    mcel train --dataset mydata.npz --model mlp --out runs/mine

``x``: ``(N, C, H, W)``, ``(N, H, W)`` (one channel) or ``(N, F)`` (feature vectors,
seen as F channels of 1x1, so that each feature is standardised on its own; a 1-D signal
of C channels is ``(N, C, 1, L)``), uint8 pixels (scaled by 1/255) or floats (taken as
they are); ``y``:
integer class labels ``0..K-1``, K the largest label + 1 or the file's scalar
``num_classes``. Each channel is standardised with the train split's mean and standard
deviation, or with the file's own ``mean`` and ``std`` (one value per channel). The
file is read with ``allow_pickle=False``: nothing in it runs, object arrays are refused.

The path is taken as given, or else looked up by its name in ``--data-dir``,
``$MCEL_DATA`` and ``~/.cache/mcel/datasets``, as the upstream datasets are.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mcel.errors import MCELError

SPLITS = ("train", "test")
ARRAYS = tuple(f"{a}_{s}" for s in SPLITS for a in ("x", "y"))
_CHUNK = 4096  # samples per step of the channel statistics (float64 sums, bounded memory)


def find(name: str, bases: list[Path]) -> Path:
    """The file `name` as given, else by its file name in each of `bases`."""
    given = Path(name).expanduser()
    tried = [given] + ([] if given.is_absolute() else [b / given for b in bases])
    tried += [b / given.name for b in bases if given.name != str(given)]
    tried = list(dict.fromkeys(tried))
    found = next((p for p in tried if p.is_file()), None)
    if found is None:
        raise MCELError(f"dataset file {name} not found (looked for {', '.join(map(str, tried))}); "
                        "give its path or pass --data-dir DIR")
    return found.resolve()


@dataclass(frozen=True)
class Described:
    """What the dataset registry needs to know of a dataset file."""

    in_shape: tuple[int, int, int]
    num_classes: int
    pixel_max: float
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_samples: tuple[int, int]


def describe(path: Path) -> Described:
    """Read and check the file once: shapes, classes, scaling, channel statistics."""
    arrays = load(path)
    x, y_train, y_test = arrays["x_train"], arrays["y_train"], arrays["y_test"]
    in_shape = _in_shape(x.shape)
    pixel_max = 255.0 if x.dtype == np.uint8 else 1.0
    mean, std = _statistics(path, arrays, in_shape, pixel_max)
    classes = int(max(y_train.max(), y_test.max())) + 1
    if "num_classes" in arrays:
        classes = _num_classes(path, arrays["num_classes"], classes)
    if classes < 2:
        raise MCELError(f"{path}: every label is 0; a classifier needs at least 2 classes")
    return Described(in_shape, classes, pixel_max, mean, std, (len(y_train), len(y_test)))


def read(paths: list[Path], split: str, in_shape: tuple[int, int, int]):
    """One split's (x reshaped to (N,) + in_shape, y int64) from the file ``paths[0]``."""
    arrays = load(paths[0])
    x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
    return x.reshape((len(x),) + in_shape), y.astype(np.int64)


def _in_shape(shape: tuple[int, ...]) -> tuple[int, int, int]:
    return {4: shape[1:], 3: (1,) + shape[1:], 2: shape[1:] + (1, 1)}[len(shape)]


def load(path: Path) -> dict[str, np.ndarray]:
    """The arrays of a dataset file, checked (one MCELError line for each kind of fault)."""
    try:
        f = np.load(path, allow_pickle=False)
        if not isinstance(f, np.lib.npyio.NpzFile):
            raise MCELError(f"{path} holds a single array (a .npy file); a dataset is an "
                            "archive: np.savez(path, x_train=..., y_train=..., x_test=..., "
                            "y_test=...)")
        with f:
            missing = [k for k in ARRAYS if k not in f.files]
            if missing:
                raise MCELError(f"{path} holds {', '.join(f.files) or 'no arrays'}; a dataset "
                                f"file needs {', '.join(ARRAYS)} (missing: {', '.join(missing)})")
            arrays = {k: f[k] for k in f.files if k in ARRAYS + ("mean", "std", "num_classes")}
    except MCELError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        why = ("it holds Python objects (pickled data), which mcel does not load; save "
               "plain numeric arrays" if "pickle" in str(e) else f"cannot read it ({e})")
        raise MCELError(f"{path} is not a dataset archive: {why}") from None
    _check(path, arrays)
    return arrays


def _check(path: Path, a: dict[str, np.ndarray]) -> None:
    for split in SPLITS:
        x, y = a[f"x_{split}"], a[f"y_{split}"]
        if x.ndim not in (2, 3, 4) or not len(x):
            raise MCELError(f"{path}: x_{split} has shape {x.shape}; expected (N, C, H, W), "
                            "(N, H, W) or (N, F) with N > 0")
        if x.dtype != np.uint8 and not np.issubdtype(x.dtype, np.floating):
            raise MCELError(f"{path}: x_{split} is {x.dtype}; expected uint8 pixels or floats")
        if x.dtype != np.uint8 and not np.isfinite(x).all():
            raise MCELError(f"{path}: x_{split} holds NaN or infinite values")
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise MCELError(f"{path}: y_{split} is {y.dtype} of shape {y.shape}; expected a "
                            "1-D array of integer class labels")
        if len(y) != len(x):
            raise MCELError(f"{path}: x_{split} holds {len(x)} samples but y_{split} "
                            f"{len(y)} labels")
        if y.min() < 0:
            raise MCELError(f"{path}: y_{split} holds the label {y.min()}; labels are 0..K-1")
    if a["x_train"].shape[1:] != a["x_test"].shape[1:] or a["x_train"].dtype != a["x_test"].dtype:
        raise MCELError(f"{path}: x_train is {a['x_train'].dtype} {a['x_train'].shape[1:]} per "
                        f"sample, x_test {a['x_test'].dtype} {a['x_test'].shape[1:]}; both "
                        "splits need the same shape and dtype")


def _statistics(path: Path, a: dict[str, np.ndarray], in_shape: tuple[int, int, int],
                pixel_max: float) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std: the file's own, or the train split's (chunked float64
    sums; a constant channel gets std 1)."""
    channels = in_shape[0]
    if "mean" in a or "std" in a:
        own = [np.asarray(a.get(k, []), dtype=np.float64).reshape(-1) for k in ("mean", "std")]
        if any(v.shape != (channels,) for v in own) or not np.all(own[1] > 0):
            raise MCELError(f"{path}: mean and std must come together, one value per channel "
                            f"({channels}), std > 0")
        return tuple(map(float, own[0])), tuple(map(float, own[1]))
    x = a["x_train"].reshape(len(a["x_train"]), channels, -1)
    total, squares = np.zeros(channels), np.zeros(channels)
    for i in range(0, len(x), _CHUNK):
        part = x[i:i + _CHUNK].astype(np.float64) / pixel_max
        total += part.sum(axis=(0, 2))
        squares += (part ** 2).sum(axis=(0, 2))
    n = x.shape[0] * x.shape[2]
    mean = total / n
    std = np.sqrt(np.maximum(squares / n - mean ** 2, 0.0))
    return tuple(map(float, mean)), tuple(float(s) if s > 1e-12 else 1.0 for s in std)


def _num_classes(path: Path, value: np.ndarray, needed: int) -> int:
    ok = value.ndim == 0 and np.issubdtype(value.dtype, np.integer) and int(value) >= needed
    if not ok:
        raise MCELError(f"{path}: num_classes must be one integer >= {needed} (the largest "
                        f"label + 1), got {value!r}")
    return int(value)


__all__ = ["find", "describe", "read", "load", "Described", "ARRAYS"]
