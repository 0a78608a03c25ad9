"""Runs that start from weights trained elsewhere (config key ``init``, ``--init``):
fine-tuning, and 0 epochs = quantize and measure (post-training quantization)."""

import json

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from mcel import MCELError
from mcel.cli import main
from mcel.data import load_dataset
from mcel.evaluate import accuracy
from mcel.experiments.store import method_label
from mcel.models import create_model
from mcel.pretrained import read_state_dict
from mcel.quant import QuantSpec, quant_layers, quantize_model
from mcel.runs import load_run
from mcel.train import TrainConfig, train

BASE = dict(dataset="digits", model="mlp", model_kwargs={"hidden": 32}, quant="int8",
            batch_size=64, limit_train=512, limit_test=200)


@pytest.fixture(scope="module")
def float_net():
    """A float MLP trained outside mcel, in plain PyTorch."""
    torch.manual_seed(0)
    net = create_model("mlp", 10, (1, 8, 8), hidden=32)
    x, y = load_dataset("digits", "train", limit=512)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    return net.eval()


def _quantized_copy(net, spec):
    copy = create_model("mlp", 10, (1, 8, 8), hidden=32)
    copy.load_state_dict(net.state_dict())
    return quantize_model(copy, spec).eval()


def test_zero_epochs_measures_the_float_weights_quantized(tmp_path, float_net):
    # saved the way training scripts save: nested, with DDP's prefix on every key
    path = tmp_path / "net.pt"
    torch.save({"epoch": 60, "state_dict": {f"module.{k}": v
                                            for k, v in float_net.state_dict().items()}}, path)
    model, metrics = train(TrainConfig(init=str(path), epochs=0, **BASE), tmp_path / "run")
    x, y = load_dataset("digits", "test", limit=200)
    expected = accuracy(_quantized_copy(float_net, QuantSpec("int8")), x, y)
    assert metrics["test_acc"] == expected and metrics["epochs"] == []
    for k, v in float_net.state_dict().items():  # loaded as they are, not trained
        assert torch.equal(model.state_dict()[k], v)
    loaded, cfg = load_run(tmp_path / "run")  # a run folder like any other, init not needed
    assert accuracy(loaded, x, y) == expected and cfg.epochs == 0
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["init_sha256"]


def test_safetensors_and_run_folders_are_init_weights_too(tmp_path, float_net):
    path = tmp_path / "net.safetensors"
    save_file({k: v.contiguous() for k, v in float_net.state_dict().items()}, str(path))
    _, a = train(TrainConfig(init=str(path), epochs=0, **BASE), tmp_path / "a")
    x, y = load_dataset("digits", "test", limit=200)
    assert a["test_acc"] == accuracy(_quantized_copy(float_net, QuantSpec("int8")), x, y)
    # an mcel run (quantized state dict) as the start of another: the same model again
    _, b = train(TrainConfig(init=str(tmp_path / "a"), epochs=0, **BASE), tmp_path / "b")
    assert b["test_acc"] == a["test_acc"]


def test_fine_tuning_starts_from_the_init_weights(tmp_path, float_net):
    path = tmp_path / "net.pt"
    torch.save(float_net.state_dict(), path)
    cfg = dict(BASE, loss="mcel", margin=10.0, epochs=1, lr=1e-5)
    tuned, _ = train(TrainConfig(init=str(path), **cfg), tmp_path / "tuned")
    scratch, _ = train(TrainConfig(**cfg), tmp_path / "scratch")
    key = next(k for k in float_net.state_dict() if k.endswith("weight"))
    w0 = float_net.state_dict()[key]
    # one epoch at a tiny learning rate stays next to the init weights, far from a fresh start
    assert (tuned.state_dict()[key] - w0).abs().max() < 1e-2
    assert (scratch.state_dict()[key] - w0).abs().max() > 1e-1


def test_quantized_inputs_get_their_ranges_from_training_images(tmp_path, float_net):
    path = tmp_path / "net.pt"
    torch.save(float_net.state_dict(), path)
    model, metrics = train(TrainConfig(init=str(path), epochs=0, act_bits=8, **BASE),
                           tmp_path / "run")
    assert metrics["calibration_images"] == 512  # limit_train, under the 2048 cap
    assert all(m.act_max > 0 for _, m in quant_layers(model))
    x, y = load_dataset("digits", "test", limit=200)
    # 8-bit inputs and weights keep the float model's accuracy within a few points; with
    # uncalibrated ranges (act_max 0) every input would round to 0
    assert metrics["test_acc"] >= accuracy(float_net, x, y) - 0.03


def test_an_init_file_replaced_during_a_run_is_refused(tmp_path, float_net):
    path = tmp_path / "net.pt"
    torch.save(float_net.state_dict(), path)
    cfg = TrainConfig(init=str(path), epochs=1, **BASE)
    train(cfg, tmp_path / "run")
    torch.save({k: v + 1 for k, v in float_net.state_dict().items()}, path)
    with pytest.raises(MCELError, match="changed since this run started"):
        train(cfg, tmp_path / "run")


def test_bad_init_weights_are_one_line_errors_and_leave_no_folder(tmp_path, float_net):
    whole = tmp_path / "whole.pt"
    torch.save(float_net, whole)  # the module itself: loading it would run pickled code
    with pytest.raises(MCELError, match="save model.state_dict"):
        train(TrainConfig(init=str(whole), epochs=0, **BASE), tmp_path / "w")
    assert not (tmp_path / "w").exists()
    state = tmp_path / "state.pt"
    torch.save(float_net.state_dict(), state)
    with pytest.raises(MCELError, match=r"do not fit this model: keys \d+ missing"):
        train(TrainConfig(init=str(state), epochs=0, **dict(BASE, model="lenet5", model_kwargs={})),
              tmp_path / "x")
    with pytest.raises(MCELError, match="size mismatch"):
        train(TrainConfig(init=str(state), epochs=0, **dict(BASE, model_kwargs={"hidden": 16})),
              tmp_path / "y")
    with pytest.raises(MCELError, match="do not exist"):
        train(TrainConfig(init=str(tmp_path / "nope.pt"), epochs=0, **BASE), tmp_path / "z")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(MCELError, match="not a readable PyTorch checkpoint"):
        read_state_dict(tmp_path / "junk.pt")
    with pytest.raises(MCELError, match="0 epochs takes init weights"):
        TrainConfig(epochs=0)
    assert not any((tmp_path / d).exists() for d in "xyz")


def test_a_model_whose_one_child_is_named_model_keeps_its_keys(tmp_path):
    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))

        def forward(self, x):
            return self.model(x)

    from mcel.pretrained import load_weights

    net = Wrapper()
    state = {k: torch.randn_like(v) for k, v in net.state_dict().items()}
    loaded = load_weights(Wrapper(), lambda m: quantize_model(m, QuantSpec("int8")), state, "x")
    assert torch.equal(loaded.model[1].weight, state["model.1.weight"])


def test_cli_init_records_an_absolute_path_and_labels_the_method(tmp_path, float_net,
                                                                 monkeypatch, capsys):
    torch.save(float_net.state_dict(), tmp_path / "net.pt")
    (tmp_path / "cfg.yaml").write_text(json.dumps(BASE))  # JSON is YAML
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--config", "cfg.yaml", "--init", "net.pt", "--epochs", "0",
                 "--out", "run"]) == 0
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["init"] == str(tmp_path / "net.pt")
    assert method_label(saved) == "init(net)"
    assert main(["train", "--epochs", "0", "--out", "run2"]) == 2
    assert "0 epochs takes init weights" in capsys.readouterr().err
    assert not (tmp_path / "run2").exists()


def test_configs_without_init_keep_their_run_ids():
    # init is a key added later: left at its default, it must not change any run id
    assert TrainConfig().digest() == "746887a393472b08"
    assert TrainConfig(init="a.pt", epochs=0).digest() != TrainConfig(init="b.pt",
                                                                       epochs=0).digest()


def test_a_sweep_compares_ways_to_go_on_from_one_pretrained_model(tmp_path, float_net):
    """The study a user with a trained model runs: the model as it is (0 epochs) against
    short CE and MCEL fine-tunes of it, in one grid, labelled apart."""
    import sqlite3

    from mcel.experiments.sweep import run_sweep

    torch.save(float_net.state_dict(), tmp_path / "net.pt")
    grid = tmp_path / "grid.yaml"
    grid.write_text(f"""\
name: from-pretrained
base: {{dataset: digits, model: mlp, model_kwargs: {{hidden: 32}}, quant: int4,
       init: {tmp_path / "net.pt"}, lr: 0.001, batch_size: 64, limit_train: 512,
       limit_test: 200}}
grid:
  method:
    - {{epochs: 0}}
    - {{loss: ce, epochs: 1}}
    - {{loss: mcel, margin: 10, epochs: 1}}
eval: {{bers: [0, 0.01], trials: 3}}
""")
    summary = run_sweep(grid, tmp_path / "out")
    assert summary.done == 3 and not summary.failed
    con = sqlite3.connect(tmp_path / "out" / "grid.db")  # named after the grid file
    methods = sorted(m for (m,) in con.execute("SELECT method FROM runs"))
    assert methods == ["CE+init(net)", "MCEL(m=10)+init(net)", "init(net)"]
