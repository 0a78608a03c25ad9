"""Worst-case flips over a sweep: ``mcel attack DB --out DIR`` and its summary.

The command is checked against the single-run form (the same JSON, byte for byte but
the timing), for resuming and for refusing to mix settings; the summary's numbers are
checked against t-intervals computed here by hand on synthetic results.
"""

import json
import math
import shutil

import pytest

from mcel.attack import AttackResult, AttackSettings, Flip
from mcel.cli import main
from mcel.errors import MCELError
from mcel.report.attack import flips_delta, fmt_flips, fmt_flips_delta, summarize
from mcel.report.read import Run
from mcel.report.stats import CE_LABEL

GRID = """\
name: atk
base: {dataset: digits, model: mlp, model_kwargs: {hidden: 32}, quant: int4, epochs: 3,
       lr: 0.01, batch_size: 64, limit_train: 400}
grid:
  method: [{loss: ce}, {loss: ce, clip: 0.1}]
  seed: [0, 1]
eval: {bers: [0], trials: 1, limit_test: 20}
"""
FLAGS = ["--budget", "3", "--candidates", "2", "--attack-samples", "32", "--test-samples",
         "100"]
T_975_2 = 4.302652729749464  # Student t, 97.5% quantile, 2 degrees of freedom (tables)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    from mcel.experiments.sweep import run_sweep

    root = tmp_path_factory.mktemp("atk")
    (root / "grid.yaml").write_text(GRID)
    s = run_sweep(root / "grid.yaml", root / "sw")
    return root / "sw" / "grid.db", sorted(s.run_ids)


def _mtimes(folder):
    return {p.name: p.stat().st_mtime_ns for p in folder.glob("*.json")}


def test_database_form_resumes_refuses_other_settings_and_matches_one_run(sweep, tmp_path,
                                                                          capsys):
    db, ids = sweep
    elsewhere = tmp_path / "elsewhere"  # --runs: a copy of the run folders, one missing
    shutil.copytree(db.parent / "runs", elsewhere)
    shutil.rmtree(elsewhere / ids[0])
    out = tmp_path / "out"
    assert main(["attack", str(db), "--out", str(out), "--runs", str(elsewhere), *FLAGS]) == 0
    cap = capsys.readouterr()
    assert f"skipping 1 run(s) without a finished run folder in {elsewhere}: {ids[0]}" in cap.err
    assert "3 attacked, 0 done already, 1 without a run folder" in cap.out
    assert sorted(p.stem for p in out.glob("*.json") if p.stem != "summary") == ids[1:]
    assert ids[0] in (out / "summary.md").read_text()  # named as without a result
    assert json.loads((out / "summary.json").read_text())["without_result"] == [ids[0]]

    # the same run and settings through the single-run form: the same file but the timing
    one = tmp_path / "one.json"
    assert main(["attack", str(elsewhere / ids[1]), *FLAGS, "--json", str(one)]) == 0
    a, b = json.loads(one.read_text()), json.loads((out / f"{ids[1]}.json").read_text())
    a.pop("seconds"), b.pop("seconds")
    assert a == b and len(a["flips"]) == 3

    # resumes: the run folders beside the database hold all four; only the missing one runs
    before = _mtimes(out)
    assert main(["attack", str(db), "--out", str(out), *FLAGS]) == 0
    assert "1 attacked, 3 done already, 0 without a run folder" in capsys.readouterr().out
    after = _mtimes(out)
    assert all(after[f"{r}.json"] == before[f"{r}.json"] for r in ids[1:])
    assert f"{ids[0]}.json" in after
    assert json.loads((out / "summary.json").read_text())["without_result"] == []

    # other settings: one line, exit 2, nothing touched
    before = _mtimes(out)
    assert main(["attack", str(db), "--out", str(out), *FLAGS, "--budget", "4"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "budget 3 there, 4 now" in err and "pick another --out" in err
    assert _mtimes(out) == before

    # --summary-only rewrites the summary from the JSONs, attacking nothing
    (out / "summary.md").unlink()
    assert main(["attack", str(db), "--out", str(out), "--summary-only", "--budget", "9"]) == 0
    assert (out / "summary.md").is_file()
    assert {k: v for k, v in _mtimes(out).items() if k != "summary.json"} == \
        {k: v for k, v in before.items() if k != "summary.json"}


def test_database_form_flag_mistakes_are_one_line(sweep, tmp_path, capsys):
    db, _ = sweep
    for argv in (["attack", str(db)],  # no --out
                 ["attack", str(db), "--out", str(tmp_path / "o"), "--json", "x.json"],
                 ["attack", str(db.parent / "runs"), "--out", str(tmp_path / "o")],
                 ["attack", str(db), "--out", str(tmp_path / "empty"), "--summary-only"]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("mcel attack: error: "), err


# -- the summary, on synthetic results ---------------------------------------------------

def _run(rid, method, seed, **config):
    return Run(rid, method, {"dataset": "digits", "model": "mlp", "quant": "int4",
                             "seed": seed, **config}, None, None, None, {}, "g")


def _result(to_half, to_chance, accs=(0.9, 0.3), budget=30, settings=None):
    meta = {"fmt": "twos_complement", "flips_to": {"0.5": to_half, "0.11": to_chance},
            "attack_samples": 128, "test_samples": 500, "candidates": 5, "seed": 0,
            "settings": settings or AttackSettings(budget=budget).to_dict()}
    return AttackResult([Flip("fc", i, 0) for i in range(budget)], list(accs), [0.0] * 2,
                        meta=meta)


# flips to 50% / 11% per seed (None: not within the 30 flips), as in docs/results.md
CE = {0: (7, 12), 1: (10, 24), 2: (10, 19)}
EI = {0: (22, None), 1: (17, None), 2: (18, 29)}


@pytest.fixture
def summary():
    runs, results = {}, {}
    for label, per_seed, cfg in ((CE_LABEL, CE, {}), ("CE+EI(p=0.01)", EI, {"train_ber": 0.01})):
        for seed, (h, c) in per_seed.items():
            rid = f"{label}-{seed}"
            runs[rid] = _run(rid, label, seed, **cfg)
            results[rid] = _result(h, c, accs=(0.90 + 0.02 * seed, 0.2))
    runs["clip-0"] = _run("clip-0", "CE+clip(0.1)", 0, clip=0.1)  # a single seed
    results["clip-0"] = _result(20, None)
    runs["no-result"] = _run("no-result", CE_LABEL, 3)
    results["stray"] = _result(1, 2)  # not a run of the database
    return summarize(results, runs)


def _t(values):
    """Mean and 95% t-interval of three values, by hand."""
    n, m = len(values), sum(values) / len(values)
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1))
    return m, m - T_975_2 * sd / math.sqrt(n), m + T_975_2 * sd / math.sqrt(n)


def test_summary_intervals_lower_bounds_and_paired_deltas(summary):
    (g,) = summary.groups
    assert g.title == "digits / mlp / int4 / twos_complement" and g.levels == ["0.5", "0.11"]
    assert [ln.label for ln in g.lines] == ["CE", "CE+EI(p=0.01)", "CE+clip(0.1)"]
    ce, ei, clip = g.lines
    c = ce.flips["0.5"]
    assert (c.mean, c.low, c.high) == pytest.approx(_t([7, 10, 10]))
    assert fmt_flips(c) == "9.0 [4.7, 13.3]" and ce.censored["0.5"] == []
    m, lo, hi = _t([0.90, 0.92, 0.94])
    assert (ce.clean.mean, ce.clean.low, ce.clean.high) == pytest.approx((m, lo, hi))
    # a seed that never reached chance counts as its 30 flips: a lower bound
    c = ei.flips["0.11"]
    assert (c.mean, c.low, c.high) == pytest.approx(_t([30, 30, 29]))
    assert ei.censored["0.11"] == [0, 1] and fmt_flips(c, "≥") == "≥ 29.7 [28.2, 31.1]"
    # paired by seed: 22-7, 17-10, 18-10
    d = flips_delta(ei, ce, "0.5")
    assert (d.cell.mean, d.cell.low, d.cell.high) == pytest.approx(_t([15, 7, 8]))
    assert d.bound == "" and fmt_flips_delta(d) == "+10.0 [-0.8, +20.8]"
    d = flips_delta(ei, ce, "0.11")  # censored on the method's side: at least this much
    assert d.cell.mean == pytest.approx(34 / 3) and d.bound == "≥"
    assert flips_delta(ce, ei, "0.11").bound == "≤"  # ... and at most, seen from CE
    # one seed: its own count, no interval; Δ is the difference of the means, unpaired
    c = clip.flips["0.5"]
    assert (c.mean, c.low, c.high, c.across_seeds) == (20, 20, 20, False)
    assert fmt_flips(c) == "20"
    d = flips_delta(clip, ce, "0.5")
    assert d.cell.mean == pytest.approx(11) and not d.cell.across_seeds
    assert fmt_flips_delta(d) == "+11.0"
    assert summary.without_result == ["no-result"]
    assert any("stray" in n for n in summary.notes)


def test_summary_json_and_markdown(summary):
    d = json.loads(json.dumps(summary.to_dict()))  # plain JSON all through
    ei = d["groups"][0]["methods"][1]
    chance = ei["flips_to"]["0.11"]
    assert chance["lower_bound"] and chance["censored_seeds"] == [0, 1]
    assert ei["delta_vs_ce"]["0.11"]["bound"] == "lower" and ei["delta_vs_ce"]["0.5"]["paired"]
    assert d["groups"][0]["methods"][0]["delta_vs_ce"] is None
    from mcel.report.attack import summary_blocks
    from mcel.report.render import to_markdown

    md = to_markdown(summary_blocks(summary, "t"))
    row = next(ln for ln in md.splitlines() if ln.startswith("| CE+EI"))
    assert "≥ 29.7 [28.2, 31.1]" in row and "+10.0 [-0.8, +20.8]" in row
    assert "0: 22 / >30; 1: 17 / >30; 2: 18 / 29" in row
    assert "lower bound" in md


def test_summary_refuses_results_of_other_settings():
    runs = {"a": _run("a", CE_LABEL, 0), "b": _run("b", CE_LABEL, 1)}
    results = {"a": _result(1, 2, budget=30), "b": _result(1, 2, budget=20)}
    with pytest.raises(MCELError, match="budget 30 in one, 20 in another"):
        summarize(results, runs)
