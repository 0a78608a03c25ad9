"""The Ray sweep backend gives, row for row, the numbers of the local backend.

Needs Ray (``pip install 'mcel[ray]'``; CI installs it through ``make test
EXTRAS=test,ray``). One local Ray instance with 2 CPUs serves the whole module.
"""

import sqlite3

import pytest

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'mcel[ray]' "
                                        "(CI runs 'make test EXTRAS=test,ray')")

from mcel.cli import main  # noqa: E402
from mcel.errors import MCELError  # noqa: E402
from mcel.experiments.ray_backend import _unwrap  # noqa: E402
from mcel.experiments.sweep import run_sweep  # noqa: E402

GRID = """\
name: ray-grid
base: {dataset: digits, model: mlp, model_kwargs: {hidden: 16}, quant: int4, epochs: 2,
       lr: 0.01, batch_size: 64, limit_train: 400, limit_test: 120}
grid:
  method:
    - {loss: ce}
    - {loss: mcel, margin: 2, normalize: std, scale: 4}
  seed: [0, 1]
eval:
  bers: [0, 0.02]
  fmts: [twos_complement, sign_magnitude]
  trials: 4
"""
CELLS, EVALS, TRIALS = 4, 4 * 2 * 2, 4 * 2 * 2 * 4


def _rows(db):
    """runs and evals (with their trials) keyed by what identifies them."""
    con = sqlite3.connect(db)
    runs = sorted(con.execute("SELECT run_id, grid, method, config, clean_acc, margins "
                              "FROM runs"))
    evals = sorted(con.execute(
        "SELECT e.run_id, e.fmt, e.error_model, e.ber, e.eval_seed, e.mean, e.std, e.ci_low, "
        "e.ci_high, e.trials, e.clean_acc, group_concat(t.trial || ':' || t.accuracy || ':' "
        "|| t.empirical_rate, ';') FROM evals e JOIN trials t USING (eval_id) "
        "GROUP BY e.eval_id"))
    con.close()
    return runs, evals


@pytest.fixture(scope="module")
def ray_session():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    path = tmp_path_factory.mktemp("grid") / "grid.yaml"
    path.write_text(GRID)
    return path


def test_ray_rows_equal_local_rows(ray_session, grid, tmp_path, capsys):
    local = run_sweep(grid, tmp_path / "local")
    remote = run_sweep(grid, tmp_path / "ray", 2, backend="ray")
    assert (remote.cells, remote.done, remote.runs_written, remote.evals_written,
            remote.trials_written) == (CELLS, CELLS, CELLS, EVALS, TRIALS)
    assert _rows(remote.db) == _rows(local.db)
    assert len(_rows(remote.db)[1]) == EVALS
    # the Ray workers trained in this machine's run folders: a rerun (through the
    # command line this time) has nothing to do
    assert main(["sweep", str(grid), "--out", str(tmp_path / "ray"), "--backend", "ray",
                 "--jobs", "2"]) == 0
    assert "4 cells: 0 run, 4 already complete" in capsys.readouterr().out


def test_cuda_cell_on_a_cluster_without_gpu(ray_session, grid, tmp_path):
    if ray.cluster_resources().get("GPU", 0):
        pytest.skip("this Ray instance has a GPU")
    text = grid.read_text().replace("limit_test: 120}", "limit_test: 120, device: cuda}")
    path = tmp_path / "cuda.yaml"
    path.write_text(text)
    with pytest.raises(MCELError, match="the Ray cluster has no GPU"):
        run_sweep(path, tmp_path / "out", 2, backend="ray")


def test_user_error_inside_a_task_comes_back_as_one_line(ray_session):
    @ray.remote
    def fails():
        raise MCELError("dataset 'x' is broken")

    with pytest.raises(ray.exceptions.RayTaskError) as info:
        ray.get(fails.remote())
    err = _unwrap(info.value)
    assert type(err) is MCELError and str(err) == "dataset 'x' is broken"


def test_a_failing_task_is_recorded_and_the_others_run(ray_session, grid, tmp_path, capsys):
    from mcel.experiments.grid import expand, load_grid

    out = tmp_path / "out"
    bad = expand(load_grid(grid))[1]
    ckpt = out / "runs" / bad.run_id / "last.safetensors"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"a resume point that is not a checkpoint")  # one cell cannot resume
    s = run_sweep(grid, out, 2, backend="ray")
    assert (s.done, len(s.failed), s.runs_written) == (CELLS - 1, 1, CELLS - 1)
    assert s.failed[0].run_id == bad.run_id
    assert "is not a valid safetensors checkpoint" in s.failed[0].error
    assert (ckpt.parent / "error.txt").exists()
    assert bad.run_id not in {r[0] for r in _rows(s.db)[0]}
    ckpt.unlink()
    assert main(["sweep", str(grid), "--out", str(out), "--backend", "ray", "--jobs", "2"]) == 0
    assert f"{CELLS} cells: 1 run, {CELLS - 1} already complete" in capsys.readouterr().out
    assert not (ckpt.parent / "error.txt").exists()
