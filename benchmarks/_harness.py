"""Shared helpers of the benchmarks: interleaved timing, ratios, machine facts, data.

Every benchmark compares things *side by side in one run*: the cases of a comparison
take turns (round robin, the starting case rotating each round), so a slow spell of a
shared or throttled machine hits all of them alike. Reported times are medians over
rounds; a ratio is the median over rounds of the per-round ratio (paired), which
cancels drift that spans a round.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
# The development checkout keeps real datasets next to the project (../shared/datasets).
_DEV_DATA = REPO.parent / "shared" / "datasets"

Case = Callable[[int], Any]


# ------------------------------------------------------------------------- timing


def sync_fn(device: str | torch.device) -> Callable[[], None]:
    """A function that waits for the device (CUDA kernels run asynchronously)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return lambda: torch.cuda.synchronize(dev)
    return lambda: None


def interleaved(
    cases: dict[str, Case],
    rounds: int,
    *,
    warmup: int = 1,
    sync: Callable[[], None] = lambda: None,
    rounds_of: dict[str, int] | None = None,
    cpu_time: bool = False,
) -> dict[str, list[float]]:
    """Seconds per call of each case, ``rounds`` calls each, taking turns.

    ``rounds_of`` lets an expensive case (a slow baseline) take part in only its first
    few rounds; its list is then that much shorter. With ``cpu_time`` the process's CPU
    time of each call is recorded too, as ``"case@cpu"``: unlike wall time it does not
    grow while other jobs hold the cores (only useful on CPU).

    Each case is called as ``fn(round)`` (round ``-1`` for warm-up calls, which are not
    timed). A case may return a dict ``{label: seconds}`` of times it measured inside
    itself; those are recorded as ``"case.label"`` next to the case's own wall time.
    """
    names = list(cases)
    for _ in range(warmup):
        for n in names:
            cases[n](-1)
            sync()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        k = r % len(names)
        for n in names[k:] + names[:k]:  # rotate: no case always runs first
            if rounds_of and r >= rounds_of.get(n, rounds):
                continue
            sync()
            c0 = time.process_time()
            t0 = time.perf_counter()
            inner = cases[n](r)
            sync()
            times[n].append(time.perf_counter() - t0)
            if cpu_time:
                times.setdefault(f"{n}@cpu", []).append(time.process_time() - c0)
            if isinstance(inner, dict):
                for label, sec in inner.items():
                    times.setdefault(f"{n}.{label}", []).append(float(sec))
    return times


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def paired_ratio(num: list[float], den: list[float]) -> float:
    """Median over rounds of ``num[r] / den[r]`` (both measured in the same round; a
    case that ran in fewer rounds is paired with the other's first rounds)."""
    n = min(len(num), len(den))
    return median([a / b for a, b in zip(num[:n], den[:n], strict=True)])


def summary(values: list[float], scale: float = 1.0, digits: int = 4) -> dict[str, Any]:
    """Median, min, max and count of ``values * scale``."""
    v = [x * scale for x in values]
    return {"median": round(median(v), digits), "min": round(min(v), digits),
            "max": round(max(v), digits), "n": len(v)}


# ------------------------------------------------------------------------- machine


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> list[float] | None:
    """1/5/15-minute load averages: how busy the machine was (shared machines are noisy)."""
    try:
        return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return None


def machine_info(device: str | torch.device = "cpu") -> dict[str, Any]:
    dev = torch.device(device)
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": usable,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(dev),
        "load_average": load_average(),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    if dev.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(dev)
        info["cuda"] = torch.version.cuda
    return info


def command_line() -> str:
    """The command that is running, as typed from the repository root."""
    argv = [Path(sys.argv[0]).resolve().relative_to(REPO).as_posix()
            if Path(sys.argv[0]).resolve().is_relative_to(REPO) else sys.argv[0]] + sys.argv[1:]
    return " ".join([".venv/bin/python", *argv])


# ------------------------------------------------------------------------- memory


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def rss_bytes() -> int | None:
    """Resident set size now (Linux ``VmRSS``)."""
    kib = _status_kib("VmRSS")
    return None if kib is None else kib * 1024


def peak_rss_bytes() -> int | None:
    """Peak resident set size of this process so far (Linux ``VmHWM``)."""
    kib = _status_kib("VmHWM")
    if kib is None:  # not Linux: ru_maxrss is KiB on Linux, bytes on macOS
        import resource

        r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return r if sys.platform == "darwin" else r * 1024
    return kib * 1024


def reset_peak_rss() -> bool:
    """Reset ``VmHWM`` to the current RSS (Linux >= 4.0); False where not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


# ------------------------------------------------------------------------- data


def real_data_found(data_dir: str | None = None) -> bool:
    """Whether `load_split` finds the real Fashion-MNIST test split."""
    return not load_split("fashion-mnist", "test", 16, data_dir)[2].startswith("RANDOM")


def data_dirs(data_dir: str | None = None) -> list[str | None]:
    """Where the benchmarks look for datasets, in order: ``data_dir``, then None (the
    library's own search: $MCEL_DATA, then its cache), then the development checkout's
    ``../shared/datasets``."""
    return ([data_dir] if data_dir else []) + [None] + (
        [str(_DEV_DATA)] if _DEV_DATA.is_dir() else [])


def load_split(name: str, split: str, limit: int | None, data_dir: str | None = None,
               *, shape: tuple[int, int, int] = (1, 28, 28), num_classes: int = 10,
               seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(x, y, source): the real split when its files are found, else random tensors of
    the same shape (and ``source`` says so: timings stay meaningful, accuracies don't).

    Looks in ``data_dir``, ``$MCEL_DATA``, the library's default cache and the
    development checkout's ``../shared/datasets``.
    """
    from mcel.data import load_dataset
    from mcel.errors import MCELError

    for d in data_dirs(data_dir):
        try:
            x, y = load_dataset(name, split, d, limit=limit)
            return x, y, f"{name} {split} split, real data ({len(x)} images)"
        except MCELError:
            continue
    n = limit or 10_000
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *shape, generator=g)
    y = torch.randint(0, num_classes, (n,), generator=g)
    return x, y, (f"RANDOM tensors shaped like {name} {split} ({n} images): the dataset "
                  f"files were not found (pass --data-dir or set MCEL_DATA)")


# ------------------------------------------------------------------------- output


def write_json(path: str | Path, result: dict[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=_jsonable) + "\n")
    return path


def _jsonable(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def table(headers: list[str], rows: list[list[Any]]) -> str:
    """A plain fixed-width text table for the console."""
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(c: Any) -> str:
    if isinstance(c, float):
        return f"{c:.4g}" if abs(c) < 1e4 else f"{c:,.0f}"
    if isinstance(c, bool):
        return "yes" if c else "NO"
    return str(c)


def goal(value: float, limit: float, *, below: bool = True) -> dict[str, Any]:
    """A goal and whether ``value`` meets it (``<= limit``, or ``>= limit``)."""
    met = value <= limit if below else value >= limit
    return {"value": round(float(value), 4), "limit": limit,
            "op": "<=" if below else ">=", "met": bool(met)}


def standalone(run: Callable[..., dict[str, Any]], name: str, fmt: Callable[[dict], str],
               doc: str) -> None:
    """``main`` of a benchmark script: --device, --quick, --out-json; prints and writes."""
    import argparse

    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true", help="smaller sizes, fewer rounds")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--out-json", type=Path, default=REPO / "docs" / "bench" / f"{name}.json")
    args = ap.parse_args()
    result = run(args.device, args.quick, data_dir=args.data_dir)
    result.setdefault("command", command_line())
    print(fmt(result))
    print(f"wrote {write_json(args.out_json, result)}")
