"""Sweep grids: a YAML file that names many training runs and how to evaluate each.

A grid file::

    name: digits-tiny                 # optional; default: the file's stem
    db: results.db                    # optional; relative to the --out folder
    base: {dataset: digits, epochs: 5, quant: int4}   # any TrainConfig fields
    grid:                             # cartesian product of the axes, in file order
      model: [mlp, lenet5]            # axis named after a field: values of that field
      method:                         # any other axis: mappings of fields; a list
        - {loss: ce}                  #   inside a mapping is a product of its own
        - {loss: mcel, margin: [1, 2], normalize: std, scale: 4}
      seed: [0, 1, 2]
    eval:
      bers: [0, 0.001, 0.01]          # or per scheme: {binary: [...], default: [...]}
      fmts: [twos_complement, sign_magnitude]   # default: the format it was trained in;
                                      # binary cells: the first only (same codes in all)
      error_model: "ber=0"            # or a list of specs; each BER sets its largest rate
      trials: 100
      adaptive: 0.005                 # optional: stop at this 95% half-width
      min_trials: 10
      seed: 0
      limit_test: null                # default: the run's own limit_test

Every point of the product becomes one `Cell`: a `TrainConfig` (its ``digest()`` is the
run id) plus the `EvalPlan` that applies to it. Everything is validated when the file
is loaded, before any training, and every mistake is one `MCELError` line naming the
file and the key.

Two shapes need care. A list-valued field (``quant_exclude``) inside a mapping is a
product axis only as a list of lists (``quant_exclude: [[fc*], []]``), and a mapping
field (``model_kwargs``, ``quant_layers``) is never expanded: put variants in an axis of mappings,
``arch: [{model: mlp, model_kwargs: {hidden: 32}}, {model: lenet5}]``. YAML 1.1 reads
``1e-3`` as a string, so numeric-looking strings in number fields are read as numbers.

>>> cells = expand({"base": {"epochs": 1}, "grid": {"loss": ["ce", "mcel"], "seed": [0, 1]},
...                 "eval": {"bers": [0.01, 0]}})
>>> [(c.config.loss, c.config.seed) for c in cells]
[('ce', 0), ('ce', 1), ('mcel', 0), ('mcel', 1)]
>>> cells[0].plan.bers, cells[0].plan.fmts, cells[0].plan.error_models
((0.0, 0.01), ('twos_complement',), ('ber=0.0',))
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mcel.config import TrainConfig, build_model
from mcel.errors import MCELError
from mcel.io import read_text
from mcel.registry import did_you_mean

TOP_KEYS = ("name", "db", "base", "grid", "eval")
EVAL_KEYS = ("bers", "fmts", "error_model", "trials", "adaptive", "min_trials", "seed",
             "limit_test")
DEFAULT_BERS = (0.0, 1e-3, 1e-2)

_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
_FLOAT_FIELDS = {n for n, f in _FIELDS.items() if "float" in str(f.type)}
_INT_FIELDS = {n for n, f in _FIELDS.items() if str(f.type).startswith("int")}
_LIST_FIELDS = {n for n, f in _FIELDS.items() if str(f.type).startswith("list")}
_DICT_FIELDS = {n for n, f in _FIELDS.items() if str(f.type).startswith("dict")}


@dataclass(frozen=True)
class EvalPlan:
    """How every trained model of a cell is evaluated (the ``eval`` section, resolved)."""

    bers: tuple[float, ...]
    fmts: tuple[str, ...]
    error_models: tuple[str, ...]  # canonical specs (BitErrorModel.describe())
    trials: int = 100
    target_half_width: float | None = None
    min_trials: int = 10
    seed: int = 0
    limit_test: int | None = None

    def settings(self) -> dict[str, Any]:
        """What decides an evals row's numbers beside its key; stored with the row, so that
        rows written under another ``eval`` section are noticed, not silently mixed."""
        return {"trials": self.trials, "adaptive": self.target_half_width,
                "min_trials": self.min_trials, "limit_test": self.limit_test}

    def keys(self) -> list[tuple[str, str, float, int]]:
        """(fmt, error_model, ber, eval_seed) of every evals row the plan produces."""
        return [(f, e, b, self.seed) for f in self.fmts for e in self.error_models
                for b in self.bers]


@dataclass
class Cell:
    """One training run of the grid and its evaluation plan."""

    config: TrainConfig
    plan: EvalPlan
    point: dict[str, Any] = field(default_factory=dict)  # axis -> value (for messages)

    @property
    def run_id(self) -> str:
        return self.config.digest()

    @property
    def label(self) -> str:
        """How progress lines and failures name the cell, e.g. "mlp/int4 CE seed 0"."""
        from mcel.experiments.store import method_label

        c = self.config
        return f"{c.model}/{c.quant} {method_label(c.to_dict())} seed {c.seed}"


@dataclass
class Grid:
    """A parsed grid file (not yet expanded)."""

    name: str
    base: dict[str, Any]
    axes: dict[str, list[Any]]
    eval: dict[str, Any]
    db: str | None = None
    source: str = "<grid>"

    @classmethod
    def from_dict(cls, d: Any, source: str = "<grid>", default_name: str = "grid") -> Grid:
        if d is None:
            raise MCELError(f"{source} is empty; it needs at least a 'grid' section")
        if not isinstance(d, Mapping):
            raise MCELError(f"{source} must hold a mapping with keys {', '.join(TOP_KEYS)}")
        _no_unknown(d, TOP_KEYS, source, prefix="")
        name = d.get("name", default_name)
        if not isinstance(name, str) or not name.strip():
            raise MCELError(f"{source}: name must be a non-empty string, got {name!r}")
        db = d.get("db")
        if db is not None and (not isinstance(db, str) or not db.strip()):
            raise MCELError(f"{source}: db must be a file name, got {db!r}")
        base = d.get("base") or {}
        if not isinstance(base, Mapping):
            raise MCELError(f"{source}: base must be a mapping of training settings")
        _no_unknown(base, _FIELDS, source, prefix="base.", what="training setting")
        axes = d.get("grid")
        if axes is None:
            raise MCELError(f"{source} has no 'grid' section; give at least one axis, "
                            "e.g. 'grid: {seed: [0, 1]}'")
        if not isinstance(axes, Mapping):
            raise MCELError(f"{source}: grid must be a mapping of axis name -> list of values")
        if not axes:
            raise MCELError(f"{source}: grid is empty; give at least one axis, "
                            "e.g. 'grid: {seed: [0, 1]}'")
        parsed: dict[str, list[Any]] = {}
        for axis, values in axes.items():
            if not isinstance(axis, str):
                raise MCELError(f"{source}: grid axis names must be strings, got {axis!r}")
            if not isinstance(values, list):
                values = [values]
            if not values:
                raise MCELError(f"{source}: grid.{axis} is an empty list; give at least one value")
            parsed[axis] = values
        ev = d.get("eval") or {}
        if not isinstance(ev, Mapping):
            raise MCELError(f"{source}: eval must be a mapping with keys {', '.join(EVAL_KEYS)}")
        _no_unknown(ev, EVAL_KEYS, source, prefix="eval.")
        return cls(name=name.strip(), base=dict(base), axes=parsed, eval=dict(ev),
                   db=db, source=source)


def load_grid(path: str | Path) -> Grid:
    """Read and check a grid file; its cells are checked too (see `expand`)."""
    import yaml

    path = Path(path)
    text = read_text(path, "grid file")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None)
        why = f" ({problem})" if problem else ""
        raise MCELError(f"grid file {path} is not valid YAML{at}{why}") from None
    grid = Grid.from_dict(data, source=f"grid file {path}", default_name=path.stem)
    expand(grid)  # fail now, not after hours of training
    return grid


def expand(grid: Grid | Mapping[str, Any], *, data_dir: str | None = None) -> list[Cell]:
    """All cells of ``grid`` (a `Grid` or the dict of a grid file), in product order.

    Every config and plan is validated; ``data_dir`` overrides every cell's data folder
    (it is not part of the run id). Points that give the same run are kept once.
    """
    if not isinstance(grid, Grid):
        grid = Grid.from_dict(grid)
    src = grid.source
    base = _coerce(dict(grid.base), src, "base")
    axis_options = {axis: _axis_options(axis, values, src)
                    for axis, values in grid.axes.items()}
    eval_raw = grid.eval
    cells: dict[str, Cell] = {}
    for combo in itertools.product(*axis_options.values()):
        d = dict(base)
        point: dict[str, Any] = {}
        set_by: dict[str, str] = {}
        for axis, (label, fields_) in zip(axis_options, combo, strict=True):
            point[axis] = label
            for k, v in fields_.items():
                if k in set_by:
                    raise MCELError(f"{src}: grid axes '{set_by[k]}' and '{axis}' both set "
                                    f"'{k}'; set each field in one axis only")
                set_by[k] = axis
                d[k] = v
        if data_dir is not None:
            d["data_dir"] = str(data_dir)
        where = ", ".join(f"{a}={v}" for a, v in point.items())
        try:
            config = TrainConfig.from_dict(d)
            _check_config(config)
        except MCELError as e:
            raise MCELError(f"{src}: grid point {where}: {e}") from None
        plan = _eval_plan(eval_raw, config, src)
        cells.setdefault(config.digest(), Cell(config, plan, point))
    return list(cells.values())


# -- helpers ---------------------------------------------------------------------------

def _no_unknown(d: Mapping, valid, source: str, *, prefix: str, what: str = "key") -> None:
    for k in d:
        if k not in valid:
            hint = did_you_mean(k, valid, prefix)
            raise MCELError(f"{source}: unknown {what} '{prefix}{k}'{hint}; "
                            f"valid: {', '.join(valid)}")


def _number(v: Any) -> Any:
    """YAML 1.1 reads ``1e-3`` as a string; take numeric-looking strings as numbers."""
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return v
    return v


def _coerce(d: dict[str, Any], src: str, where: str) -> dict[str, Any]:
    """Fields as TrainConfig expects them; ints in float fields become floats, so that
    ``margin: 1`` and ``margin: 1.0`` are the same run (the run id hashes the JSON)."""
    _no_unknown(d, _FIELDS, src, prefix=f"{where}." if where else "", what="training setting")
    out = {}
    for k, v in d.items():
        if k in _FLOAT_FIELDS:
            v = _number(v)
            if isinstance(v, numbers.Real) and not isinstance(v, bool):
                v = float(v)
        elif k in _INT_FIELDS:
            v = _number(v)
            if isinstance(v, float) and v.is_integer():
                v = int(v)
        out[k] = v
    return out


def _axis_options(axis: str, values: list[Any], src: str) -> list[tuple[Any, dict[str, Any]]]:
    """(label, fields) of every value of one axis, nested products expanded."""
    options: list[tuple[Any, dict[str, Any]]] = []
    for i, v in enumerate(values):
        where = f"grid.{axis}[{i}]"
        if isinstance(v, Mapping) and axis not in _DICT_FIELDS:
            for fields_ in _expand_mapping(v, src, where):
                label = "{" + ", ".join(f"{k}: {x}" for k, x in fields_.items()) + "}"
                options.append((label, _coerce(fields_, src, where)))
        elif axis in _FIELDS:
            options.append((v, _coerce({axis: v}, src, "grid")))
        else:
            hint = did_you_mean(axis, _FIELDS)
            raise MCELError(f"{src}: {where} is {v!r}, but axis '{axis}' is not a training "
                            f"setting{hint}, so its values must be mappings of settings")
    return options


def _expand_mapping(m: Mapping[str, Any], src: str, where: str) -> list[dict[str, Any]]:
    """``{loss: mcel, margin: [1, 2]}`` -> one dict per margin."""
    for k in m:
        if not isinstance(k, str):
            raise MCELError(f"{src}: {where}: keys must be setting names, got {k!r}")
    _no_unknown(m, _FIELDS, src, prefix=f"{where}.", what="training setting")
    keys, choices = [], []
    for k, v in m.items():
        if k in _DICT_FIELDS:
            vs = [v]
        elif k in _LIST_FIELDS:  # a list is the value; a list of lists is an axis
            vs = v if isinstance(v, list) and v and all(isinstance(x, list) for x in v) else [v]
        else:
            vs = v if isinstance(v, list) else [v]
        if not vs:
            raise MCELError(f"{src}: {where}.{k} is an empty list; give at least one value")
        keys.append(k)
        choices.append(vs)
    return [dict(zip(keys, c, strict=True)) for c in itertools.product(*choices)]


def _check_config(config: TrainConfig) -> None:
    """What TrainConfig itself leaves to training time."""
    from mcel.quant import parse_scheme

    schemes = [config.quant, *config.quant_layers.values()]
    if all(parse_scheme(w)[0] == "float" for w in schemes):
        raise MCELError("quant 'float' stores no codes that bits could flip in; "
                        "sweeps need a quantized scheme (binary, ternary, int2..int16)")
    if not isinstance(config.model_kwargs, dict):
        raise MCELError(f"model_kwargs must be a mapping, got {config.model_kwargs!r}")
    if not isinstance(config.quant_exclude, list) or not all(
        isinstance(s, str) for s in config.quant_exclude
    ):
        raise MCELError(f"quant_exclude must be a list of layer-name patterns, "
                        f"got {config.quant_exclude!r}")
    for name in ("limit_train", "limit_test"):
        v = getattr(config, name)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise MCELError(f"{name} must be a positive integer or null, got {v!r}")
    if not isinstance(config.seed, int) or isinstance(config.seed, bool):
        raise MCELError(f"seed must be an integer, got {config.seed!r}")
    config.error_model()  # validates train_error_model
    _build_once(config)


_BUILT: set[str] = set()


def _build_once(config: TrainConfig) -> None:
    """Build the model once per architecture: catches bad ``model_kwargs`` up front."""
    from mcel.experiments.store import dumps

    key = dumps([config.dataset, config.model, config.model_kwargs, config.quant,
                     config.granularity, config.act_bits, config.quant_exclude,
                     config.quant_layers])
    if key not in _BUILT:
        build_model(config)
        _BUILT.add(key)


def _bers_for(raw: Any, config: TrainConfig, src: str) -> tuple[float, ...]:
    from mcel.quant import parse_scheme

    if raw is None:
        return DEFAULT_BERS
    if isinstance(raw, Mapping):
        scheme = parse_scheme(config.quant)[0]
        for k in raw:
            if k != "default" and k not in ("binary", "ternary", "int"):
                try:
                    parse_scheme(k)
                except MCELError:
                    raise MCELError(f"{src}: eval.bers.{k} is not a quantization scheme; keys "
                                    "are schemes (binary, ternary, int, int4, ...) or "
                                    "'default'") from None
        for k in (config.quant, scheme, "default"):
            if k in raw:
                return _ber_list(raw[k], src, f"eval.bers.{k}")
        raise MCELError(f"{src}: eval.bers has no entry for quant '{config.quant}' and no "
                        "'default'")
    return _ber_list(raw, src, "eval.bers")


def _ber_list(raw: Any, src: str, where: str) -> tuple[float, ...]:
    vals = raw if isinstance(raw, list) else [raw]
    if not vals:
        raise MCELError(f"{src}: {where} is an empty list; give at least one bit error rate")
    out = set()
    for v in vals:
        v = _number(v)
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not 0.0 <= v <= 1.0:
            raise MCELError(f"{src}: {where}: {v!r} is not a bit error rate in [0, 1]")
        out.add(float(v))
    return tuple(sorted(out))


def _int(raw: Any, src: str, key: str, *, lo: int, default: int | None) -> int | None:
    if raw is None:
        return default
    v = _number(raw)
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise MCELError(f"{src}: eval.{key} must be an integer >= {lo}, got {raw!r}")
    return v


def _eval_plan(ev: Mapping[str, Any], config: TrainConfig, src: str) -> EvalPlan:
    from mcel.faults import BitErrorModel, parse_error_model
    from mcel.quant import list_formats, parse_scheme

    bers = _bers_for(ev.get("bers"), config, src)
    fmts_raw = ev.get("fmts")
    fmts_list = [config.fmt] if fmts_raw is None else (
        fmts_raw if isinstance(fmts_raw, list) else [fmts_raw])
    if not fmts_list:
        raise MCELError(f"{src}: eval.fmts is an empty list; give at least one number format")
    valid_fmts = list_formats()
    for f in fmts_list:
        if f not in valid_fmts:
            hint = did_you_mean(f, valid_fmts)
            raise MCELError(f"{src}: eval.fmts: unknown number format '{f}'{hint}; "
                            f"valid: {', '.join(valid_fmts)}")
    ems_raw = ev.get("error_model", "ber=0")
    ems_list = ems_raw if isinstance(ems_raw, list) else [ems_raw]
    if not ems_list:
        raise MCELError(f"{src}: eval.error_model is an empty list")
    bits = parse_scheme(config.quant)[1]
    ems, parsed = [], []
    for spec in ems_list:
        if not isinstance(spec, str):
            raise MCELError(f"{src}: eval.error_model must be a spec string like 'ber=0' or "
                            f"'p01=1e-3,p10=1e-2', got {spec!r}")
        try:
            em = parse_error_model(spec)
            if isinstance(em, BitErrorModel) and not em.is_uniform and em.max_rate() == 0:
                raise MCELError("it has no nonzero rate for the BER axis to scale")
            if bits is not None:
                em.check_bits(bits)  # bit_rates length, protected bits vs code width
            if "activations" in em.targets and config.act_bits is None:
                raise MCELError("it targets activations, but the model's activations are "
                                "not quantized; set act_bits")
            if em.include or em.exclude:  # patterns that match no layer would flip nothing
                from mcel.checks import check_targets

                check_targets(build_model(config), em)
        except MCELError as e:
            raise MCELError(f"{src}: eval.error_model '{spec}': {e}") from None
        ems.append(em.describe())
        parsed.append(em)
    trials = _int(ev.get("trials"), src, "trials", lo=1, default=100)
    min_trials = _int(ev.get("min_trials"), src, "min_trials", lo=2, default=10)
    seed = _int(ev.get("seed"), src, "seed", lo=0, default=0)
    limit = _int(ev.get("limit_test"), src, "limit_test", lo=1, default=None)
    hw = _number(ev.get("adaptive"))
    if hw is not None and (isinstance(hw, bool) or not isinstance(hw, numbers.Real)
                           or not math.isfinite(hw) or hw <= 0):
        raise MCELError(f"{src}: eval.adaptive is a target 95% half-width > 0 (e.g. 0.005), "
                        f"got {ev.get('adaptive')!r}")
    return EvalPlan(bers=bers, fmts=_distinct_fmts(fmts_list, config, parsed),
                    error_models=tuple(dict.fromkeys(ems)), trials=trials,  # type: ignore[arg-type]
                    target_half_width=None if hw is None else float(hw),
                    min_trials=min_trials, seed=seed,  # type: ignore[arg-type]
                    limit_test=limit if limit is not None else config.limit_test)


def _distinct_fmts(fmts: list[str], config: TrainConfig, ems: list) -> tuple[str, ...]:
    """Binary codes (levels -1/+1) read the same in every number format, so unless biases
    or activations (integers in the format) take faults, the first format covers all."""
    from mcel.quant import parse_scheme

    fmts_unique = tuple(dict.fromkeys(fmts))
    hits_ints = any({"biases", "activations"} & set(em.targets) for em in ems)
    if parse_scheme(config.quant)[0] == "binary" and not hits_ints:
        return fmts_unique[:1]
    return fmts_unique


def select(cells: Sequence[Cell], only: Sequence[str]) -> list[Cell]:
    """The cells that match every ``KEY=PATTERN`` of ``only`` (fnmatch patterns; KEY is
    ``method``, the method label as reports show it, e.g. ``MCEL(m=30)``, or any training
    field, e.g. ``seed=2``). Selectors with the same key are alternatives, different
    keys must all match. A grid file thus runs in any order, a part at a time, into the
    same database.

    >>> cells = expand({"grid": {"loss": ["ce", "mcel"], "seed": [0, 1, 2]}})
    >>> [(c.config.loss, c.config.seed) for c in select(cells, ["method=MCEL*", "seed=2"])]
    [('mcel', 2)]
    """
    from fnmatch import fnmatchcase

    wanted: dict[str, list[str]] = {}
    for sel in only:
        key, sep, pattern = sel.partition("=")
        key = key.strip()
        if not sep or not key:
            raise MCELError(f"--only takes KEY=PATTERN (e.g. seed=2 or 'method=MCEL*'), "
                            f"got {sel!r}")
        if key != "method" and key not in _FIELDS:
            raise MCELError(f"--only: unknown key {key!r}; use method or a training field"
                            + did_you_mean(key, ["method", *_FIELDS]))
        wanted.setdefault(key, []).append(pattern.strip())

    def value(cell: Cell, key: str) -> str:
        from mcel.experiments.store import method_label

        return (method_label(cell.config.to_dict()) if key == "method"
                else str(getattr(cell.config, key)))

    kept = [c for c in cells if all(any(fnmatchcase(value(c, k), p) for p in pats)
                                    for k, pats in wanted.items())]
    if cells and not kept:
        seen = {k: sorted({value(c, k) for c in cells}) for k in wanted}
        raise MCELError("no cell matches --only " + " ".join(only) + "; the grid has "
                        + "; ".join(f"{k}: {', '.join(v)}" for k, v in seen.items()))
    return kept


__all__: Sequence[str] = ["Cell", "EvalPlan", "Grid", "expand", "load_grid", "select"]
