"""Mixed precision: layers with a scheme of their own (QuantSpec.layers, config quant_layers,
--quant-layer PATTERN=SCHEME)."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from mcel.cli import main
from mcel.config import TrainConfig
from mcel.engine import MemoryImage
from mcel.errors import MCELError
from mcel.experiments.store import quant_label
from mcel.faults import BitErrorModel
from mcel.quant import QuantSpec, quantize_model
from mcel.quant.layers import quant_layers


def _net():
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
                         nn.Linear(16, 3))


def test_each_layer_gets_its_own_scheme():
    net = quantize_model(_net(), QuantSpec("int4", layers={"0": "int8", "4": "float"}))
    assert [(n, m.bits) for n, m in quant_layers(net)] == [("0", 8), ("2", 4)]
    assert type(net[4]) is nn.Linear  # kept in float
    only = quantize_model(_net(), QuantSpec("float", layers=(("4", "binary"),)))
    assert [(n, m.scheme) for n, m in quant_layers(only)] == [("4", "binary")]
    assert QuantSpec("int4", layers={"0": "INT8"}).to_dict()["layers"] == {"0": "int8"}


@pytest.mark.parametrize("layers, needle", [
    ({"fc*": "int8"}, "quantization pattern 'fc\\*' matches no layer"),
    ({"0": "int8", "[02]": "int2"}, "matches 2 of the per-layer schemes"),
    ({"0": "int9"}, "unknown quantization 'int9'"),
    ((("0",),), "give \\(layer pattern, scheme\\) pairs"),
])
def test_bad_per_layer_schemes_are_one_line(layers, needle):
    with pytest.raises(MCELError, match=needle):
        quantize_model(_net(), QuantSpec("int4", layers=layers))


def test_faults_hit_every_stored_bit_at_the_rate_whatever_its_width():
    """Layer 0 in int8 (1,024 weights, 8,192 bits), layer 2 in int4 (256 weights, 1,024
    bits): the measured rate over both is the per-bit rate (binomial interval)."""
    torch.manual_seed(0)
    net = quantize_model(nn.Sequential(nn.Linear(8, 128, bias=False), nn.ReLU(),
                                       nn.Linear(128, 2, bias=False)),
                         QuantSpec("int4", layers={"0": "int8"}))
    em, p = BitErrorModel(ber=0.05), 0.05
    with MemoryImage(net, em) as image:
        assert image.total_bits == 8 * 1024 + 4 * 256
        rates = []
        for t in range(200):
            rates.append(image.inject(em, seed=0, trial=t).empirical_rate)
            image.restore()
    sd = np.sqrt(p * (1 - p) / image.total_bits / len(rates))
    assert abs(np.mean(rates) - p) < 4 * sd


def test_config_cli_run_ids_and_report_groups(tmp_path):
    base = TrainConfig(model="mlp", epochs=1)
    mixed = TrainConfig(model="mlp", epochs=1, quant_layers={"classifier.0": "int8"})
    assert base.digest() != mixed.digest()
    assert quant_label(mixed.to_dict()) == "int4 (classifier.0 int8)"
    assert quant_label(base.to_dict()) == "int4"
    run = tmp_path / "run"
    argv = ["train", "--model", "mlp", "--epochs", "1", "--limit-train", "200", "--threads",
            "1", "--quant-layer", "classifier.0=int8", "--quant-layer", "classifier.6=float",
            "--out", str(run)]
    assert main(argv) == 0
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["quant_layers"] == {"classifier.0": "int8", "classifier.6": "float"}
    from mcel.runs import load_run

    model, _ = load_run(run, "cpu")
    assert [(n, m.bits) for n, m in quant_layers(model)] == [("classifier.0", 8),
                                                             ("classifier.3", 4)]
    assert main(["evaluate", str(run), "--ber", "0.01", "--trials", "2"]) == 0
    assert main(argv[:-2] + ["--quant-layer", "classifier.0", "--out", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()
