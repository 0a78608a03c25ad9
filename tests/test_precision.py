"""Forward precision (fp32 / bf16 autocast) and weight clipping, in training and evaluation."""

import contextlib
import json
import warnings

import numpy as np
import pytest
import torch

from mcel import MCELError
from mcel.cli import main
from mcel.data import load_dataset
from mcel.evaluate import evaluate
from mcel.io import load_metadata, load_tensors, save_tensors
from mcel.precision import check_runs_on, memory_format, slow_warning
from mcel.quant import QuantSpec, clip_weights, quant_layers, quantize_model
from mcel.train import TrainConfig, load_run, train

FAST = dict(dataset="digits", model="mlp", model_kwargs={"hidden": 32}, quant="int4", epochs=3,
            lr=0.01, batch_size=64, limit_train=512, limit_test=200,
            device="cpu")  # bit-for-bit and CPU-precision checks, also where a GPU is
W05 = float(torch.tensor(0.05))  # the float32 clip the weights are clamped to
CONV = dict(FAST, model="vgg3", model_kwargs={"width": 0.125}, epochs=2)


def _same(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(),
                                                 b.state_dict().values()))


# -- configuration ----------------------------------------------------------------------

@pytest.mark.parametrize("changes, match", [
    ({"precision": "fp16"}, "unknown precision 'fp16'"),
    ({"precision": "BF16"}, "did you mean 'bf16'"),
    ({"clip": 0.0}, "clip must be a finite number > 0"),
    ({"clip": -0.1}, "clip must be a finite number > 0"),
    ({"clip": float("inf")}, "clip must be a finite number > 0"),
    ({"clip": 0.1, "quant": "float"}, "needs a quantized model"),
    ({"clip_rel": 0.0}, "clip_rel must be a finite number > 0"),
    ({"clip_rel": float("nan")}, "clip_rel must be a finite number > 0"),
    ({"clip_rel": 1.0, "quant": "float"}, "needs a quantized model"),
    ({"clip_rel": 1.0, "clip": 0.1}, "give one of clip .* not clip and clip_rel"),
    ({"clip_auto": 1.0, "clip_rel": 1.0}, "not clip_rel and clip_auto"),
    ({"clip_auto": -1.0}, "clip_auto must be a finite number > 0"),
    ({"clip_auto": 1.0, "quant": "float"}, "needs a quantized model"),
])
def test_bad_precision_and_clip(changes, match):
    with pytest.raises(MCELError, match=match):
        TrainConfig(**{**FAST, **changes})


def test_run_ids_of_earlier_configs_are_unchanged():
    # digests written by mcel 0.1.0 before `clip` and `precision` existed: sweeps resume
    assert TrainConfig().digest() == "746887a393472b08"
    assert TrainConfig(model="vgg3", loss="mcel", margin=10.0).digest() == "e801bdaf8b668f16"
    base = TrainConfig(**FAST).digest()
    assert TrainConfig(**FAST, precision="bf16").digest() != base
    assert TrainConfig(**FAST, clip=0.1).digest() != base
    assert TrainConfig(**FAST, clip_rel=1.0).digest() not in (base, TrainConfig(
        **FAST, clip=1.0).digest())


def test_config_round_trip_and_older_run_folders(tmp_path):
    cfg = TrainConfig(**{**FAST, "epochs": 1}, precision="bf16", clip=0.5)
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # bf16 may be emulated here
        train(cfg, tmp_path / "run")
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["precision"] == "bf16" and saved["clip"] == 0.5
    model, loaded = load_run(tmp_path / "run")
    assert loaded == cfg and all(la.clip == 0.5 for _, la in quant_layers(model))

    # a run folder of 0.1.0 has neither key, in config.json nor in the weights' metadata
    old = TrainConfig(**{**FAST, "epochs": 1})
    run = tmp_path / "old"
    train(old, run)
    d = old.to_dict()
    for key in ("precision", "clip"):
        d.pop(key)
    (run / "config.json").write_text(json.dumps(d))
    save_tensors(run / "model.safetensors", load_tensors(run / "model.safetensors"),
                 metadata={"config": json.dumps(d, sort_keys=True)})
    assert "precision" not in json.loads(load_metadata(run / "model.safetensors")["config"])
    assert load_run(run)[1] == old


# -- training ---------------------------------------------------------------------------

def test_fp32_training_never_enters_autocast(monkeypatch):
    # fp32 is today's path bit for bit: taking the autocast and layout steps out changes
    # nothing, for an MLP and a conv model
    import mcel.train as mt

    for cfg in (TrainConfig(**FAST), TrainConfig(**CONV)):
        a, _ = train(cfg)
        monkeypatch.setattr(mt, "autocast", lambda *a, **k: contextlib.nullcontext())
        monkeypatch.setattr(mt, "memory_format", lambda *a, **k: torch.contiguous_format)
        b, _ = train(cfg)
        monkeypatch.undo()
        assert _same(a, b)


def test_bf16_training_runs_in_bf16_and_learns_as_well():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for cfg in (FAST, CONV):
            a, ma = train(TrainConfig(**cfg))
            b, mb = train(TrainConfig(**cfg, precision="bf16"))
            assert not _same(a, b)  # the forward really ran in bf16
            assert all(p.dtype == torch.float32 for p in b.parameters())  # weights stay fp32
            assert abs(ma["test_acc"] - mb["test_acc"]) < 0.05, (ma["test_acc"], mb["test_acc"])
            # the channels_last layout of bf16 training does not outlive it, and the
            # trained model goes straight into the fault engine (a sweep cell does this)
            assert all(p.is_contiguous() for p in b.parameters())
            x, y = load_dataset("digits", split="test", limit=200)
            assert evaluate(b, x, y, [0.01], trials=2, seed=0).results[0].trials == 2


def test_fault_engine_reads_channels_last_weights_in_logical_order():
    torch.manual_seed(0)
    model = quantize_model(torch.nn.Sequential(
        torch.nn.Conv2d(2, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 3)), "int4")
    x, y = torch.randn(64, 2, 8, 8), torch.randint(0, 3, (64,))
    flat = evaluate(model, x, y, [0.05], trials=4, seed=1)
    model.to(memory_format=torch.channels_last)
    assert not model[0].weight.is_contiguous()
    nhwc = evaluate(model, x, y, [0.05], trials=4, seed=1)
    # the same codes, the same flips: the layout of the float weights changes nothing
    assert nhwc.results[0].accuracies == flat.results[0].accuracies


def test_channels_last_only_for_conv_models_in_bf16():
    mlp = quantize_model(torch.nn.Sequential(torch.nn.Linear(4, 2)), "int4")
    conv = quantize_model(torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3)), "int4")
    assert memory_format("bf16", mlp) == torch.contiguous_format
    assert memory_format("fp32", conv) == torch.contiguous_format
    assert memory_format("bf16", conv) == torch.channels_last


def test_precision_the_device_cannot_run(monkeypatch):
    import mcel.precision as mp

    monkeypatch.setattr(mp, "bf16_native", lambda device="cpu": False)
    with pytest.raises(MCELError, match="no bfloat16 support"):
        check_runs_on("bf16", "cuda")
    check_runs_on("bf16", "cpu")  # emulated on a CPU: runs, with a warning
    assert "emulated" in slow_warning("bf16", "cpu")
    assert slow_warning("fp32", "cpu") is None
    with pytest.warns(UserWarning, match="emulated"):
        train(TrainConfig(**{**FAST, "epochs": 1}, precision="bf16"))


# -- evaluation -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained():
    model, _ = train(TrainConfig(**{**CONV, "epochs": 3}))
    x, y = load_dataset("digits", "test", limit=200)
    return model, x, y


def test_bf16_evaluation_agrees_with_fp32(trained):
    model, x, y = trained
    before = {k: v.clone() for k, v in model.state_dict().items()}
    a = evaluate(model, x, y, [0.0, 0.02], trials=20)
    b = evaluate(model, x, y, [0.0, 0.02], trials=20, precision="bf16")
    assert (a.precision, a.agreement) == ("fp32", 1.0)
    assert b.precision == "bf16" and 0.97 <= b.agreement <= 1.0
    assert abs(a.clean_accuracy - b.clean_accuracy) <= 0.03
    # same faults (same codes, same seed): the means agree within the trials' interval
    ra, rb = a.results[1], b.results[1]
    assert ra.ci_low - 0.01 <= rb.mean <= ra.ci_high + 0.01
    assert ra.empirical_rates == rb.empirical_rates
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert b.to_dict()["agreement"] == b.agreement


def test_evaluate_refuses_an_unknown_precision(trained):
    model, x, y = trained
    with pytest.raises(MCELError, match="unknown precision 'half'"):
        evaluate(model, x, y, [0.0], trials=1, precision="half")


# -- weight clipping --------------------------------------------------------------------

def test_clipped_training_keeps_weights_in_range_and_fixes_the_scale():
    model, _ = train(TrainConfig(**FAST, clip=0.05, loss="mcel", margin=2.0))
    for _, layer in quant_layers(model):
        assert layer.weight.abs().max().item() <= W05
        qt = layer.quantized_weight()
        assert qt.scale.flatten().tolist() == pytest.approx([0.05 / 7])  # int4: qmax 7
    # the memory image stores the codes at the clipped scale too
    from mcel.engine import MemoryImage

    with MemoryImage(model, None) as image:
        for layer, slot in image.weights:
            assert torch.equal(slot.values, layer.quantized_weight().dequantize())


def test_clip_combines_with_error_injection_and_binary():
    for extra in ({"train_ber": 0.01}, {"quant": "binary"}):
        model, m = train(TrainConfig(**{**FAST, **extra}, clip=0.05))
        assert all(la.weight.abs().max().item() <= W05 for _, la in quant_layers(model))
        assert m["test_acc"] > 0.5  # it still learns (3 short epochs)


@pytest.mark.filterwarnings("ignore:this model has no normalization layer")
def test_clip_in_your_own_model():
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    with torch.no_grad():
        net[0].weight.mul_(10)
    quantize_model(net, QuantSpec("int8", clip=0.1))  # starts inside the range
    assert net[0].weight.abs().max().item() <= float(torch.tensor(0.1))
    with torch.no_grad():
        net[2].weight.fill_(3.0)
    clip_weights(net)
    assert net[2].weight.abs().max().item() == pytest.approx(0.1)
    assert "clip=0.1" in repr(net)
    with pytest.raises(MCELError, match="clip must be"):
        QuantSpec("int8", clip=0)


def test_relative_clip_scales_with_each_layers_fan_in(tmp_path):
    # clip_rel / sqrt(fan_in): the range of PyTorch's default initialisation
    model, _ = train(TrainConfig(**CONV, clip_rel=0.5, loss="mcel", margin=2.0), tmp_path / "r")
    fan_ins = set()
    for name, layer in quant_layers(model):
        fan_in = layer.weight[0].numel()
        clip = 0.5 / fan_in ** 0.5
        assert layer.clip == pytest.approx(clip), name
        assert layer.weight.abs().max().item() <= float(torch.tensor(clip)) * (1 + 1e-6)
        assert layer.quantized_weight().scale.flatten().tolist() == pytest.approx([clip / 7])
        fan_ins.add(fan_in)
    assert len(fan_ins) >= 3  # conv, hidden and output layers of different widths
    again = load_run(tmp_path / "r")[0]  # rebuilt from the run folder: the same ranges
    assert [la.clip for _, la in quant_layers(again)] == [la.clip for _, la in quant_layers(model)]


@pytest.mark.filterwarnings("ignore:this model has no normalization layer")
def test_relative_clip_in_your_own_model():
    net = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    quantize_model(net, QuantSpec("int8", clip_rel=2.0))
    assert net[0].clip == pytest.approx(2.0 / 4) and net[2].clip == pytest.approx(2.0 / 8 ** 0.5)
    with pytest.raises(MCELError, match="not clip and clip_rel"):
        QuantSpec("int8", clip=0.1, clip_rel=1.0)


@pytest.mark.filterwarnings("ignore:this model has no normalization layer")
def test_auto_clip_one_range_from_the_median_fan_in(tmp_path):
    model, _ = train(TrainConfig(**CONV, clip_auto=0.5), tmp_path / "r")
    fan_ins = [la.weight[0].numel() for _, la in quant_layers(model)]
    clip = 0.5 / float(np.median(fan_ins)) ** 0.5
    assert len(set(fan_ins)) >= 3
    for _, layer in quant_layers(model):  # the same range in every layer, first one included
        assert layer.clip == pytest.approx(clip)
        assert layer.weight.abs().max().item() <= float(torch.tensor(clip)) * (1 + 1e-6)
    again = load_run(tmp_path / "r")[0]
    assert [la.clip for _, la in quant_layers(again)] == pytest.approx([clip] * len(fan_ins))
    assert TrainConfig(**CONV, clip_auto=0.5).digest() != TrainConfig(**CONV, clip_rel=0.5).digest()
    # your own model; a bare layer takes its own fan-in; excluded layers do not count
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2),
                              torch.nn.Linear(2, 2))
    quantize_model(net, QuantSpec("int8", clip_auto=2.0, exclude=("3",)))
    assert net[0].clip == net[2].clip == pytest.approx(2.0 / 6 ** 0.5)  # median of 4 and 8
    assert quantize_model(torch.nn.Linear(16, 3), QuantSpec("int4", clip_auto=1.0)).clip == 0.25


# -- command line -----------------------------------------------------------------------

def test_cli_precision_and_clip(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--dataset", "digits", "--model", "mlp", "--epochs", "1", "--limit-train",
            "256", "--limit-test", "100", "--clip", "0.2", "--precision", "bf16",
            "--out", str(out)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(argv) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["clip"], cfg["precision"]) == (0.2, "bf16")
    js = tmp_path / "e.json"
    assert main(["evaluate", str(out), "--ber", "0,0.01", "--trials", "3", "--precision",
                 "bf16", "--json", str(js)]) == 0
    res = json.loads(js.read_text())
    assert res["precision"] == "bf16" and 0.9 <= res["agreement"] <= 1.0
    assert "agree with fp32" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["evaluate", str(out), "--precision", "fp16"])
    assert e.value.code == 2 and "invalid choice: 'fp16'" in capsys.readouterr().err
    assert main(argv[:-2] + ["--precision", "fp16", "--out", str(tmp_path / "x")]) == 2
    assert "unknown precision 'fp16'" in capsys.readouterr().err


def test_clipping_a_model_without_normalization_warns():
    """A clip bounds the weights' scale, which a normalization layer after them makes
    irrelevant; without one it bounds the activations too (docs/results.md), so mcel says
    so, and only then."""
    from torch import nn

    def plain():
        return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))

    with pytest.warns(UserWarning, match="no normalization layer"):
        quantize_model(plain(), QuantSpec("int4", clip_auto=2.0))
    with pytest.warns(UserWarning, match="no normalization layer"):
        quantize_model(plain(), QuantSpec("int4", clip=0.1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quantize_model(plain(), QuantSpec("int4"))  # no clip
        quantize_model(nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2)),
                       QuantSpec("int4", clip=0.1))
        quantize_model(nn.Sequential(nn.Conv2d(1, 4, 3), nn.GroupNorm(2, 4)),
                       QuantSpec("int4", clip_auto=1.0))


def test_a_clip_that_rounds_a_whole_layer_to_zero_is_refused(tmp_path, capsys):
    """int2 codes clipped at W have their first level at W: a layer whose initial weights
    all lie below W / 2 would start dead (it trained at chance for 6 epochs), so mcel
    names the layer and the fix instead of training it."""
    from torch import nn

    def net():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 3000),
                             nn.BatchNorm1d(3000), nn.Linear(3000, 2))

    with pytest.raises(MCELError, match=r"layer '4'.*rounds to 0.*smaller clip"):
        quantize_model(net(), QuantSpec("int2", clip=0.1))  # '4': init bound 0.018
    quantize_model(net(), QuantSpec("int2", clip=0.02))  # first level at 0.02: alive
    quantize_model(net(), QuantSpec("int4", clip=0.1))  # first level at 0.0125
    quantize_model(net(), QuantSpec("binary", clip=0.1))  # no zero level
    with pytest.raises(MCELError, match="rounds to 0"):
        quantize_model(nn.Linear(3000, 2), QuantSpec("int2", clip=0.1))  # a bare layer
    rc = main(["train", "--dataset", "digits", "--model", "vgg3", "--quant", "int2",
               "--clip", "0.5", "--epochs", "1", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert rc == 2 and "starts dead" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()
