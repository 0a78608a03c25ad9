"""Worst-case bit flips: the progressive bit search."""

import pytest
import torch

from mcel import MCELError
from mcel.analysis import flip_certificate
from mcel.attack import bit_flip_attack
from mcel.data import load_dataset
from mcel.engine import state_digest
from mcel.quant import quant_layers, set_format
from mcel.train import TrainConfig, train

FAST = dict(dataset="digits", model="mlp", model_kwargs={"hidden": 32}, quant="int4", epochs=4,
            lr=0.01, batch_size=64, limit_train=512, device="cpu")  # CPU tensors below


@pytest.fixture(scope="module")
def setup():
    model, _ = train(TrainConfig(**FAST))
    x, y = load_dataset("digits", "train", limit=64)
    xt, yt = load_dataset("digits", "test", limit=200)
    return model, (x, y), (xt, yt)


def test_search_raises_the_loss_restores_the_model_and_is_deterministic(setup):
    model, attack, test = setup
    before = state_digest(model)
    a = bit_flip_attack(model, attack, test, budget=6, candidates=3)
    assert state_digest(model) == before
    assert len(a.flips) == 6 and len(a.accuracy) == len(a.loss) == 7
    assert a.loss[-1] > a.loss[0] and a.accuracy[-1] < a.accuracy[0]
    assert len(set(a.flips)) == 6  # a bit flipped twice would be undone
    b = bit_flip_attack(model, attack, test, budget=6, candidates=3)
    assert a.flips == b.flips and a.accuracy == b.accuracy
    names = [n for n, _ in quant_layers(model)]
    assert all(f.layer in names and 0 <= f.bit < 4 for f in a.flips)
    assert a.flips_to(a.accuracy[0]) == 0 and a.flips_to(-1.0) is None


def test_the_flips_are_what_the_accuracy_says(setup):
    # replaying the chosen flips by hand on the stored codes gives the reported accuracy
    model, attack, (xt, yt) = setup
    res = bit_flip_attack(model, attack, (xt, yt), budget=4, candidates=2)
    layers = dict(quant_layers(model))
    from mcel.engine import MemoryImage

    with MemoryImage(model, None) as image, torch.inference_mode():
        slots = {s.name.rsplit(".", 1)[0]: s for _, s in image.weights}
        for f in res.flips:
            s = slots[f.layer]
            s.qt.codes.view(-1)[f.index] ^= 1 << f.bit
            s.values.view(-1)[f.index] = s.qt.dequantize().view(-1)[f.index]
        acc = (model(xt).argmax(1) == yt).float().mean().item()
        for f in res.flips:  # undo by hand too
            s = slots[f.layer]
            s.qt.codes.view(-1)[f.index] ^= 1 << f.bit
            s.values.view(-1)[f.index] = s.qt.dequantize().view(-1)[f.index]
    assert acc == pytest.approx(res.accuracy[-1])
    assert set(layers) >= {f.layer for f in res.flips}


def test_output_layer_certificate_is_a_lower_bound(setup):
    # the certificate is the fewest output-layer flips that can change a prediction:
    # no search restricted to that layer may change one with fewer
    model, _, (xt, yt) = setup
    out = [n for n, _ in quant_layers(model)][-1]
    cert = flip_certificate(model, xt[:12], yt[:12], max_flips=8)
    reached = 0
    for i in range(12):
        if cert[i] == 0:
            continue  # not correct to begin with
        one = (xt[i:i + 1], yt[i:i + 1])
        res = bit_flip_attack(model, one, one, budget=8, candidates=4, layers=[out],
                              stop_at=0.0)
        n = res.flips_to(0.0)
        if n is not None:
            reached += 1
            assert n >= cert[i], (i, n, int(cert[i]))
    assert reached > 0  # the bound was really put to the test


def test_other_format_and_bad_input(setup):
    model, attack, test = setup
    set_format(model, "sign_magnitude")
    try:
        res = bit_flip_attack(model, attack, test, budget=2, candidates=2)
        assert len(res.flips) == 2
    finally:
        set_format(model, "twos_complement")
    with pytest.raises(MCELError, match="no quantized layer matches"):
        bit_flip_attack(model, attack, test, layers=["conv*"])
    with pytest.raises(MCELError, match="budget and candidates must be >= 1"):
        bit_flip_attack(model, attack, test, budget=0)


def test_attack_command(tmp_path, capsys):
    from mcel.cli import main

    run = tmp_path / "run"
    assert main(["train", "--dataset", "digits", "--model", "mlp", "--quant", "int8",
                 "--epochs", "2", "--limit-train", "400", "--out", str(run)]) == 0
    js = tmp_path / "a.json"
    assert main(["attack", str(run), "--budget", "3", "--candidates", "2", "--test-samples",
                 "100", "--attack-samples", "32", "--fmt", "sign_magnitude", "--json",
                 str(js)]) == 0
    out = capsys.readouterr().out
    assert "3 flips (sign_magnitude, 100 test images" in out and "accuracy <= 50.0%" in out
    import json

    res = json.loads(js.read_text())
    assert len(res["flips"]) == 3 and len(res["accuracy"]) == 4
    assert set(res["meta"]["flips_to"]) == {"0.5", "0.11"}
    assert main(["attack", str(tmp_path / "nope")]) == 2
    assert "run folder" in (err := capsys.readouterr().err) and "is missing" in err


def test_replaying_the_layers_before_a_candidate_changes_nothing(monkeypatch):
    """Candidates re-run only the modules from their layer on; a conv net with in-place
    ReLUs and batch norm gives the very same flips, losses and accuracies as full
    forwards, and a module with a hook of its own is not replayed (its hook would run
    twice)."""
    import mcel.attack as ma

    model, _ = train(TrainConfig(**{**FAST, "model": "vgg3", "model_kwargs": {"width": 0.125},
                                    "epochs": 2}))
    attack, test = load_dataset("digits", "train", limit=48), load_dataset("digits", "test",
                                                                           limit=100)
    fast = bit_flip_attack(model, attack, test, budget=4, candidates=3)
    monkeypatch.setattr(ma, "REPLAY", False)
    full = bit_flip_attack(model, attack, test, budget=4, candidates=3)
    assert fast.flips == full.flips and fast.loss == full.loss
    assert fast.accuracy == full.accuracy
    monkeypatch.setattr(ma, "REPLAY", True)
    calls = []
    first = next(m for m in model.modules() if next(m.children(), None) is None)
    handle = first.register_forward_hook(lambda m, a, out: calls.append(1))
    try:
        hooked = bit_flip_attack(model, attack, test, budget=1, candidates=2)
    finally:
        handle.remove()
    monkeypatch.setattr(ma, "REPLAY", False)
    plain = bit_flip_attack(model, attack, test, budget=1, candidates=2)
    assert hooked.flips == plain.flips and hooked.loss == plain.loss
    layers = len([n for n, _ in quant_layers(model)])
    assert len(calls) >= 1 + 2 * layers  # ran in every candidate's forward, not replayed
