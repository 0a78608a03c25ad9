"""docs/tutorial.md runs: its ```python blocks are executed in order, in one namespace,
in a temporary folder, and what they leave behind is checked."""

import re
from pathlib import Path

import pytest
import torch

TUTORIAL = Path(__file__).resolve().parents[1] / "docs" / "tutorial.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


@pytest.fixture(scope="module")
def tutorial(tmp_path_factory):
    """The namespace the tutorial's code leaves, run in a fresh folder."""
    import os

    blocks = python_blocks(TUTORIAL.read_text())
    folder = tmp_path_factory.mktemp("tutorial")
    here, threads = os.getcwd(), torch.get_num_threads()  # the tutorial sets one thread
    ns: dict = {"__name__": "tutorial"}
    os.chdir(folder)
    try:
        for i, code in enumerate(blocks):
            exec(compile(code, f"{TUTORIAL.name}, python block {i + 1}", "exec"), ns)
    finally:
        os.chdir(here)
        torch.set_num_threads(threads)
    ns["_folder"] = folder
    return ns


def test_the_tutorial_has_the_steps_it_promises():
    code = "\n".join(python_blocks(TUTORIAL.read_text()))
    for call in ("mcel.quantize_model(", "mcel.MCELoss(", "mcel.faults_during(",
                 "mcel.quant.clip_weights(", "mcel.evaluate.evaluate(", "savefig("):
        assert call in code, call
    # the user's own model and a DataLoader, not mcel's models and tensors
    assert "class SmallCNN(nn.Module)" in code and "DataLoader(" in code
    assert "create_model" not in code
    # the promise: quantize, train with MCEL (with error injection, with clipping),
    # evaluate under bit errors with a few of mcel's functions; output_margins is an
    # optional look
    called = set(re.findall(r"\bmcel\.([\w.]+)\(", code))
    assert called == {"quantize_model", "QuantSpec", "MCELoss", "faults_during",
                      "quant.clip_weights", "evaluate.evaluate", "analysis.output_margins"}, called


def test_the_models_are_quantized_user_modules(tutorial):
    from mcel.quant import quant_layers

    for model in tutorial["models"].values():
        assert type(model).__name__ == "SmallCNN"
        assert len(quant_layers(model)) == 3  # two convolutions and the classifier


def test_accuracies_are_sane_and_fall_with_the_ber(tutorial):
    for name, res in tutorial["results"].items():
        rows = res.table()
        assert [r["ber"] for r in rows] == tutorial["BERS"]
        clean = res.clean_accuracy
        # a small CNN learns 8x8 digits well; clipped without normalization layers it
        # loses about ten points (the tutorial says why)
        assert (0.8 if name == "MCEL + clipping" else 0.9) < clean <= 1.0, name
        assert rows[0]["mean"] == clean  # BER 0 flips nothing
        assert all(0.0 <= r["ci_low"] <= r["mean"] <= r["ci_high"] <= 1.0 for r in rows)
        assert rows[-1]["mean"] < clean, name  # 5% of the bits flipped costs accuracy
        # nested faults: means never rise by more than noise along the grid
        means = [r["mean"] for r in rows]
        assert all(b <= a + 0.02 for a, b in zip(means, means[1:])), (name, means)


def test_mcel_widens_the_margins_and_holds_up_better_than_ce(tutorial):
    from mcel.analysis import output_margins
    from mcel.evaluate import t_interval

    models, x, y = tutorial["models"], tutorial["x_test"], tutorial["y_test"]
    ce = output_margins(models["CE"], x, y).median()
    mc = output_margins(models["MCEL"], x, y).median()
    assert mc > 1.5 * ce, (float(mc), float(ce))
    worst = tutorial["BERS"][-1]

    def drops(name):  # accuracy lost to each trial's flips at the largest BER
        res = tutorial["results"][name]
        row = next(r for r in res.results if r.ber == worst)
        return [res.clean_accuracy - a for a in row.accuracies]

    # the same seed flips the same cells of both (equally shaped) models, so the trials
    # pair: under the same flips MCEL loses less than CE, paired 95% interval above zero.
    # (Comparing the two means alone hangs on 20 trials' noise and on one training run's
    # clean accuracy; the paired loss is the tolerance claim itself.)
    ce, mc = drops("CE"), drops("MCEL")
    assert len(ce) == len(mc) >= 10
    _, low, _ = t_interval([c - m for c, m in zip(ce, mc)])
    assert low > 0, (low, ce, mc)


def test_the_plot_was_written_with_the_units_it_names(tutorial):
    png = tutorial["_folder"] / "tutorial_accuracy.png"
    assert png.read_bytes()[:4] == b"\x89PNG"
    ax = tutorial["ax"]
    assert ax.get_xlabel().startswith("bit error rate") and "%" not in ax.get_xlabel()
    xs = {float(v) for line in ax.get_lines() for v in line.get_xdata()}
    assert xs == set(tutorial["BERS"])  # fractions, as given to evaluate
    assert ax.get_ylabel() == "accuracy (%)"
    ys = [float(v) for line in ax.get_lines() for v in line.get_ydata()]
    assert max(ys) > 90 and all(0 <= v <= 100 for v in ys)


def test_evaluation_left_the_models_unchanged(tutorial):
    # evaluate checks a digest itself; the models still predict as before it ran
    for name, model in tutorial["models"].items():
        with torch.no_grad():
            acc = (model(tutorial["x_test"]).argmax(1) == tutorial["y_test"]).float().mean()
        assert float(acc) == pytest.approx(tutorial["results"][name].clean_accuracy, abs=1e-6)
