"""Margin search: CE vs MCEL candidates at one BER, choice within the clean budget."""

import json
import re

import pytest

from mcel import MCELError
from mcel.cli import main
from mcel.train import TrainConfig
from mcel.tuning import tune_margin

BASE = TrainConfig(dataset="digits", model="mlp", model_kwargs={"hidden": 32}, quant="int4",
                   epochs=3, lr=0.01, batch_size=64, limit_train=512, limit_test=200)

# a one-epoch model for the tests that train into a runs folder
SMALL = TrainConfig(dataset="digits", model="mlp", model_kwargs={"hidden": 16}, quant="int4",
                    epochs=1, lr=0.01, batch_size=64, limit_train=400, limit_test=100)


@pytest.fixture(scope="module")
def tuned():
    return tune_margin(BASE, 0.02, margins=(1, 4), clean_budget=0.02, trials=10, seed=0)


def test_tune_picks_the_best_margin_within_budget(tuned):
    res = tuned
    rows = res.rows
    assert [r.loss for r in rows] == ["ce", "mcel", "mcel"]
    assert [r.margin for r in rows[1:]] == [1.0, 4.0]
    assert rows[0].method == "CE" and rows[1].method == "MCEL(m=1)"
    assert len({r.run_id for r in rows}) == 3
    # chosen on samples the runs never trained on
    assert "held-out training samples [512:1437]" in res.selected_on
    assert res.n_select == 1437 - 512
    floor = res.ce.clean_acc - 0.02
    for r in rows[1:]:
        assert r.eligible == (r.clean_acc >= floor)
        assert r.ci_low <= r.acc <= r.ci_high
        assert r.delta_vs_ce == pytest.approx(r.acc - res.ce.acc)
    eligible = [r for r in rows if r.eligible]
    if eligible:
        best = res.best
        assert best.clean_acc >= floor
        assert best.acc == max(r.acc for r in eligible)
        assert res.best_margin == best.margin
        assert res.beats_ce == (best.acc > res.ce.acc)
        assert res.recommended_margin == (best.margin if res.beats_ce else 0.0)
    else:
        assert res.best is None and res.best_margin is None
        assert res.recommended_margin == 0.0
    saved = json.loads(json.dumps(res.to_dict()))  # everything it returns can be saved
    # ... and rerun: the base training settings and the versions are in it
    assert TrainConfig.from_dict(saved["base_config"]) == BASE and "torch" in saved["versions"]


def test_the_json_form_keeps_its_keys(tuned):
    # files written before the result became a dataclass read the same
    saved = json.loads(json.dumps(tuned.to_dict()))
    assert set(saved) == {"ber", "error_model", "clean_budget", "base_config", "versions",
                          "trials", "seed", "seeds", "selected_on", "n_select", "rows", "ce",
                          "best", "best_margin", "beats_ce", "recommended_margin",
                          "recommended", "correction"}
    assert saved["ce"] == saved["rows"][0] and saved["seeds"] == [0]
    assert set(saved["rows"][1]) == {"method", "loss", "margin", "normalize", "clean_acc", "acc",
                                     "ci_low", "ci_high", "test_clean_acc", "train_seconds",
                                     "run_id", "per_seed", "eligible", "delta_vs_ce", "clip"}
    assert set(saved["rows"][1]["per_seed"][0]) == {"seed", "clean_acc", "acc", "ci_low",
                                                    "ci_high", "test_clean_acc",
                                                    "train_seconds", "run_id"}
    assert saved["best"] in [None, *saved["rows"]]
    assert saved["recommended_margin"] == tuned.recommended_margin


def test_an_unlimited_budget_takes_the_most_tolerant(tuned):
    """Same trained models (same configs, same seeds) with any clean loss allowed."""
    res = tune_margin(BASE, 0.02, margins=(1, 4), clean_budget=1.0, trials=10, seed=0)
    assert [r.acc for r in res.rows] == [r.acc for r in tuned.rows]  # deterministic
    assert all(r.eligible for r in res.rows[1:])
    assert res.best.acc == max(r.acc for r in res.rows[1:])


def test_several_seeds_need_a_paired_interval_above_zero():
    res = tune_margin(BASE, 0.02, margins=(4,), clean_budget=1.0, trials=5, seed=0,
                      seeds=(0, 1, 2))
    assert list(res.seeds) == [0, 1, 2]
    ce, m4 = res.rows
    assert [p.seed for p in m4.per_seed] == [0, 1, 2]
    assert m4.acc == pytest.approx(sum(p.acc for p in m4.per_seed) / 3)
    diffs = [a.acc - b.acc for a, b in zip(m4.per_seed, ce.per_seed)]
    assert m4.delta_vs_ce == pytest.approx(sum(diffs) / 3)
    assert m4.delta_ci_low <= m4.delta_vs_ce <= m4.delta_ci_high
    assert res.beats_ce == (m4.delta_ci_low > 0)
    assert res.recommended_margin == (4.0 if res.beats_ce else 0.0)
    assert len({p.run_id for p in m4.per_seed}) == 3


@pytest.mark.parametrize("kwargs,needle", [
    ({"seeds": (1, 1)}, "distinct"),
    ({"margins": ()}, "at least one"),
    ({"margins": (-1,)}, ">= 0"),
    ({"clean_budget": -0.1}, "clean_budget"),
])
def test_bad_arguments(kwargs, needle):
    with pytest.raises(MCELError, match=needle):
        tune_margin(BASE, 0.01, **kwargs)


def test_tune_margin_command(tmp_path, capsys):
    js = tmp_path / "tune.json"
    argv = ["tune-margin", "--dataset", "digits", "--model", "mlp", "--quant", "int4",
            "--epochs", "1", "--lr", "0.01", "--batch-size", "64", "--limit-train", "300",
            "--limit-test", "100", "--ber", "0.01", "--margins", "2", "--normalize", "std",
            "--trials", "3", "--runs", str(tmp_path / "runs"), "--json", str(js)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "margin search at BER 0.01" in out and "MCEL(m=2, std, s=8)" in out
    verdict = re.search(r"(best margin .*)|(no margin keeps .*)", out).group(0)
    assert "best" not in verdict or re.search(r"\d+\.\d\d% at BER 0.01", verdict), verdict
    res = json.loads(js.read_text())
    assert [r["method"] for r in res["rows"]] == ["CE", "MCEL(m=2, std, s=8)"]
    assert {p.name for p in (tmp_path / "runs").iterdir()} == {r["run_id"] for r in res["rows"]}
    assert main(argv[:-2] + ["--ber", "1.5"]) == 2
    assert "outside [0, 1]" in capsys.readouterr().err


def test_runs_folder_keeps_the_candidates_and_a_rerun_reuses_them(tmp_path, monkeypatch):
    import mcel.train
    from mcel.experiments.grid import expand, load_grid

    small = SMALL
    first = tune_margin(small, 0.02, margins=(2,), trials=3, seeds=[0, 1], runs=tmp_path)
    ids = {p.run_id for r in first.rows for p in r.per_seed}
    assert {p.name for p in tmp_path.iterdir()} == ids and len(ids) == 4
    assert all((tmp_path / i / "model.safetensors").exists() for i in ids)

    def no_training(*args, **kwargs):
        raise AssertionError("a finished candidate was trained again")

    monkeypatch.setattr(mcel.train, "_epoch", no_training)
    again = tune_margin(small, 0.02, margins=(2,), trials=3, seeds=[0, 1], runs=tmp_path)
    assert again.to_dict()["rows"] == first.to_dict()["rows"]
    # a sweep over the same settings names its run folders the same way
    grid = tmp_path / "g.yaml"
    grid.write_text(json.dumps({"name": "g", "base": small.to_dict(), "grid": {
        "method": [{"loss": "ce"}, {"loss": "mcel", "margin": 2}], "seed": [0, 1]}}))
    assert {c.run_id for c in expand(load_grid(grid))} == ids


def _row(margin, accs):
    from mcel.tuning import Candidate, SeedRun

    per_seed = tuple(SeedRun(seed=s, clean_acc=0.9, acc=a, ci_low=a, ci_high=a,
                             test_clean_acc=0.9, train_seconds=1.0, run_id=f"r{s}")
                     for s, a in enumerate(accs))
    mean = sum(accs) / len(accs)
    return Candidate(method="CE" if margin is None else f"MCEL(m={margin:g})",
                     loss="ce" if margin is None else "mcel", margin=margin, normalize=None,
                     clean_acc=0.9, acc=mean, ci_low=mean, ci_high=mean, test_clean_acc=0.9,
                     train_seconds=1.0, run_id="r0", per_seed=per_seed)


def test_bonferroni_widens_the_paired_interval_for_the_choice_among_k_margins():
    from mcel.evaluate import t_interval
    from mcel.tuning import _choose

    ce = _row(None, [0.50, 0.60, 0.70])
    # m=3 wins every seed by 4-6 points: significant alone, not as the best of three
    rows = [ce, _row(1, [0.50, 0.61, 0.69]), _row(2, [0.52, 0.60, 0.71]),
            _row(3, [0.54, 0.66, 0.74])]
    plain, best, beats = _choose(rows, 0.005, True)
    assert best.margin == 3 and beats and plain[3].delta_ci_low > 0
    wide, best_b, beats_b = _choose(rows, 0.005, True, confidence=1 - 0.05 / 3)
    diffs = [0.04, 0.06, 0.04]
    _, lo, hi = t_interval(diffs, 1 - 0.05 / 3)
    assert wide[3].delta_ci_low == pytest.approx(lo) and wide[3].delta_ci_high == pytest.approx(hi)
    assert lo < plain[3].delta_ci_low < 0.04 and best_b.margin == 3 and not beats_b


def test_correction_is_recorded_and_checked():
    res = tune_margin(BASE, 0.02, margins=(1, 4), trials=2, seeds=(0, 1),
                      correction="bonferroni")
    assert res.to_dict()["correction"] == "bonferroni"
    for r in res.rows[1:]:  # 2 margins: 97.5% intervals
        from mcel.evaluate import t_interval
        diffs = [a.acc - b.acc for a, b in zip(r.per_seed, res.ce.per_seed)]
        assert r.delta_ci_low == pytest.approx(t_interval(diffs, 0.975)[1])
    with pytest.raises(MCELError, match="unknown correction 'holm'"):
        tune_margin(BASE, 0.02, correction="holm")


def test_a_runs_path_that_is_a_file_fails_before_training(tmp_path):
    (tmp_path / "f").write_text("")
    with pytest.raises(MCELError, match="is a file; give a folder"):
        tune_margin(BASE, 0.02, runs=tmp_path / "f")


def test_parse_clip_reads_each_kind_and_rejects_the_rest():
    from mcel.tuning import parse_clip

    assert parse_clip("none") == {"clip": None, "clip_auto": None, "clip_rel": None}
    assert parse_clip("0.025")["clip"] == 0.025
    assert parse_clip("auto:2")["clip_auto"] == 2.0 and parse_clip("AUTO:2")["clip"] is None
    assert parse_clip(" rel:1.5 ")["clip_rel"] == 1.5
    for bad in ("", "auto", "auto:", "auto:-1", "rel:0", "max:1", "nan", "inf", "0"):
        with pytest.raises(MCELError, match="bad candidate clip"):
            parse_clip(bad)


def test_clip_search_crosses_the_clips_with_ce_and_every_margin(tmp_path):
    res = tune_margin(BASE, 0.05, margins=(2,), clips=("none", "0.05"), clean_budget=1.0,
                      trials=3, runs=tmp_path)
    got = [(r.method, r.clip["clip"]) for r in res.rows]
    # plain CE is the baseline; CE under the base config's (no) clip is not tried twice
    assert got == [("CE", None), ("MCEL(m=2)", None), ("CE+clip(0.05)", 0.05),
                   ("MCEL(m=2)+clip(0.05)", 0.05)]
    assert [r.eligible for r in res.rows] == [False, True, True, True]  # budget 1.0: all
    best = max(res.rows[1:], key=lambda r: (r.acc, r.clean_acc, -(r.margin or 0.0)))
    assert res.best is not None and res.best.method == best.method
    want = ({"loss": best.loss, "margin": best.margin, **best.clip} if res.beats_ce else
            {"loss": "ce", "margin": None, "clip": None, "clip_auto": None, "clip_rel": None})
    assert res.recommended == want
    assert res.recommended_margin == ((best.margin or 0.0) if res.beats_ce else 0.0)
    assert json.loads(json.dumps(res.to_dict()))["recommended"] == want
    assert {p.name for p in tmp_path.iterdir()} == {r.run_id for r in res.rows}


def test_clip_candidates_name_the_resnet20_grid_runs():
    # tune-margin --clips over the ResNet-20 grid's runs/ reuses all but CE + clip_auto 1
    from pathlib import Path

    import yaml

    from mcel.experiments.grid import expand, load_grid
    from mcel.tuning import _configs

    root = Path(__file__).resolve().parents[1] / "configs" / "study"
    base = TrainConfig.from_dict(
        yaml.safe_load((root / "tune-fashion-resnet20.yaml").read_text()))
    cfgs = _configs(base, [10.0], None, ["none", "0.025", "auto:2", "auto:1"])
    assert len(cfgs) == 8
    cells = {c.run_id for c in expand(load_grid(root / "fashion-resnet20-full.yaml"))}
    missing = [c for c in cfgs if c.digest() not in cells]
    assert [(c.loss, c.clip_auto) for c in missing] == [("ce", 1.0)]


def test_cli_clip_search_says_which_flags_to_train_with(tmp_path, capsys):
    args = ["tune-margin", "--dataset", "digits", "--model", "mlp", "--quant", "int4",
            "--epochs", "1", "--limit-train", "400", "--limit-test", "100", "--ber", "0.05",
            "--margins", "2", "--clips", "none,auto:1", "--trials", "2",
            "--clean-budget", "1", "--json", str(tmp_path / "t.json")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "margin and clip search" in out
    line = re.search(r"recommended: (.*)", out).group(1)
    saved = json.loads((tmp_path / "t.json").read_text())
    rec = saved["recommended"]
    assert line.startswith(f"--loss {rec['loss']}")
    assert ("--clip-auto 1" in line) == (rec["clip_auto"] == 1.0)


def test_cli_rejects_a_bad_clip_before_training(capsys):
    with pytest.raises(SystemExit) as e:
        main(["tune-margin", "--dataset", "digits", "--ber", "0.01", "--clips", "auto:x"])
    assert e.value.code == 2
    assert "bad candidate clip 'auto:x'" in capsys.readouterr().err


def test_dry_run_lists_what_would_be_reused_and_trained(tmp_path, capsys):
    from mcel.tuning import plan

    small = SMALL
    done = tune_margin(small, 0.02, margins=(2,), trials=2, seeds=[0, 1], runs=tmp_path)
    rows = plan(small, (2, 3), seeds=[0, 1], runs=tmp_path)
    assert [(m, s, st) for m, s, _, st in rows] == [
        ("CE", 0, "reuse"), ("CE", 1, "reuse"), ("MCEL(m=2)", 0, "reuse"),
        ("MCEL(m=2)", 1, "reuse"), ("MCEL(m=3)", 0, "train"), ("MCEL(m=3)", 1, "train")]
    assert {r[2] for r in rows[:4]} == {p.run_id for r in done.rows for p in r.per_seed}
    assert all(st == "train" for *_, st in plan(small, (2,), seeds=[0, 1]))  # no runs folder
    before = sorted(p.name for p in tmp_path.iterdir())
    cfg = tmp_path.parent / f"{tmp_path.name}-small.yaml"
    cfg.write_text(json.dumps(small.to_dict()))
    args = ["tune-margin", "--config", str(cfg), "--ber", "0.02", "--margins", "2,3",
            "--seeds", "0,1", "--runs", str(tmp_path), "--dry-run"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "6 runs: 4 to reuse, 0 to resume, 2 to train" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing trained


def test_jobs_train_the_candidates_in_parallel_as_one_thread_would(tmp_path):
    """--jobs 2 trains the missing candidates in two worker processes, one CPU thread each
    (a sweep cell's setting), and the search then reuses them: the same models, so the
    same numbers, as a search that trains them one after the other at one thread."""
    from mcel.precision import cpu_threads

    par = tune_margin(SMALL, 0.02, margins=(2,), trials=3, seeds=[0, 1], runs=tmp_path / "p",
                      jobs=2)
    with cpu_threads(1):
        seq = tune_margin(SMALL, 0.02, margins=(2,), trials=3, seeds=[0, 1],
                          runs=tmp_path / "s")

    def numbers(res):
        return [(p.run_id, p.clean_acc, p.acc, p.test_clean_acc)
                for r in res.rows for p in r.per_seed]

    assert numbers(par) == numbers(seq) and len(numbers(par)) == 4
    with pytest.raises(MCELError, match="give runs"):
        tune_margin(SMALL, 0.02, margins=(2,), jobs=2)
    with pytest.raises(MCELError, match="jobs must be a positive integer, got 0"):
        tune_margin(SMALL, 0.02, margins=(2,), jobs=0, runs=tmp_path / "p")
