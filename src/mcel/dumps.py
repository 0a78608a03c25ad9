"""Memory images as files: a model's stored bits written out, and faulty dumps read back.

``mcel export`` writes what a memory holds for a trained run, bit for bit, in the address
order that error maps use (`mcel.faults.layout`): stored tensors one after another in
`MemoryImage` slot order, code ``i`` of a tensor, bit ``b`` (LSB first) at address
``first + i * bits + b``; address ``a`` is bit ``a % 8`` (LSB first) of byte ``a // 8``,
so 32-bit words read little-endian hold addresses ``32 w .. 32 w + 31``. Load that image
into the memory under test (a chip, an FPGA, a simulator), read it back after the faults
happened, and ``mcel evaluate RUN --dumps FILE ...`` measures the model with exactly the
bits that came back: each dump is one trial, its flips are where it differs from the
clean image. For RTL simulation the image also comes as ``$readmemh`` text (`to_hex`),
and ``.hex``/``.mem`` dumps (``$writememh``) are read as such.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from mcel.engine import MemoryImage
from mcel.errors import MCELError
from mcel.faults import FlipMask
from mcel.faults.ecc import bit_matrix

BIT_ORDER = ("address a is bit a % 8 (LSB first) of byte a // 8; code i of a tensor, bit b "
             "(LSB first), sits at address first_address + i * bits + b")


def _code_bits(codes: Tensor, bits: int) -> np.ndarray:
    """The bits of every code, LSB first, flattened: address order within one tensor."""
    return bit_matrix(codes.reshape(-1).cpu().numpy(), bits).reshape(-1)


def image_bits(image: MemoryImage) -> np.ndarray:
    """Every stored bit of ``image`` in address order (one uint8 0/1 per bit)."""
    parts = [_code_bits(qt.codes, qt.bits) for _, qt in image.codes()]
    return np.concatenate(parts) if parts else np.zeros(0, np.uint8)


def image_bytes(image: MemoryImage) -> bytes:
    """The packed image: what the memory holds, ``ceil(total_bits / 8)`` bytes."""
    return np.packbits(image_bits(image), bitorder="little").tobytes()


def layout(image: MemoryImage) -> list[dict]:
    """Where each stored tensor sits: name, shape, bits, scheme, number format, first
    address, scale (a list for per-channel scales)."""
    out, first = [], 0
    for name, qt in image.codes():
        scale = qt.scale.detach().reshape(-1).cpu().tolist()
        out.append({"name": name, "shape": list(qt.codes.shape), "bits": qt.bits,
                    "scheme": qt.scheme, "fmt": qt.fmt, "first_address": first,
                    "scale": scale[0] if len(scale) == 1 else scale})
        first += qt.numel_bits
    return out


def dump_masks(image: MemoryImage, clean: bytes, data: bytes,
               source: str = "dump") -> dict[str, FlipMask]:
    """The flips a dump holds: where its bits differ from the ``clean`` image
    (`image_bytes`), as one mask per stored tensor. Bytes past the image, and the unused
    bits of its last byte, are ignored (a dump of a larger memory); a shorter dump is an
    error."""
    if len(data) < len(clean):
        raise MCELError(f"{source} holds {len(data)} bytes; this run's memory image is "
                        f"{len(clean)} bytes (mcel export writes it): is it a dump of this run?")
    diff = np.frombuffer(data, np.uint8, count=len(clean)) ^ np.frombuffer(clean, np.uint8)
    where = np.flatnonzero(diff)  # only the bytes that changed are unpacked
    byte_bits = np.unpackbits(diff[where][:, None], axis=1, bitorder="little")
    row, bit = np.nonzero(byte_bits)
    flipped = where[row] * 8 + bit  # addresses, ascending
    masks, first = {}, 0
    for name, qt in image.codes():
        end = first + qt.numel_bits
        rel = flipped[np.searchsorted(flipped, first):np.searchsorted(flipped, end)] - first
        first = end
        if not len(rel):
            continue
        elem, pos = np.divmod(rel, qt.bits)
        index, inverse = np.unique(elem, return_inverse=True)
        xor = np.zeros(len(index), np.int64)
        np.bitwise_or.at(xor, inverse, np.left_shift(1, pos))
        masks[name] = FlipMask(torch.from_numpy(index),
                               torch.from_numpy(xor).to(qt.codes.dtype).to(qt.codes.device),
                               int(len(rel)), qt.numel_bits)
    return masks


@dataclass
class DumpResult:
    """Accuracy of the model as each dump holds it."""

    clean_accuracy: float
    total_bits: int
    dumps: list[dict] = field(default_factory=list)  # file, flipped_bits, rate, accuracy
    meta: dict = field(default_factory=dict)

    def summary(self) -> tuple[float, float, float]:
        """Mean accuracy over the dumps with its 95% t-interval (each dump one trial),
        held to [0, 1] where an accuracy lives."""
        from mcel.evaluate import t_interval

        mean, lo, hi = t_interval([d["accuracy"] for d in self.dumps])
        return mean, max(lo, 0.0), min(hi, 1.0)

    def to_dict(self) -> dict:
        mean, lo, hi = self.summary()
        return {"clean_accuracy": self.clean_accuracy, "total_bits": self.total_bits,
                "dumps": self.dumps, "mean": mean, "ci_low": lo, "ci_high": hi,
                "meta": self.meta}


def _accuracy(model: nn.Module, x: Tensor, y: Tensor, batch_size: int) -> float:
    from mcel.evaluate import predict_logits, predicted

    return (predicted(predict_logits(model, x, batch_size)).cpu() == y.cpu()).float().mean().item()


@torch.no_grad()
def evaluate_dumps(model: nn.Module, x: Tensor, y: Tensor, dumps: list[str | Path], *,
                   error_model=None, weights: str | None = None,
                   batch_size: int = 1024) -> DumpResult:
    """Accuracy of ``model`` with the stored bits of each dump (one trial per file); the
    model is bit-identical afterwards. ``error_model`` says only which parts are stored
    (its ``targets``: biases too), ``weights`` stores float layers as for `evaluate`."""
    model.eval()
    with MemoryImage(model, error_model, weights=weights) as image:
        clean = image_bytes(image)
        res = DumpResult(_accuracy(model, x, y, batch_size), image.total_bits)
        for path in dumps:
            data = _read(path)
            stats = image.inject_masks(dump_masks(image, clean, data, str(path)))
            try:
                acc = _accuracy(model, x, y, batch_size)
            finally:
                image.restore()
            res.dumps.append({"file": str(path), "flipped_bits": stats.flipped_bits,
                              "rate": stats.empirical_rate, "accuracy": acc,
                              "extra_bytes": len(data) - len(clean)})
    return res


HEX_SUFFIXES = (".hex", ".mem")


def to_hex(data: bytes, word_bits: int = 32) -> str:
    r"""The image as text for Verilog's ``$readmemh``: one word per line, ``word_bits``
    bits each (a multiple of 8), hex digits most significant first; word ``w`` holds
    addresses ``w * word_bits`` (its bit 0) to ``w * word_bits + word_bits - 1``. The
    last word is padded with zero bytes.

    >>> to_hex(bytes([0x01, 0x02, 0x03, 0x04, 0xff]), 32)
    '04030201\n000000ff\n'
    """
    check_hex_word_bits(word_bits)
    size = word_bits // 8
    padded = data + bytes(-len(data) % size)
    return "".join(padded[i:i + size][::-1].hex() + "\n" for i in range(0, len(padded), size))


def check_hex_word_bits(word_bits: int) -> None:
    if isinstance(word_bits, bool) or not isinstance(word_bits, int) or word_bits < 8 \
            or word_bits % 8:
        raise MCELError(f"hex words of {word_bits!r} bits: give a positive multiple of 8 "
                        "(e.g. 32)")


def from_hex(text: str, source: str = "dump") -> bytes:
    """The bytes of a ``$readmemh``/``$writememh`` text (`to_hex`'s inverse): ``//``
    comments and blank lines are skipped, ``@address`` lines must follow the words in
    order, every word has the same number of hex digits (two per byte)."""
    words: list[str] = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("//", 1)[0].strip()
        if not line:
            continue
        for token in line.split():
            if token.startswith("@"):
                if int(token[1:], 16) != len(words):
                    raise MCELError(f"{source} line {n}: address {token} out of order; "
                                    "write the words from address 0 in order")
                continue
            if (len(token) % 2 or (words and len(token) != len(words[0]))
                    or any(c not in "0123456789abcdefABCDEF" for c in token)):
                raise MCELError(f"{source} line {n}: '{token}' is not a hex word like the "
                                "others (an even number of hex digits, the same in every word)")
            words.append(token)
    return b"".join(bytes.fromhex(w)[::-1] for w in words)


def _read(path: str | Path) -> bytes:
    try:
        if Path(path).suffix.lower() in HEX_SUFFIXES:
            return from_hex(Path(path).read_text(), str(path))
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise MCELError(f"dump {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise MCELError(f"cannot read dump {path}: {getattr(e, 'strerror', None) or e}"
                        ) from None


def export_image(model: nn.Module, out: str | Path, *, error_model=None,
                 weights: str | None = None, meta: dict | None = None,
                 hex_word_bits: int | None = None) -> dict:
    """Write ``out/image.bin`` (the packed memory image), ``out/codes.safetensors`` (each
    stored tensor's codes and scale) and ``out/layout.json`` (where each one sits, how
    bits are ordered, the image's SHA-256); with ``hex_word_bits`` also
    ``out/image.hex`` (`to_hex`, for ``$readmemh``). Returns the layout record."""
    from mcel.io import atomic_write_bytes, check_writable, save_tensors, write_json

    if hex_word_bits is not None:
        check_hex_word_bits(hex_word_bits)  # before the out folder exists
    out = check_writable(out)
    with MemoryImage(model, error_model, weights=weights) as image:
        data = image_bytes(image)
        tensors = {}
        for name, qt in image.codes():
            tensors[f"{name}.codes"] = qt.codes
            tensors[f"{name}.scale"] = qt.scale.detach().reshape(-1)
        record = {**(meta or {}), "total_bits": image.total_bits, "bytes": len(data),
                  "bit_order": BIT_ORDER, "sha256": hashlib.sha256(data).hexdigest(),
                  "tensors": layout(image)}
    if hex_word_bits is not None:
        record["hex_word_bits"] = hex_word_bits
    atomic_write_bytes(out / "image.bin", data)
    if hex_word_bits is not None:
        atomic_write_bytes(out / "image.hex", to_hex(data, hex_word_bits).encode())
    save_tensors(out / "codes.safetensors", tensors,
                 metadata={"layout": json.dumps(record, sort_keys=True)})
    write_json(out / "layout.json", record)
    return record


__all__ = ["image_bits", "image_bytes", "layout", "dump_masks", "evaluate_dumps",
           "export_image", "to_hex", "from_hex", "DumpResult", "BIT_ORDER", "HEX_SUFFIXES"]
