"""Readers for the upstream file formats: IDX (MNIST family), CIFAR pickles, SVHN .mat.

Each reader takes one path and returns plain numpy arrays, checking the file against
its format so that a truncated download or a foreign file fails with an `MCELError`
naming the file, rather than with a reshape error three calls later.
"""

from __future__ import annotations

import gzip
import pickle
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from mcel.errors import MCELError

IDX_IMAGES = 2051  # magic: 0x00000803 = unsigned bytes, 3 dimensions
IDX_LABELS = 2049  # magic: 0x00000801 = unsigned bytes, 1 dimension
_GZIP_MAGIC = b"\x1f\x8b"


def _bad(path: Path, why: str) -> MCELError:
    return MCELError(f"{path}: {why}; the file is truncated or foreign, re-download it")


def read_bytes(path: Path) -> bytes:
    """The file's content, gunzipped when it starts with the gzip magic (whatever its name)."""
    raw = Path(path).read_bytes()
    if not raw.startswith(_GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as e:  # a cut-off download ends mid-stream
        raise _bad(path, f"cannot gunzip ({e})") from None


def read_idx(path: Path, magic: int) -> np.ndarray:
    """An IDX file (http://yann.lecun.com/exdb/mnist/) as a uint8 array of its header's shape.

    The header is a big-endian int32 magic (0, 0, dtype 0x08, ndim) and ndim int32 sizes;
    the body must be exactly prod(sizes) bytes, which is what catches truncation.

    >>> import tempfile, struct
    >>> p = Path(tempfile.mkdtemp()) / "labels"
    >>> _ = p.write_bytes(struct.pack(">ii", IDX_LABELS, 3) + bytes([7, 0, 9]))
    >>> read_idx(p, IDX_LABELS).tolist()
    [7, 0, 9]
    >>> _ = p.write_bytes(struct.pack(">ii", IDX_LABELS, 4) + bytes([7, 0, 9]))
    >>> read_idx(p, IDX_LABELS)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    mcel.errors.MCELError: ...labels: holds 3 data bytes, header says 4; the file is truncated...
    """
    path = Path(path)
    data = read_bytes(path)
    kind = {IDX_IMAGES: "images", IDX_LABELS: "labels"}.get(magic, str(magic))
    if len(data) < 4:
        raise _bad(path, f"{len(data)} bytes is too short for an IDX header")
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise _bad(path, f"IDX magic number is {found}, expected {magic} ({kind}, uint8)")
    ndim = magic & 0xFF
    head = 4 + 4 * ndim
    if len(data) < head:
        raise _bad(path, f"{len(data)} bytes is too short for an IDX header")
    shape = tuple(int(s) for s in np.frombuffer(data, ">i4", ndim, 4))
    expected = int(np.prod(shape))
    if len(data) - head != expected:
        raise _bad(path, f"holds {len(data) - head} data bytes, header says {expected}")
    return np.frombuffer(data, np.uint8, expected, head).reshape(shape).copy()  # writable


def _numpy_globals() -> dict[tuple[str, str], Any]:
    # Only what an ndarray's pickle names: numpy 1 and 2 spell the module differently, and
    # protocol 5 uses _frombuffer. Resolving names from this table (never importing by
    # name) is what makes a malicious pickle unable to reach os.system and friends.
    try:
        from numpy._core import multiarray, numeric  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    table: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,  # how Python 3 protocol <= 2 writes bytes
    }
    for mod in ("numpy.core", "numpy._core"):
        table[(f"{mod}.multiarray", "_reconstruct")] = multiarray._reconstruct
        table[(f"{mod}.multiarray", "scalar")] = multiarray.scalar
        table[(f"{mod}.numeric", "_frombuffer")] = numeric._frombuffer  # type: ignore[attr-defined]
    for mod in ("builtins", "__builtin__"):  # Python 2 pickles say __builtin__
        table.update({(mod, "list"): list, (mod, "dict"): dict})
    return table


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    # Stand-in for _codecs.encode that cannot be pointed at an arbitrary codec.
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refusing _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists and numpy arrays only; any other global is refused."""

    allowed = _numpy_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"forbidden global {module}.{name}") from None


def load_pickle(path: Path) -> Any:
    """A pickle that may hold only dicts, lists, scalars and numpy arrays.

    Upstream CIFAR files are Python 2 pickles: `encoding="bytes"` keeps their str keys
    as bytes (b"data") and their array buffers intact.
    """
    path = Path(path)
    with path.open("rb") as f:
        try:
            return _ArrayUnpickler(f, encoding="bytes").load()
        except pickle.UnpicklingError as e:
            if "forbidden global" in str(e):
                raise MCELError(
                    f"{path}: refusing to unpickle, it references {str(e).split()[-1]}; "
                    "a dataset pickle holds only arrays, lists and dicts"
                ) from None
            raise _bad(path, f"not a readable pickle ({e})") from None
        except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as e:
            raise _bad(path, f"not a readable pickle ({type(e).__name__}: {e})") from None


def read_cifar_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """A CIFAR python batch: b"data" uint8 (N, 3072) -> (N, 3, 32, 32) and int64 labels.

    Rows store the red, green and blue 32x32 planes one after another, row-major, so a
    plain reshape gives channels-first images. `label_key` is "labels" (CIFAR-10) or
    "fine_labels" (CIFAR-100).
    """
    path = Path(path)
    obj = load_pickle(path)
    if not isinstance(obj, dict):
        raise _bad(path, f"expected a dict, found {type(obj).__name__}")
    # encoding="bytes" gives b"data"; accept str keys too (files re-pickled under Python 3).
    batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}
    if "data" not in batch or label_key not in batch:
        raise _bad(path, f"missing key 'data' or '{label_key}' (has {sorted(map(str, batch))})")
    data, labels = np.asarray(batch["data"]), np.asarray(batch[label_key])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise _bad(path, f"'data' is {data.dtype} {data.shape}, expected uint8 (N, 3072)")
    if labels.shape != (len(data),) or not np.issubdtype(labels.dtype, np.integer):
        raise _bad(path, f"'{label_key}' has shape {labels.shape}, expected ({len(data)},) ints")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def read_svhn_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """An SVHN cropped-digits .mat: X uint8 (32, 32, 3, N) -> (N, 3, 32, 32), y (N, 1).

    SVHN labels the digit 0 as 10 (MATLAB's 1-based habit); it is mapped back to 0.
    """
    import scipy.io  # lazy: only SVHN needs scipy's MATLAB reader

    path = Path(path)
    try:
        mat = scipy.io.loadmat(path)
    except (scipy.io.matlab.MatReadError, NotImplementedError, ValueError, OSError, EOFError) as e:
        raise _bad(path, f"not a readable MATLAB v5 file ({e})") from None
    x, y = mat.get("X"), mat.get("y")
    if x is None or y is None:
        raise _bad(path, "missing variable 'X' or 'y'")
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[:3] != (32, 32, 3):
        raise _bad(path, f"'X' is {x.dtype} {x.shape}, expected uint8 (32, 32, 3, N)")
    y = np.asarray(y).reshape(-1)
    if len(y) != x.shape[3] or not np.all((y >= 1) & (y <= 10) & (y == np.round(y))):
        raise _bad(path, f"'y' must hold {x.shape[3]} labels in 1..10")
    labels = y.astype(np.int64) % 10  # 10 -> 0, 1..9 unchanged
    return np.ascontiguousarray(x.transpose(3, 2, 0, 1)), labels
