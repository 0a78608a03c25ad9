"""The main job on the embedded digits data: CE vs MCEL vs the two simple defences.

The same 4-bit model is trained five ways (CE, MCEL, error-injection training, weight
clipping, and MCEL with clipping), then each is evaluated over a BER sweep by
the Monte-Carlo engine. Prints the accuracy table with 95% intervals and writes a plot,
``demo.json`` (all numbers) and ``demo.md`` (the table) into the output folder.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from mcel.analysis import output_margins
from mcel.config import TrainConfig
from mcel.data import load_dataset
from mcel.errors import MCELError
from mcel.evaluate import evaluate
from mcel.faults import BitErrorModel
from mcel.io import check_writable, write_json
from mcel.losses import DEFAULT_MARGIN
from mcel.plots import plot_accuracy_vs_ber
from mcel.train import train

if TYPE_CHECKING:
    from rich.table import Table

DEMO_BERS = (0.0, 0.01, 0.02, 0.05, 0.1)
TRAIN_BER = 0.01
CLIP = 0.1  # Stutz et al.'s w_max; 0.05 and 0.1 did the same on the digits MLP-64 study


def demo_configs(epochs: int, seed: int) -> dict[str, TrainConfig]:
    base = dict(dataset="digits", model="mlp", quant="int4", fmt="twos_complement",
                epochs=epochs, seed=seed, lr=3e-3, batch_size=64)
    return {
        "CE": TrainConfig(loss="ce", **base),
        f"MCEL (margin {DEFAULT_MARGIN:g})": TrainConfig(loss="mcel", **base),
        f"CE + error injection (p={TRAIN_BER:g})": TrainConfig(loss="ce", train_ber=TRAIN_BER,
                                                              **base),
        f"CE + weight clipping ({CLIP:g})": TrainConfig(loss="ce", clip=CLIP, **base),
        f"MCEL + weight clipping ({CLIP:g})": TrainConfig(loss="mcel", clip=CLIP, **base),
    }


def run_demo(out: str | Path = "demo-out", *, epochs: int = 30, trials: int = 30,
             seed: int = 0) -> dict:
    from rich.console import Console

    console = Console(width=max(120, Console().width))
    configs = demo_configs(epochs, seed)  # bad settings fail here, before any folder exists
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise MCELError(f"trials must be a positive integer, got {trials!r}")
    out = check_writable(out)
    t_start = time.perf_counter()
    rows = _measure(configs, console=console, epochs=epochs, trials=trials, seed=seed)
    table, md = _tables(rows, trials)
    console.print(table)
    plot = plot_accuracy_vs_ber({name: r["curve"] for name, r in rows.items()},
                                out / "demo.png",
                                title="digits, mlp, int4: accuracy under bit errors")
    write_json(out / "demo.json", {"bers": list(DEMO_BERS), "trials": trials, "seed": seed,
                                    "methods": rows})
    from mcel.io import atomic_write_bytes

    atomic_write_bytes(out / "demo.md", ("\n".join(md) + "\n").encode())
    console.print(f"plot: {plot}   table: {out / 'demo.md'}   "
                  f"total {time.perf_counter() - t_start:.0f} s")
    return rows


def _measure(configs: dict[str, TrainConfig], *, console, epochs: int, trials: int,
             seed: int) -> dict[str, dict]:
    """Each method trained, then evaluated over `DEMO_BERS` on the digits test split."""
    x, y = load_dataset("digits", "test")
    em = BitErrorModel(ber=0.0)
    rows = {}
    # One thread: the same numbers whatever the core count (float sums depend on how work
    # is split between threads) and no stalls when other jobs hold the cores.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for name, cfg in configs.items():
            console.print(f"[bold]{name}[/]: training {cfg.model}/{cfg.quant} for {epochs} "
                          "epochs")
            model, metrics = train(cfg)
            res = evaluate(model, x, y, DEMO_BERS, em, trials=trials, seed=seed)
            m = output_margins(model, x, y)
            rows[name] = {"clean_acc": res.clean_accuracy, "median_margin": m.median().item(),
                          "train_seconds": metrics["train_seconds"], "curve": res.table(),
                          "config": cfg.to_dict()}
    finally:
        torch.set_num_threads(threads)
    return rows


def _tables(rows: dict[str, dict], trials: int) -> tuple[Table, list[str]]:
    """The accuracy table for the terminal (mean ± half-width) and as Markdown lines
    (mean [interval])."""
    from rich.table import Table

    table = Table(title=f"digits, mlp, int4 weights (two's complement), {trials} trials per BER:"
                        " mean accuracy % ± 95% CI half-width")
    table.add_column("method")
    table.add_column("train s", justify="right")
    table.add_column("median margin", justify="right")
    for b in DEMO_BERS:
        table.add_column("clean" if b == 0 else f"BER {100 * b:g}%", justify="right")
    md = ["| method | train s | median margin | " + " | ".join(
        "clean" if b == 0 else f"BER {100 * b:g}%" for b in DEMO_BERS) + " |",
        "|---|---:|---:|" + "---:|" * len(DEMO_BERS)]
    for name, r in rows.items():
        cells = [f"{100 * c['mean']:.1f} [{100 * c['ci_low']:.1f}, {100 * c['ci_high']:.1f}]"
                 for c in r["curve"]]
        short = [f"{100 * c['mean']:.1f}±{50 * (c['ci_high'] - c['ci_low']):.1f}"
                 for c in r["curve"]]
        table.add_row(name, f"{r['train_seconds']:.1f}", f"{r['median_margin']:.2f}", *short)
        md.append(f"| {name} | {r['train_seconds']:.1f} | {r['median_margin']:.2f} | "
                  + " | ".join(cells) + " |")
    return table, md
