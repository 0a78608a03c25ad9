"""Brevitas models through mcel's engine (the optional extra: pip install 'mcel[brevitas]')."""

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

qnn = pytest.importorskip("brevitas.nn", reason="brevitas is not installed: "
                          "pip install 'mcel[brevitas]' to run the Brevitas tests")
bq = pytest.importorskip("brevitas.quant")

from mcel import MCELError, MCELoss  # noqa: E402
from mcel.data import load_dataset  # noqa: E402
from mcel.engine import MemoryImage, state_digest  # noqa: E402
from mcel.evaluate import evaluate  # noqa: E402
from mcel.faults import BitErrorModel  # noqa: E402
from mcel.quant import set_format  # noqa: E402
from mcel.quant.formats import decode  # noqa: E402


def _net(conv_bits=4, seed=0, **linear):
    torch.manual_seed(seed)
    linear.setdefault("weight_quant", bq.Int8WeightPerChannelFloat)
    return nn.Sequential(
        qnn.QuantIdentity(return_quant_tensor=True),
        qnn.QuantConv2d(1, 4, 3, padding=1, weight_bit_width=conv_bits, return_quant_tensor=True),
        qnn.QuantReLU(), nn.Flatten(),
        qnn.QuantLinear(4 * 8 * 8, 10, bias=True, input_quant=bq.Int8ActPerTensorFloat, **linear),
    ).eval()


def _binary_net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), qnn.QuantLinear(
        64, 10, bias=False, weight_quant=bq.SignedBinaryWeightPerTensorConst)).eval()


@pytest.mark.parametrize("fmt", ["twos_complement", "sign_magnitude", "offset_binary"])
def test_codes_are_brevitas_integer_weights_and_the_clean_forward_is_brevitas_own(fmt):
    net = _net()
    set_format(net, fmt)
    x = torch.randn(16, 1, 8, 8)
    clean = net(x)
    with MemoryImage(net) as image:
        assert torch.equal(net(x), clean)  # the image's values are Brevitas' own, bit for bit
        for layer, slot in image.weights:
            q = layer.quant_weight()
            assert slot.qt.bits == int(q.bit_width) and slot.qt.fmt == fmt
            assert torch.equal(decode(slot.qt.codes, slot.qt.bits, fmt), q.int().long())
            assert torch.equal(slot.values, q.value)


def test_binary_weights_are_one_bit_codes():
    net = _binary_net()
    x = torch.randn(8, 1, 8, 8)
    clean = net(x)
    with MemoryImage(net) as image:
        (layer, slot), = image.weights
        assert (slot.qt.bits, slot.qt.scheme) == (1, "binary")
        assert torch.equal(slot.qt.codes.bool(), layer.quant_weight().int() > 0)  # 1 = +1
        assert torch.equal(net(x), clean)


@pytest.mark.parametrize("make, layer, bits", [(_net, "1", 4), (_net, "4", 8),
                                               (_binary_net, "1", 1)])
def test_injected_rates_are_within_binomial_intervals(make, layer, bits):
    net = make()
    rates = tuple(0.01 * (1 + b % 3) for b in range(bits))
    em = BitErrorModel(bit_rates=rates, include=(layer,))
    counts, n = np.zeros(bits, dtype=np.int64), 0
    with MemoryImage(net, em) as image:
        slots = [s for s in image.slots(em)]
        assert slots and all(s.qt.bits == bits for s in slots)
        for trial in range(20):
            clean = [s.qt.codes.clone() for s in slots]
            image.inject(em, seed=2, trial=trial)
            for c0, s in zip(clean, slots):
                diff = (c0 ^ s.qt.codes).view(-1).long()
                counts += [int(((diff >> b) & 1).sum()) for b in range(bits)]
                n += diff.numel()
            image.restore()
    for b, (k, rate) in enumerate(zip(counts, rates)):
        lo, hi = stats.binomtest(int(k), n, rate).proportion_ci(0.999)
        assert lo <= rate <= hi, f"bit {b}: {k}/{n} flips, rate {rate}"


def test_evaluation_restores_a_brevitas_model_bit_for_bit():
    net = _net()
    x, y = torch.randn(64, 1, 8, 8), torch.randint(0, 10, (64,))
    before, clean = state_digest(net), net(x)
    r = evaluate(net, x, y, [0.0, 0.05], BitErrorModel(ber=0.05, targets=("weights", "biases")),
                 trials=3)
    assert r.results[0].accuracies == [r.clean_accuracy] * 3
    assert r.results[1].mean != r.clean_accuracy and 0.04 < r.results[1].empirical_rates[0] < 0.06
    assert state_digest(net) == before and torch.equal(net(x), clean)
    assert all("inner_forward_impl" not in m.__dict__ for m in net.modules())


def test_brevitas_mistakes_are_one_line_each():
    x, y = torch.randn(4, 1, 8, 8), torch.zeros(4, dtype=torch.long)
    wide = _net(conv_bits=16)
    with pytest.raises(MCELError, match="brevitas layer '1': its weights are 16-bit; mcel "
                                        "injects into Brevitas weights of 1 to 8 bits"):
        evaluate(wide, x, y, [0.01], trials=1)
    full = _net(weight_quant=bq.Int8WeightPerTensorFloat, weight_narrow_range=False)
    with torch.no_grad():  # a weight at -max: level -128 of a full-range quantizer
        full[4].weight[0, 0] = -full[4].weight.abs().max() * 2
    set_format(full, "sign_magnitude")
    with pytest.raises(MCELError, match="level -128 does not fit 8-bit sign_magnitude"):
        evaluate(full, x, y, [0.01], trials=1)
    set_format(full, "twos_complement")
    evaluate(full, x, y, [0.01], trials=1)  # two's complement holds it
    with pytest.raises(MCELError, match="transient and activation faults.*brevitas layer"):
        evaluate(_net(), x, y, [0.01], "ber=0.01,targets=activations", trials=1)
    with pytest.raises(MCELError, match="Brevitas layers \\(here '1'\\) do not support"):
        evaluate(_net(), x, y, [0.01], trials=2, trial_batch=2)
    for quant, needle in [(bq.ShiftedUint8WeightPerTensorFloat, "unsigned or have a zero point"),
                          (None, "not integers")]:
        with pytest.raises(MCELError, match=f"brevitas layer '4': its weights are {needle}"):
            evaluate(_net(weight_quant=quant), x, y, [0.01], trials=1)


def test_mcel_loss_trains_a_brevitas_model_unchanged():
    x, y = load_dataset("digits", "train", limit=512)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), qnn.QuantLinear(64, 32, bias=True, weight_bit_width=4),
                        qnn.QuantReLU(), qnn.QuantLinear(32, 10, bias=True, weight_bit_width=4))
    loss_fn = MCELoss(margin=1.0)
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = loss_fn(net(x), y)
        loss.backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0
                   for p in (net[1].weight, net[3].weight))
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    xt, yt = load_dataset("digits", "test")
    r = evaluate(net.eval(), xt, yt, [0.0], trials=1)
    assert r.clean_accuracy > 0.8


def test_brevitas_conv1d_weights_are_stored_codes():
    torch.manual_seed(0)
    net = nn.Sequential(qnn.QuantConv1d(1, 4, 3, weight_bit_width=4), nn.Flatten(),
                        qnn.QuantLinear(32, 3, bias=True)).eval()
    x = torch.randn(8, 1, 10)
    clean = net(x)
    em = BitErrorModel(ber=0.05, include=("0",))
    with MemoryImage(net, em) as image:
        assert [layer for layer, _ in image.weights] == [net[0], net[2]]
        layer, slot = image.weights[0]
        assert slot.qt.bits == 4
        assert torch.equal(decode(slot.qt.codes, 4, "twos_complement"),
                           layer.quant_weight().int().long())
        image.inject(em, seed=0, trial=0)
        assert not torch.equal(net(x), clean)
        image.restore()
        assert torch.equal(net(x), clean)


def test_quantize_model_leaves_brevitas_layers_to_brevitas():
    """A model with Brevitas layers and plain ones: mcel quantizes the plain ones only
    and keeps the Brevitas layers (their own quantizers, read by the engine as they
    are) instead of replacing them with its own."""
    from mcel.quant import QuantLinear, quantize_model
    from mcel.quant.stored import stored_layers

    torch.manual_seed(0)
    brev = qnn.QuantLinear(16, 8, bias=True, weight_bit_width=4)
    net = nn.Sequential(brev, nn.ReLU(), nn.Linear(8, 3))
    quantize_model(net, "int8")
    assert net[0] is brev and isinstance(net[2], QuantLinear)
    assert [(s.name, s.source.name) for s in stored_layers(net.eval())] == [
        ("0", "brevitas"), ("2", "mcel")]
    assert quantize_model(brev, "int8") is brev  # a bare Brevitas layer too
