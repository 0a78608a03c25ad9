"""Choosing the MCEL margin: a short search against cross-entropy.

``tune_margin`` trains CE once and MCEL at each candidate margin (everything else as in
the base config), evaluates every model at one bit error rate with the Monte-Carlo
engine, and picks the margin with the best accuracy under errors among those whose
clean accuracy is at most ``clean_budget`` below CE's. A larger margin buys tolerance
and eventually costs clean accuracy; the budget says how much clean accuracy the user
will trade.

With ``clips`` the search also picks the weight clip (`--clip`, `--clip-auto`,
`--clip-rel`): CE and every margin are trained under each candidate clip, and the best
eligible combination is compared with the base config's CE. On the full-width ResNet-20
of the study the clip value mattered more than the margin (a tight clip kept 81% at 1%
BER, ``--clip-auto 2`` 60%, CE 19%), and a margin must fit inside the logits a clip
allows, so the two are chosen together.

Selection data: choosing on the test split and then reporting test accuracy would
flatter the winner, so by default the choice is made on training samples the runs never
saw (those past ``limit_train``) when there are at least ``MIN_HELD_OUT`` of them, and on
the test split otherwise (the result says which: ``selected_on``). Pass ``val=(x, y)``
to choose on data of your own.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mcel.checks import ber_range_error
from mcel.errors import MCELError

if TYPE_CHECKING:  # the command line reads the defaults below without loading the trainer
    from torch import Tensor

    from mcel.config import TrainConfig

MIN_HELD_OUT = 200
MAX_HELD_OUT = 5000
# the search's defaults, here and in `mcel tune-margin`
CANDIDATE_MARGINS = (0.5, 1.0, 2.0, 4.0, 8.0)
CLEAN_BUDGET = 0.005  # half a point of clean accuracy
TUNE_TRIALS = 30
# How the paired interval of the best margin against CE is widened for having picked
# the best of K margins: not at all, or Bonferroni (confidence 1 - 0.05 / K).
CORRECTIONS = ("none", "bonferroni")
# Candidate clips: "none", a number (`clip`), "auto:C" (`clip_auto`), "rel:C" (`clip_rel`).
_CLIP_KEYS = {"auto": "clip_auto", "rel": "clip_rel"}


def _selection_data(config: TrainConfig,
                    val: tuple[Tensor, Tensor] | None) -> tuple[Tensor, Tensor, str]:
    from mcel.data import load_dataset

    if val is not None:
        return val[0], val[1], "user-supplied validation data"
    if config.limit_train is not None:
        x, y = load_dataset(config.dataset, "train", config.data_dir)
        start, stop = config.limit_train, min(len(y), config.limit_train + MAX_HELD_OUT)
        if stop - start >= MIN_HELD_OUT:
            return x[start:stop], y[start:stop], (f"held-out training samples "
                                                  f"[{start}:{stop}] (never trained on)")
    x, y = load_dataset(config.dataset, "test", config.data_dir, limit=config.limit_test)
    return x, y, "the test split (no held-out training samples; set limit_train to keep some)"


@dataclass(frozen=True)
class SeedRun:
    """One training seed of a candidate, evaluated at the search's BER on the selection
    data (``acc`` with its interval over trials)."""

    seed: int
    clean_acc: float
    acc: float
    ci_low: float
    ci_high: float
    test_clean_acc: float  # on the test split, as `train` measured it
    train_seconds: float
    run_id: str


@dataclass(frozen=True)
class Candidate:
    """One row of the search: a loss and margin trained at every seed. Accuracies are
    means over seeds; ``ci_low``/``ci_high`` a t-interval across seeds when there are
    several, else the one run's interval over trials. ``eligible``: within the clean
    budget; ``delta_ci_low``/``delta_ci_high``: the 95% interval of the difference to
    CE paired by seed (several seeds only)."""

    method: str
    loss: str
    margin: float | None
    normalize: str | None
    clean_acc: float
    acc: float
    ci_low: float
    ci_high: float
    test_clean_acc: float
    train_seconds: float
    run_id: str  # of the first seed
    per_seed: tuple[SeedRun, ...]
    clip: dict[str, float | None] = dataclasses.field(default_factory=dict)  # its 3 keys
    eligible: bool = False  # set by the choice, against CE
    delta_vs_ce: float = 0.0
    delta_ci_low: float | None = None
    delta_ci_high: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["per_seed"] = [dataclasses.asdict(p) for p in self.per_seed]
        if self.delta_ci_low is None:  # one seed: no paired interval, no keys
            del out["delta_ci_low"], out["delta_ci_high"]
        return out


@dataclass(frozen=True)
class TuningResult:
    """What `tune_margin` found: every candidate (``rows``, CE first), the chosen one
    (``best``: None when no margin is within the clean budget), whether it beats CE,
    and the settings, enough to rerun the search (``base_config`` holds every training
    setting but the loss, margin and seed). ``to_dict()`` is the JSON form
    (``mcel tune-margin --json``)."""

    ber: float
    error_model: dict[str, Any]
    clean_budget: float
    base_config: TrainConfig
    versions: dict[str, str]
    trials: int
    seed: int  # the fault seed of every evaluation
    seeds: tuple[int, ...]  # training seeds
    selected_on: str
    n_select: int
    rows: tuple[Candidate, ...]
    best: Candidate | None
    beats_ce: bool
    correction: str = "none"

    @property
    def ce(self) -> Candidate:
        return self.rows[0]

    @property
    def best_margin(self) -> float | None:
        return None if self.best is None else (self.best.margin or 0.0)

    @property
    def recommended_margin(self) -> float:
        """The best margin if it beats CE, else 0: MCEL at margin 0 is CE exactly, so
        the tuned loss is never chosen worse than CE on the selection data."""
        return (self.best.margin or 0.0) if self.beats_ce and self.best is not None else 0.0

    @property
    def searched_clips(self) -> bool:
        """Whether candidates differ in their clip (``clips`` given), not only in margin."""
        return any(r.clip != self.ce.clip for r in self.rows)

    @property
    def recommended(self) -> dict[str, Any]:
        """The training settings to use: the best candidate's loss, margin and clip if it
        beats CE, else the base config's CE (``loss``, ``margin`` and the clip keys)."""
        pick = self.best if self.beats_ce and self.best is not None else self.ce
        return {"loss": pick.loss, "margin": pick.margin, **pick.clip}

    def to_dict(self) -> dict[str, Any]:
        return {"ber": self.ber, "error_model": self.error_model,
                "clean_budget": self.clean_budget, "base_config": self.base_config.to_dict(),
                "versions": self.versions, "trials": self.trials, "seed": self.seed,
                "seeds": list(self.seeds), "selected_on": self.selected_on,
                "n_select": self.n_select, "rows": [r.to_dict() for r in self.rows],
                "ce": self.ce.to_dict(),
                "best": None if self.best is None else self.best.to_dict(),
                "best_margin": self.best_margin, "beats_ce": self.beats_ce,
                "recommended_margin": self.recommended_margin,
                "recommended": self.recommended, "correction": self.correction}


def tune_margin(
    base_config: TrainConfig,
    ber: float,
    error_model=None,
    *,
    margins: Sequence[float] = CANDIDATE_MARGINS,
    normalize: str | None = None,
    clean_budget: float = CLEAN_BUDGET,
    trials: int = TUNE_TRIALS,
    seed: int = 0,
    seeds: Sequence[int] | None = None,
    correction: str = "none",
    val: tuple[Tensor, Tensor] | None = None,
    runs: str | Path | None = None,
    clips: Sequence[str] | None = None,
    jobs: int = 1,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> TuningResult:
    """Train CE and MCEL at each of ``margins``; pick the margin to use at ``ber``.

    Args:
        base_config: every training choice except the loss and margin (epochs, model,
            quantization, seed, ...).
        ber: the bit error rate to tune for (sets the largest rate of ``error_model``;
            default: uniform persistent weight faults).
        margins: candidate MCEL margins (finite, >= 0).
        normalize: logit scale of the margin (``none``, ``l2``, ``std``; None: the base's).
        clean_budget: a candidate is eligible when its clean accuracy is at least CE's
            minus this (0.005 = half a point).
        trials, seed: Monte-Carlo trials and fault seed of each evaluation (the same
            faults for every candidate: paired).
        seeds: training seeds (default: the base config's); with two or more, a margin
            beats CE only when its difference, paired by seed, has a 95% interval above
            zero (one seed cannot tell a margin's effect from seed-to-seed spread).
        correction: ``none``: that interval is not corrected for picking the best of K
            (a useless margin passes > 2.5%); ``bonferroni``: confidence 1 - 0.05 / K.
        clips: candidate clips (``"none"``, ``"0.025"``, ``"auto:1"``, ``"rel:2"``): CE
            and each margin under each, against the base config's CE (None: its clip).
        runs, jobs: a folder of run folders named by run id (a sweep's ``runs/``): finished
            candidates are reused, the rest trained there (``jobs`` > 1: that many at a
            time first, in processes of one CPU thread each, as a sweep's cells).
    """
    from mcel.experiments.store import versions
    from mcel.faults import BitErrorModel

    ber, margins = _check_search(ber, margins, clean_budget, trials)
    configs = _configs(base_config, margins, normalize, clips)  # a bad setting fails here
    confidence = _check_options(correction, len(configs) - 1, runs, jobs)
    seeds = _check_seeds(base_config, seeds)
    x, y, where = _selection_data(base_config, val)
    em = error_model or BitErrorModel(ber=0.0)
    _train_ahead(configs, seeds, runs=runs, jobs=jobs, log=log)
    rows = [_candidate(cfg, seeds, (x, y), ber=ber, em=em, trials=trials, seed=seed,
                       runs=runs, progress=progress, log=log) for cfg in configs]
    rows, best, beats = _choose(rows, clean_budget, paired=len(seeds) > 1, confidence=confidence)
    return TuningResult(ber=ber, error_model=em.to_dict(), clean_budget=clean_budget,
                        base_config=base_config, versions=versions(), trials=trials,
                        seed=seed, seeds=tuple(seeds), selected_on=where, n_select=len(y),
                        rows=tuple(rows), best=best, beats_ce=beats, correction=correction)


def plan(base_config: TrainConfig, margins: Sequence[float] = CANDIDATE_MARGINS, *,
         normalize: str | None = None, clips: Sequence[str] | None = None,
         seeds: Sequence[int] | None = None,
         runs: str | Path | None = None) -> list[tuple[str, int, str, str]]:
    """What `tune_margin` with these settings would train, without training:
    ``(method, seed, run_id, status)`` per candidate and seed, status ``reuse`` (a
    finished run folder in ``runs``), ``resume`` (a checkpoint there) or ``train``."""
    from mcel.experiments.store import method_label

    _check_search(0.0, margins, 0.0, 1)
    out, seeds = [], _check_seeds(base_config, seeds)
    for cfg in _configs(base_config, [float(m) for m in margins], normalize, clips):
        for s in seeds:
            run_id = dataclasses.replace(cfg, seed=s).digest()
            folder = None if runs is None else Path(runs) / run_id
            status = ("train" if folder is None else "reuse"
                      if (folder / "model.safetensors").exists() else "resume"
                      if (folder / "last.safetensors").exists() else "train")
            out.append((method_label(cfg.to_dict()), s, run_id, status))
    return out


def _check_options(correction: str, k: int, runs: str | Path | None, jobs: int = 1) -> float:
    """The paired intervals' confidence when the best of ``k`` margins is tested; a bad
    correction, ``runs`` path or ``jobs`` fails here, before any training."""
    if runs is not None and Path(runs).exists() and not Path(runs).is_dir():
        raise MCELError(f"runs folder {runs} is a file; give a folder for the trained "
                        "candidates (it is created when missing)")
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise MCELError(f"jobs must be a positive integer, got {jobs!r}")
    if jobs > 1 and runs is None:
        raise MCELError("training candidates in parallel hands them to the search through "
                        "a runs folder: give runs (--runs DIR) with jobs > 1")
    if correction not in CORRECTIONS:
        raise MCELError(f"unknown correction {correction!r}; choose one of "
                        f"{', '.join(CORRECTIONS)}")
    return 1 - 0.05 / k if correction == "bonferroni" else 0.95


def parse_clip(spec: str) -> dict[str, float | None]:
    """A candidate clip as the three TrainConfig keys it sets.

    >>> parse_clip("auto:1")
    {'clip': None, 'clip_auto': 1.0, 'clip_rel': None}
    """
    keys: dict[str, float | None] = {"clip": None, "clip_auto": None, "clip_rel": None}
    word = str(spec).strip().lower()
    if word == "none":
        return keys
    kind, _, value = word.rpartition(":")
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if kind not in ("", *_CLIP_KEYS) or not (math.isfinite(number) and number > 0):
        raise MCELError(f"bad candidate clip {spec!r}: give none, a number (a fixed clip, "
                        "e.g. 0.025), auto:C (--clip-auto C) or rel:C (--clip-rel C), C > 0")
    keys[_CLIP_KEYS.get(kind, "clip")] = number
    return keys


def _configs(base_config: TrainConfig, margins: list[float], normalize: str | None,
             clips: Sequence[str] | None = None) -> list[TrainConfig]:
    """The base config's CE, then CE and MCEL at each distinct margin under each clip
    (without ``clips``: MCEL at each margin under the base config's clip)."""
    norm = base_config.normalize if normalize is None else normalize
    ce = dataclasses.replace(base_config, loss="ce", margin=None)
    settings = [{"loss": "mcel", "margin": m, "normalize": norm}
                for m in dict.fromkeys(margins)]
    if clips is None:
        return [ce] + [dataclasses.replace(base_config, **k) for k in settings]
    out = [ce]
    for clip in [parse_clip(c) for c in clips]:
        for k in [{"loss": "ce", "margin": None}] + settings:
            cfg = dataclasses.replace(base_config, **k, **clip)
            if cfg not in out:  # CE under the base config's own clip is the baseline
                out.append(cfg)
    return out


def _check_seeds(base_config: TrainConfig, seeds: Sequence[int] | None) -> list[int]:
    seeds = [int(base_config.seed)] if seeds is None else [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise MCELError(f"seeds must be distinct training seeds, got {seeds}")
    return seeds


def _check_search(ber: float, margins: Sequence[float], clean_budget: float,
                  trials: int) -> tuple[float, list[float]]:
    ber = float(ber)
    if not 0.0 <= ber <= 1.0:  # also rejects NaN
        raise MCELError(ber_range_error(ber))
    margins = [float(m) for m in margins]
    if not margins:
        raise MCELError("give at least one candidate margin")
    bad = [m for m in margins if not math.isfinite(m) or m < 0]
    if bad:
        raise MCELError(f"margins must be finite numbers >= 0, got {bad[0]}")
    if not (clean_budget >= 0 and math.isfinite(clean_budget)):
        raise MCELError(f"clean_budget must be a finite number >= 0, got {clean_budget}")
    if trials < 1:
        raise MCELError(f"trials must be >= 1, got {trials}")
    return ber, margins


def _train_ahead(configs: list[TrainConfig], seeds: list[int], *, runs: str | Path | None,
                 jobs: int, log: Callable[[str], None] | None) -> None:
    """With ``jobs`` > 1: train every candidate and seed that ``runs`` lacks, that many at
    a time in spawned worker processes (one CPU thread each), so that the search then
    finds them finished and only evaluates."""
    if jobs <= 1 or runs is None:  # _check_options asks for runs with jobs > 1
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from mcel.experiments.store import method_label

    folder = Path(runs)
    todo = [c for c in (dataclasses.replace(cfg, seed=s) for cfg in configs for s in seeds)
            if not (folder / c.digest() / "model.safetensors").exists()]
    if not todo:
        return
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(jobs, len(todo)), mp_context=ctx) as pool:
        futures = {pool.submit(_train_one, c.to_dict(), str(folder / c.digest())): c
                   for c in todo}
        for fut in as_completed(futures):
            acc = fut.result()  # a worker's MCELError comes back as itself
            if log:
                c = futures[fut]
                log(f"trained {method_label(c.to_dict())} seed {c.seed}: clean test "
                    f"{acc:.4f} ({c.digest()})")


def _train_one(config: dict[str, Any], out: str) -> float:
    """A worker's job: train one candidate into ``out`` at one CPU thread."""
    from mcel.config import TrainConfig
    from mcel.precision import cpu_threads
    from mcel.train import train

    with cpu_threads(1):
        _, metrics = train(TrainConfig.from_dict(config), out)
    return float(metrics["test_acc"])


def _candidate(cfg: TrainConfig, seeds: list[int], data: tuple[Tensor, Tensor], *, ber: float,
               em, trials: int, seed: int, runs: str | Path | None, progress: bool,
               log: Callable[[str], None] | None) -> Candidate:
    """One row of the search: ``cfg`` trained at every seed and evaluated at ``ber`` on
    the selection data; accuracies are means over seeds (a t-interval across them when
    there are several, else the one run's interval over trials)."""
    from mcel.evaluate import evaluate, t_interval
    from mcel.experiments.store import method_label
    from mcel.train import train

    x, y = data
    label = method_label(cfg.to_dict())
    per_seed = []
    for s in seeds:
        cfg_s = dataclasses.replace(cfg, seed=s)
        out = None if runs is None else Path(runs) / cfg_s.digest()  # train resumes it
        model, metrics = train(cfg_s, out, progress=progress)
        res = evaluate(model, x, y, [ber], em, trials=trials, seed=seed, progress=progress)
        r = res.results[0]
        per_seed.append(SeedRun(seed=s, clean_acc=res.clean_accuracy, acc=r.mean,
                                ci_low=r.ci_low, ci_high=r.ci_high,
                                test_clean_acc=metrics["test_acc"],
                                train_seconds=metrics["train_seconds"], run_id=cfg_s.digest()))
        if log:
            log(f"{label} seed {s}: clean {res.clean_accuracy:.4f}, at BER {ber:g} "
                f"{r.mean:.4f} [{r.ci_low:.4f}, {r.ci_high:.4f}]")
    acc, lo, hi = (t_interval([p.acc for p in per_seed]) if len(seeds) > 1 else
                   (per_seed[0].acc, per_seed[0].ci_low, per_seed[0].ci_high))

    def mean(key: str) -> float:
        return sum(getattr(p, key) for p in per_seed) / len(per_seed)

    return Candidate(method=label, loss=cfg.loss, margin=cfg.margin,
                     normalize=cfg.normalize if cfg.loss == "mcel" else None,
                     clip={k: getattr(cfg, k) for k in ("clip", "clip_auto", "clip_rel")},
                     clean_acc=mean("clean_acc"), acc=acc, ci_low=lo, ci_high=hi,
                     test_clean_acc=mean("test_clean_acc"),
                     train_seconds=mean("train_seconds"), run_id=per_seed[0].run_id,
                     per_seed=tuple(per_seed))


def _choose(rows: list[Candidate], clean_budget: float, paired: bool, *,
            confidence: float = 0.95) -> tuple[list[Candidate], Candidate | None, bool]:
    """The rows with their eligibility and difference to CE (``rows[0]``), the best
    eligible row, and whether it beats CE (with ``paired`` seeds: an interval at
    ``confidence`` above zero)."""
    from mcel.evaluate import t_interval

    ce = rows[0]
    floor = ce.clean_acc - clean_budget
    judged = []
    for i, row in enumerate(rows):
        delta: dict[str, Any] = {}
        if paired:  # by training seed
            diffs = [a.acc - b.acc for a, b in zip(row.per_seed, ce.per_seed)]
            _, delta["delta_ci_low"], delta["delta_ci_high"] = t_interval(diffs, confidence)
        # A tiny tolerance: equal accuracies computed on the same samples must pass.
        judged.append(dataclasses.replace(
            row, eligible=i > 0 and row.clean_acc >= floor - 1e-12,
            delta_vs_ce=row.acc - ce.acc, **delta))
    eligible = [r for r in judged if r.eligible]
    # Best accuracy under errors; ties go to higher clean accuracy, then a smaller margin.
    best = max(eligible, key=lambda r: (r.acc, r.clean_acc, -(r.margin or 0.0)),
               default=None)
    beats = best is not None and best.acc > judged[0].acc
    if beats and paired:
        beats = best.delta_ci_low > 0
    return judged, best, beats
