"""Reports from a hand-built results database: numbers, files, provenance, errors."""

import hashlib
import json
import math
import os
import re
import sqlite3

import pytest
from scipy import stats

from mcel import MCELError
from mcel.analysis import Tolerance, tolerable_ber
from mcel.cli import main
from mcel.experiments.store import connect, dumps, method_label
from mcel.report import build_report

BERS = (0.0, 0.01, 0.02)
SEEDS = (0, 1)
VERSIONS = {"mcel": "0.1.0", "torch": "2.13.0", "numpy": "2.0.0", "python": "3.11.0"}
BASE = {"dataset": "digits", "model": "mlp", "quant": "int4", "epochs": 5}


def _trial_accs(method_i, seed, ber_i):
    """Distinct, known per-trial accuracies for every (method, seed, BER)."""
    base = 0.95 - 0.10 * ber_i / (1 + method_i) + 0.003 * seed * (1 + method_i)
    return [round(base - 0.01 * t + 0.002 * method_i, 6) for t in range(4)]


def _run_id(config):
    return hashlib.sha256(dumps(config).encode()).hexdigest()[:16]


def _add_run(con, config, accs_by_ber, error_model="ber", clean=None, margins=None,
             eval_clean=None):
    rid = _run_id(config)
    eval_clean = clean if eval_clean is None else eval_clean
    con.execute("INSERT INTO runs (run_id, grid, method, config, clean_acc, train_seconds, "
                "margins, versions) VALUES (?,?,?,?,?,?,?,?)",
                (rid, "g", method_label(config), dumps(config), clean, 12.5 + config["seed"],
                 json.dumps(margins or [0.5, 1.0, 1.5, 2.0 + config["seed"]]),
                 json.dumps(VERSIONS)))
    for ber, accs in accs_by_ber.items():
        mean, (lo, hi) = sum(accs) / len(accs), _t(accs)
        cur = con.execute("INSERT INTO evals (run_id, fmt, error_model, ber, eval_seed, mean, std, "
                          "ci_low, ci_high, trials, clean_acc, seconds) VALUES "
                          "(?,?,?,?,?,?,?,?,?,?,?,?)",
                          (rid, "twos_complement", error_model, ber, 0, mean, 0.0, lo, hi,
                           len(accs), eval_clean, 1.0))
        con.executemany("INSERT INTO trials VALUES (?,?,?,?)",
                        [(cur.lastrowid, t, a, ber) for t, a in enumerate(accs)])
    return rid


def _t(values):
    m = sum(values) / len(values)
    return stats.t.interval(0.95, len(values) - 1, loc=m, scale=stats.sem(values))


def _t01(values):
    """The interval of an accuracy, clipped to [0, 1] as the report shows it."""
    lo, hi = _t(values)
    return max(0.0, lo), min(1.0, hi)


@pytest.fixture()
def db(tmp_path):
    path = tmp_path / "study.db"
    con = connect(path)
    methods = [{"loss": "ce"}, {"loss": "mcel", "margin": 2.0}]
    ids = []
    for mi, m in enumerate(methods):
        for seed in SEEDS:
            cfg = {**BASE, **m, "seed": seed}
            ids.append(_add_run(con, cfg, {b: _trial_accs(mi, seed, bi) for bi, b in
                                           enumerate(BERS)}, clean=0.96 + 0.01 * seed - 0.005 * mi))
    # One single-seed method (its band is the run's own trial interval) ...
    ids.append(_add_run(con, {**BASE, "loss": "mcel", "margin": 4.0, "seed": 0},
                        {b: _trial_accs(3, 0, bi) for bi, b in enumerate(BERS)}, clean=0.9))
    # ... and a CE run under another error model: a group of its own.
    ids.append(_add_run(con, {**BASE, "loss": "ce", "seed": 0, "epochs": 6}, {0.01: [0.5, 0.6]},
                        error_model="p01=0.001,p10=0.01", clean=0.96))
    con.commit()
    con.close()
    return path, ids


def _row(md, label):
    """The cells of the first summary-table row whose method is ``label``."""
    for line in md.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells and cells[0] == label and len(cells) > 3:
            return cells
    raise AssertionError(f"no row for {label}")


def test_report_numbers_files_and_provenance(db, tmp_path):
    path, ids = db
    before = path.read_bytes()
    md_path = build_report(path, tmp_path / "rep")
    out = md_path.parent
    md = md_path.read_text()
    assert path.read_bytes() == before  # read-only
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert len([p for p in pngs if p.endswith("accuracy.png")]) == 2
    assert len([p for p in pngs if p.endswith("margins.png")]) == 2
    assert len([p for p in pngs if p.endswith("tolerable.png")]) == 2
    for p in pngs:
        assert f"]({p})" in md
        assert (out / p).read_bytes()[:4] == b"\x89PNG"
    assert md.count("\n## ") == 3  # two groups and the appendix

    # BER 0 is the clean column (no flips): the table has no second column for it
    header = next(ln for ln in md.splitlines() if ln.startswith("| method |"))
    assert "| clean acc % | BER 0.01: acc % | BER 0.02: acc % |" in header
    assert "BER 0:" not in header and "@ 0 " not in header
    # Two seeds: mean over seeds of per-run means, 95% t-interval across seeds.
    for mi, label in enumerate(["CE", "MCEL(m=2)"]):
        cells = _row(md, label)
        assert cells[1] == "0, 1"
        for bi in range(1, len(BERS)):
            per_seed = [sum(a) / len(a) for a in (_trial_accs(mi, s, bi) for s in SEEDS)]
            m = sum(per_seed) / 2
            lo, hi = _t01(per_seed)
            assert cells[2 + bi] == f"{100 * m:.2f} [{100 * lo:.2f}, {100 * hi:.2f}]"
        cleans = [0.96 + 0.01 * s - 0.005 * mi for s in SEEDS]
        lo, hi = _t01(cleans)
        assert cells[2] == f"{100 * sum(cleans) / 2:.2f} [{100 * lo:.2f}, {100 * hi:.2f}]"
        assert cells[-2] == "13.0"  # mean training seconds 12.5, 13.5
    # Paired deltas vs CE: per-seed differences, interval across seeds.
    cells = _row(md, "MCEL(m=2)")
    bi = 2
    diffs = [sum(_trial_accs(1, s, bi)) / 4 - sum(_trial_accs(0, s, bi)) / 4 for s in SEEDS]
    lo, hi = _t(diffs)
    assert cells[2 + len(BERS) + bi] == (f"{100 * sum(diffs) / 2:+.2f} "
                                     f"[{100 * lo:+.2f}, {100 * hi:+.2f}]")
    # ... and the clean accuracy's, paired the same way (the goal: within half a point)
    assert "| Δ vs CE clean (points) | Δ vs CE @ 0.01 (points) |" in header
    assert cells[2 + len(BERS)] == "-0.50 [-0.50, -0.50]"
    assert _row(md, "CE")[2 + len(BERS)] == "—"
    # One seed: the run's own interval over its trials.
    accs = _trial_accs(3, 0, 1)
    lo, hi = _t01(accs)
    cells = _row(md, "MCEL(m=4)")
    assert cells[3] == f"{100 * sum(accs) / 4:.2f} [{100 * lo:.2f}, {100 * hi:.2f}]"

    assert re.search(r"Best MCEL vs CE: MCEL\(m=\d\)", md)
    for rid in ids:
        assert rid in md
    assert "torch 2.13.0" in md and "training seeds 0, 1" in md

    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 6
    assert not re.search(r"<img[^>]+src='(?!data:)", page)  # nothing to fetch
    assert "<table>" in page and ids[0] in page


def test_report_command(db, tmp_path, capsys):
    path, _ = db
    assert main(["report", str(path), "--out", str(tmp_path / "r")]) == 0
    assert (tmp_path / "r" / "report.html").exists()
    assert "report.md" in capsys.readouterr().out


def test_several_databases_read_as_one_study(db, tmp_path, capsys):
    """Sister grids: CE in one database, MCEL in another give the report of both in one
    (deltas paired by seed across them); a run in two databases counts once."""
    import shutil

    path, _ = db
    one = build_report(path, tmp_path / "one").read_text()
    parts = []
    for name, keep in (("ce.db", "CE"), ("mcel.db", "MCEL%")):
        part = tmp_path / name
        shutil.copy(path, part)
        con = sqlite3.connect(part)
        gone = [r for (r,) in con.execute("SELECT run_id FROM runs WHERE method NOT LIKE ?",
                                           (keep,))]
        con.executemany("DELETE FROM trials WHERE eval_id IN (SELECT eval_id FROM evals "
                        "WHERE run_id = ?)", [(r,) for r in gone])
        con.executemany("DELETE FROM evals WHERE run_id = ?", [(r,) for r in gone])
        con.executemany("DELETE FROM runs WHERE run_id = ?", [(r,) for r in gone])
        con.commit()
        con.close()
        parts.append(part)
    alone = build_report(parts[1], tmp_path / "alone").read_text()
    assert _row(alone, "MCEL(m=2)") != _row(one, "MCEL(m=2)")  # no CE there to pair with
    both = build_report(parts + [path], tmp_path / "both").read_text()
    for label in ("CE", "MCEL(m=2)", "MCEL(m=4)"):
        assert _row(both, label) == _row(one, label)  # Δ vs CE paired across databases
    assert "mcel report: ce.db + mcel.db + study.db" in both and "\nDatabases " in both
    assert main(["report", *map(str, parts), "--out", str(tmp_path / "cli")]) == 0
    assert _row((tmp_path / "cli" / "report.md").read_text(), "MCEL(m=2)") == _row(one, "MCEL(m=2)")
    assert main(["report", str(parts[0]), str(tmp_path / "nope.db"), "--out",
                 str(tmp_path / "x")]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(MCELError, match="no results database given"):
        build_report([], tmp_path / "y")


def test_bad_databases(tmp_path, capsys):
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite at all, just some bytes" * 50)
    foreign = tmp_path / "foreign.db"
    con = sqlite3.connect(foreign)
    con.execute("CREATE TABLE runs (x INTEGER)")
    con.commit()
    con.close()
    empty = tmp_path / "empty.db"
    connect(empty).close()
    for path, needle in [(junk, "not an SQLite database"), (foreign, "not an mcel results"),
                         (empty, "no runs"), (tmp_path / "nope.db", "does not exist")]:
        with pytest.raises(MCELError, match=needle):
            build_report(path, tmp_path / "out")
        assert main(["report", str(path), "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err.strip()
        assert needle in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out" / "report.md").exists()


def test_clean_accuracy_is_taken_on_the_images_the_ber_columns_use(tmp_path):
    # a grid's limit_test may be smaller than the training run's test set: the clean
    # column must come from the evaluations, not from the run's own test accuracy
    path = tmp_path / "study.db"
    con = connect(path)
    for seed in SEEDS:
        _add_run(con, {**BASE, "loss": "ce", "seed": seed}, {0.01: [0.8, 0.82]}, clean=0.99,
                 eval_clean=0.90 + 0.01 * seed)
    con.commit()
    con.close()
    md = build_report(path, tmp_path / "rep").read_text()
    assert _row(md, "CE")[2].startswith("90.50 [")



# -- tolerable BER ----------------------------------------------------------------------------

def test_tolerable_ber_interpolates_at_the_first_crossing():
    # floor 0.89: within at 0.002 (0.894), below at 0.004 (0.874): 0.004/0.020 of the way
    t = tolerable_ber([0.001, 0.002, 0.004], [0.9, 0.894, 0.874], clean=0.9)
    assert t.ber == pytest.approx(0.0024, rel=1e-12) and not t.censored
    # the first nonzero BER is already below: from (0, clean) to (0.01, 0.85), 0.01/0.05
    t = tolerable_ber([0, 0.01, 0.02], [0.5, 0.85, 0.5], clean=0.9)  # BER 0 is not read
    assert t.ber == pytest.approx(0.002, rel=1e-12) and not t.censored
    # a later recovery does not count
    t = tolerable_ber([0.001, 0.002, 0.003], [0.85, 0.9, 0.9], clean=0.9)
    assert t.ber == pytest.approx(0.0002, rel=1e-12)
    # a NaN is a BER not measured: bridged from 0.001 to 0.004; the order does not matter
    t = tolerable_ber([0.004, 0.002, 0.001], [0.85, math.nan, 0.9], clean=0.9)
    assert t.ber == pytest.approx(0.0016, rel=1e-12)
    # a larger drop moves the floor: 0.87 is crossed between 0.002 and 0.004
    t = tolerable_ber([0.001, 0.002, 0.004], [0.9, 0.894, 0.874], clean=0.9, drop=0.05)
    assert t == Tolerance(0.004, True)


def test_tolerable_ber_censored_at_the_top_of_the_grid():
    assert tolerable_ber([0, 0.001, 0.01], [0.9, 0.9, 0.895], clean=0.9) == Tolerance(0.01, True)
    # exactly at the floor is within (0.75 - 0.25 == 0.5 in binary floating point)
    assert tolerable_ber([0.1], [0.5], clean=0.75, drop=0.25) == Tolerance(0.1, True)
    assert tolerable_ber([0], [0.9], clean=0.9) == Tolerance(0.0, True)
    assert tolerable_ber([], [], clean=0.9) == Tolerance(0.0, True)
    for bers, accs, clean in [([0.1], [0.5, 0.4], 0.9), ([0.1], [0.5], math.nan),
                              ([0.1, 0.1], [0.9, 0.8], 0.9)]:
        with pytest.raises(ValueError):
            tolerable_ber(bers, accs, clean)


def test_report_tolerable_ber_column_and_plot(tmp_path):
    path = tmp_path / "study.db"
    con = connect(path)

    def run(method, seed, clean, acc_01, acc_02):
        # two trials a little either side of the run's mean accuracy
        _add_run(con, {**BASE, **method, "seed": seed},
                 {0.0: [clean - 0.001, clean + 0.001], 0.01: [acc_01 - 0.001, acc_01 + 0.001],
                  0.02: [acc_02 - 0.001, acc_02 + 0.001]}, clean=clean)

    ce, m2, m4 = {"loss": "ce"}, {"loss": "mcel", "margin": 2.0}, {"loss": "mcel", "margin": 4.0}
    run(ce, 0, 0.90, 0.895, 0.875)  # floor 0.89: 0.01 + 0.01 * 0.005 / 0.02 = 0.0125
    run(ce, 1, 0.92, 0.900, 0.800)  # floor 0.91: 0.01 * 0.01 / 0.02 = 0.005
    run(m2, 0, 0.90, 0.900, 0.895)  # never below: 0.02, censored
    run(m2, 1, 0.90, 0.900, 0.870)  # 0.01 + 0.01 * 0.01 / 0.03 = 0.013333
    run(m4, 0, 0.90, 0.880, 0.800)  # 0.01 * 0.01 / 0.02 = 0.005, one seed: no interval
    con.commit()
    con.close()
    md_path = build_report(path, tmp_path / "rep")
    md = md_path.read_text()
    header = next(ln for ln in md.splitlines() if ln.startswith("| method |"))
    # a BER is a fraction, as in the BER columns and every input
    assert header.rstrip(" |").endswith("| train s | tolerable BER")
    # CE: mean 0.00875; t-interval 0.00875 -/+ 12.706 * 0.00375, clipped at 0
    assert _row(md, "CE")[-1] == "0.00875 [0, 0.0564]"
    # one censored seed marks the whole cell as a lower bound
    assert _row(md, "MCEL(m=2)")[-1].startswith("≥ 0.0167 [")
    assert _row(md, "MCEL(m=4)")[-1] == "0.005"
    assert _row(md, "CE")[2] == "91.00 [78.29, 100.00]"  # the other columns stay as they were
    png = next((md_path.parent).glob("*-tolerable.png"))
    assert f"]({png.name})" in md and png.read_bytes()[:4] == b"\x89PNG"


def test_report_energy_view_from_a_voltage_curve(tmp_path, capsys):
    path = tmp_path / "study.db"
    con = connect(path)
    for seed, (clean, a1, a2) in enumerate([(0.90, 0.895, 0.875), (0.92, 0.900, 0.800)]):
        _add_run(con, {**BASE, "loss": "ce", "seed": seed},
                 {0.0: [clean - 0.001, clean + 0.001], 0.01: [a1 - 0.001, a1 + 0.001],
                  0.02: [a2 - 0.001, a2 + 0.001]}, clean=clean)
    con.commit()
    con.close()
    curve = tmp_path / "sram.csv"
    curve.write_text("voltage,ber\n0.6,1e-1\n0.7,1e-3\n0.8,1e-5\n0.9,0\n")
    assert main(["report", str(path), "--out", str(tmp_path / "r"), "--voltage-curve",
                 str(curve)]) == 0
    md = (tmp_path / "r" / "report.md").read_text()
    assert "## Energy at the lowest safe voltage" in md
    row = next(ln for ln in md.splitlines() if ln.startswith("| CE | 0.00875"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    # CE's mean tolerable BER 0.00875: between 1e-1 at 0.6 V and 1e-3 at 0.7 V in log10
    v = 0.6 + 0.1 * (-1 - math.log10(0.00875)) / 2
    assert cells[2] == f"{v:.3f}"
    assert cells[3].startswith(f"{100 * (1 - (v / 0.9) ** 2):.1f} [")
    assert next((tmp_path / "r").glob("*-energy.png")).read_bytes()[:4] == b"\x89PNG"
    # a curve whose BER rises with the voltage is refused before anything is written
    curve.write_text("0.6,1e-5\n0.9,1e-1\n")
    assert main(["report", str(path), "--out", str(tmp_path / "r2"), "--voltage-curve",
                 str(curve)]) == 2
    assert "must not rise" in capsys.readouterr().err and not (tmp_path / "r2").exists()


def test_report_names_the_database_relative_to_itself(db, tmp_path):
    path, _ = db
    md = build_report(path, tmp_path / "deep" / "rep").read_text()
    rel = os.path.relpath(path.resolve(), (tmp_path / "deep" / "rep").resolve())
    assert f"Database {rel}:" in md and str(tmp_path) not in md


@pytest.mark.parametrize("spec,uniform", [
    ("ber=0.0", True), ("ber=0.01", True), ("ber=0.01,targets=weights", True),
    ("ber=0.01,mode=transient", False), ("p01=0.001,p10=0.01", False),
    ("ber=0.01,protected=7", False), ("ber=0.01,targets=weights,biases", False),
    ("stuck_at=0.001", False), ("not a spec", False),
])
def test_uniform_spec(spec, uniform):
    from mcel.report.stats import uniform_spec

    assert uniform_spec(spec) is uniform


def test_section_titles_name_the_error_model_only_when_it_is_not_plain_uniform(tmp_path):
    path = tmp_path / "study.db"
    con = connect(path)
    accs = {0.0: [0.9, 0.92], 0.01: [0.8, 0.82]}
    _add_run(con, {**BASE, "loss": "ce", "seed": 0}, accs, error_model="ber=0.0", clean=0.91)
    _add_run(con, {**BASE, "loss": "ce", "seed": 0, "epochs": 6}, accs,
             error_model="p01=0.001,p10=0.01", clean=0.91)
    con.commit()
    con.close()
    md = build_report(path, tmp_path / "rep").read_text()
    headings = [ln for ln in md.splitlines() if ln.startswith("## ")]
    assert headings[:2] == ["## 1. digits / mlp / int4 / twos_complement",
                            "## 2. digits / mlp / int4 / twos_complement / error model "
                            "p01=0.001,p10=0.01"]
    assert "ber=0.0" not in md.replace("ber-0.0", "")  # file names keep their old stem


def test_energy_verdict_names_voltages_against_ce():
    from types import SimpleNamespace as NS

    from mcel.energy import VoltageCurve
    from mcel.report.render import energy_verdict

    curve = VoltageCurve(voltages=(0.6, 0.7, 0.8, 0.9), bers=(1e-1, 1e-3, 1e-5, 0.0))

    def line(label, ber, censored=()):
        return NS(label=label, tolerable=NS(mean=ber), censored_seeds=censored)

    ce, mcel, ei = line("CE", 1e-3), line("MCEL(m=10)", 1e-2, censored=(0,)), line("EI", 1e-4)
    v_mcel = curve.lowest_safe_voltage(1e-2)  # 0.65 V: halfway in log BER
    text = energy_verdict([ce, mcel, ei], ce, curve)
    assert abs(v_mcel - 0.65) < 1e-9
    # MCEL is both the best MCEL and the best method: said once; censored -> bounds
    assert text.count("lets this memory run") == 1
    assert (f"MCEL(m=10) lets this memory run at ≤ 0.650 V instead of CE's 0.700 V: "
            f"≥ {100 * (1 - (0.65 / 0.7) ** 2):.1f}% less dynamic energy") in text
    # a method worse than CE costs energy, said as "more"
    text = energy_verdict([ce, ei], ce, curve)
    assert "EI lets this memory run at 0.750 V instead of CE's 0.700 V: " \
           f"{100 * ((0.75 / 0.7) ** 2 - 1):.1f}% more dynamic energy" in text
    assert energy_verdict([ei], None, curve) == ""


def test_the_study_index_is_current():
    # docs/study/README.md says which grids are complete; it must follow the snapshots
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "tools" / "study_index.py"
    spec = importlib.util.spec_from_file_location("study_index", path)
    index = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(index)
    assert index.main(["--check"]) == 0, "run: python tools/study_index.py"


def test_another_baseline_for_the_differences(db, tmp_path, capsys):
    """--baseline: the Δ columns compare with another method, paired by seed the same way
    (here MCEL(m=2) against CE is the negative of CE against MCEL(m=2))."""
    path, _ = db
    assert main(["report", str(path), "--out", str(tmp_path / "r"),
                 "--baseline", "MCEL(m=2)"]) == 0
    md = (tmp_path / "r" / "report.md").read_text()
    header = next(ln for ln in md.splitlines() if ln.startswith("| method |"))
    assert "| Δ vs MCEL(m=2) clean (points) | Δ vs MCEL(m=2) @ 0.01 (points) |" in header
    bi = 2
    diffs = [sum(_trial_accs(0, s, bi)) / 4 - sum(_trial_accs(1, s, bi)) / 4 for s in SEEDS]
    lo, hi = _t(diffs)
    assert _row(md, "CE")[2 + len(BERS) + bi] == (f"{100 * sum(diffs) / 2:+.2f} "
                                                  f"[{100 * lo:+.2f}, {100 * hi:+.2f}]")
    assert _row(md, "MCEL(m=2)")[2 + len(BERS)] == "—"
    assert "Best MCEL vs MCEL(m=2): MCEL(m=4)" in md
    capsys.readouterr()
    assert main(["report", str(path), "--out", str(tmp_path / "r2"),
                 "--baseline", "MCEL(m=3)"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mcel report: error: no method 'MCEL(m=3)' in this study")
    assert "the methods: CE, MCEL(m=2), MCEL(m=4)" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "r2").exists()


def test_snapshot_tool_copies_a_live_database_as_one_plain_file(db, tmp_path):
    """tools/snapshot_study.py: a consistent copy while a sweep holds the database open in
    WAL mode with rows only in its log, written as one plain file a report reads."""
    import sys

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1] / "tools"))
    from snapshot_study import snapshot

    path, _ = db
    live = connect(path)  # WAL, as a running sweep leaves it
    live.execute("UPDATE runs SET grid = 'live'")
    live.commit()  # in the -wal file until a checkpoint
    copy = snapshot(path, tmp_path / "docs")
    live.close()
    assert copy == tmp_path / "docs" / "study" / "study.db"
    assert sorted(p.name for p in copy.parent.iterdir()) == ["study.db"]
    con = sqlite3.connect(copy)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    assert {g for (g,) in con.execute("SELECT grid FROM runs")} == {"live"}
    con.close()
    assert build_report(copy, tmp_path / "rep").exists()


def test_summary_files_hold_the_tables_numbers(db, tmp_path):
    """summary.json / summary.csv: one row per (group, method, BER), fractions, the same
    means, intervals and paired differences as the tables."""
    import csv

    path, _ = db
    out = build_report(path, tmp_path / "rep").parent
    rows = json.loads((out / "summary.json").read_text())["rows"]
    sheet = list(csv.DictReader((out / "summary.csv").open()))
    assert len(rows) == len(sheet) and [r["method"] for r in rows] == [r["method"] for r in sheet]
    bi = 2
    row = next(r for r in rows if r["method"] == "MCEL(m=2)" and r["ber"] == BERS[bi]
               and r["error_model"] == "ber")
    per_seed = [sum(_trial_accs(1, s, bi)) / 4 for s in SEEDS]
    assert row["acc"] == pytest.approx(sum(per_seed) / 2)
    lo, hi = _t01(per_seed)
    assert (row["acc_low"], row["acc_high"]) == pytest.approx((lo, hi))
    diffs = [sum(_trial_accs(1, s, bi)) / 4 - sum(_trial_accs(0, s, bi)) / 4 for s in SEEDS]
    lo, hi = _t(diffs)
    assert (row["delta"], row["delta_low"], row["delta_high"]) == pytest.approx(
        (sum(diffs) / 2, lo, hi))
    assert row["baseline"] == "CE" and row["seeds"] == "0 1" and row["across_seeds"] is True
    ce0 = next(r for r in rows if r["method"] == "CE" and r["ber"] == 0.0
               and r["error_model"] == "ber")
    assert ce0["delta"] is None and ce0["acc"] == pytest.approx(0.965)  # clean, BER 0
    assert next(s for s in sheet if s["method"] == "CE")["delta"] == ""


def test_report_of_a_grid_leaves_out_runs_of_cells_it_no_longer_has(tmp_path):
    """--grid: only the grid's current cells; a run of a dropped cell (here an earlier
    margin) stays in the database and is named in a note, not mixed into the tables."""
    from mcel.experiments.grid import expand, load_grid
    from mcel.report.build import build_report

    grid = tmp_path / "g.yaml"
    grid.write_text("name: g\nbase: {dataset: digits, model: mlp, quant: int4, epochs: 5}\n"
                    "grid:\n  method: [{loss: ce}, {loss: mcel, margin: 2}]\n  seed: [0, 1]\n"
                    "eval: {bers: [0, 0.01], trials: 4}\n")
    path = tmp_path / "g.db"
    con = connect(path)
    for i, cell in enumerate(expand(load_grid(grid))):
        config = {**BASE, **cell.config.to_dict(), "seed": cell.config.seed}
        rid = _add_run(con, config, {0.0: [0.95] * 4, 0.01: _trial_accs(i % 2, 0, 1)},
                       clean=0.95)
        con.execute("UPDATE runs SET run_id = ? WHERE run_id = ?", (cell.run_id, rid))
        con.execute("UPDATE evals SET run_id = ? WHERE run_id = ?", (cell.run_id, rid))
    stale = _add_run(con, {**BASE, "loss": "mcel", "margin": 30.0, "seed": 0},
                     {0.0: [0.1] * 4, 0.01: [0.1] * 4}, clean=0.1)
    con.commit()
    con.close()
    md = build_report(path, tmp_path / "all").read_text()
    assert stale in md and "MCEL(m=30)" in md
    md = build_report(path, tmp_path / "grid", grid=grid).read_text()
    assert "Left out: 1 run(s) of the database that are not cells of g.yaml" in md
    assert f"MCEL(m=30) seed 0 ({stale})" in md
    assert _row(md, "MCEL(m=2)") and not any(line.startswith("| MCEL(m=30)")
                                             for line in md.splitlines())


def test_seed_table_means_and_seed_paired_differences(tmp_path, capsys):
    """tools/seed_table.py: the mean over seeds with its t-interval, and A:B paired by seed."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    import seed_table

    accs = {"ce": [0.5, 0.6, 0.7], "mcel": [0.9, 0.8, 0.95]}
    for label, values in accs.items():
        for seed, a in zip((1, 2, 3), values):
            (tmp_path / f"r-{label}-{seed}.plain.json").write_text(json.dumps(
                {"clean_accuracy": 0.99, "results": [{"ber": 0.0, "mean": 0.99},
                                                     {"ber": 0.01, "mean": a}]}))
    assert seed_table.main([str(tmp_path), "--cases", "ce.plain,mcel.plain", "--pairs",
                            "mcel.plain:ce.plain", "--seeds", "1,2,3", "--pattern",
                            "r-{case}"]) == 0
    out = capsys.readouterr().out
    lo, hi = _t(accs["ce"])
    assert f"| ce.plain | 99.0 [99.0, 99.0] | 60.0 [{100 * lo:.1f}, {100 * hi:.1f}] |" in out
    d = [b - a for a, b in zip(accs["ce"], accs["mcel"])]
    m, (lo, hi) = sum(d) / 3, _t(d)
    assert f"+{100 * m:.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]" in out.splitlines()[-1]


def test_runs_written_before_a_key_existed_are_the_same_variant_as_later_ones():
    """A run trained before clip_auto / quant_layers existed has no such key in its
    stored config; its seed siblings trained later hold them at their defaults. The report
    must keep them one method, not split it into two config hashes."""
    from mcel.config import TrainConfig
    from mcel.report.read import Run

    new = TrainConfig(loss="mcel", margin=30.0, clip_rel=1.0).to_dict()
    old = {k: v for k, v in new.items() if k not in ("clip_auto", "quant_layers", "init")}
    runs = [Run(run_id=str(s), method="MCEL", config={**c, "seed": s}, clean_acc=None,
                train_seconds=None, margins=None, versions={}, grid=None)
            for s, c in ((0, old), (1, new), (2, new))]
    assert len({r.variant() for r in runs}) == 1
    other = Run(run_id="3", method="MCEL", config={**new, "seed": 0, "clip_auto": 2.0},
                clean_acc=None, train_seconds=None, margins=None, versions={}, grid=None)
    assert other.variant() != runs[0].variant()
