"""Multi-bit upsets (error-model key ``burst=L``): L adjacent stored bits per fault event."""

import numpy as np
import pytest
import torch

from mcel.errors import MCELError
from mcel.faults import BitErrorModel, parse_error_model
from mcel.faults.sampler import sample_mask


def _positions(codes, bits, em, trial, name="w"):
    """Flat bit positions (code * bits + bit) flipped by one draw."""
    mask = sample_mask(codes, bits, em, seed=5, trial=trial, name=name)
    idx, xor = mask.index.numpy(), mask.xor.numpy().astype(np.int64)
    return np.sort(np.concatenate([idx[(xor >> b) & 1 == 1] * bits + b for b in range(bits)]))


def test_every_bit_flips_at_exactly_ber_edges_included():
    """Per bit position of a 64-bit tensor, flips over 4,000 trials are Binomial(4000,
    ber): each count inside its 99.99% normal interval (Bonferroni over the 64, family
    error < 1%). A tensor cut from a memory without the bursts that start before it
    would flip its first bit at only 1 - (1 - ber)^(1/3) = 7.2% here."""
    codes = torch.zeros(16, dtype=torch.uint8)
    ber, trials, em = 0.2, 4000, BitErrorModel(ber=0.2, burst=3)
    counts = np.zeros(64)
    for t in range(trials):
        counts[_positions(codes, 4, em, t)] += 1
    sd = np.sqrt(trials * ber * (1 - ber))
    assert np.all(np.abs(counts - trials * ber) < 3.9 * sd), counts / trials


def test_flips_come_in_runs_of_the_burst_length_nested_across_bers():
    codes = torch.zeros(50_000, dtype=torch.uint8)  # 200,000 int4 bits
    em = BitErrorModel(ber=1e-3, burst=4)
    pos = _positions(codes, 4, em, trial=0)
    breaks = np.flatnonzero(np.diff(pos) != 1)
    runs = np.diff(np.concatenate([[-1], breaks, [pos.size - 1]]))
    inner = runs[1:-1]  # the first and last run may be cut by the tensor's edges
    assert inner.size > 20 and np.all(inner >= 4) and np.mean(inner == 4) > 0.95
    assert abs(pos.size / 200_000 - 1e-3) < 5e-4
    low = set(_positions(codes, 4, em.at_rate(2e-4), 0).tolist())
    assert low and low <= set(pos.tolist()) and len(low) < pos.size
    # burst=1 is the independent model itself (same key, same flips)
    one = BitErrorModel(ber=1e-3, burst=1)
    plain = _positions(codes, 4, BitErrorModel(ber=1e-3), 0)
    assert np.array_equal(_positions(codes, 4, one, 0), plain)
    assert not np.array_equal(_positions(codes, 4, one, 0), pos)


def test_protected_bits_stay_clean_inside_bursts():
    codes = torch.zeros(20_000, dtype=torch.uint8)
    pos = _positions(codes, 8, BitErrorModel(ber=0.01, burst=5, protected_bits=(7,)), 0)
    assert pos.size > 0 and not np.any(pos % 8 == 7)
    assert abs(pos.size / (20_000 * 7) - 0.01) < 3e-3  # the others still at ber


def test_burst_specs_round_trip_and_bad_ones_are_one_line():
    em = parse_error_model("ber=1e-3,burst=4,ecc=64,ecc_interleave=4")
    assert em.burst == 4 and em.ecc_interleave == 4 and parse_error_model(em.describe()) == em
    assert BitErrorModel.from_dict(em.to_dict()) == em
    assert parse_error_model("ber=1e-3").describe() == "ber=0.001"  # burst=1 stays unsaid
    for spec, needle in [("ber=1e-3,burst=0", "an integer in"),
                         ("ber=1e-3,burst=two", "not an integer"),
                         ("p01=1e-3,burst=2", "burst needs a uniform rate"),
                         ("bit_rates=0.1,0.1,burst=2", "burst needs a uniform rate"),
                         ("ber=1e-3,ecc_interleave=4", "give ecc=K too"),
                         ("ber=1e-3,ecc=64,ecc_interleave=0", "an integer in")]:
        with pytest.raises(MCELError, match=needle):
            parse_error_model(spec)
