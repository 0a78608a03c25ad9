"""Margin analysis: flip certificates against brute force, survival on a trained model."""

import itertools
import json
import math
import re

import pytest
import torch
from scipy import stats
from torch import nn

from mcel import MCELError
from mcel.analysis import flip_certificate, output_features, survival
from mcel.cli import main
from mcel.data import load_dataset
from mcel.engine import state_digest
from mcel.quant import QuantSpec, quant_layers, quantize_model
from mcel.train import TrainConfig, train

CONFIG = TrainConfig(dataset="digits", model="mlp", model_kwargs={"hidden": 32}, quant="int4",
                     epochs=3, lr=0.01, batch_size=64, limit_train=512, limit_test=200,
                     device="cpu")  # the tests feed it CPU tensors, also where a GPU is


# -- brute force reference ------------------------------------------------------------------

def _changed(z, y):
    """Prediction changed: some other class reaches the target logit (ties count)."""
    zy = z.gather(1, y[:, None])
    return (z.scatter(1, y[:, None], float("-inf")) >= zy).any(1)


def _brute_force(layer, h, y, cap):
    """Fewest flips by trying every set of up to ``cap`` bit positions of the layer."""
    qt = layer.quantized_weight()
    n_cls, n_feat = qt.codes.shape
    table = qt.table().double()
    scale = qt.scale.double().reshape(-1).expand(n_cls)
    b = layer.bias.detach().double() if layer.bias is not None else torch.zeros(n_cls).double()
    h = h.double()
    codes = qt.codes.long()
    z0 = h @ (table[codes] * scale[:, None]).T + b
    res = torch.full((len(y),), cap + 1)
    res[_changed(z0, y)] = 0
    positions = [(c, j, k) for c in range(n_cls) for j in range(n_feat) for k in range(qt.bits)]
    for size in range(1, cap + 1):
        for combo in itertools.combinations(positions, size):
            z = z0.clone()
            mask: dict[tuple[int, int], int] = {}
            for c, j, k in combo:  # several bits of one weight: one new code, not a sum
                mask[(c, j)] = mask.get((c, j), 0) ^ (1 << k)
            for (c, j), m in mask.items():
                old, new = codes[c, j], codes[c, j] ^ m
                z[:, c] += (table[new] - table[old]) * scale[c] * h[:, j]
            res[_changed(z, y) & (res == cap + 1)] = size
    return res


@pytest.mark.parametrize("quant,fmt,gran,n_feat,cap", [
    ("int3", "twos_complement", "tensor", 4, 3),
    ("int2", "sign_magnitude", "channel", 8, 3),  # 16 items > cap * bits: pruning is active
    ("int3", "offset_binary", "channel", 4, 3),
    ("int3", "twos_complement", "channel", 8, 2),  # pruning with multi-bit options
    ("ternary", "twos_complement", "tensor", 5, 3),
])
def test_certificate_equals_brute_force(quant, fmt, gran, n_feat, cap):
    torch.manual_seed(0)
    net = quantize_model(nn.Sequential(nn.Linear(n_feat, 3)),
                         QuantSpec(quant, fmt=fmt, granularity=gran)).eval()
    g = torch.Generator().manual_seed(1)
    # Mixed signs and magnitudes give certificates from 0 to "more than cap".
    x = torch.randn(40, n_feat, generator=g) * torch.rand(40, 1, generator=g) * 3
    y = net(x).argmax(1)
    y[:4] = (y[:4] + 1) % 3  # some wrong samples
    cert = flip_certificate(net, x, y, max_flips=cap)
    ref = _brute_force(net[0], x, y, cap)
    assert cert.tolist() == ref.tolist()
    assert set(ref.tolist()) >= {0, 1, 2}  # the case is not trivial


def test_features_follow_activation_quantization():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    net = quantize_model(net, QuantSpec("int4", act_bits=4))
    net.train()(torch.randn(64, 6))  # calibrate the activation range
    net.eval()
    x = torch.randn(30, 6)
    h, logits = output_features(net, x)
    layer = net[2]
    w = layer.quantized_weight().dequantize()
    assert torch.allclose(h @ w.T + layer.bias, net(x), atol=1e-5)
    assert torch.equal(logits, net(x).detach())
    # The output layer computes with 4-bit inputs: at most 8 distinct non-negative levels.
    assert len(torch.unique(h)) <= 8


def test_certificate_rejects_a_conv_output_and_bad_cap():
    net = quantize_model(nn.Sequential(nn.Conv2d(1, 2, 3)), QuantSpec("int4"))
    with pytest.raises(MCELError, match="Linear output layer"):
        flip_certificate(net, torch.randn(2, 1, 5, 5), torch.tensor([0, 1]))
    lin = quantize_model(nn.Sequential(nn.Linear(3, 2)), QuantSpec("int4"))
    with pytest.raises(MCELError, match="max_flips"):
        flip_certificate(lin, torch.randn(2, 3), torch.tensor([0, 1]), max_flips=0)


# -- a trained model ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("analysis") / "run"
    model, _ = train(CONFIG, out)
    x, y = load_dataset("digits", "test", limit=200)
    return model, x, y, out


def test_certificate_on_trained_model(trained):
    model, x, y, _ = trained
    before = state_digest(model)
    cert = flip_certificate(model, x, y)
    assert state_digest(model) == before
    logits = model(x).detach()
    correct = logits.argmax(1) == y
    assert (cert[~correct] == 0).all() and (cert[correct] >= 1).all()
    assert 0 < (cert == 1).sum() < correct.sum()  # some, not all, fall to a single flip

    # Independently: try every single flip of the output layer on every sample.
    _, layer = quant_layers(model)[-1]
    qt = layer.quantized_weight()
    h, _ = output_features(model, x)
    table, codes = qt.table(), qt.codes.long()
    single = torch.zeros(len(y), dtype=torch.bool)
    for k in range(qt.bits):
        dv = (table[codes ^ (1 << k)] - table[codes]) * qt.scale  # (C, F)
        for c in range(codes.shape[0]):
            z = logits.unsqueeze(1).repeat(1, codes.shape[1], 1)  # (N, F, C)
            z[:, :, c] += dv[c] * h
            single |= _changed(z.reshape(-1, z.shape[2]), y.repeat_interleave(
                codes.shape[1])).reshape(len(y), -1).any(1)
    assert torch.equal(single & correct, cert == 1)

    # End to end through the whole model: the single flip found really changes it.
    i = int(torch.nonzero(cert == 1)[0])
    for k, c, j in itertools.product(range(qt.bits), range(codes.shape[0]),
                                     range(codes.shape[1])):
        new = codes.clone()
        new[c, j] ^= 1 << k
        layer.weight_override = table[new] * qt.scale
        z = model(x[i:i + 1]).detach()
        layer.weight_override = None
        if _changed(z, y[i:i + 1]).item():
            break
    else:
        pytest.fail("no single flip changes the prediction of a sample certified at 1")


def test_survival_ranks_margins(trained):
    model, x, y, _ = trained
    s = survival(model, x, y, 0.02, trials=30, seed=0)
    n = len(y)
    assert s.margin.shape == s.survival.shape == s.clean_correct.shape == (n,)
    cc = s.clean_correct
    assert torch.equal(cc, model(x).argmax(1) == y)
    assert torch.isnan(s.survival[~cc]).all()
    surv = s.survival[cc]
    assert ((surv >= 0) & (surv <= 1)).all()
    # survival is a fraction of 30 trials
    assert torch.allclose(surv * 30, (surv * 30).round(), atol=1e-4)
    ref = stats.spearmanr(s.margin[cc].numpy(), surv.numpy())
    assert math.isclose(s.spearman, ref.statistic, rel_tol=1e-9)
    assert s.spearman > 0.3  # larger margins survive more often
    bins = s.bins
    assert len(bins) == 10 and sum(b.count for b in bins) == int(cc.sum())
    assert all(a.margin_high <= b.margin_low for a, b in zip(bins, bins[1:]))
    assert bins[-1].survival_mean > bins[0].survival_mean
    assert 0 < s.accuracy < s.clean_accuracy


def test_margins_command(trained, tmp_path, capsys):
    _, _, _, run_dir = trained
    out = tmp_path / "m"
    assert main(["margins", str(run_dir), "--ber", "0.02", "--trials", "5", "--out",
                 str(out)]) == 0
    text = capsys.readouterr().out
    assert "Spearman" in text and "flip certificate" in text
    # accuracies in percent on the terminal, fractions in the JSON (which says so)
    assert re.search(r"accuracy \d+\.\d\d% \(clean \d+\.\d\d%\)", text), text
    r = json.loads((out / "margins.json").read_text())
    assert r["trials"] == 5 and r["samples"] == 200
    assert 0 < r["accuracy"] <= r["clean_accuracy"] <= 1 and "fractions" in r["units"]
    assert sum(r["certificate"]["counts"].values()) == 200
    assert len(r["per_sample"]["survival"]) == 200
    assert (out / "margin_survival.png").read_bytes()[:4] == b"\x89PNG"


def test_margins_command_user_errors(tmp_path, trained, capsys):
    assert main(["margins", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "not a finished run folder" in err and len(err.splitlines()) == 1
    assert main(["margins", str(trained[3]), "--ber", "2", "--out", str(tmp_path / "o")]) == 2
    assert "outside [0, 1]" in capsys.readouterr().err
