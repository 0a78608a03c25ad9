"""The native ladder kernel gives exactly the numpy path's masks, and falls back cleanly.

The statistical tests of the sampler (test_faults.py) run on whichever path is active
(the native one wherever a C compiler exists); here every supported kind of model is
drawn on both paths, key by key, and compared bit for bit.
"""

from __future__ import annotations

import os
import platform
import shutil

import numpy as np
import pytest
import torch

from mcel.faults import BitErrorModel, FaultKey, FlipMask, apply_mask_, inject_, native
from mcel.faults import sample_mask as _sample_mask
from mcel.faults.ladder import sample_ladder


@pytest.fixture
def kernel():
    native._reset()
    if native.load() is None:
        pytest.skip(native.status())
    yield
    native._reset()


def numpy_path(monkeypatch, fn, *args, **kw):
    """``fn(*args, **kw)`` with the native kernel turned off."""
    with monkeypatch.context() as m:
        m.setenv("MCEL_NATIVE", "0")
        native._reset()
        try:
            return fn(*args, **kw)
        finally:
            native._reset()


def same(a: FlipMask, b: FlipMask) -> None:
    assert a.index.dtype == b.index.dtype == torch.int64
    assert a.xor.dtype == b.xor.dtype
    assert torch.equal(a.index, b.index) and torch.equal(a.xor, b.xor)
    assert (a.nbits_flipped, a.nbits_total) == (b.nbits_flipped, b.nbits_total)


CASES = [
    (torch.uint8, 8, BitErrorModel(ber=1e-3)),
    (torch.uint8, 8, BitErrorModel(ber=0.0625)),  # the highest rate the kernel takes
    (torch.uint8, 8, BitErrorModel(ber=1e-3, protected_bits=(7,))),
    (torch.uint8, 8, BitErrorModel(p01=1e-3, p10=1e-2)),
    (torch.uint8, 4, BitErrorModel(p01=0.05)),
    (torch.uint8, 8, BitErrorModel(bit_rates=(1e-3,) * 7 + (1e-2,))),
    (torch.uint8, 5, BitErrorModel(bit_rates=(1e-3, 0.0, 2e-3, 1e-2, 0.0))),
    (torch.uint8, 3, BitErrorModel(ber=2e-2)),
    (torch.uint8, 1, BitErrorModel(ber=2e-2)),
    (torch.int16, 12, BitErrorModel(ber=1e-2, protected_bits=(0, 11))),
    (torch.int32, 31, BitErrorModel(p01=1e-3, p10=2e-2)),
    (torch.int64, 62, BitErrorModel(bit_rates=tuple(np.linspace(0.0, 0.06, 62)))),
]


@pytest.mark.parametrize("dtype,bits,model", CASES, ids=[c[2].describe()[:40] for c in CASES])
def test_masks_identical_to_numpy(kernel, monkeypatch, dtype, bits, model) -> None:
    gen = torch.Generator().manual_seed(bits)
    codes = torch.randint(0, 2 ** min(bits, 31), (20_011,), generator=gen).to(dtype)
    for seed, trial, name in [(0, 0, ""), (0, 1, ""), (7, 3, "fc.weight")]:
        key = dict(seed=seed, trial=trial, name=name)
        got = _sample_mask(codes, bits, model, **key)
        want = numpy_path(monkeypatch, _sample_mask, codes, bits, model, **key)
        same(got, want)
        assert got.nbits_flipped > 0


def test_tiny_tensors(kernel, monkeypatch) -> None:
    # one bit in all (numpy draws no cell for a range of one), a few bits, no bits
    model = BitErrorModel(ber=0.06)
    for numel, bits in [(1, 1), (1, 3), (2, 1), (3, 8), (0, 8)]:
        codes = torch.zeros(numel, dtype=torch.uint8)
        for trial in range(40):
            got = _sample_mask(codes, bits, model, seed=2, trial=trial)
            same(got, numpy_path(monkeypatch, _sample_mask, codes, bits, model, seed=2,
                                 trial=trial))


@pytest.mark.parametrize("dtype,bits,model", CASES[::3], ids=[c[2].describe()[:40]
                                                           for c in CASES[::3]])
def test_inject_identical_to_numpy(kernel, monkeypatch, dtype, bits, model) -> None:
    codes = torch.randint(0, 2 ** min(bits, 31), (30_000,)).to(dtype)
    a, b = codes.clone(), codes.clone()
    ma = inject_(a, bits, model, FaultKey(3, 4, "w"))
    mb = numpy_path(monkeypatch, inject_, b, bits, model, FaultKey(3, 4, "w"))
    same(ma, mb)
    assert torch.equal(a, b) and not torch.equal(a, codes)
    apply_mask_(a, ma)
    assert torch.equal(a, codes)


def test_wide_positions_beyond_2_32(kernel) -> None:
    # more than 2^32 bit positions: cells are drawn as uint64 (no such tensor is needed)
    n, bits = (1 << 33) + 12_345, 62
    for top in (1e-7, 3e-7):
        key = FaultKey(1, 2)
        pos = sample_ladder(*key.rngs((0, 1)), n, top)
        idx, xor, nbits = native.ladder_mask(*key.rngs((0, 1)), n, top, mode=0, table=None,
                                             prot=0, codes=np.empty(0, np.int64), bits=bits,
                                             apply=False)
        code, bit = np.divmod(pos, bits)
        assert nbits == pos.size > 100
        assert np.array_equal(idx, np.unique(code))
        want = np.zeros(idx.size, np.int64)
        np.bitwise_or.at(want, np.searchsorted(idx, code), np.left_shift(1, bit))
        assert np.array_equal(xor, want)


def test_bad_index_changes_nothing(kernel) -> None:
    codes = torch.zeros(100, dtype=torch.uint8)
    mask = FlipMask(index=torch.tensor([3, 100]), xor=torch.tensor([1, 1], dtype=torch.uint8),
                    nbits_flipped=2, nbits_total=800)
    with pytest.raises(IndexError):
        apply_mask_(codes, mask)
    assert int(codes.count_nonzero()) == 0


def test_fresh_compile_into_an_empty_cache(monkeypatch, tmp_path) -> None:
    if not (os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")):
        pytest.skip("no C compiler here: the numpy path is what runs")
    monkeypatch.setenv("MCEL_CACHE", str(tmp_path))
    native._reset()
    try:
        assert native.load() is not None, native.status()
        assert str(tmp_path) in native.status()
        assert len(list(tmp_path.glob("native/*.so"))) == 1  # and no temporary left over
        assert len(list(tmp_path.glob("native/*"))) == 1
    finally:
        native._reset()


def test_compiler_with_flags_and_a_damaged_cache_entry(monkeypatch, tmp_path) -> None:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        pytest.skip("no C compiler here: the numpy path is what runs")
    monkeypatch.setenv("MCEL_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", f"{cc} -Wall")  # a CC with a flag in it, as make passes it
    native._reset()
    so = native._library_path()
    so.parent.mkdir(parents=True)
    so.write_bytes(b"not a library")  # e.g. left by a full disk or a killed copy
    try:
        assert native.load() is not None, native.status()  # rebuilt, not left off
        assert so.read_bytes()[:4] == b"\x7fELF" or platform.system() != "Linux"
    finally:
        native._reset()


def test_off_switch_and_missing_compiler_fall_back(monkeypatch, tmp_path) -> None:
    codes = torch.randint(0, 256, (5000,), dtype=torch.uint8)
    model = BitErrorModel(ber=1e-2)
    want = numpy_path(monkeypatch, _sample_mask, codes, 8, model, seed=1, trial=2)
    monkeypatch.setenv("MCEL_NATIVE", "0")
    native._reset()
    assert "off" in native.status()
    monkeypatch.setenv("MCEL_NATIVE", "1")
    monkeypatch.setenv("MCEL_CACHE", str(tmp_path))  # nothing cached: it must compile
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    native._reset()
    try:
        assert native.load() is None
        assert "unavailable" in native.status()
        same(_sample_mask(codes, 8, model, seed=1, trial=2), want)
    finally:
        native._reset()
    assert not list(tmp_path.glob("native/*.so"))  # no half-written library left behind


def test_a_kernel_that_does_not_reproduce_numpy_is_turned_off(kernel, monkeypatch) -> None:
    lib = native.load()
    assert native._self_check(lib) is None  # this numpy: the inlined PCG64 agrees
    monkeypatch.setattr(native, "_self_check", lambda lib: "its PCG64 differs")
    native._reset()
    assert native.load() is None
    assert "disabled: its PCG64 differs" in native.status()
