"""Benchmark: streamed evaluation from a DataLoader vs the tensor path.

`mcel.evaluate(model, loader, None, bers)` streams any re-iterable of ``(x, y)`` batches:
every pass reads the batches again, so only one batch of images is held at a time. This
benchmark measures that promise on the Fashion-MNIST train split (60,000 images) and
test split (10,000), with an int4 MLP (``hidden=HIDDEN``) on one torch thread:

1. Peak memory. Each case runs in a fresh child process: it builds the model and warms
   up `evaluate` on 8 images, records its resident set (Linux ``VmRSS``) as the
   baseline, resets the peak (``/proc/self/clear_refs``) and then runs one case; the
   figure is the peak (``VmHWM``) above the baseline, the smaller of ``REPEATS`` runs:

   - ``tensor``: ``load_dataset`` (the whole split as one float32 tensor, what the
     tensor path needs) then ``evaluate(model, x, y, [BER], trials=1)``;
   - ``stream``: ``evaluate(model, loader, None, [BER], trials=1)`` over `IdxImages`,
     a Dataset that reads each batch from the uncompressed IDX file with ``os.pread``.

   mcel's loaders read a split whole, so the lazy Dataset lives here. The upstream files
   are gzipped; they are unpacked once, chunk by chunk, into a temporary folder before
   any child starts. Reads go through ``pread``, not a memory map: the pages of a mapped
   file that has been read count in the process's resident set, though they are the
   kernel's file cache, not memory the evaluation holds.

   Every case runs under glibc's default settings and once more with its mmap threshold
   fixed at 128 KiB (``ALLOCATORS``: every freed large block goes back to the OS, so the
   peak is the memory that is live, as in bench_memory).

   Goal: the streamed peak does not depend on the dataset size: its growth on the train
   split is within ``MEMORY_TOLERANCE_MIB`` of the test split's (what evaluate keeps per
   image, its label, fingerprint and predictions, is some 40 bytes: 2 MiB for the 50,000
   extra images), while the tensor path's grows with the data. Judged on the live
   figure, as in bench_memory: under the default settings the peak also depends on the
   order in which glibc reuses freed blocks, and scatters by several MiB between runs
   (reported beside it).

2. Speed, on the test split (``--quick``: its first 2,000 images): seconds per faulty
   trial (``EvalResult.results[0].trial_seconds``: inject, one pass over the data,
   restore) of the tensor path and of the streamed loader over the same images in the
   same batches (``BATCH``): ``ROUNDS`` rounds of one ``evaluate`` call each (``TRIALS``
   trials at BER ``BER``), the tensor path and one streamed case taking turns; the ratio
   is the median of the per-round ratios. Two streamed cases, each compared on its own:
   a DataLoader of views of the same tensors (evaluate's streaming alone) and the lazy
   loader from disk (which also reads and normalises every batch in every pass).
   Both must give the same accuracies (checked). Goal: streamed / tensor <= 1.05. Beside
   it, what a streamed pass adds, each part timed alone: reading the batches from each
   loader, and the per-batch checks that refuse a reshuffling loader.

Without the dataset files the benchmark writes random images in the upstream format
(6,000 train, 1,000 test) and says so in ``data``: the memory comparison still holds,
but accuracies mean nothing.

    .venv/bin/python benchmarks/bench_stream.py [--quick] [--data-dir DIR]
"""

from __future__ import annotations

import contextlib
import gc
import gzip
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _harness import (
    data_dirs,
    goal,
    interleaved,
    machine_info,
    median,
    paired_ratio,
    peak_rss_bytes,
    reset_peak_rss,
    rss_bytes,
    standalone,
    summary,
    table,
)
from torch.utils.data import BatchSampler, DataLoader, Dataset, SequentialSampler, TensorDataset

from mcel.data import dataset_info, load_dataset, resolve_data_dir
from mcel.errors import MCELError

NAME = "fashion-mnist"
FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
FAKE_SIZES = {"train": 6_000, "test": 1_000}
HIDDEN = 256
BATCH = 1024
BER = 1e-2
TRIALS = 3
ROUNDS, ROUNDS_QUICK = 9, 4
SPEED_IMAGES_QUICK = 2_000
REPEATS = 2
SPEED_GOAL = 1.05
MEMORY_TOLERANCE_MIB = 5.0
MIB = 1 << 20
_IMAGES_MAGIC, _LABELS_MAGIC = 2051, 2049


# ------------------------------------------------------------------------- lazy data


class IdxImages(Dataset):
    """One split of an uncompressed IDX image/label file pair, read on demand.

    ``ds[i]`` is one ``(image, label)``; ``ds[[i, j, ...]]`` a batch, read with one
    ``os.pread`` per run of consecutive indices (what a `BatchSampler` over a
    `SequentialSampler` asks for). Images are normalised as `mcel.data.load_dataset`
    does, bit for bit: ``(pixel / 255 - mean) / std``. Nothing but the header is read
    up front, so memory does not grow with the split.
    """

    def __init__(self, images: Path, labels: Path, *, limit: int | None = None) -> None:
        self.images, self.labels = Path(images), Path(labels)
        n, rows, cols = _idx_header(self.images, _IMAGES_MAGIC, 3)
        (n_labels,) = _idx_header(self.labels, _LABELS_MAGIC, 1)
        if n != n_labels:
            raise MCELError(f"{self.images} holds {n} images but {self.labels} holds "
                            f"{n_labels} labels")
        self.n = n if limit is None else min(n, limit)
        self.shape = (1, rows, cols)
        info = dataset_info(NAME)
        self.mean = torch.tensor(info.mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(info.std, dtype=torch.float32).view(-1, 1, 1)
        self._fds: dict[Path, int] = {}

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index):
        if isinstance(index, (int, np.integer)):
            x, y = self._read(np.array([index]))
            return x[0], y[0]
        return self._read(np.asarray(index, dtype=np.int64))

    def _read(self, index: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        if index.size == 0 or index.min() < 0 or index.max() >= self.n:
            raise IndexError(f"indices must lie in 0..{self.n - 1}")
        size = self.shape[1] * self.shape[2]
        runs = np.split(index, np.flatnonzero(np.diff(index) != 1) + 1)
        pixels = b"".join(self._pread(self.images, 16, size, run) for run in runs)
        labels = b"".join(self._pread(self.labels, 8, 1, run) for run in runs)
        images = np.frombuffer(pixels, np.uint8).reshape(len(index), *self.shape)
        # the float ops of load_dataset, in place: the same values, bit for bit
        x = torch.from_numpy(images.astype(np.float32)).div_(255.0).sub_(self.mean)
        return x.div_(self.std), torch.from_numpy(np.frombuffer(labels, np.uint8).astype(np.int64))

    def _pread(self, path: Path, head: int, size: int, run: np.ndarray) -> bytes:
        """Items ``run`` (consecutive) of ``size`` bytes each, after ``head`` bytes."""
        fd = self._fds.get(path)
        if fd is None:
            fd = self._fds[path] = os.open(path, os.O_RDONLY)
        want = size * len(run)
        data = os.pread(fd, want, head + size * int(run[0]))
        if len(data) != want:
            raise MCELError(f"{path}: short read; the file is truncated")
        return data

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __getstate__(self) -> dict[str, Any]:  # file descriptors stay in their process
        return {**self.__dict__, "_fds": {}}


def _idx_header(path: Path, magic: int, ndim: int) -> tuple[int, ...]:
    with open(path, "rb") as f:
        head = f.read(4 + 4 * ndim)
    if len(head) < 4 + 4 * ndim or struct.unpack(">i", head[:4])[0] != magic:
        raise MCELError(f"{path}: not an uncompressed IDX file with magic {magic}")
    sizes = struct.unpack(f">{ndim}i", head[4:])
    if path.stat().st_size != len(head) + int(np.prod(sizes)):
        raise MCELError(f"{path}: size does not match its IDX header; re-download it")
    return sizes


def loader(split_files: tuple[Path, Path], *, limit: int | None = None,
           batch_size: int = BATCH) -> DataLoader:
    """A DataLoader of ``batch_size`` batches in file order, each read in one go."""
    ds = IdxImages(*split_files, limit=limit)
    batches = BatchSampler(SequentialSampler(ds), batch_size, drop_last=False)
    return DataLoader(ds, sampler=batches, batch_size=None)


# ------------------------------------------------------------------------- the files


def write_fake_idx(folder: Path, split: str, n: int, seed: int = 0) -> None:
    """Random images and labels in the upstream format (gzipped IDX), ``n`` of each."""
    rng = np.random.default_rng(seed)
    images_name, labels_name = FILES[split]
    with gzip.open(folder / f"{images_name}.gz", "wb") as f:
        f.write(struct.pack(">4i", _IMAGES_MAGIC, n, 28, 28))
        f.write(rng.integers(0, 256, (n, 28, 28), dtype=np.uint8).tobytes())
    with gzip.open(folder / f"{labels_name}.gz", "wb") as f:
        f.write(struct.pack(">2i", _LABELS_MAGIC, n))
        f.write(rng.integers(0, 10, n, dtype=np.uint8).tobytes())


def unpack(folder: Path, split: str, out: Path) -> tuple[Path, Path]:
    """The split's two IDX files, uncompressed: as they are, or gunzipped into ``out``
    (chunk by chunk: the whole file is never in memory)."""
    paths = []
    for name in FILES[split]:
        if (folder / name).is_file():
            paths.append(folder / name)
            continue
        with gzip.open(folder / f"{name}.gz", "rb") as src, open(out / name, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        paths.append(out / name)
    return paths[0], paths[1]


@contextlib.contextmanager
def dataset_files(data_dir: str | None) -> Iterator[tuple[Path, dict[str, tuple[Path, Path]],
                                                          str]]:
    """(the folder load_dataset reads, {split: uncompressed (images, labels)}, source):
    the real files where found (see `_harness.data_dirs`), else fake ones."""
    with tempfile.TemporaryDirectory(prefix="mcel-bench-stream-") as tmp:
        folder, source = None, ""
        for d in data_dirs(data_dir):
            try:
                folder = resolve_data_dir(NAME, d)
                source = f"{NAME} train and test splits, real data"
                break
            except MCELError:
                continue
        if folder is None:
            folder = Path(tmp) / "fake"
            folder.mkdir()
            for split, n in FAKE_SIZES.items():
                write_fake_idx(folder, split, n, seed=len(split))
            source = (f"RANDOM images in the {NAME} format ({FAKE_SIZES['train']:,} train, "
                      f"{FAKE_SIZES['test']:,} test): the dataset files were not found "
                      f"(pass --data-dir or set MCEL_DATA); accuracies mean nothing")
        yield folder, {s: unpack(folder, s, Path(tmp)) for s in FILES}, source


# ------------------------------------------------------------------------- the model


def build_model() -> torch.nn.Module:
    from mcel.models import create_model
    from mcel.quant import QuantSpec, quantize_model

    torch.manual_seed(0)
    model = quantize_model(create_model("mlp", 10, (1, 28, 28), hidden=HIDDEN), QuantSpec("int4"))
    return model.eval()


# ------------------------------------------------------------------------- memory


def _child(case: str, folder: str, images: str, labels: str, split: str) -> dict[str, Any]:
    from mcel.evaluate import evaluate

    torch.set_num_threads(1)
    model = build_model()
    files = (Path(images), Path(labels))
    warm = loader(files, limit=8, batch_size=4)
    xw, yw = warm.dataset[list(range(8))]
    evaluate(model, xw, yw, [BER], trials=1, batch_size=4)  # load kernels and modules
    evaluate(model, warm, None, [BER], trials=1)
    del warm, xw, yw
    gc.collect()
    base = rss_bytes()
    reset_ok = reset_peak_rss()
    if case == "tensor":
        x, y = load_dataset(NAME, split, folder)
        n, data_bytes = len(x), x.numel() * x.element_size() + y.numel() * y.element_size()
        res = evaluate(model, x, y, [BER], trials=1, batch_size=BATCH)
    else:
        ld = loader(files)
        n, data_bytes = len(ld.dataset), 0
        res = evaluate(model, ld, None, [BER], trials=1)
    return {"case": case, "split": split, "images": n, "baseline_rss": base,
            "peak_rss_growth": peak_rss_bytes() - base if reset_ok else None,
            "data_bytes_held": data_bytes, "clean_accuracy": res.clean_accuracy}


# glibc returns every block above 128 KiB to the OS when it is freed: the peak is then
# the memory that is live (as bench_memory's live check)
ALLOCATORS = {"default": {}, "live": {"MALLOC_MMAP_THRESHOLD_": "131072"}}


def _spawn(case: str, folder: Path, files: tuple[Path, Path], split: str,
           env: dict[str, str]) -> dict[str, Any]:
    here = Path(__file__).resolve()
    cmd = [sys.executable, str(here), "--child", case, str(folder), str(files[0]),
           str(files[1]), split]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=here.parent, check=False,
                          env={**os.environ, **env})
    if proc.returncode != 0:
        raise RuntimeError(f"stream child '{case} {split}' failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure_memory(folder: Path, files: dict[str, tuple[Path, Path]], repeats: int
                   ) -> dict[str, dict[str, Any]]:
    """{allocator: {"case/split": the child's figures, smallest peak of ``repeats``}}."""
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {a: {} for a in ALLOCATORS}
    for _ in range(repeats):
        for alloc, env in ALLOCATORS.items():
            for case in ("tensor", "stream"):
                for split in ("test", "train"):
                    runs[alloc].setdefault(f"{case}/{split}", []).append(
                        _spawn(case, folder, files[split], split, env))
    out: dict[str, dict[str, Any]] = {}
    for alloc, by_case in runs.items():
        for key, rs in by_case.items():
            peaks = [r["peak_rss_growth"] for r in rs]
            best = dict(rs[0] if None in peaks else min(rs, key=lambda r: r["peak_rss_growth"]))
            best["all_peaks_mib"] = [None if p is None else round(p / MIB, 1) for p in peaks]
            out.setdefault(alloc, {})[key] = best
    return out


def _memory_summary(cases: dict[str, Any], judged: bool) -> dict[str, Any]:
    """Peaks of one allocator setting, and how each path grows from test to train; with
    ``judged``, the goal."""
    if any(c["peak_rss_growth"] is None for c in cases.values()):
        return {"note": "peak could not be reset (/proc/self/clear_refs); no growth figures"}
    g = {k: c["peak_rss_growth"] / MIB for k, c in cases.items()}
    extra = cases["stream/train"]["images"] - cases["stream/test"]["images"]
    stream_diff = g["stream/train"] - g["stream/test"]
    tensor_diff = g["tensor/train"] - g["tensor/test"]
    return {
        "peak_growth_mib": {k: round(v, 1) for k, v in g.items()},
        "stream_train_minus_test_mib": round(stream_diff, 2),
        "tensor_train_minus_test_mib": round(tensor_diff, 1),
        "stream_bytes_per_extra_image": round(stream_diff * MIB / extra, 1),
        "tensor_bytes_per_extra_image": round(tensor_diff * MIB / extra, 1),
    } | ({"goal": goal(stream_diff, MEMORY_TOLERANCE_MIB)} if judged else {})


# ------------------------------------------------------------------------- speed


def memory_loader(x: torch.Tensor, y: torch.Tensor, batch_size: int = BATCH) -> DataLoader:
    """A DataLoader of views of ``(x, y)``: the same batches as the tensor path, with
    nothing to read or decode, so beside it only evaluate's streaming costs."""
    cuts = [slice(i, i + batch_size) for i in range(0, len(x), batch_size)]
    return DataLoader(TensorDataset(x, y), sampler=cuts, batch_size=None)


CASES = ("tensor", "loader_memory", "loader_disk")


def measure_speed(folder: Path, files: tuple[Path, Path], quick: bool) -> dict[str, Any]:
    from mcel.evaluate import evaluate

    limit = SPEED_IMAGES_QUICK if quick else None
    model = build_model()
    x, y = load_dataset(NAME, "test", folder, limit=limit)
    data = {"tensor": (x, y), "loader_memory": (memory_loader(x, y), None),
            "loader_disk": (loader(files, limit=limit), None)}
    results: dict[str, list] = {c: [] for c in CASES}

    def case(name: str):
        def fn(r: int) -> dict[str, float]:
            res = evaluate(model, *data[name], [BER], trials=TRIALS, seed=0, batch_size=BATCH)
            results[name].append(res)
            return {"trial": median(res.results[0].trial_seconds)}
        return fn

    rounds = ROUNDS_QUICK if quick else ROUNDS
    # one comparison at a time, each beside its own tensor-path calls: a third case in
    # the same rounds (the disk loader's fresh batches) disturbs the other two unevenly
    pairs = {c: interleaved({"tensor": case("tensor"), c: case(c)}, rounds, cpu_time=True)
             for c in CASES[1:]}
    ref = results["tensor"][-1]
    tensor_trial = median([t for times in pairs.values() for t in times["tensor.trial"]])
    p = parts(data["loader_memory"][0], data["loader_disk"][0])
    out: dict[str, Any] = {"images": len(x), "rounds": rounds,
                           "trial_seconds": {"tensor": summary(
                               [t for times in pairs.values() for t in times["tensor.trial"]])},
                           "parts_ms_per_pass": p, "streamed": {}}
    for c, times in pairs.items():
        res = results[c][-1]
        ratio = paired_ratio(times[f"{c}.trial"], times["tensor.trial"])
        read = p["read_from_memory" if c == "loader_memory" else "read_from_disk"]
        out["trial_seconds"][c] = summary(times[f"{c}.trial"])
        out["streamed"][c] = {
            "tensor_trial_seconds": summary(times["tensor.trial"]),  # its own rounds
            "over_tensor": round(ratio, 4),
            "per_round": [round(a / b, 3) for a, b in zip(times[f"{c}.trial"],
                                                          times["tensor.trial"])],
            "over_tensor_cpu_time_per_call": round(paired_ratio(times[f"{c}@cpu"],
                                                                times["tensor@cpu"]), 4),
            "over_tensor_from_parts": round(1 + (read + p["checks"]) / 1e3 / tensor_trial, 4),
            "same_accuracies": (res.clean_accuracy == ref.clean_accuracy
                                and res.results[0].accuracies == ref.results[0].accuracies),
            "goal": goal(ratio, SPEED_GOAL),
        }
    return out


def parts(memory: DataLoader, disk: DataLoader, reps: int = 7) -> dict[str, float]:
    """Milliseconds per pass over the data of what a streamed pass adds to the tensor
    path's, each timed alone (median of ``reps``): reading the batches (from memory:
    the DataLoader's own cost; from disk: reading and normalising), and the checks of
    every later pass (as in `_Forward._stream`: each sample's sum, the labels)."""
    batches = list(memory)
    seen = [(yb.clone(), xb.flatten(1).sum(1)) for xb, yb in batches]

    def checks() -> None:
        for (xb, yb), (labels, sums) in zip(batches, seen, strict=True):
            torch.equal(yb, labels) and torch.equal(xb.flatten(1).sum(1), sums)

    fns = {"read_from_memory": lambda: sum(1 for _ in memory),
           "read_from_disk": lambda: sum(1 for _ in disk), "checks": checks}
    out = {}
    for name, fn in fns.items():
        fn()
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        out[name] = round(1e3 * median(ts), 2)
    return out


# ------------------------------------------------------------------------- run


def run(device: str = "cpu", quick: bool = False, data_dir: str | None = None) -> dict[str, Any]:
    if torch.device(device).type != "cpu":
        raise SystemExit("bench_stream measures host memory and CPU time: run it with --device cpu")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with dataset_files(data_dir) as (folder, files, source):
            memory = measure_memory(folder, files, 1 if quick else REPEATS)
            speed = measure_speed(folder, files["test"], quick)
    finally:
        torch.set_num_threads(threads)
    return {
        "benchmark": "stream",
        "title": "Streamed evaluation from a DataLoader",
        "machine": machine_info("cpu") | {"torch_threads_used": 1},
        "model": f"mlp hidden={HIDDEN}, int4",
        "data": source,
        "batch_size": BATCH,
        "ber": BER,
        "trials_per_call": TRIALS,
        "repeats": 1 if quick else REPEATS,
        "measure": ("resident set: VmHWM above VmRSS at the baseline, one fresh process "
                    "per case, smallest of the repeats"),
        "memory_cases": memory,
        "images": {sp: memory["default"][f"stream/{sp}"]["images"] for sp in FILES},
        "data_held_mib": {sp: round(memory["default"][f"tensor/{sp}"]["data_bytes_held"] / MIB, 1)
                          for sp in FILES},
        "same_clean_accuracy": all(c[f"tensor/{sp}"]["clean_accuracy"]
                                   == c[f"stream/{sp}"]["clean_accuracy"]
                                   for c in memory.values() for sp in FILES),
        "memory": {a: _memory_summary(c, judged=a == "live") for a, c in memory.items()},
        "speed": speed,
    }


def format_result(res: dict[str, Any]) -> str:
    m, s = res["memory"], res["speed"]
    lines = [f"stream: {res['model']}, batch {res['batch_size']}, 1 thread; data: {res['data']}"]
    if all("peak_growth_mib" in v for v in m.values()):
        keys = list(m["default"]["peak_growth_mib"])
        rows = [[k, res["images"][k.split("/")[1]],
                 res["data_held_mib"][k.split("/")[1]] if k.startswith("tensor") else 0]
                + [m[a]["peak_growth_mib"][k] for a in m] for k in keys]
        lines.append(table(["case/split", "images", "data held MiB"]
                           + [f"peak growth MiB, {a}" for a in m], rows))
        for a, v in m.items():
            lines.append(f"{a} allocator: streamed train - test {v['stream_train_minus_test_mib']} "
                         f"MiB ({v['stream_bytes_per_extra_image']} B per extra image; tensor "
                         f"path {v['tensor_bytes_per_extra_image']} B)"
                         + (f"; goal <= {MEMORY_TOLERANCE_MIB} MiB met: {v['goal']['met']}"
                            if "goal" in v else ""))
    else:
        lines.append(next(v["note"] for v in m.values() if "note" in v))
    t = s["trial_seconds"]
    lines.append(f"speed on {s['images']} images, {s['rounds']} rounds, seconds per trial: "
                 + ", ".join(f"{c} {t[c]['median']:.4f}" for c in CASES))
    for c, v in s["streamed"].items():
        lines.append(f"{c} / tensor: {v['over_tensor']:.3f} (per round {v['per_round']}; CPU "
                     f"time {v['over_tensor_cpu_time_per_call']:.3f}; from parts "
                     f"{v['over_tensor_from_parts']:.3f}); same accuracies: "
                     f"{v['same_accuracies']}; goal <= {SPEED_GOAL} met: {v['goal']['met']}")
    lines.append(f"parts per pass (ms): {s['parts_ms_per_pass']}")
    return "\n".join(lines)


if __name__ == "__main__":
    if "--child" in sys.argv:
        i = sys.argv.index("--child")
        print(json.dumps(_child(*sys.argv[i + 1:i + 6])))
    else:
        standalone(run, "stream", format_result, __doc__)
