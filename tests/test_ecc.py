"""SEC-DED over stored words (error-model key ``ecc=K``, mcel.faults.ecc)."""

import numpy as np
import pytest
import torch
from torch import nn

from mcel.engine import MemoryImage, state_digest
from mcel.errors import MCELError
from mcel.evaluate import evaluate, t_interval
from mcel.faults import BitErrorModel, parse_error_model
from mcel.faults.ecc import check_bits, correct
from mcel.faults.sampler import FlipMask
from mcel.quant import quantize_model


def _mask(index, xor, total=64):
    return FlipMask(torch.tensor(index, dtype=torch.int64), torch.tensor(xor, dtype=torch.uint8),
                    sum(bin(x).count("1") for x in xor), total)


def test_one_flip_per_word_is_corrected_two_are_kept():
    # two int4 tensors of 16 codes (64 bits each); the second starts at address 64
    a = _mask([0, 5], [0b0001, 0b0010])   # addresses 0 and 21: words 0 and 1 of 16 bits
    b = _mask([3], [0b1000])              # address 64 + 15 = 79: word 4
    kept = correct([(0, 4, a), (64, 4, b)], k=16, rate=0.0, seed=0, trial=0)
    assert [m.nbits_flipped for m in kept] == [0, 0]  # one flip in each word: all corrected
    a2 = _mask([0, 1], [0b0001, 0b0100])  # addresses 0 and 6: both in word 0
    kept = correct([(0, 4, a2), (64, 4, b)], k=16, rate=0.0, seed=0, trial=0)
    assert kept[0].index.tolist() == [0, 1] and kept[0].xor.tolist() == [1, 4]
    assert kept[1].nbits_flipped == 0
    # a word across two tensors: a first of 3 int4 codes (addresses 0-11), the second
    # from address 12; addresses 2 and 13 both lie in word 0
    kept = correct([(0, 4, _mask([0], [0b0100], 12)), (12, 4, _mask([0], [0b0010]))],
                   k=16, rate=0.0, seed=0, trial=0)
    assert [m.nbits_flipped for m in kept] == [1, 1]
    # every check bit failing: a single data flip is no longer correctable
    kept = correct([(0, 4, a), (64, 4, b)], k=16, rate=1.0, seed=0, trial=0)
    assert [m.nbits_flipped for m in kept] == [2, 1]


def test_a_check_bit_that_fails_at_a_lower_rate_fails_at_every_higher_one():
    index = list(range(0, 4096, 16))  # one flip in each of 256 words of 64 bits
    masks = [(0, 4, _mask(index, [1] * len(index), total=4096 * 4))]
    kept = {r: set(correct(masks, k=64, rate=r, seed=3, trial=7)[0].index.tolist())
            for r in (0.01, 0.05, 0.2)}
    assert kept[0.01] <= kept[0.05] <= kept[0.2] and len(kept[0.2]) > len(kept[0.01])


@pytest.mark.parametrize("k", [64, 16])
def test_the_residual_rate_is_what_sec_ded_leaves(k):
    """A data bit stays flipped when its word holds another fault among its other
    k + r - 1 bits: residual rate p (1 - (1 - p)^(k + r - 1)), checked against the
    99.9% t-interval of the measured rates over trials."""
    torch.manual_seed(0)
    net = quantize_model(nn.Linear(256, 256, bias=False), "int8").eval()
    p, trials = 0.01, 30
    em = BitErrorModel(ber=p, ecc=k)
    _assert_sec_ded_residual(net, em, p, k, trials)


def _assert_sec_ded_residual(net, em, p: float, k: int, trials: int) -> None:
    """The measured rates of ``trials`` trials hold SEC-DED's residual rate at ``p`` in
    their 99.9% t-interval."""
    rates = []
    with MemoryImage(net, em) as image:
        for t in range(trials):
            rates.append(image.inject(em, seed=1, trial=t).empirical_rate)
            image.restore()
    expected = p * (1 - (1 - p) ** (k + check_bits(k) - 1))
    _, lo, hi = t_interval(rates, confidence=0.999)
    assert lo <= expected <= hi, (expected, lo, hi)


@pytest.mark.parametrize("spec", ["ber=0,ecc=16", "ber=0,burst=4", "ber=0,burst=2,ecc=16"])
def test_word_and_burst_evaluations_restore_the_model_and_batched_trials_agree(spec):
    torch.manual_seed(0)
    net = quantize_model(nn.Sequential(nn.Linear(32, 64, bias=False), nn.ReLU(),
                                       nn.Linear(64, 4, bias=False)), "int4").eval()
    x = torch.randn(200, 32)
    y = net(x).argmax(1).detach()
    before = state_digest(net)
    em = parse_error_model(spec)
    one = evaluate(net, x, y, [0.02, 0.1], em, trials=6, seed=2)
    batched = evaluate(net, x, y, [0.02, 0.1], em, trials=6, seed=2, trial_batch=3)
    assert [r.accuracies for r in one.results] == [r.accuracies for r in batched.results]
    assert min(one.results[1].accuracies) < 0.95  # the faults do change predictions
    rates = [np.mean(r.empirical_rates) for r in one.results]
    if em.ecc:  # SEC-DED leaves fewer flips than the model draws
        assert rates[0] < 0.02
    else:  # bursts keep the per-bit rate
        assert all(abs(rate - r.ber) < 0.5 * r.ber for rate, r in zip(rates, one.results))
    assert state_digest(net) == before


def test_ecc_specs_round_trip_and_bad_ones_are_one_line():
    em = parse_error_model("ber=1e-3,ecc=64")
    assert em.ecc == 64 and parse_error_model(em.describe()) == em
    assert np.isclose(BitErrorModel(p01=1e-3, p10=3e-3).mean_rate(), 2e-3)
    for spec, needle in [("ber=1e-3,ecc=2", "an integer in"),
                         ("ber=1e-3,ecc=64,mode=transient", "persistent faults"),
                         ("ber=1e-3,ecc=64,targets=activations", "persistent faults")]:
        with pytest.raises(MCELError, match=needle):
            parse_error_model(spec)


def test_an_error_map_takes_ecc_too(tmp_path):
    """A map of one flip rate p everywhere, with ecc=16: the residual rate of SEC-DED at
    p (check bits at the map's mean rate); shift=1 with ecc is refused."""
    from mcel.faults.error_map import write_map

    p, trials, k = 0.02, 30, 16
    write_map(str(tmp_path / "chip.npz"), {"p": np.full((64, 4096), p)})  # 262,144 cells
    torch.manual_seed(0)
    net = quantize_model(nn.Linear(256, 128, bias=False), "int8").eval()  # 262,144 bits
    em = parse_error_model(f"map={tmp_path / 'chip.npz'},ecc={k},persistent=0")
    assert em.ecc == k and np.isclose(em.mean_rate(), p)
    _assert_sec_ded_residual(net, em, p, k, trials)
    spread = parse_error_model(f"map={tmp_path / 'chip.npz'},ecc={k},ecc_interleave=4")
    assert spread.ecc_interleave == 4 and parse_error_model(spread.describe()) == spread
    with pytest.raises(MCELError, match="ecc with shift=1 is not modelled"):
        parse_error_model(f"map={tmp_path / 'chip.npz'},ecc=64,shift=1")


def test_sec_ded_corrects_almost_no_burst_of_two():
    """A burst of 2 inside one 64-bit word is two faults: detected, not corrected; only
    bursts that straddle two words (1 start in 64) are fixed, unless either word holds
    another fault. So the residual rate is p(k-1)/k plus at most p/k (1 - (1-p)^(2(k+r))),
    where independent flips leave p (1 - (1 - p)^(k+r-1)), 7x less here."""
    torch.manual_seed(0)
    net = quantize_model(nn.Linear(256, 256, bias=False), "int8").eval()
    p, k, r = 2e-3, 64, check_bits(64)
    em = BitErrorModel(ber=p, burst=2, ecc=k)
    rates = []
    with MemoryImage(net, em) as image:
        for t in range(30):
            rates.append(image.inject(em, seed=1, trial=t).empirical_rate)
            image.restore()
    _, lo, hi = t_interval(rates, confidence=0.999)
    low, high = p * (k - 1) / k, p * (k - 1) / k + p / k * (1 - (1 - p) ** (2 * (k + r)))
    assert lo <= high and hi >= low, (lo, hi, low, high)
    assert lo > 5 * p * (1 - (1 - p) ** (k + r - 1))


def test_interleaving_as_wide_as_the_burst_gives_sec_ded_back():
    """With ecc_interleave=I >= L the bits of a word lie I addresses apart, so no burst
    hits a word twice and a word's bits fail independently at p: the residual rate is
    SEC-DED's for independent flips, p (1 - (1 - p)^(k + r - 1)), in the 99.9% interval."""
    torch.manual_seed(0)
    net = quantize_model(nn.Linear(256, 256, bias=False), "int8").eval()
    p, k = 1e-2, 64
    for ways in (2, 3):
        em = BitErrorModel(ber=p, burst=2, ecc=k, ecc_interleave=ways)
        _assert_sec_ded_residual(net, em, p, k, trials=30)
