"""Crash-safe file writing and safe checkpoint loading.

Every file the tool writes goes to a temporary file in the same folder and is renamed
into place: a killed process leaves the old file or the new one, never half of one.
Checkpoints are safetensors (plain tensors, no pickle), so loading one runs no code.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from mcel.errors import MCELError

# what the JSON files of the commands say of their numbers (the terminal shows percent)
JSON_UNITS = "accuracies and bit error rates are fractions in [0, 1]"


def _umask_mode() -> int:
    """Permissions a plain open() would give (mkstemp makes 0600 files)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _cannot_write(path: Path, e: OSError) -> MCELError:
    return MCELError(f"cannot write {path}: {e.strerror or e}; choose another path")


def _temp_beside(path: Path) -> tuple[int, str]:
    """A temporary file in ``path``'s folder (created if need be), or one MCELError line
    when the folder cannot be made or written (a file in the way, no permission)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as e:
        raise _cannot_write(path, e) from None


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    fd, tmp = _temp_beside(path)
    try:
        os.fchmod(fd, _umask_mode())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:  # disk full, a folder named like the file, ...
        Path(tmp).unlink(missing_ok=True)
        raise _cannot_write(path, e) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def read_text(path: str | Path, what: str) -> str:
    """The UTF-8 text of a file the user named, or one MCELError line saying what is wrong
    with it; ``what`` names the file for the user ("grid file", "voltage curve").

    Every reader of a user's text file goes through here, so that a missing, unreadable
    or binary file reads the same whichever command met it.
    """
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MCELError(f"{what} {path} does not exist") from None
    except OSError as e:  # a folder, no permission
        raise MCELError(f"cannot read {what} {path}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:  # a binary file: name the first byte that is not text
        raise MCELError(f"{what} {path} is not text (byte 0x{e.object[e.start]:02x} at "
                        f"offset {e.start} is not UTF-8); save it as UTF-8, or check that "
                        "it is the right file") from None


def read_json(path: str | Path) -> Any:
    """A JSON file's content; never runs code, whatever the file holds."""
    text = read_text(path, "JSON file")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise MCELError(f"{path} is not valid JSON ({e}); was it written by mcel?") from None


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor],
                 metadata: dict[str, str] | None = None) -> None:
    path = Path(path)
    fd, tmp = _temp_beside(path)
    os.close(fd)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp,
                  metadata=metadata)
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise _cannot_write(path, e) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    if os.path.exists(path) and not os.access(path, os.R_OK):
        raise MCELError(f"cannot read {path}: permission denied")
    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise MCELError(f"checkpoint {path} does not exist") from None
    except Exception as e:  # safetensors raises its own error types for foreign files
        raise MCELError(f"{path} is not a valid safetensors checkpoint ({e})") from None


def load_metadata(path: str | Path) -> dict[str, str]:
    """The string metadata of a safetensors file (reads only its JSON header)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return dict(f.metadata() or {})
    except Exception as e:
        raise MCELError(f"{path} is not a valid safetensors checkpoint ({e})") from None


def check_writable(folder: str | Path) -> Path:
    """Fail early, before any work, if results cannot be written to ``folder``."""
    if not str(folder).strip():
        raise MCELError("an empty folder name was given; give a folder for the results")
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise MCELError(f"{folder} is a file, not a folder; choose another --out")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".write-test.", dir=folder)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise MCELError(f"cannot write to {folder}: {e.strerror}; choose another --out") from None
    return folder


# what `mcel train` keeps in a run folder: never the target of a --json
RUN_FILES = ("config.json", "state.json", "metrics.json", "model.safetensors",
             "last.safetensors")


def _looks_like_json(path: Path) -> bool:
    """An empty file or one starting (after blanks) with '{' or '['."""
    try:
        with open(path, "rb") as f:
            head = f.read(64).lstrip()
    except OSError:
        return True  # unreadable: leave the verdict to the write
    return head[:1] in (b"", b"{", b"[")


def check_can_create(path: str | Path) -> Path:
    """Fail early, creating nothing, if the file ``path`` could not be written later.

    Looks for the nearest existing folder above it: a regular file in the way, a
    folder at ``path`` itself or a folder without write permission is one MCELError.
    """
    if not str(path).strip():
        raise MCELError("an empty file name was given; give a file name")
    path = Path(path)
    if path.is_dir():
        raise MCELError(f"cannot write {path}: it is a folder; give a file name")
    if path.is_symlink() or (path.exists() and not path.is_file()):
        # the write renames a new file into place: it would replace the link or device
        raise MCELError(f"will not write {path}: it is a link or special file, not a "
                        "plain file; give a plain file name")
    if path.name in RUN_FILES and (path.parent / "config.json").is_file():
        raise MCELError(f"will not overwrite {path}: it belongs to the run folder "
                        f"{path.parent}; give another file name")
    if path.is_file() and not _looks_like_json(path):
        raise MCELError(f"will not overwrite {path}: it is not a JSON file; give another "
                        "file name")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise MCELError(f"cannot write {path}: {parent} is a file, not a folder; "
                        "choose another path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise MCELError(f"cannot write {path}: no permission in {parent}; choose another path")
    return path
