"""Worst-case flips over a sweep: `mcel.attack.attack_run` on every run of a results
database, one JSON per run (``<out>/<run_id>.json``, the very file ``mcel attack RUN_DIR
--json`` writes for that run).

Resumable like the sweep: a run whose JSON is there already is not attacked again, but
only when that JSON was made with the same `AttackSettings` (they are recorded in its
``meta``); one made with others stops the whole command before any work, as mixing two
attacks in one folder would make its summary meaningless. Each JSON is written
atomically, so a kill leaves whole results or none. Runs are looked for in the sweep's
layout, ``<database folder>/runs/<run_id>/``, or in a folder given instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mcel.attack import AttackResult, AttackSettings, attack_run
from mcel.errors import MCELError
from mcel.experiments import store
from mcel.io import check_writable, read_json, write_json


@dataclass
class AttackSweep:
    """What one pass over a database did: every run id of the database, those attacked
    now, those whose result was there already, and those skipped for want of a finished
    run folder."""

    out: Path
    run_ids: list[str]
    done: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


def result_path(out_dir: str | Path, run_id: str) -> Path:
    return Path(out_dir) / f"{run_id}.json"


def default_runs_dir(db_path: str | Path) -> Path:
    """Where ``mcel sweep`` puts the run folders: ``runs/`` beside its database."""
    return Path(db_path).parent / "runs"


def database_runs(db_path: str | Path) -> list[str]:
    """The run ids of a results database, sorted (one MCELError line if it has none)."""
    con = store.open_readonly(db_path)
    try:
        ids = sorted(store.run_ids(con))
    finally:
        con.close()
    if not ids:
        raise MCELError(f"{db_path} holds no runs yet; fill it with 'mcel sweep' first")
    return ids


def _few(ids: list[str], n: int = 8) -> str:
    return ", ".join(ids[:n]) + (f" and {len(ids) - n} more" if len(ids) > n else "")


def settings_diff(a: dict[str, Any], b: dict[str, Any], name_a: str, name_b: str) -> str:
    """Where two recorded settings differ, e.g. ``budget 20 there, 30 now``."""
    return "; ".join(f"{k} {a.get(k)!r} {name_a}, {b.get(k)!r} {name_b}"
                     for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k))


def results_with_settings(out_dir: Path, run_ids: Iterable[str],
                          settings: AttackSettings) -> list[str]:
    """The runs whose result in ``out_dir`` was made with ``settings``; one MCELError line
    where one was made with others (or records none)."""
    want = settings.to_dict()
    kept = []
    for rid in run_ids:
        path = result_path(out_dir, rid)
        if not path.is_file():
            continue
        data = read_json(path)
        meta = data.get("meta") if isinstance(data, dict) else None
        got = meta.get("settings") if isinstance(meta, dict) else None
        if not isinstance(got, dict):
            raise MCELError(f"{path} does not record its attack settings (an older mcel?); "
                            "pick another --out for these results")
        if got != want:
            raise MCELError(f"{out_dir} holds attack results made with other settings "
                            f"({settings_diff(got, want, 'there', 'now')}); pick another "
                            "--out, or repeat the earlier settings to resume")
        kept.append(rid)
    return kept


def attack_sweep(db_path: str | Path, out_dir: str | Path,
                 settings: AttackSettings | None = None, *,
                 runs_dir: str | Path | None = None, device: str = "cpu",
                 data_dir: str | None = None,
                 log: Callable[[str], None] | None = None) -> AttackSweep:
    """Attack every run of the database ``db_path`` that has no result in ``out_dir``
    yet and has a finished run folder in ``runs_dir`` (default `default_runs_dir`), with
    ``settings`` (default: `AttackSettings`'s defaults).

    Checks every result already in ``out_dir`` against ``settings`` before any work (see
    the module doc); ``log`` receives one line per run and one naming the runs skipped.
    """
    settings = settings if settings is not None else AttackSettings()
    run_ids = database_runs(db_path)
    out = check_writable(out_dir)
    runs = Path(runs_dir) if runs_dir is not None else default_runs_dir(db_path)
    sweep = AttackSweep(out, run_ids, kept=results_with_settings(out, run_ids, settings))
    todo = [r for r in run_ids if r not in sweep.kept]
    sweep.missing = [r for r in todo if not (runs / r / "model.safetensors").is_file()]
    todo = [r for r in todo if r not in sweep.missing]
    if not todo and not sweep.kept:
        raise MCELError(f"no run of {db_path} has a finished run folder in {runs}; point "
                        "--runs at the folder that holds the <run_id>/ folders")
    if log:
        log(f"attack: {len(run_ids)} runs in {db_path}, {len(sweep.kept)} done already, "
            f"{len(todo)} to attack; results in {out}")
        if sweep.missing:
            log(f"skipping {len(sweep.missing)} run(s) without a finished run folder in "
                f"{runs}: {_few(sweep.missing)}")
    for i, rid in enumerate(todo, 1):
        res = attack_run(runs / rid, settings, device=device, data_dir=data_dir)
        write_json(result_path(out, rid), res.to_dict())
        sweep.done.append(rid)
        if log:
            reached = ", ".join(f"{lv}: {'—' if n is None else n}"
                                for lv, n in res.meta["flips_to"].items())
            log(f"[{i}/{len(todo)}] {rid}: accuracy {100 * res.accuracy[0]:.2f}% -> "
                f"{100 * res.accuracy[-1]:.2f}% in {len(res.flips)} flips; flips to "
                f"{reached} ({res.seconds:.1f}s)")
    return sweep


def read_results(out_dir: str | Path, run_ids: Iterable[str]) -> dict[str, AttackResult]:
    """The results in ``out_dir`` of the runs ``run_ids`` that have one."""
    found = {}
    for rid in run_ids:
        path = result_path(out_dir, rid)
        if path.is_file():
            try:
                found[rid] = AttackResult.from_dict(read_json(path))
            except MCELError as e:
                raise MCELError(f"{path}: {e}") from None
    return found


__all__ = ["AttackSweep", "attack_sweep", "database_runs", "default_runs_dir", "read_results",
           "result_path", "results_with_settings", "settings_diff"]
