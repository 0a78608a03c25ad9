"""Bit errors in the IEEE-754 patterns of plain float models (``weights="float32"`` ...)."""

import copy
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from mcel import MCELError
from mcel.data import load_dataset
from mcel.engine import MemoryImage, state_digest
from mcel.evaluate import evaluate, predicted
from mcel.faults import BitErrorModel
from mcel.quant import QuantSpec, quantize_model
from mcel.quant.floats import FLOAT_FORMATS, decode_float, float_codes

FORMATS = ["float32", "bfloat16", "float16"]


def _net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 8 * 8, 10)).eval()


@pytest.fixture(scope="module")
def digits_net():
    """A float MLP trained on digits (98% test accuracy), with the test split."""
    torch.manual_seed(0)
    x, y = load_dataset("digits", "train")
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    return net.eval(), load_dataset("digits", "test")


def test_codes_are_the_ieee_bit_patterns():
    w = torch.tensor([1.0, -2.5, 0.1, 3.0e-41, float("inf")])
    # float32: the struct module's big-endian bytes, read as one integer
    want = [int.from_bytes(struct.pack(">f", v), "big") for v in w.tolist()]
    assert float_codes(w, "float32").tolist() == want
    # float16: numpy's own half precision
    assert float_codes(w, "float16").tolist() == w.numpy().astype(np.float16).view(
        np.uint16).tolist()
    # bfloat16: the top half of the float32 pattern of a value that bfloat16 holds exactly
    b = torch.tensor([1.0, -2.5, 0.09375])
    assert float_codes(b, "bfloat16").tolist() == [
        int.from_bytes(struct.pack(">f", v), "big") >> 16 for v in b.tolist()]


@pytest.mark.parametrize("fmt", ["bfloat16", "float16"])
def test_every_16_bit_pattern_decodes_and_encodes_back(fmt):
    codes = torch.arange(1 << 16, dtype=torch.int32)
    values = decode_float(codes, fmt)
    finite = ~values.isnan()
    assert torch.equal(float_codes(values[finite], fmt), codes[finite])
    f = FLOAT_FORMATS.get(fmt)  # NaN exactly where the exponent is all ones, mantissa not 0
    exp = (codes >> f.exponent[0]) & ((1 << len(f.exponent_bits)) - 1)
    mant = codes & ((1 << f.exponent[0]) - 1)
    assert torch.equal(~finite, (exp == (1 << len(f.exponent_bits)) - 1) & (mant != 0))


@pytest.mark.parametrize("fmt", FORMATS)
def test_bit_positions_mean_sign_exponent_and_mantissa(fmt):
    f = FLOAT_FORMATS.get(fmt)
    w = float_codes(torch.tensor([0.75]), fmt)  # 1.5 * 2**-1
    assert decode_float(w ^ (1 << f.sign_bit), fmt).item() == -0.75  # sign: the top bit
    assert decode_float(w ^ (1 << f.exponent[0]), fmt).item() == 1.5  # exponent LSB
    assert decode_float(w ^ (1 << (f.exponent[0] - 1)), fmt).item() == 0.5  # mantissa MSB
    # exponent MSB: 1.5 * 2**(bias + 1 - 1) (float16: 49152, else about 2.6e38)
    bias = (1 << (len(f.exponent_bits) - 1)) - 1
    assert decode_float(w ^ (1 << f.exponent[1]), fmt).item() == 1.5 * 2.0 ** bias
    # 1.5 has the exponent 0111..1: its top flip makes all ones, a NaN
    assert decode_float(float_codes(torch.tensor([1.5]), fmt) ^ (1 << f.exponent[1]),
                        fmt).isnan().all()
    assert f.mantissa_bits == tuple(range(f.exponent[0]))


@pytest.mark.parametrize("fmt", FORMATS)
def test_injected_per_bit_rates_are_within_binomial_intervals(fmt):
    f = FLOAT_FORMATS.get(fmt)
    # a rate per position: protected exponent, others 1% .. 4% by position
    rates = tuple(0.0 if b in f.exponent_bits else 0.01 * (1 + b % 4) for b in range(f.bits))
    em = BitErrorModel(bit_rates=rates)
    net = _net()
    counts, n = np.zeros(f.bits, dtype=np.int64), 0
    with MemoryImage(net, em, weights=fmt) as image:
        for trial in range(10):
            clean = [slot.qt.codes.clone() for _, slot in image.weights]
            image.inject(em, seed=1, trial=trial)
            for c0, (_, slot) in zip(clean, image.weights):
                diff = (c0 ^ slot.qt.codes).view(-1).long()
                counts += [int(((diff >> b) & 1).sum()) for b in range(f.bits)]
                n += diff.numel()
                # the values the forward reads are the decoded faulty codes
                assert torch.equal(slot.values.view(-1).isnan(),
                                   decode_float(slot.qt.codes, fmt).view(-1).isnan())
            image.restore()
    for b, (k, rate) in enumerate(zip(counts, rates)):
        if rate == 0:
            assert k == 0, f"protected bit {b} flipped"
        else:
            lo, hi = stats.binomtest(int(k), n, rate).proportion_ci(0.999)
            assert lo <= rate <= hi, f"bit {b}: {k}/{n} flips, rate {rate}"


@pytest.mark.parametrize("fmt", FORMATS)
def test_evaluation_restores_the_model_bit_for_bit(fmt):
    net = _net()
    x = torch.randn(32, 1, 8, 8)
    before, clean = state_digest(net), net(x)
    forward = type(net[0]).forward
    evaluate(net, x, torch.randint(0, 10, (32,)), [0.05], BitErrorModel(
        ber=0.05, targets=("weights", "biases")), trials=3, weights=fmt)
    assert state_digest(net) == before
    assert torch.equal(net(x), clean)
    # the layers are plain again: no forward, no override left on them
    assert all(not {"forward", "weight_override", "bias_override"} & set(m.__dict__)
               for m in net)
    assert type(net[0]).forward is forward
    em = BitErrorModel(ber=0.05)
    with MemoryImage(net, em, weights=fmt) as image:
        values = [slot.values.clone() for _, slot in image.weights]
        image.inject(em, seed=0, trial=1)
        image.restore()
        for v, (_, slot) in zip(values, image.weights):  # exact, NaN patterns included
            assert torch.equal(v.view(torch.int32), slot.values.view(torch.int32))


def test_float32_storage_is_the_model_itself_and_bfloat16_rounds_it(digits_net):
    net, (x, y) = digits_net
    plain = (net(x).argmax(1) == y).float().mean().item()
    r = evaluate(net, x, y, [0.0], weights="float32", trials=1)
    assert r.clean_accuracy == plain
    # independent reference: a copy whose weights are rounded to bfloat16 by torch
    ref = _rounded_copy(net, torch.bfloat16)
    want = (ref(x).argmax(1) == y).float().mean().item()
    assert evaluate(net, x, y, [0.0], weights="bfloat16", trials=1).clean_accuracy == want


def _rounded_copy(net, dtype):
    ref = copy.deepcopy(net)
    for m in ref.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            m.weight.data = m.weight.data.to(dtype).float()
    return ref


@pytest.mark.parametrize("fmt", FORMATS)
def test_exponent_flips_are_catastrophic_and_protecting_the_exponent_keeps_accuracy(
        digits_net, fmt):
    net, (x, y) = digits_net
    f = FLOAT_FORMATS.get(fmt)
    plain = evaluate(net, x, y, [1e-3], BitErrorModel(ber=1e-3), trials=10, weights=fmt)
    safe = evaluate(net, x, y, [1e-3], BitErrorModel(ber=1e-3, protected_bits=f.exponent_bits),
                    trials=10, weights=fmt)
    assert plain.clean_accuracy > 0.95
    # measured: mean 0.17 .. 0.28 unprotected, 0.98 with the exponent protected
    assert plain.results[0].mean < 0.5
    assert safe.results[0].mean > plain.clean_accuracy - 0.01


def test_float_conv1d_and_conv3d_are_stored_and_restored():
    torch.manual_seed(0)
    for conv, x in ((nn.Conv1d(1, 4, 3), torch.randn(16, 1, 10)),
                    (nn.Conv3d(1, 4, 3), torch.randn(16, 1, 3, 3, 3))):
        net = nn.Sequential(conv, nn.Flatten(), nn.LazyLinear(3)).eval()
        with torch.no_grad():
            clean = net(x)
            em = BitErrorModel(ber=0.05, include=("0",))  # the conv alone
            with MemoryImage(net, em, weights="float16") as image:
                assert [layer for layer, _ in image.weights] == [net[0], net[2]]
                stored = net(x)
                image.inject(em, seed=0, trial=0)
                assert not torch.equal(net(x), stored)  # the conv reads its faulty values
                image.restore()
                assert torch.equal(net(x), stored)
            assert torch.equal(net(x), clean)  # float32 again, bit for bit


def test_batched_trials_equal_sequential_trials_on_a_float_model():
    net, x = _net(), torch.randn(64, 1, 8, 8)
    y = net(x).argmax(1)
    em = BitErrorModel(ber=0.01, targets=("weights", "biases"))
    one = evaluate(net, x, y, [0.01], em, trials=4, weights="bfloat16")
    four = evaluate(net, x, y, [0.01], em, trials=4, weights="bfloat16", trial_batch=4)
    assert one.results[0].accuracies == four.results[0].accuracies
    assert one.results[0].empirical_rates == four.results[0].empirical_rates


def test_nan_logits_count_as_wrong():
    logits = torch.tensor([[float("nan"), 0.0], [0.0, 1.0], [float("inf"), 0.0]])
    assert predicted(logits).tolist() == [-1, 1, 0]
    net = nn.Sequential(nn.Linear(2, 2))
    with torch.no_grad():
        net[0].weight.fill_(float("nan"))
    r = evaluate(net, torch.randn(8, 2), torch.zeros(8, dtype=torch.long), [0.0],
                 weights="float32", trials=1)
    assert r.clean_accuracy == 0.0  # argmax alone would call class 0 right


def test_mixed_models_store_quantized_and_float_layers_each_their_way():
    net = quantize_model(_net(), QuantSpec("int4", exclude=("0",)))
    with MemoryImage(net, weights="bfloat16") as image:
        kinds = {slot.name: (slot.qt.scheme, slot.qt.bits) for _, slot in image.weights}
    assert kinds == {"0.weight": ("float", 16), "3.weight": ("int", 4)}
    with MemoryImage(net) as image:  # without a float format only the quantized layer
        assert [slot.name for _, slot in image.weights] == ["3.weight"]


def test_float_model_mistakes_are_one_line_each():
    net, x, y = _net(), torch.randn(4, 1, 8, 8), torch.zeros(4, dtype=torch.long)
    with pytest.raises(MCELError, match="no quantized layers.*weights='float32'"):
        evaluate(net, x, y, [0.01], trials=1)
    with pytest.raises(MCELError, match="unknown float format 'bfloat'.*did you mean"):
        evaluate(net, x, y, [0.01], trials=1, weights="bfloat")
    with pytest.raises(MCELError, match="transient and activation faults.*float layer"):
        evaluate(net, x, y, [0.01], "ber=0.01,mode=transient", trials=1, weights="float32")
    with pytest.raises(MCELError, match="bit_rates has 8 entries but the codes have 16"):
        evaluate(net, x, y, [0.01], BitErrorModel(bit_rates=(0.01,) * 8), trials=1,
                 weights="float16")
    with pytest.raises(MCELError, match="holds torch.bfloat16 weights.*model.float"):
        evaluate(net.to(torch.bfloat16), x.bfloat16(), y, [0.01], trials=1,
                 weights="bfloat16")


def test_importing_mcel_never_imports_brevitas():
    code = ("import sys, mcel, mcel.evaluate, mcel.engine, mcel.quant.stored; "
            "print('brevitas' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


def test_cli_evaluates_a_float_run_in_an_ieee_format(tmp_path, capsys):
    import json

    from mcel.cli import main

    run, js = tmp_path / "run", tmp_path / "eval.json"
    assert main(["train", "--dataset", "digits", "--model", "mlp", "--quant", "float",
                 "--epochs", "1", "--limit-train", "400", "--limit-test", "200",
                 "--out", str(run)]) == 0
    assert main(["evaluate", str(run), "--ber", "0.01", "--trials", "2"]) == 2
    assert "no quantized layers" in capsys.readouterr().err
    assert main(["evaluate", str(run), "--ber", "0,0.01", "--trials", "2", "--weights",
                 "float16", "--json", str(js)]) == 0
    res = json.loads(js.read_text())
    assert res["meta"]["fmt"].endswith("float layers float16")
    assert 0.005 < res["results"][1]["empirical_rates"][0] < 0.015


def test_a_float_transformer_layer_in_its_fast_path_is_refused_not_ignored():
    """In eval, a TransformerEncoderLayer's fast path computes with its Linear weights
    itself: flips stored there would change nothing. mcel says so instead."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True).eval()
    with pytest.raises(MCELError, match="layer 'linear1' is in the model, a "
                                        "TransformerEncoderLayer.*unpack_attention"):
        MemoryImage(layer, BitErrorModel(ber=0.01), weights="float32").__enter__()
