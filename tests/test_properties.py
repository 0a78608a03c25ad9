"""Property-based tests (hypothesis): quantization, config parsing, safe loading."""

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mcel import MCELError
from mcel.faults import BitErrorModel, FaultKey, apply_mask_, sample_mask
from mcel.quant import INT_BITS, decode, encode, quantize
from mcel.train import TrainConfig

FMTS = ["twos_complement", "sign_magnitude", "offset_binary"]
SCHEMES = [("int", b) for b in INT_BITS] + [("binary", 1), ("ternary", 2)]
settings.register_profile("ci", max_examples=60, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci")

floats = st.floats(min_value=-1e4, max_value=1e4, allow_nan=False, width=32)


@given(st.lists(floats, min_size=1, max_size=64), st.sampled_from(SCHEMES),
       st.sampled_from(FMTS), st.sampled_from(["tensor", "channel"]))
def test_quantize_dequantize_quantize_is_stable(values, scheme_bits, fmt, gran):
    scheme, bits = scheme_bits
    w = torch.tensor(values).reshape(len(values), 1)
    qt = quantize(w, bits, scheme=scheme, fmt=fmt, granularity=gran)
    assert int(qt.codes.min()) >= 0 and int(qt.codes.max()) < 2**bits
    assert torch.isfinite(qt.dequantize()).all()
    again = quantize(qt.dequantize(), bits, scheme=scheme, fmt=fmt, granularity=gran)
    assert torch.equal(again.codes, qt.codes)


def test_subnormal_weights_quantize_stably():
    # found by the property above: 1.4e-45 / 3 underflows to a zero scale
    w = torch.tensor([[1.401298464324817e-45]])
    qt = quantize(w, 3, scheme="int", fmt="twos_complement", granularity="tensor")
    assert float(qt.scale) > 0 and float(qt.dequantize()) == 0.0
    again = quantize(qt.dequantize(), 3, scheme="int", fmt="twos_complement")
    assert torch.equal(again.codes, qt.codes)


@given(st.sampled_from(INT_BITS), st.sampled_from(FMTS), st.data())
def test_encode_decode_round_trip(bits, fmt, data):
    qmax = 2 ** (bits - 1) - 1
    levels = torch.tensor(data.draw(st.lists(st.integers(-qmax, qmax), min_size=1, max_size=50)))
    assert torch.equal(decode(encode(levels, bits, fmt), bits, fmt), levels)


@given(st.integers(1, 2000), st.sampled_from([1, 2, 4, 8, 16]),
       st.floats(0, 1, allow_nan=False), st.integers(0, 2**31), st.integers(0, 100))
def test_injection_stays_in_range_and_undoes_exactly(n, bits, p, seed, trial):
    dtype = torch.uint8 if bits <= 8 else torch.int32
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 2**bits, (n,), generator=g, dtype=torch.int64).to(dtype)
    orig = codes.clone()
    mask = sample_mask(codes, bits, BitErrorModel(ber=p), seed=seed, trial=trial, name="w")
    apply_mask_(codes, mask)
    assert int(codes.min()) >= 0 and int(codes.max()) < 2**bits
    flipped = sum(bin(int(a) ^ int(b)).count("1") for a, b in zip(orig.tolist(), codes.tolist()))
    assert flipped == mask.nbits_flipped
    apply_mask_(codes, mask)
    assert torch.equal(codes, orig)


@given(st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-5, 5)))
def test_rates_outside_unit_interval_are_rejected(rate):
    ok = isinstance(rate, (int, float)) and not math.isnan(rate) and 0 <= rate <= 1
    if ok:
        assert BitErrorModel(ber=rate).ber == rate
    else:
        with pytest.raises(MCELError):
            BitErrorModel(ber=rate)


_VALID = {"epochs": st.integers(1, 3), "lr": st.floats(0, 1, exclude_min=True),
          "batch_size": st.integers(1, 512),
          "quant": st.sampled_from(["binary", "ternary", "int2", "int4", "int8", "int16", "float"]),
          "loss": st.sampled_from(["ce", "mcel", "mhl"]),
          "normalize": st.sampled_from(["none", "l2", "std"])}


@given(st.fixed_dictionaries({}, optional=_VALID))
def test_valid_configs_parse_and_round_trip(d):
    cfg = TrainConfig.from_dict(d)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.digest() == TrainConfig.from_dict(cfg.to_dict()).digest()


@given(st.sampled_from(["epochs", "batch_size", "lr", "quant", "loss", "model", "dataset",
                        "train_ber", "margin"]),
       st.one_of(st.text(max_size=8), st.integers(-10, 0), st.just(float("nan")),
                 st.just(float("inf")), st.just(-1.0)))
def test_invalid_config_values_are_mcel_errors(key, value):
    try:
        TrainConfig.from_dict({key: value})
    except MCELError:
        return
    except TypeError:
        pytest.fail(f"{key}={value!r} raised TypeError instead of MCELError")
    # a few values are legitimately valid (e.g. margin=-1.0, train_ber=0); they must validate
    TrainConfig.from_dict({key: value}).validate()


def test_fault_key_streams_are_distinct():
    codes = torch.zeros(100_000, dtype=torch.uint8)
    em = BitErrorModel(ber=0.01)
    a = sample_mask(codes, 8, em, seed=0, trial=0, name="a").index
    b = sample_mask(codes, 8, em, seed=0, trial=0, name="b").index
    assert not torch.equal(a, b)
    assert FaultKey(seed=1, trial=2, name="x") == FaultKey(seed=1, trial=2, name="x")
