"""Training runs, run folders, resume and error-injection training."""

import dataclasses
import json

import pytest
import torch

from mcel import MCELError
from mcel.train import TrainConfig, load_run, train

FAST = dict(dataset="digits", model="mlp", model_kwargs={"hidden": 32}, quant="int4", epochs=3,
            lr=0.01, batch_size=64, limit_train=512, limit_test=200)


def test_run_folder_reloads_to_the_same_accuracy(tmp_path):
    cfg = TrainConfig(loss="mcel", margin=2.0, **FAST)
    model, metrics = train(cfg, tmp_path / "run")
    files = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"config.json", "model.safetensors", "metrics.json", "state.json"} <= files
    assert metrics["test_acc"] > 0.5  # digits is easy even for 3 short epochs
    loaded, cfg2 = load_run(tmp_path / "run")
    assert cfg2 == cfg
    from mcel.data import load_dataset
    from mcel.train import accuracy

    x, y = load_dataset("digits", "test", limit=200)
    assert accuracy(loaded, x, y) == metrics["test_acc"]
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert len(saved["epochs"]) == 3 and saved["test_acc"] == metrics["test_acc"]


def test_interrupted_run_resumes_to_identical_weights(tmp_path):
    cfg = TrainConfig(**FAST)
    full, _ = train(cfg, tmp_path / "a")

    def crash(msg):
        if msg.startswith("epoch 2/"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "b", log=crash)
    state = json.loads((tmp_path / "b" / "state.json").read_text())
    assert state["epoch"] == 1 and not (tmp_path / "b" / "model.safetensors").exists()
    resumed, metrics = train(cfg, tmp_path / "b")
    assert [r["epoch"] for r in metrics["epochs"]] == [1, 2, 3]
    for (k, v), (k2, v2) in zip(full.state_dict().items(), resumed.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k


def test_resume_refuses_another_config(tmp_path):
    train(TrainConfig(**{**FAST, "epochs": 1}), tmp_path / "r")
    with pytest.raises(MCELError, match="another config"):
        train(TrainConfig(**{**FAST, "epochs": 1, "lr": 0.02}), tmp_path / "r")


def test_same_seed_same_weights_and_error_injection_changes_training():
    a, _ = train(TrainConfig(**{**FAST, "epochs": 1}))
    b, _ = train(TrainConfig(**{**FAST, "epochs": 1}))
    c, mc = train(TrainConfig(**{**FAST, "epochs": 1, "train_ber": 0.02}))
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    assert mc["test_acc"] > 0.3


def test_error_injection_training_honours_the_targets():
    # faults in the activations only: training differs from clean training and from
    # weight faults (the error model's targets used to be ignored: weights only)
    base = {**FAST, "epochs": 1, "act_bits": 4}
    clean, _ = train(TrainConfig(**base))
    acts, _ = train(TrainConfig(**{**base, "train_error_model": "ber=0.05,targets=activations"}))
    wts, _ = train(TrainConfig(**{**base, "train_error_model": "ber=0.05"}))
    s0, sa, sw = clean.state_dict(), acts.state_dict(), wts.state_dict()
    assert not all(torch.equal(s0[k], sa[k]) for k in s0)
    assert not all(torch.equal(sw[k], sa[k]) for k in s0)


def test_training_faults_have_their_own_stream_and_never_repeat(monkeypatch):
    # every draw of error-injection training is keyed with step TRAINING_STEP (evaluation
    # uses step 0, so it never meets a training fault pattern), and with faults in weights
    # and activations no (trial, tensor) key is drawn twice across epochs
    from mcel.engine import TRAINING_STEP, _Transient

    keys = []
    original = _Transient._key

    def spy(self):
        key = original(self)
        keys.append(key)
        return key

    monkeypatch.setattr(_Transient, "_key", spy)
    train(TrainConfig(**{**FAST, "epochs": 3, "act_bits": 4,
                         "train_error_model": "ber=0.01,targets=weights,activations"}))
    assert keys and {k.step for k in keys} == {TRAINING_STEP}
    assert len({(k.trial, k.name) for k in keys}) == len(keys)


def test_error_injection_that_matches_no_layer_is_refused(tmp_path):
    config = TrainConfig(**{**FAST, "epochs": 1, "train_error_model": "ber=1e-3,include=fc*"})
    with pytest.raises(MCELError, match="matches no quantized layer"):
        train(config, tmp_path / "r" / "deep")
    assert not (tmp_path / "r").exists()  # no empty folders left behind


def test_a_finished_run_without_its_checkpoint_is_not_overwritten(tmp_path):
    train(TrainConfig(**{**FAST, "epochs": 1}), tmp_path / "r")
    (tmp_path / "r" / "last.safetensors").unlink()
    before = (tmp_path / "r" / "model.safetensors").read_bytes()
    with pytest.raises(MCELError, match=r"another config \(lr 0.01 there, 0.02 here\)"):
        train(TrainConfig(**{**FAST, "epochs": 1, "lr": 0.02}), tmp_path / "r")
    assert (tmp_path / "r" / "model.safetensors").read_bytes() == before
    # the same config may run again and restores a lost config.json
    (tmp_path / "r" / "config.json").unlink()
    train(TrainConfig(**{**FAST, "epochs": 1}), tmp_path / "r")
    assert json.loads((tmp_path / "r" / "config.json").read_text())["lr"] == 0.01


def test_error_injection_training_is_the_same_on_the_sparse_path(monkeypatch):
    # transient weight faults computed from the flipped elements only give the very
    # weights of the whole-tensor round trip through codes
    config = TrainConfig(**{**FAST, "epochs": 1, "train_ber": 0.02})
    fast, _ = train(config)
    from mcel.engine import _Transient
    monkeypatch.setattr(_Transient, "faulty_values", lambda self, layer: None)
    whole, _ = train(config)
    sf, sw = fast.state_dict(), whole.state_dict()
    assert all(torch.equal(sf[k], sw[k]) for k in sf)


@pytest.mark.parametrize("loss", ["ce", "mcel", "mhl"])
@pytest.mark.parametrize("quant", ["binary", "ternary", "int8"])
def test_every_loss_and_scheme_trains(loss, quant):
    _, m = train(TrainConfig(**{**FAST, "epochs": 2, "loss": loss, "quant": quant}))
    assert m["epochs"][-1]["loss"] == m["epochs"][-1]["loss"]  # finite, not NaN


@pytest.mark.parametrize("changes,match", [
    ({"dataset": "mnst"}, "did you mean 'mnist'"),
    ({"model": "vgg5"}, "unknown model"),
    ({"loss": "hinge"}, "unknown loss"),
    ({"quant": "int9"}, "unknown quantization"),
    ({"fmt": "ones"}, "number format"),
    ({"epochs": 0}, "epochs"),
    ({"lr": float("nan")}, "lr"),
    ({"train_ber": 2.0}, "train_ber"),
    ({"optimizer": "lbfgs"}, "optimizer"),
    ({"loss": "mcel", "margin": -1.0}, "margin must be a finite number >= 0"),
    ({"lr": 0.0}, "lr must be > 0"),
    ({"normalize": "l2", "scale": 0.0}, "scale must be > 0"),
    ({"seed": -1}, "seed must be an integer"),
    ({"seed": 2**70}, "seed must be an integer"),
    ({"device": "mps"}, "unknown device 'mps'"),
    ({"device": "cuda:x"}, "unknown device"),
    ({"train_error_model": "ber=1e-3,targets=activations"}, "needs quantized activations"),
    ({"train_error_model": "ber=1e-3,targets=biases"}, "not biases"),
    ({"train_error_model": "ber=1e-3", "train_ber": 0.01}, "not both"),
    ({"quant": "float", "train_ber": 0.01}, "needs a quantized model"),
])
def test_bad_configs(changes, match):
    with pytest.raises(MCELError, match=match):
        TrainConfig(**{**FAST, **changes})


def test_unknown_config_key():
    with pytest.raises(MCELError, match="did you mean 'epochs'"):
        TrainConfig.from_dict({"epoch": 3})


def test_fashion_mnist_vgg3_int4(real_data, tmp_path):
    """The foundation issue's acceptance run, on a slice to stay fast."""
    cfg = TrainConfig(dataset="fashion-mnist", data_dir=str(real_data / "fashion-mnist"),
                      model="vgg3", quant="int4", loss="mcel", margin=2.0, epochs=1, seed=0,
                      limit_train=2048, limit_test=1000, model_kwargs={"width": 0.25})
    _, metrics = train(cfg, tmp_path / "run")
    model, _ = load_run(tmp_path / "run")
    from mcel.data import load_dataset
    from mcel.train import accuracy

    x, y = load_dataset("fashion-mnist", "test", cfg.data_dir, limit=1000)
    assert accuracy(model, x, y) == metrics["test_acc"] > 0.5


def test_headline_configs_differ_only_in_the_loss():
    # configs/headline/{ce,mcel}.yaml are the two sides of MCEL's headline claim
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[1] / "configs" / "headline"
    ce, mcel = (TrainConfig.from_dict(yaml.safe_load((root / f"{n}.yaml").read_text()))
                for n in ("ce", "mcel"))
    differ = {k for k, v in ce.to_dict().items() if mcel.to_dict()[k] != v}
    assert differ == {"loss", "margin"} and mcel.loss == "mcel" and ce.loss == "ce"
    # the very runs of the study (docs/study/cpu-digits-vgg7, seed 0)
    assert (ce.digest(), mcel.digest()) == ("698bd80e76d5ef72", "097fe567c3f8ecae")


def test_resnet20_headline_configs_are_the_grid_runs():
    # configs/headline/fashion-resnet20-*.yaml: the 28x28 headline, CE against the recipe
    import dataclasses
    from pathlib import Path

    import yaml

    from mcel.experiments.grid import expand, load_grid

    root = Path(__file__).resolve().parents[1] / "configs"
    ce, rec = (TrainConfig.from_dict(yaml.safe_load(
        (root / "headline" / f"fashion-resnet20-{n}.yaml").read_text()))
        for n in ("ce", "mcel-clip"))
    differ = {k for k, v in ce.to_dict().items() if rec.to_dict()[k] != v}
    assert differ == {"loss", "margin", "clip_auto"}
    cells = {c.run_id for c in expand(load_grid(root / "study" / "fashion-resnet20-full.yaml"))}
    for s in (0, 1, 2):
        assert {dataclasses.replace(ce, seed=s).digest(),
                dataclasses.replace(rec, seed=s).digest()} <= cells


@pytest.mark.parametrize("name, grid, margins", [
    ("fashion-vgg3", "fashion-vgg3-full", (None, 10.0, 30.0)),
    ("mnist-vgg3", "mnist-vgg3-full", (None, 10.0, 30.0)),
    ("fashion-resnet20", "fashion-resnet20-full", (None, 10.0, 30.0)),
    ("fashion-resnet20-clip", "fashion-resnet20-full", (None, 10.0))])
def test_tune_configs_name_the_grid_runs(name, grid, margins):
    # tune-margin --runs over a sweep's runs/ reuses its models only if the ids agree
    import dataclasses
    from pathlib import Path

    import yaml

    from mcel.experiments.grid import expand, load_grid

    root = Path(__file__).resolve().parents[1] / "configs" / "study"
    base = TrainConfig.from_dict(yaml.safe_load((root / f"tune-{name}.yaml").read_text()))
    cells = {c.run_id for c in expand(load_grid(root / f"{grid}.yaml"))}
    for margin in margins:
        for s in (0, 1, 2):
            cfg = dataclasses.replace(base, loss="mcel" if margin else "ce", margin=margin,
                                      seed=s)
            assert cfg.digest() in cells, (margin, s)


def test_faults_during_in_your_own_loop():
    import mcel
    from mcel.engine import faults_during
    from mcel.quant import quant_layers

    torch.manual_seed(0)
    model = mcel.quantize_model(torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(),
                                                    torch.nn.Linear(16, 3)), "int4")
    x = torch.randn(32, 8)
    with torch.no_grad():
        clean = model(x)
    outs = []
    for step in (0, 1, 0):
        with mcel.faults_during(model, 0.05, seed=1, step=step):
            out = model(x)
        outs.append(out.detach())
        out.sum().backward()  # gradients pass through to the float weights
    assert not torch.equal(outs[0], clean) and not torch.equal(outs[0], outs[1])
    assert torch.equal(outs[0], outs[2])  # same seed and step: the same faults
    assert all(la.weight.grad is not None for _, la in quant_layers(model))
    with torch.no_grad():
        assert torch.equal(model(x), clean)  # outside the block: fault-free
    with pytest.raises(MCELError, match="not biases"):
        faults_during(model, mcel.BitErrorModel(ber=0.01, targets=("weights", "biases")))
    with pytest.raises(MCELError, match="no quantized layers"):
        faults_during(torch.nn.Linear(2, 2), 0.01)


def test_headline_baselines_grid_reuses_the_study_runs():
    # docs/results.md compares the clipped headline runs with the VGG7 study's rows:
    # the grid's CE, MCEL m=30 and error-injection cells must be those very runs
    from pathlib import Path

    from mcel.experiments.grid import expand, load_grid

    root = Path(__file__).resolve().parents[1]
    cells = expand(load_grid(root / "configs" / "study" / "headline-baselines.yaml"))
    ids = {(c.config.loss, c.config.margin, c.config.clip, c.config.train_ber, c.config.seed):
           c.run_id for c in cells}
    # seed 0 of CE and MCEL m=30 as configs/headline/*.yaml, and the study's EI seed 0
    assert ids[("ce", None, None, 0.0, 0)] == "698bd80e76d5ef72"
    assert ids[("mcel", 30.0, None, 0.0, 0)] == "097fe567c3f8ecae"
    assert ids[("ce", None, None, 0.01, 0)] == "51f4bb5abebcc26b"
    assert ids[("ce", None, None, 0.0, 1)] == "701132a6a769e7e4"


def test_a_clip_that_keeps_the_margin_out_of_reach_is_flagged(recwarn):
    # clipped weights bound the logits: a margin the model cannot reach is said, once
    tight = TrainConfig(dataset="digits", model="mlp", model_kwargs={"hidden": 16},
                        quant="int4", epochs=1, lr=0.01, batch_size=64, limit_train=300,
                        limit_test=100, loss="mcel", margin=10, clip=0.005)
    with pytest.warns(UserWarning, match="margin 10 is out of reach under the weight clip"):
        train(tight)
    lines = []
    train(dataclasses.replace(tight, clip=None), log=lines.append)  # no clip: no check
    train(dataclasses.replace(tight, margin=1, clip=0.5, epochs=5, limit_train=None),
          log=lines.append)
    assert not [ln for ln in lines if "out of reach" in ln]
