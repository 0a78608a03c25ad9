"""Faults in one layer group at a time (mcel.sensitivity, mcel evaluate --by-layer)."""

import dataclasses
import json

import pytest
import torch
import torch.nn as nn

from mcel.cli import main
from mcel.errors import MCELError
from mcel.evaluate import evaluate
from mcel.faults import BitErrorModel
from mcel.quant import QuantSpec, quant_layers, quantize_model
from mcel.sensitivity import by_layer, layer_groups


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                          nn.Linear(32, 4))
    quantize_model(model, QuantSpec("int4"))
    x = torch.randn(300, 16)
    with torch.no_grad():
        y = model(x).argmax(1)  # the clean model is right on every sample
    return model.eval(), x, y


def test_default_groups_are_the_quantized_layers(net):
    model, _, _ = net
    names = [n for n, _ in quant_layers(model)]
    assert layer_groups(model) == {n: [n] for n in names} and names == ["0", "2", "4"]
    assert layer_groups(model, ["[02]", "4"]) == {"[02]": ["0", "2"], "4": ["4"]}


def test_each_group_is_evaluate_with_the_faults_confined_to_it(net):
    model, x, y = net
    em = BitErrorModel(ber=0.0)
    res = by_layer(model, x, y, [0.0, 0.05], error_model=em, trials=6, seed=3)
    assert list(res) == ["0", "2", "4"]
    for g, r in res.items():
        alone = evaluate(model, x, y, [0.0, 0.05], dataclasses.replace(em, include=(g,)),
                         trials=6, seed=3)
        assert r.results[1].accuracies == alone.results[1].accuracies
        assert r.clean_accuracy == alone.clean_accuracy == 1.0
    # (include= confining faults is tested in test_engine); one layer's faults cost no
    # more than the faults of all three, up to noise
    everywhere = evaluate(model, x, y, [0.0, 0.05], em, trials=6, seed=3)
    for r in res.values():
        assert r.results[1].mean >= everywhere.results[1].mean - 0.02


def test_a_group_the_error_model_excludes_is_refused(net):
    """A group whose layer is then excluded leaves nothing to flip: refused in one line,
    instead of reporting a faulty accuracy for a fault-free model."""
    model, x, y = net
    with pytest.raises(MCELError, match="matches no quantized layer"):
        by_layer(model, x, y, [0.01], error_model=BitErrorModel(ber=0.0, exclude=("4",)),
                 groups=["4"], trials=2)


def test_bad_groups_and_include_are_refused_in_one_line(net):
    model, x, y = net
    with pytest.raises(MCELError, match="layer group 'conv.*' matches no stored layer; "
                                        "the layers are: 0, 2, 4"):
        by_layer(model, x, y, [0.01], groups=["conv.*"], trials=2)
    with pytest.raises(MCELError, match="leave include= out"):
        by_layer(model, x, y, [0.01], error_model=BitErrorModel(ber=0.0, include=("0",)),
                 trials=2)
    with pytest.raises(MCELError, match="no quantized layers"):
        by_layer(nn.Linear(3, 2), torch.randn(4, 3), torch.zeros(4, dtype=torch.long), [0.01])


def test_float_layers_group_too():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3)).eval()
    x = torch.randn(50, 8)
    y = model(x).argmax(1).detach()
    res = by_layer(model, x, y, [0.0, 1e-3], trials=3, weights="float32")
    assert list(res) == ["0", "2"]


TRAIN = ["train", "--dataset", "digits", "--model", "mlp", "--quant", "int4", "--epochs", "1",
         "--batch-size", "64", "--limit-train", "300", "--limit-test", "120"]


def test_cli_by_layer_table_and_json(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(TRAIN + ["--out", str(run)]) == 0
    js = tmp_path / "by-layer.json"
    assert main(["evaluate", str(run), "--by-layer", "--ber", "0,0.02", "--trials", "3",
                 "--json", str(js)]) == 0
    out = capsys.readouterr().out
    assert "faults in one layer group at a time" in out and "BER 0.02" in out
    d = json.loads(js.read_text())
    assert len(d["groups"]) >= 2 and d["meta"]["samples"] == 120
    for g in d["groups"].values():
        assert g["layers"] and g["weights"] > 0 and [r["ber"] for r in g["results"]] == [0, 0.02]
    first = next(iter(d["groups"]))
    assert main(["evaluate", str(run), "--by-layer", f"{first},nothing*", "--ber", "0.01",
                 "--trials", "2"]) == 2
    err = capsys.readouterr().err
    assert "layer group 'nothing*' matches no stored layer" in err and len(err.splitlines()) == 1


def test_by_bit_exposes_one_position_of_every_code_lsb_first(net):
    """Label "bit b" is the evaluation with every other position protected; only 1 in 4
    stored bits can flip, so the measured rate is a quarter of the BER; and in two's
    complement the MSB (worth -8 steps) costs far more than the LSB (1 step)."""
    from mcel.sensitivity import by_bit

    model, x, y = net
    res = by_bit(model, x, y, [0.0, 0.1], trials=8, seed=1)
    assert list(res) == ["bit 0 (LSB)", "bit 1", "bit 2", "bit 3 (MSB)"]
    for b, r in enumerate(res.values()):
        em = BitErrorModel(ber=0.0, protected_bits=tuple(p for p in range(4) if p != b))
        alone = evaluate(model, x, y, [0.0, 0.1], em, trials=8, seed=1)
        assert r.results[1].accuracies == alone.results[1].accuracies
        rate = sum(r.results[1].empirical_rates) / 8
        assert 0.1 / 4 * 0.9 < rate < 0.1 / 4 * 1.1  # 8 x ~1,700 codes: within ~3%
    lsb, msb = res["bit 0 (LSB)"].results[1].mean, res["bit 3 (MSB)"].results[1].mean
    assert msb < lsb - 0.1


def test_by_bit_needs_one_code_width_and_its_own_protection(net, tmp_path, capsys):
    from mcel.sensitivity import by_bit

    model, x, y = net
    with pytest.raises(MCELError, match="leave protected= and bit_rates out"):
        by_bit(model, x, y, [0.01], error_model=BitErrorModel(ber=0.0, protected_bits=(3,)))
    torch.manual_seed(0)
    mixed = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
    quantize_model(mixed, QuantSpec("int4", exclude=("2",)))
    quantize_model(mixed, QuantSpec("int8", include=("2",)))
    with pytest.raises(MCELError, match=r"need one code width.*4 bits \(0.weight\), 8 bits"):
        by_bit(mixed.eval(), x, None, [0.01])
    assert main(["evaluate", str(tmp_path), "--by-bit", "--by-layer"]) == 2
    assert "give one" in capsys.readouterr().err
