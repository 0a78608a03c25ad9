"""Sweeps: grid expansion, the results database, resumption after SIGKILL, parallel runs.

The reference is always an uninterrupted single-process run of the same grid; every
other way of running it (rerun, --jobs 2, killed and resumed) must give the very same
numbers, row for row.
"""

import json
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mcel.cli import main
from mcel.errors import MCELError
from mcel.experiments.grid import expand, load_grid
from mcel.experiments.store import method_label
from mcel.experiments.sweep import EXECUTORS, run_sweep

GRID = """\
name: test-grid
base: {dataset: digits, model: mlp, model_kwargs: {hidden: 32}, quant: int4, epochs: 4,
       lr: 0.01, batch_size: 64}
grid:
  method:
    - {loss: ce}
    - {loss: mcel, margin: 2, normalize: std, scale: 4}
    - {loss: ce, train_ber: 0.01}
  seed: [0, 1]
eval:
  bers: [0.05, 0, 0.01]
  fmts: [twos_complement, sign_magnitude]
  trials: 5
"""
CELLS, FMTS, BERS, TRIALS = 6, 2, 3, 5
ROOT = Path(__file__).resolve().parents[1]


def _grid(folder: Path, text: str = GRID, name: str = "grid.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text)
    return path


def _db(out: Path) -> Path:
    return out / "grid.db"


def _snapshot(db: Path) -> tuple[dict, dict]:
    """Everything that must be reproducible: evals (with their trials) and runs."""
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    evals = {}
    for e in con.execute("SELECT * FROM evals"):
        trials = con.execute("SELECT trial, accuracy, empirical_rate FROM trials "
                             "WHERE eval_id = ? ORDER BY trial", (e["eval_id"],)).fetchall()
        key = (e["run_id"], e["fmt"], e["error_model"], e["ber"], e["eval_seed"])
        evals[key] = (e["mean"], e["std"], e["ci_low"], e["ci_high"], e["trials"],
                      e["clean_acc"], e["images"], e["plan"], [tuple(t) for t in trials])
    runs = {r["run_id"]: (r["method"], r["config"], r["clean_acc"], r["margins"], r["grid"])
            for r in con.execute("SELECT * FROM runs")}
    con.close()
    return evals, runs


def _check_consistent(db: Path) -> int:
    """Invariants that hold after any kill: no duplicates, whole evals only."""
    con = sqlite3.connect(db)
    dups = con.execute("SELECT COUNT(*) FROM (SELECT COUNT(*) AS n FROM evals GROUP BY "
                       "run_id, fmt, error_model, ber, eval_seed HAVING n > 1)").fetchone()[0]
    assert dups == 0
    for eval_id, trials, n in con.execute(
        "SELECT e.eval_id, e.trials, COUNT(t.trial) FROM evals e "
        "LEFT JOIN trials t USING (eval_id) GROUP BY e.eval_id"
    ):
        assert trials == n == TRIALS, (eval_id, trials, n)
    orphans = con.execute("SELECT COUNT(*) FROM evals WHERE run_id NOT IN "
                          "(SELECT run_id FROM runs)").fetchone()[0]
    assert orphans == 0
    # a (run, fmt) is written in one transaction: all its BERs or none
    for (k,) in con.execute("SELECT COUNT(*) FROM evals GROUP BY run_id, fmt"):
        assert k == BERS
    n = con.execute("SELECT COUNT(*) FROM evals").fetchone()[0]
    con.close()
    return n


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ref")
    grid = _grid(folder)
    out = folder / "out"
    summary = run_sweep(grid, out)
    return grid, out, summary


def test_end_to_end_rows(reference):
    grid, out, s = reference
    assert (s.cells, s.done, s.skipped) == (CELLS, CELLS, 0)
    assert (s.runs_written, s.evals_written) == (CELLS, CELLS * FMTS * BERS)
    assert s.trials_written == CELLS * FMTS * BERS * TRIALS
    assert _check_consistent(_db(out)) == CELLS * FMTS * BERS
    evals, runs = _snapshot(_db(out))
    assert {k[3] for k in evals} == {0.0, 0.01, 0.05}
    assert {k[1] for k in evals} == {"twos_complement", "sign_magnitude"}
    con = sqlite3.connect(_db(out))
    con.row_factory = sqlite3.Row
    for r in con.execute("SELECT * FROM runs"):
        config = json.loads(r["config"])
        assert r["method"] == method_label(config) and r["grid"] == "test-grid"
        assert (out / "runs" / r["run_id"] / "model.safetensors").exists()
        margins = json.loads(r["margins"])
        assert len(margins) == 360  # the digits test split
        assert all(m == round(m, 4) for m in margins)
        # clean accuracy = share of positive margins (ties aside), in every format
        assert abs(sum(m > 0 for m in margins) / 360 - r["clean_acc"]) < 0.01
        assert set(json.loads(r["versions"])) >= {"mcel", "torch", "python", "torch_threads",
                                                  "cpu"}
    for (_run_id, _fmt, _em, ber, _seed), (mean, _sd, lo, hi, n, clean, images, _plan,
                                           trials) in evals.items():
        assert images == 360
        assert lo <= mean <= hi and n == TRIALS
        assert mean == pytest.approx(sum(t[1] for t in trials) / n)
        if ber == 0:
            assert mean == pytest.approx(clean) and all(t[2] == 0 for t in trials)
    # more errors, less accuracy (on average over the grid)
    by_ber = {b: [v[0] for k, v in evals.items() if k[3] == b] for b in (0.0, 0.05)}
    assert sum(by_ber[0.05]) < sum(by_ber[0.0])
    con.close()


def test_rerun_skips_everything(reference):
    grid, out, _ = reference
    before = _snapshot(_db(out))
    s = run_sweep(grid, out)
    assert (s.done, s.skipped) == (0, CELLS)
    assert (s.runs_written, s.evals_written, s.trials_written) == (0, 0, 0)
    assert _snapshot(_db(out)) == before


def test_dry_run_counts_and_creates_nothing(reference, tmp_path, capsys):
    grid, out, _ = reference
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert main(["sweep", str(grid), "--out", str(out), "--dry-run"]) == 0
    assert "6 cells: 6 complete, 0 to run" in capsys.readouterr().out
    # a committed snapshot of a study can be checked without touching a byte of it
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert main(["sweep", str(grid), "--out", str(tmp_path / "new"), "--dry-run"]) == 0
    assert "6 cells: 0 complete, 6 to run" in capsys.readouterr().out
    assert not (tmp_path / "new").exists()


def test_only_runs_a_part_into_the_same_database(reference, tmp_path, capsys):
    grid, out, _ = reference
    part = tmp_path / "part"
    argv = ["sweep", str(grid), "--out", str(part)]
    assert main(argv + ["--only", "method=CE*", "--only", "seed=1", "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert re.findall(r"to run: (.*)", printed) == ["mlp/int4 CE seed 1",
                                                    "mlp/int4 CE+EI(p=0.01) seed 1"]
    assert "2 cells: 0 complete, 2 to run" in printed and not part.exists()
    # two selectors of one key are alternatives; the parts add up to the whole grid
    assert main(argv + ["--only", "method=MCEL*", "--only", "method=CE"]) == 0
    assert main(argv + ["--only", "seed=0"]) == 0  # MCEL and CE seed 0 already ran
    assert "3 cells: 1 run, 2 already complete" in capsys.readouterr().out
    assert main(argv) == 0
    assert _snapshot(_db(part)) == _snapshot(_db(out))
    for bad, needle in ((["--only", "seed=7"], "no cell matches --only seed=7; the grid has "
                                               "seed: 0, 1"),
                        (["--only", "sed=1"], "unknown key 'sed'"),
                        (["--only", "seed"], "KEY=PATTERN")):
        assert main(argv + bad) == 2
        assert needle in capsys.readouterr().err


def test_jobs_2_gives_the_same_rows(reference, tmp_path, capsys):
    grid, out, _ = reference
    out2 = tmp_path / "out"
    assert main(["sweep", str(grid), "--out", str(out2), "--jobs", "2"]) == 0
    captured = capsys.readouterr()
    assert "mean accuracy over runs" in captured.out and "6 run" in captured.out
    # accuracies in percent (two decimals), never as 0.xxxx fractions
    assert re.search(r"\b\d{1,3}\.\d\d\b", captured.out)
    assert not re.search(r"\b0\.\d{4}\b", captured.out)
    assert _snapshot(_db(out2)) == _snapshot(_db(out))
    # a finished sweep leaves one plain file (no WAL), and reading it adds nothing beside it
    assert sorted(p.name for p in out2.iterdir()) == ["grid.db", "runs"]
    assert main(["report", str(_db(out2)), "--out", str(tmp_path / "rep")]) == 0
    assert sorted(p.name for p in out2.iterdir()) == ["grid.db", "runs"]


def test_rows_record_their_eval_plan_and_another_test_set_is_flagged(reference, tmp_path):
    from mcel.data import load_dataset
    from mcel.experiments.sweep import audit

    grid, out, _ = reference
    con = sqlite3.connect(_db(out))
    rows = con.execute("SELECT DISTINCT images, plan FROM evals").fetchall()
    con.close()
    assert rows == [(len(load_dataset("digits", "test")[1]),
                     '{"adaptive":null,"limit_test":null,"min_trials":10,"trials":5}')]
    # the same trial count on fewer test images: other numbers, so flagged, never mixed
    out2 = tmp_path / "out"
    shutil.copytree(out, out2)
    grid2 = _grid(tmp_path, grid.read_text().replace("trials: 5", "trials: 5\n  limit_test: 100"))
    logs = []
    assert run_sweep(grid2, out2, log=logs.append).done == 0
    assert any("another eval plan" in m and '"limit_test":100' in m for m in logs)
    assert any("another eval plan" in p for p in audit(grid2, out2)["problems"])


def test_a_database_from_before_eval_plans_were_recorded_still_resumes(reference, tmp_path):
    """Older databases lack the images/plan columns: a sweep adds them, keeps the old rows
    (NULL there) and still flags only what it can tell: another trial count."""
    from mcel.experiments.sweep import audit

    grid, out, _ = reference
    out2 = tmp_path / "out"
    shutil.copytree(out, out2)
    con = sqlite3.connect(_db(out2))
    con.execute("ALTER TABLE evals DROP COLUMN plan")
    con.execute("ALTER TABLE evals DROP COLUMN images")
    con.commit()
    con.close()
    logs = []
    assert run_sweep(grid, out2, log=logs.append).done == 0
    assert not any("warning" in m for m in logs) and not audit(grid, out2)["problems"]
    con = sqlite3.connect(_db(out2))
    assert con.execute("SELECT COUNT(*) FROM evals WHERE plan IS NULL").fetchone()[0] == (
        CELLS * FMTS * BERS)
    con.close()
    grid2 = _grid(tmp_path, grid.read_text().replace("trials: 5", "trials: 7"))
    assert any("another eval plan" in p for p in audit(grid2, out2)["problems"])


def test_a_grid_whose_trial_count_changed_is_flagged_not_silently_kept(reference, tmp_path):

    from mcel.experiments.sweep import audit

    grid, out, _ = reference
    out2 = tmp_path / "out"
    shutil.copytree(out, out2)
    grid2 = _grid(tmp_path, grid.read_text().replace("trials: 5", "trials: 7"))
    logs = []
    summary = run_sweep(grid2, out2, log=logs.append)
    assert summary.done == 0 and any("another eval plan" in m for m in logs)
    assert any("another eval plan" in p for p in audit(grid2, out2)["problems"])
    assert not audit(grid, out)["problems"]
    versions = json.loads(sqlite3.connect(_db(out)).execute(
        "SELECT versions FROM runs LIMIT 1").fetchone()[0])
    assert versions["torch_threads"] == 1  # CPU results depend on it


def test_new_format_evaluates_only_what_is_missing(reference, tmp_path):
    grid, out, _ = reference
    out2 = tmp_path / "out"
    shutil.copytree(out, out2)
    text = GRID.replace("fmts: [twos_complement, sign_magnitude]",
                        "fmts: [twos_complement, sign_magnitude, offset_binary]")
    s = run_sweep(_grid(tmp_path / "g", text), out2)
    assert (s.done, s.runs_written, s.evals_written) == (CELLS, 0, CELLS * BERS)
    evals, runs = _snapshot(_db(out2))
    ref_evals, ref_runs = _snapshot(_db(out))
    assert runs == ref_runs
    assert {k: v for k, v in evals.items() if k[1] != "offset_binary"} == ref_evals
    # Offset binary is two's complement with the MSB inverted, so flipping any set of
    # bit positions changes every value by the same amount in both: under symmetric
    # (uniform-BER) flips with the same masks they give identical accuracies; sign-
    # magnitude does not.
    def by_fmt(fmt):
        return {k[:1] + k[2:]: v[-1] for k, v in evals.items() if k[1] == fmt}

    assert by_fmt("offset_binary") == by_fmt("twos_complement") != by_fmt("sign_magnitude")


def _start_and_kill(cmd: list[str], cwd: Path, delay: float) -> bool:
    """Run ``cmd``; SIGKILL it ``delay`` s after it starts working (its first log line:
    imports and grid checks take a while and are not worth killing). True = killed."""
    log = cwd / "stderr.txt"
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=err)
        while proc.poll() is None and "to run" not in log.read_text():
            time.sleep(0.02)
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
    assert proc.returncode == 0, log.read_text()
    return False


def test_sigkill_at_random_moments_then_resume(reference, tmp_path):
    grid, ref_out, _ = reference
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "mcel.cli", "sweep", str(grid), "--out", str(out)]
    rng = random.Random(int(os.environ.get("MCEL_TEST_KILL_SEED", "20240611")))
    kills = 0
    while kills < 4 and _start_and_kill(cmd, tmp_path, rng.uniform(0.1, 2.5)):
        kills += 1
        if _db(out).exists():
            _check_consistent(_db(out))
    print(f"killed {kills} times")
    assert kills >= 1, "no kill landed; the test did not test anything"
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert _check_consistent(_db(out)) == CELLS * FMTS * BERS
    assert _snapshot(_db(out)) == _snapshot(_db(ref_out))


def test_expand_product_and_per_scheme_bers():
    grid = {
        "base": {"dataset": "digits", "epochs": 5, "quant": "int4", "model": "mlp"},
        "grid": {
            "model": ["mlp", "lenet5"],
            "quant": ["int4", "binary"],
            "method": [{"loss": "ce"},
                       {"loss": "mcel", "margin": [1, 2], "normalize": "std", "scale": 4},
                       {"loss": "ce", "train_ber": "1e-2"}],
            "seed": [0, 1, 2],
        },
        "eval": {"bers": {"binary": [0, 0.05], "default": [0, "1e-3"]},
                 "fmts": ["twos_complement", "sign_magnitude"], "error_model": "ber=0",
                 "trials": 7, "adaptive": 0.005},
    }
    cells = expand(grid)
    assert len(cells) == 2 * 2 * 4 * 3
    assert len({c.run_id for c in cells}) == len(cells)
    labels = {method_label(c.config.to_dict()) for c in cells}
    assert labels == {"CE", "MCEL(m=1, std, s=4)", "MCEL(m=2, std, s=4)", "CE+EI(p=0.01)"}
    for c in cells:
        want = (0.0, 0.05) if c.config.quant == "binary" else (0.0, 0.001)
        assert c.plan.bers == want and c.plan.trials == 7 and c.plan.target_half_width == 0.005
        # binary codes read the same in every format: one format covers them
        fmts = ("twos_complement",) if c.config.quant == "binary" else (
            "twos_complement", "sign_magnitude")
        assert c.plan.fmts == fmts and len(c.plan.keys()) == 2 * len(fmts)
    # margin 1 and 1.0 are the same run: the run id does not depend on YAML's int/float
    one = expand({"grid": {"loss": ["mcel"], "margin": [1]}, "base": {"epochs": 1}})
    one_f = expand({"grid": {"loss": ["mcel"], "margin": [1.0]}, "base": {"epochs": 1}})
    assert one[0].run_id == one_f[0].run_id


def test_binary_cells_keep_every_format_when_biases_take_faults():
    grid = {"base": {"dataset": "digits", "epochs": 1, "model": "mlp", "quant": "binary"},
            "grid": {"seed": [0]},
            "eval": {"bers": [0, 0.05], "fmts": ["sign_magnitude", "twos_complement"]}}
    assert expand(grid)[0].plan.fmts == ("sign_magnitude",)
    grid["eval"]["error_model"] = "ber=0,targets=weights,biases"
    assert expand(grid)[0].plan.fmts == ("sign_magnitude", "twos_complement")


def test_shipped_tiny_study_config():
    grid = load_grid(ROOT / "configs" / "study" / "tiny.yaml")
    cells = expand(grid)
    assert len(cells) == 8
    assert {c.config.model_kwargs["hidden"] for c in cells} == {32}
    assert cells[0].plan.bers == (0.0, 0.01, 0.05) and len(cells[0].plan.fmts) == 2


def test_conflicting_axes_and_unknown_backend(tmp_path):
    with pytest.raises(MCELError, match="both set 'quant'"):
        expand({"grid": {"arch": [{"model": "mlp", "quant": "int4"}], "quant": ["int8"]}})
    with pytest.raises(MCELError, match="did you mean 'local'"):
        EXECUTORS.get("locall")


BAD = [
    ("grid: [unclosed\n", "not valid YAML at line"),
    (GRID.replace("grid:\n", "grdi:\n"), "unknown key 'grdi' (did you mean 'grid'?)"),
    (GRID.replace("model: mlp,", "model: mlpp,"), "unknown model 'mlpp' (did you mean 'mlp'?)"),
    ("", "is empty"),
    ("name: x\ngrid: {}\n", "grid is empty"),
    ("grid: {seed: []}\n", "grid.seed is an empty list"),
    (GRID.replace("margin: 2,", "margn: 2,"), "did you mean 'grid.method[1].margin'?"),
    (GRID.replace("trials: 5", "trials: 0"), "eval.trials must be an integer >= 1"),
    (GRID.replace("bers: [0.05, 0, 0.01]", "bers: [0.05, 2]"), "not a bit error rate"),
    (GRID.replace("sign_magnitude]", "sign_magnitud]"), "did you mean 'sign_magnitude'"),
    (GRID.replace("trials: 5", "trials: 5\n  error_model: 'bre=0.1'"), "error-model key"),
    (GRID.replace("hidden: 32", "hiden: 32"), "unknown option(s) hiden"),
    (GRID.replace("trials: 5", "trials: 5\n  error_model: 'ber=0,targets=activations'"),
     "activations are not quantized; set act_bits"),
    (GRID.replace("trials: 5", "trials: 5\n  error_model: 'ber=0,include=conv*'"),
     "matches no quantized layer"),
    ("grid: {quant: [float]}\n", "quant 'float' stores no codes"),
]


@pytest.mark.parametrize("text,needle", BAD)
def test_malformed_grid_is_one_line_and_exit_2(tmp_path, capsys, text, needle):
    grid = _grid(tmp_path, text)
    assert main(["sweep", str(grid), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("mcel sweep: error: "), err
    assert needle in err
    assert str(grid) in err
    assert not (tmp_path / "out").exists()  # validated before anything was written


def test_a_results_database_that_is_not_sqlite(tmp_path, capsys):
    grid, out = _grid(tmp_path, GRID), tmp_path / "o"
    out.mkdir()
    _db(out).write_bytes(b"not a database, but somebody's file" * 100)
    before = _db(out).read_bytes()
    assert main(["sweep", str(grid), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "cannot use" in err and "as a results database" in err and err.count("\n") == 1
    assert _db(out).read_bytes() == before and not (out / "runs").exists()


def test_missing_grid_file_and_bad_backend(tmp_path, capsys):
    assert main(["sweep", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    grid = _grid(tmp_path, GRID)
    assert main(["sweep", str(grid), "--out", str(tmp_path / "o"), "--backend", "rya"]) == 2
    assert "unknown sweep backend 'rya' (did you mean 'ray'?)" in capsys.readouterr().err


def test_a_run_without_a_margin_is_labelled_with_the_margin_it_trained_at():
    # the label and the loss once kept their own defaults, and drifted (m=2 vs 10)
    from mcel.train import TrainConfig, build_loss

    for loss, normalize, name in (("mcel", "none", "MCEL(m={:g})"),
                                  ("mcel", "std", "MCEL(m={:g}, std, s={:g})"),
                                  ("mhl", "none", "MHL(b={:g})")):
        config = TrainConfig(loss=loss, normalize=normalize)
        assert config.margin is None
        trained = build_loss(config)  # the loss module training uses
        want = name.format(trained.margin, getattr(trained, "scale", 0))
        assert method_label(config.to_dict()) == want
    assert build_loss(TrainConfig(loss="mcel")).margin == 10.0
    assert method_label({"loss": "mcel"}) == "MCEL(m=10)"


# -- a cell that fails ------------------------------------------------------------------

SMALL = """\
name: grid
base: {dataset: digits, model: mlp, model_kwargs: {hidden: 16}, quant: int4, epochs: 1,
       lr: 0.01, batch_size: 64, limit_train: 200, limit_test: 100}
grid:
  seed: [0, 1, 2]
eval:
  bers: [0, 0.02]
  fmts: [twos_complement]
  trials: 2
"""


class Unpicklable(RuntimeError):
    """An exception that cannot cross a process boundary: it holds a lock, and its
    constructor takes two arguments (unpickling calls it with one)."""

    def __init__(self, msg, lock):
        super().__init__(msg)
        self.lock = lock


def _cell(grid: Path, seed: int):
    return next(c for c in expand(load_grid(grid)) if c.config.seed == seed)


def _run_ids(db: Path) -> set[str]:
    con = sqlite3.connect(db)
    ids = {r for (r,) in con.execute("SELECT run_id FROM runs")}
    ids |= {r for (r,) in con.execute("SELECT run_id FROM evals")}
    con.close()
    return ids


def test_a_failing_cell_is_recorded_and_the_others_run(tmp_path, monkeypatch):
    import pickle
    import threading

    import mcel.train
    from mcel.experiments.cell import CellFailure

    grid, out = _grid(tmp_path, SMALL), tmp_path / "out"
    bad = _cell(grid, 1)
    real_train = mcel.train.train

    def train(config, out=None, **kw):  # a crash in one cell, as a bug in one cell kind
        if config.seed == 1:
            raise Unpicklable("boom: tensor is not contiguous\nsecond line", threading.Lock())
        return real_train(config, out, **kw)

    monkeypatch.setattr(mcel.train, "train", train)
    logs = []
    s = run_sweep(grid, out, log=logs.append)
    assert (s.cells, s.done, s.skipped, s.runs_written) == (3, 2, 0, 2)
    [f] = s.failed
    assert isinstance(f, CellFailure) and f.run_id == bad.run_id
    assert f.label == "mlp/int4 CE seed 1"
    assert f.error == "Unpicklable: boom: tensor is not contiguous"
    assert "Traceback" in f.traceback and "second line" in f.traceback
    assert pickle.loads(pickle.dumps(f)) == f  # plain text: crosses any process boundary
    assert s.to_dict()["failed"][0]["run_id"] == bad.run_id
    error_file = out / "runs" / bad.run_id / "error.txt"
    assert error_file.read_text().startswith(
        f"cell mlp/int4 CE seed 1 (run {bad.run_id}) failed after ")
    assert "raise Unpicklable" in error_file.read_text()
    [line] = [m for m in logs if "FAILED" in m]
    assert line.startswith("[") and "mlp/int4 CE seed 1: FAILED (Unpicklable: boom" in line
    assert str(error_file) in line
    # the database holds the two others, whole, and nothing of the failed cell
    assert _run_ids(_db(out)) == {c.run_id for c in expand(load_grid(grid))} - {bad.run_id}

    monkeypatch.undo()  # the cause removed: a rerun runs only the failed cell
    s = run_sweep(grid, out)
    assert (s.done, s.skipped, s.failed) == (1, 2, [])
    assert bad.run_id in _run_ids(_db(out)) and not error_file.exists()
    from mcel.experiments.sweep import audit

    assert audit(grid, out)["problems"] == []


def test_a_failing_cell_in_a_process_pool_exits_3_and_a_rerun_retries_it(tmp_path, capsys):
    grid, out = _grid(tmp_path, SMALL), tmp_path / "out"
    bad = _cell(grid, 1)
    ckpt = out / "runs" / bad.run_id / "last.safetensors"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"a resume point that is not a checkpoint")  # one cell cannot resume
    assert main(["sweep", str(grid), "--out", str(out), "--jobs", "2"]) == 3
    captured = capsys.readouterr()
    assert "3 cells: 2 run, 1 failed, 0 already complete" in captured.out
    last = captured.err.splitlines()[-1]
    assert last.startswith("mcel sweep: error: 1 of 3 cells failed: mlp/int4 CE seed 1 (")
    assert "is not a valid safetensors checkpoint" in last
    assert f"traceback in {out / 'runs' / bad.run_id / 'error.txt'}" in last
    assert last.endswith("rerun the same command to retry only these")
    assert bad.run_id not in _run_ids(_db(out)) and len(_run_ids(_db(out))) == 2

    ckpt.unlink()
    assert main(["sweep", str(grid), "--out", str(out), "--jobs", "2"]) == 0
    assert "3 cells: 1 run, 2 already complete" in capsys.readouterr().out
    assert bad.run_id in _run_ids(_db(out))


def test_every_shipped_config_is_valid():
    """The grids and train configs in configs/ load and expand: a study a user reruns
    from the README or results.md must not fail on its own file."""
    from mcel.cli.common import load_yaml
    from mcel.config import TrainConfig

    root = Path(__file__).resolve().parents[1] / "configs"
    paths = sorted(root.rglob("*.yaml"))
    assert len(paths) >= 20
    for p in paths:
        d = load_yaml(str(p))
        if "grid" in d or "base" in d:
            cells = expand(load_grid(str(p)))
            assert cells and all(c.config.seed is not None for c in cells), p
        else:
            TrainConfig.from_dict(d)
