"""Tests for mcel.faults: error models, the exact nested sampler, XOR masks.

Rates are checked against binomial 99.9% Clopper-Pearson intervals computed by scipy
from flips counted independently of the sampler (XOR of the codes before and after,
unpacked bit by bit). Seeds are fixed, so every test is deterministic.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from mcel.errors import MCELError
from mcel.faults import (
    BitErrorModel,
    FaultKey,
    FlipMask,
    apply_mask_,
    inject,
    inject_,
    parse_error_model,
    sample_mask,
)
from mcel.faults.ladder import sample_ladder

# -- helpers ------------------------------------------------------------------------


def random_codes(n: int, bits: int = 8, seed: int = 0, dtype=torch.uint8) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2**bits, (n,), generator=g, dtype=torch.int64).to(dtype)


def bit_matrix(codes: torch.Tensor, bits: int) -> np.ndarray:
    """(numel, bits) array of 0/1, column b = bit b (LSB first)."""
    c = codes.numpy().astype(np.int64)
    return ((c[:, None] >> np.arange(bits)) & 1).astype(np.uint8)


def flipped(before: torch.Tensor, after: torch.Tensor, bits: int) -> np.ndarray:
    return bit_matrix(before ^ after, bits).astype(bool)


def assert_rate(k: int, n: int, p: float, what: str = "") -> None:
    lo, hi = stats.binomtest(int(k), int(n)).proportion_ci(0.999)
    msg = f"{what}: {k}/{n}={k / n:.4g}; 99.9% CI [{lo:.4g}, {hi:.4g}] excludes {p:g}"
    assert lo <= p <= hi, msg


def mask_positions(mask: FlipMask, bits: int) -> set[int]:
    idx, xor = mask.index.numpy(), mask.xor.numpy().astype(np.int64)
    b = np.arange(bits)
    code, bit = np.nonzero((xor[:, None] >> b) & 1)
    return set((idx[code] * bits + bit).tolist())


N_CODES = 1_250_000  # x 8 bits = 1e7 bits per draw
KEY = FaultKey(seed=2024, trial=3, name="layer1.weight")


@pytest.fixture(scope="module")
def codes8() -> torch.Tensor:
    return random_codes(N_CODES)


# -- rates --------------------------------------------------------------------------


@pytest.mark.parametrize("p", [1e-4, 1e-3, 1e-2, 0.05, 0.3])
def test_uniform_rate(codes8: torch.Tensor, p: float) -> None:
    before = codes8.clone()
    mask = inject_(codes := codes8.clone(), 8, BitErrorModel(ber=p), KEY)
    f = flipped(before, codes, 8)
    assert f.sum() == mask.nbits_flipped
    assert mask.nbits_total == before.numel() * 8
    assert mask.empirical_rate == f.sum() / f.size
    assert_rate(f.sum(), f.size, p, f"ber={p}")
    for b in range(8):  # no bit position is favoured
        assert_rate(f[:, b].sum(), f.shape[0], p, f"ber={p} bit {b}")
    per_slice = f.reshape(20, -1).sum(1)  # nor any region of the tensor (chi-square)
    assert stats.chisquare(per_slice).pvalue > 1e-3


@pytest.mark.parametrize("p", [0.05, 0.3])
def test_bits_within_a_code_are_independent(codes8: torch.Tensor, p: float) -> None:
    """Flips per code follow Binomial(8, p) (chi-square), as i.i.d. bits must."""
    mask = sample_mask(codes8, 8, BitErrorModel(ber=p), seed=7, trial=0)
    per_code = np.zeros(N_CODES, dtype=np.int64)
    per_code[mask.index.numpy()] = flipped(torch.zeros_like(mask.xor), mask.xor, 8).sum(1)
    observed = np.bincount(per_code, minlength=9)
    expected = stats.binom.pmf(np.arange(9), 8, p) * N_CODES
    tail = expected < 20  # pool the sparse tail into one cell
    obs = np.r_[observed[~tail], observed[tail].sum()] if tail.any() else observed
    exp = np.r_[expected[~tail], expected[tail].sum()] if tail.any() else expected
    assert stats.chisquare(obs, exp).pvalue > 1e-3


def test_tiny_rate_count_over_1e9_bits() -> None:
    """p = 1e-7: ~100 flips expected over 10 draws of 1e8 bits (exact at tiny rates)."""
    codes = torch.zeros(12_500_000, dtype=torch.uint8)
    total = 0
    for trial in range(10):
        after = inject(codes, 8, BitErrorModel(ber=1e-7), FaultKey(1, trial, "w"))
        diff = after[after != 0].numpy()
        total += int(np.unpackbits(diff).sum())
    assert_rate(total, 10 * codes.numel() * 8, 1e-7, "ber=1e-7")


@pytest.mark.parametrize(("p01", "p10"), [(1e-3, 2e-2), (0.2, 0.05), (0.0, 1e-3)])
def test_asymmetric_rates(codes8: torch.Tensor, p01: float, p10: float) -> None:
    before = bit_matrix(codes8, 8)
    after = bit_matrix(inject(codes8, 8, BitErrorModel(p01=p01, p10=p10), KEY), 8)
    zeros, ones = before == 0, before == 1
    assert_rate((after[zeros] == 1).sum(), zeros.sum(), p01, "0->1")
    assert_rate((after[ones] == 0).sum(), ones.sum(), p10, "1->0")


@pytest.mark.parametrize("scale", [1.0, 5.0])
def test_bit_rates_per_position(scale: float) -> None:
    rates = tuple(min(1.0, r * scale) for r in (0.0, 1e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.15))
    codes = random_codes(2 * N_CODES, seed=1)
    f = flipped(codes, inject(codes, 8, BitErrorModel(bit_rates=rates), KEY), 8)
    assert f[:, 0].sum() == 0
    for b, r in enumerate(rates):
        assert_rate(f[:, b].sum(), f.shape[0], r, f"bit {b}")


@pytest.mark.parametrize("prot", [(7,), (-1,), (0, -1)])
def test_protected_bits_never_flip(codes8: torch.Tensor, prot: tuple[int, ...]) -> None:
    f = flipped(codes8, inject(codes8, 8, BitErrorModel(ber=0.3, protected_bits=prot), KEY), 8)
    guarded = {b % 8 for b in prot}
    for b in range(8):
        if b in guarded:
            assert not f[:, b].any()
        else:
            assert_rate(f[:, b].sum(), f.shape[0], 0.3, f"bit {b}")


def test_protected_bits_with_asymmetric_and_stuck(codes8: torch.Tensor) -> None:
    m = BitErrorModel(p01=0.3, p10=0.3, protected_bits=(-1,), stuck_at=0.2)
    assert not flipped(codes8, inject(codes8, 8, m, KEY), 8)[:, 7].any()


# -- stuck-at -----------------------------------------------------------------------


def stuck_cells(key: FaultKey, stuck_at: float, value: int | None) -> tuple[np.ndarray, ...]:
    """Bit matrices of the cells stuck at 1 and at 0, read off all-0 and all-1 codes."""
    m = BitErrorModel(stuck_at=stuck_at, stuck_value=value)
    zeros = torch.zeros(N_CODES, dtype=torch.uint8)
    at1 = bit_matrix(inject(zeros, 8, m, key), 8).astype(bool)
    at0 = ~bit_matrix(inject(zeros + 255, 8, m, key), 8).astype(bool)
    return at1, at0


@pytest.mark.parametrize("value", [0, 1, None])
def test_stuck_at_fraction_and_value(codes8: torch.Tensor, value: int | None) -> None:
    s = 1e-2
    at1, at0 = stuck_cells(KEY, s, value)
    assert not (at1 & at0).any()
    n = at1.size
    if value is None:  # each stuck cell at 0 or 1 with probability 1/2
        assert_rate(at1.sum(), n, s / 2, "stuck at 1")
        assert_rate(at0.sum(), n, s / 2, "stuck at 0")
    else:
        assert (at1 if value == 0 else at0).sum() == 0
    assert_rate((at1 | at0).sum(), n, s, "stuck cells")
    # on arbitrary codes, stuck cells read their value and nothing else changes
    before = bit_matrix(codes8, 8)
    after = bit_matrix(inject(codes8, 8, BitErrorModel(stuck_at=s, stuck_value=value), KEY), 8)
    assert (after[at1] == 1).all() and (after[at0] == 0).all()
    assert (after[~(at1 | at0)] == before[~(at1 | at0)]).all()


def test_stuck_cells_override_flips(codes8: torch.Tensor) -> None:
    at1, at0 = stuck_cells(KEY, 0.05, 1)
    m = BitErrorModel(ber=0.2, stuck_at=0.05, stuck_value=1)
    before, after = bit_matrix(codes8, 8), bit_matrix(inject(codes8, 8, m, KEY), 8)
    assert (after[at1] == 1).all()
    free = ~at1
    assert_rate((after[free] != before[free]).sum(), free.sum(), 0.2, "flips outside stuck cells")


# -- nesting and reproducibility ----------------------------------------------------


def test_nested_across_ber_sweep() -> None:
    codes = random_codes(200_000, seed=3)
    sweep = [0.0, 1e-6, 1e-5, 1e-4, 1e-3, 3e-3, 1e-2, 0.05, 0.0625, 0.07, 0.2, 0.5, 1.0]
    sets = [mask_positions(sample_mask(codes, 8, BitErrorModel(ber=p), seed=5, trial=1), 8)
            for p in sweep]
    assert not sets[0]
    for lo, hi in zip(sets, sets[1:]):
        assert lo <= hi
    assert len(sets[-1]) == codes.numel() * 8  # p = 1 flips everything
    assert len(sets[4]) > 0


@pytest.mark.parametrize(
    "make",
    [
        lambda s: BitErrorModel(p01=min(1.0, 1e-3 * s), p10=min(1.0, 4e-3 * s)),
        lambda s: BitErrorModel(bit_rates=[min(1.0, r * s) for r in (1e-4, 1e-3, 1e-2, 0, 2e-3)]),
        lambda s: BitErrorModel(ber=min(1.0, 1e-3 * s), protected_bits=(1,)),
    ],
)
def test_nested_for_non_uniform_models(make) -> None:
    codes = random_codes(100_000, bits=5, seed=4)
    sets = [mask_positions(sample_mask(codes, 5, make(s), seed=1, trial=0), 5)
            for s in (0.1, 1, 10, 60, 300, 1000)]
    for lo, hi in zip(sets, sets[1:]):
        assert lo <= hi
    assert len(sets[1]) > 0


def test_nested_stuck_cells() -> None:
    prev1 = prev0 = None
    for s in (1e-4, 1e-3, 1e-2, 0.1, 0.5):
        at1, at0 = stuck_cells(FaultKey(9, 0), s, None)
        if prev1 is not None:  # old stuck cells stay stuck, at the same value
            assert (at1[prev1]).all() and (at0[prev0]).all()
        prev1, prev0 = at1, at0


def test_same_key_same_mask_and_other_keys_differ(codes8: torch.Tensor) -> None:
    m = BitErrorModel(ber=1e-3)

    def draw(**kw):
        key = dict(seed=1, trial=0, name="a") | kw
        return sample_mask(codes8, 8, m, **key)

    a, b = draw(), draw()
    assert torch.equal(a.index, b.index) and torch.equal(a.xor, b.xor)
    for kw in (dict(trial=1), dict(seed=2), dict(name="b"), dict(step=1)):
        assert not torch.equal(draw(**kw).index, a.index), kw
    # a plain int is FaultKey(seed=int, trial=0)
    x = inject(codes8, 8, m, 11)
    assert torch.equal(x, inject(codes8, 8, m, FaultKey(seed=11, trial=0)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_same_mask_on_cuda(codes8: torch.Tensor) -> None:
    for m in (BitErrorModel(ber=1e-3), BitErrorModel(p01=1e-3, p10=1e-2, stuck_at=1e-3)):
        cpu = sample_mask(codes8, 8, m, seed=1, trial=2)
        gpu = sample_mask(codes8.cuda(), 8, m, seed=1, trial=2)
        assert gpu.index.is_cuda
        assert torch.equal(cpu.index, gpu.index.cpu()) and torch.equal(cpu.xor, gpu.xor.cpu())
        c = codes8.cuda()
        apply_mask_(c, gpu)
        assert torch.equal(c.cpu(), inject(codes8, 8, m, FaultKey(1, 2)))


# -- masks, dtypes ------------------------------------------------------------------


def test_apply_twice_restores(codes8: torch.Tensor) -> None:
    original = codes8.clone()
    codes = codes8.clone()
    m = BitErrorModel(p01=1e-2, p10=0.1, stuck_at=1e-2)
    mask = inject_(codes, 8, m, KEY)
    assert mask.nbits_flipped > 0 and not torch.equal(codes, original)
    apply_mask_(codes, mask)
    assert torch.equal(codes, original)
    out = inject(original, 8, m, KEY)  # out of place leaves the input alone
    assert torch.equal(original, codes8) and not torch.equal(out, original)


def test_int32_codes_16_bits() -> None:
    codes = random_codes(700_000, bits=16, seed=5, dtype=torch.int32)  # 1.12e7 bits
    out = inject(codes, 16, BitErrorModel(ber=1e-2, protected_bits=(-1,)), KEY)
    assert out.dtype == torch.int32
    assert int(out.min()) >= 0 and int(out.max()) < 2**16
    f = flipped(codes, out, 16)
    assert not f[:, 15].any()
    assert_rate(f[:, :15].sum(), f[:, :15].size, 1e-2, "int32/16-bit")


@pytest.mark.parametrize("bits", [1, 3, 5])
def test_narrow_codes_stay_in_range(bits: int) -> None:
    codes = random_codes(400_000, bits=bits, seed=bits)
    out = inject(codes, bits, BitErrorModel(ber=0.25), KEY)
    assert int(out.max()) < 2**bits
    f = flipped(codes, out, bits)
    assert_rate(f.sum(), f.size, 0.25, f"bits={bits}")


def test_multidimensional_codes_and_empty() -> None:
    codes = random_codes(6 * 50 * 7, seed=2).reshape(6, 50, 7)
    out = inject(codes, 8, BitErrorModel(ber=0.1), KEY)
    assert out.shape == codes.shape
    flat = inject(codes.reshape(-1), 8, BitErrorModel(ber=0.1), KEY)
    assert torch.equal(out.reshape(-1), flat)
    empty = torch.zeros(0, dtype=torch.uint8)
    assert sample_mask(empty, 8, BitErrorModel(ber=0.5), seed=0, trial=0).nbits_flipped == 0


def test_bad_codes_rejected() -> None:
    m = BitErrorModel(ber=0.1)
    with pytest.raises(MCELError, match="dtype"):
        inject(torch.zeros(4), 8, m, 0)
    with pytest.raises(MCELError, match="bits"):
        inject(torch.zeros(4, dtype=torch.uint8), 9, m, 0)
    with pytest.raises(MCELError, match="contiguous"):
        inject_(torch.zeros(4, 4, dtype=torch.uint8).t(), 8, m, 0)
    with pytest.raises(MCELError, match="seed"):
        FaultKey(seed=-1)
    with pytest.raises(MCELError, match="bit_rates"):
        inject(torch.zeros(4, dtype=torch.uint8), 8, BitErrorModel(bit_rates=[0.1] * 4), 0)
    with pytest.raises(MCELError, match="protected bit 8"):
        inject(torch.zeros(4, dtype=torch.uint8), 8, BitErrorModel(ber=0.1, protected_bits=8), 0)


def test_ladder_matches_its_rate_directly() -> None:
    """The ladder alone, across the sparse/dense boundary (1/16) and at the extremes."""
    n = 10_000_000
    key = FaultKey(3)
    for top in (1e-9, 1e-5, 0.03, 0.0625, 0.07, 0.9999):
        pos = sample_ladder(*key.rngs((0, 1)), n, top)
        assert np.all(np.diff(pos) > 0) and (pos.size == 0 or 0 <= pos[0] <= pos[-1] < n)
        assert_rate(pos.size, n, top, f"ladder top={top}")
    pos = sample_ladder(*key.rngs((0, 1)), n, 1.0)
    assert pos.size == n


# -- error model --------------------------------------------------------------------


BAD_RATES = [float("nan"), -1e-3, 1.5, float("inf"), "0.1", True]


@pytest.mark.parametrize(
    ("field", "bad"),
    [(f, b) for f in ("ber", "p01", "p10", "stuck_at", "bit_rates") for b in BAD_RATES]
    + [("bit_rates", None)],  # None means "not given" except inside bit_rates
)
def test_bad_rates_rejected(field: str, bad) -> None:
    kw = {field: [0.1, bad] if field == "bit_rates" else bad}
    with pytest.raises(MCELError) as err:
        BitErrorModel(**kw)
    msg = str(err.value)
    assert "\n" not in msg and ("[0, 1]" in msg or "no rate" in msg)
    if bad is not None:
        assert repr(bad) in msg


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        (dict(), "no rate"),
        (dict(ber=0.1, p01=0.1), "either ber"),
        (dict(bit_rates=[0.1], p10=0.1), "bit_rates"),
        (dict(bit_rates=[]), "empty"),
        (dict(ber=0.1, targets=("weights", "gradients")), "targets"),
        (dict(ber=0.1, targets=()), "targets"),
        (dict(ber=0.1, mode="sometimes"), "mode"),
        (dict(stuck_value=1), "no rate|stuck_value"),
        (dict(stuck_at=0.1, stuck_value=2), "stuck_value"),
        (dict(ber=0.1, stuck_value=0), "stuck_value needs"),
        (dict(ber=0.1, protected_bits=("7",)), "protected"),
        (dict(ber=0.1, protected_bits=7.0), "protected"),
        (dict(ber=0.1, targets=5), "targets"),
        (dict(ber=0.1, include=[1]), "include"),
        (dict(stuck_at=0.1, stuck_value=0.5), "stuck_value"),
        (dict(stuck_at=0.1, stuck_value=True), "stuck_value"),
    ],
)
def test_bad_models_rejected(kw, match: str) -> None:
    with pytest.raises(MCELError, match=match):
        BitErrorModel(**kw)


def test_model_value_semantics() -> None:
    a = BitErrorModel(ber=1e-3, protected_bits=[7, 7], include=["conv*"])
    assert a == BitErrorModel(1e-3, protected_bits=(7,), include="conv*")
    assert len({a, BitErrorModel(1e-3, protected_bits=(7,), include=("conv*",))}) == 1
    assert BitErrorModel(ber=0).max_rate() == 0.0  # ber=0 is a valid, error-free model
    assert BitErrorModel(p01=1e-3, p10=1e-2, stuck_at=0.2).max_rate() == 0.2
    assert a.with_ber(0.5) == BitErrorModel(0.5, protected_bits=(7,), include=("conv*",))
    with pytest.raises(MCELError, match="uniform"):
        BitErrorModel(p01=1e-3).with_ber(1e-2)
    with pytest.raises(MCELError):
        a.with_ber(2.0)


@pytest.mark.parametrize(
    "model",
    [
        BitErrorModel(ber=1e-3),
        BitErrorModel(ber=0.0),
        BitErrorModel(p01=1e-3, p10=1e-2, protected_bits=(7, -2)),
        BitErrorModel(bit_rates=(0.0, 1e-4, 1e-3), mode="transient"),
        BitErrorModel(stuck_at=1e-3, stuck_value=1, targets=("weights", "biases")),
        BitErrorModel(ber=1e-5, stuck_at=1e-4, include=("fc*",), exclude=("fc.bias",)),
    ],
)
def test_serialisation_round_trips(model: BitErrorModel) -> None:
    assert BitErrorModel.from_dict(json.loads(json.dumps(model.to_dict()))) == model
    assert parse_error_model(model.describe()) == model


def test_parser() -> None:
    assert parse_error_model("ber=1e-3") == BitErrorModel(ber=1e-3)
    assert parse_error_model("p01=1e-3, p10=1e-2") == BitErrorModel(p01=1e-3, p10=1e-2)
    assert parse_error_model("ber=1e-2,protected=7") == BitErrorModel(1e-2, protected_bits=(7,))
    assert parse_error_model("ber=1e-2,protected=7,6").protected_bits == (6, 7)
    m = parse_error_model("stuck_at=1e-3,stuck_value=1")
    assert (m.stuck_at, m.stuck_value) == (1e-3, 1)
    assert parse_error_model("stuck_at=0.1,stuck_value=none").stuck_value is None
    assert parse_error_model("bit_rates=0,0,1e-3").bit_rates == (0.0, 0.0, 1e-3)
    with pytest.raises(MCELError, match="did you mean 'ber'"):
        parse_error_model("bre=1e-3")
    for bad in ("", "ber", "ber=abc", "ber=1e-3,ber=1e-2", "ber=1,2", "ber=nan", "ber=2"):
        with pytest.raises(MCELError):
            parse_error_model(bad)


def test_applies_to() -> None:
    m = BitErrorModel(ber=0.1, targets=("weights", "biases"), include=("conv*", "fc*"),
                      exclude=("fc2*",))
    assert m.applies_to("conv1.weight")
    assert m.applies_to("fc1.bias", "biases")
    assert not m.applies_to("fc2.weight")
    assert not m.applies_to("bn1.weight")
    assert not m.applies_to("conv1.weight", "activations")
    assert BitErrorModel(ber=0.1).applies_to("anything")


# -- property test ------------------------------------------------------------------

rates = st.sampled_from([0.0, 1e-6, 1e-3, 0.05, 0.0625, 0.3, 0.9, 1.0]) | st.floats(0, 1)


@st.composite
def cases(draw):
    wide = draw(st.booleans())
    bits = draw(st.integers(1, 16 if wide else 8))
    n = draw(st.integers(0, 300))
    codes = torch.tensor(
        draw(st.lists(st.integers(0, 2**bits - 1), min_size=n, max_size=n)),
        dtype=torch.int32 if wide else torch.uint8,
    )
    kind = draw(st.sampled_from(["ber", "asym", "bit_rates"]))
    if kind == "ber":
        kw = dict(ber=draw(rates))
    elif kind == "asym":
        kw = dict(p01=draw(rates), p10=draw(rates))
    else:
        kw = dict(bit_rates=draw(st.lists(rates, min_size=bits, max_size=bits)))
    if draw(st.booleans()):
        kw |= dict(stuck_at=draw(rates), stuck_value=draw(st.sampled_from([0, 1, None])))
    prot = draw(st.lists(st.integers(-bits, bits - 1), max_size=2))
    key = FaultKey(draw(st.integers(0, 2**32)), draw(st.integers(0, 5)), draw(st.text(max_size=4)))
    return codes, bits, BitErrorModel(**kw, protected_bits=prot), key


@settings(max_examples=150, deadline=None)
@given(cases())
def test_inject_restores_and_stays_in_range(case) -> None:
    codes, bits, model, key = case
    original = codes.clone()
    mask = inject_(codes, bits, model, key)
    assert codes.numel() == 0 or 0 <= int(codes.min()) <= int(codes.max()) < 2**bits
    assert flipped(original, codes, bits).sum() == mask.nbits_flipped
    assert mask.index.unique().numel() == mask.index.numel()
    prot = model.protected_mask(bits)
    assert not flipped(original, codes, bits)[:, prot].any()
    apply_mask_(codes, mask)
    assert torch.equal(codes, original)
