"""``mcel evaluate``: Monte-Carlo accuracy of a run folder under bit errors."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any

from mcel.cli.common import JSON_UNITS, add_device_flag, add_threads_flag, floats, listed
from mcel.errors import MCELError
from mcel.quant.floats import FLOAT_FORMATS


def error_model_of(args: argparse.Namespace):
    from mcel.faults import BitErrorModel, parse_error_model

    em = parse_error_model(args.error_model) if args.error_model else BitErrorModel(ber=0.0)
    changes: dict[str, Any] = {}
    if args.targets is not None:
        changes["targets"] = tuple(t.strip() for t in args.targets.split(","))
    if args.transient:
        changes["mode"] = "transient"
    return dataclasses.replace(em, **changes) if changes else em


def add_eval_flags(p: argparse.ArgumentParser) -> None:
    from mcel.faults import TARGETS
    from mcel.precision import DEFAULT_PRECISION, PRECISIONS
    from mcel.quant import list_formats

    p.add_argument("--ber", type=floats, default=[0.0, 1e-3, 1e-2],
                   help="comma-separated bit error rates, fractions (0.01 = 1%%) "
                        "(default 0,1e-3,1e-2)")
    p.add_argument("--trials", type=int, default=100, help="Monte-Carlo trials per BER (max)")
    p.add_argument("--seed", type=int, default=0, help="fault seed")
    p.add_argument("--error-model", default=None,
                   help="e.g. 'p01=1e-3,p10=1e-2', 'ber=1e-3,protected=-1', 'stuck_at=1e-3', "
                        "'ber=0,burst=4' (4 adjacent bits per fault), 'ber=0,ecc=64' "
                        "(SEC-DED words; ecc_interleave=I spreads them); "
                        "--ber then sets its largest rate (default: uniform flips); or an "
                        "error map 'map=chip.npz[,shift=1,persistent=0,word_bits=32]' (mcel "
                        "make-map): --ber then sets its mean rate")
    p.add_argument("--targets", default=None, metavar=listed(TARGETS),
                   help="comma-separated parts that take faults (default: the error "
                        "model's, weights)")
    p.add_argument("--transient", action="store_true", help="redraw faults at every forward")
    p.add_argument("--fmt", default=None, metavar=listed(list_formats()),
                   help="evaluate with codes stored in this number format (default: the "
                        "run's own)")
    p.add_argument("--weights", default=None, choices=FLOAT_FORMATS.names(),
                   help="store the float (unquantized) layers in this IEEE format and flip "
                        "its bits, e.g. a run trained with --quant float (default: only "
                        "quantized layers are stored)")
    p.add_argument("--adaptive", type=float, default=None, metavar="HALF_WIDTH",
                   help="stop each BER once its 95%% interval is within +-HALF_WIDTH (e.g. "
                        "0.005) (default: off, --trials at every BER)")
    p.add_argument("--batch-size", type=int, default=1024, help="images per forward")
    p.add_argument("--trial-batch", type=int, default=1, metavar="K",
                   help="run K trials as one batched forward (K weight copies; for small "
                        "models on a GPU; persistent weight/bias faults only)")
    add_device_flag(p)
    add_threads_flag(p)
    p.add_argument("--data-dir", default=None,
                   help="folder with the dataset files (default: the run's own)")
    p.add_argument("--limit-test", type=int, default=None,
                   help="evaluate on the first N test images only, a quick look (default: "
                        "the run's own limit, else all)")
    _add_split_flags(p)
    p.add_argument("--plot", default=None, metavar="PNG",
                   help="draw accuracy vs BER with 95%% bands into this image (with "
                        "--against: every run) (default: none)")
    p.add_argument("--precision", default=DEFAULT_PRECISION, choices=list(PRECISIONS),
                   help="precision of the faulty forward passes; bf16 also reports how "
                        "often its clean predictions agree with fp32")


def _add_split_flags(p: argparse.ArgumentParser) -> None:
    """The flags that split the faults (by layer, by bit) or compare other bits (other
    runs, read-back dumps)."""
    p.add_argument("--by-layer", nargs="?", const="", default=None, metavar="PATTERNS",
                   help="faults in one layer at a time (the rest fault-free), to find the "
                        "layers that need protection; or in one group per comma-separated "
                        "pattern, e.g. 'stem.*,layer1.*' (default: off)")
    p.add_argument("--by-bit", action="store_true",
                   help="faults in one bit position of every code at a time (the others "
                        "protected), LSB to MSB: which bits need protection")
    p.add_argument("--against", nargs="+", default=None, metavar="RUN",
                   help="other run folders evaluated under the same faults (seed, trials, "
                        "test images): prints each one's accuracy minus this run's per BER, "
                        "with a 95%% interval paired by trial (default: none)")
    p.add_argument("--dumps", nargs="+", default=None, metavar="FILE",
                   help="read-back memory images of this run (mcel export writes the clean "
                        "one): accuracy with exactly the bits each holds, one trial per "
                        "file; --ber and --trials do not apply (default: none)")


def cmd_evaluate(args: argparse.Namespace) -> int:
    import torch

    from mcel.data import dataset_file, is_own, load_dataset
    from mcel.evaluate import evaluate
    from mcel.io import write_json
    from mcel.pretrained import file_sha256
    from mcel.quant import set_format
    from mcel.runs import load_run

    _check_dumps_flags(args)
    if args.by_bit and args.by_layer is not None:
        raise MCELError("--by-bit and --by-layer each split the faults one way: give one")
    if args.against is not None and (args.adaptive is not None or args.by_layer is not None
                                     or args.by_bit):
        raise MCELError("--against compares the two runs trial by trial: give a fixed "
                        "--trials, without --adaptive, --by-layer or --by-bit")
    if args.plot is not None:
        from mcel.io import check_can_create

        if args.by_layer is not None or args.by_bit:
            raise MCELError("--plot draws whole runs' accuracy vs BER; --by-layer and "
                            "--by-bit print their table only (drop --plot)")
        check_can_create(args.plot)
    em = error_model_of(args)
    model, config = load_run(args.run_dir, args.device)
    if args.fmt:
        set_format(model, args.fmt)
    x, y = load_dataset(config.dataset, "test", args.data_dir or config.data_dir,
                        limit=args.limit_test or config.limit_test)
    kwargs = dict(trials=args.trials, seed=args.seed, batch_size=args.batch_size,
                  target_half_width=args.adaptive, progress=sys.stderr.isatty(),
                  trial_batch=args.trial_batch, precision=args.precision, weights=args.weights)
    fmt = args.fmt or config.fmt
    meta = dict(run_dir=str(args.run_dir), samples=len(y),
                fmt=fmt if not args.weights else f"{fmt}, float layers {args.weights}",
                device=str(next(model.parameters()).device), units=JSON_UNITS,
                torch_threads=torch.get_num_threads(),
                cpu=torch.backends.cpu.get_cpu_capability(), dataset=config.dataset)
    if is_own(config.dataset):  # your own file: which version of it was measured
        meta["data_sha256"] = file_sha256(dataset_file(config.dataset,
                                                       args.data_dir or config.data_dir))
    if args.dumps is not None:
        return _dumps(args, model, em, data=(x, y), meta=meta)
    if args.by_layer is not None:
        return _by_layer(args, model, em, data=(x, y), kwargs=kwargs, meta=meta)
    if args.by_bit:
        return _by_bit(args, model, em, data=(x, y), kwargs=kwargs, meta=meta)
    if args.against is not None:
        return _against(args, (model, config), em, data=(x, y), kwargs=kwargs, meta=meta)
    res = evaluate(model, x, y, args.ber, em, **kwargs)
    res.meta.update(meta)
    print_eval(res)
    _plot(args, {str(args.run_dir): res})
    if args.json:
        write_json(args.json, res.to_dict())
        print(f"wrote {args.json}")
    return 0


def _check_dumps_flags(args) -> None:
    """--dumps measures given bits: flags that draw faults or compare runs do not apply."""
    if args.dumps is None:
        return
    clash = [flag for flag, on in (("--against", args.against is not None),
                                   ("--by-layer", args.by_layer is not None),
                                   ("--by-bit", args.by_bit),
                                   ("--adaptive", args.adaptive is not None),
                                   ("--transient", args.transient),
                                   ("--error-model", args.error_model is not None),
                                   ("--plot", args.plot is not None)) if on]
    if clash:
        raise MCELError(f"--dumps measures the bits the dumps hold; {clash[0]} draws or "
                        "compares faults: drop it (--targets and --fmt still say what is "
                        "stored)")


def _dumps(args, model, em, *, data: tuple, meta: dict) -> int:
    """--dumps: one trial per read-back memory image."""
    from mcel.dumps import evaluate_dumps
    from mcel.io import write_json

    x, y = data
    res = evaluate_dumps(model, x, y, args.dumps, error_model=em, weights=args.weights,
                         batch_size=args.batch_size)
    res.meta.update(meta)
    print_dumps(res)
    if args.json:
        write_json(args.json, res.to_dict())
        print(f"wrote {args.json}")
    return 0


def print_dumps(res) -> None:
    from rich.console import Console
    from rich.table import Table

    mean, lo, hi = res.summary()
    t = Table(title=f"{res.meta.get('run_dir', '')} as the dumps hold it: clean "
                    f"{100 * res.clean_accuracy:.2f}%, {res.total_bits} stored bits",
              caption=f"{res.meta.get('samples', '')} test images; mean over "
                      f"{len(res.dumps)} dump(s) {100 * mean:.2f}% [{100 * lo:.2f}, "
                      f"{100 * hi:.2f}] (95% t-interval)")
    for c in ("dump", "flipped bits", "rate", "accuracy %"):
        t.add_column(c, justify="left" if c == "dump" else "right")
    for d in res.dumps:
        t.add_row(d["file"], str(d["flipped_bits"]), f"{d['rate']:.3g}",
                  f"{100 * d['accuracy']:.2f}")
    Console().print(t)
    for d in res.dumps:
        if d["extra_bytes"]:
            print(f"note: {d['file']} holds {d['extra_bytes']} bytes past the image; "
                  "they were not read")
        if d["rate"] > 0.25:
            print(f"warning: {d['file']} differs from the clean image in {100 * d['rate']:.0f}% "
                  "of its bits: is it a dump of this run, in this --fmt?")


def _plot(args, results: dict) -> None:
    """--plot: accuracy vs BER with 95% bands, one line per run."""
    if args.plot is None:
        return
    from mcel.plots import plot_accuracy_vs_ber

    plot_accuracy_vs_ber({name: r.table() for name, r in results.items()}, args.plot,
                         title=f"accuracy under bit errors, fault seed {args.seed}")
    print(f"wrote {args.plot}")


def _against(args, run_a: tuple, em, *, data: tuple, kwargs: dict, meta: dict) -> int:
    """--against: the other runs under the very faults of the first (same seed, trials and
    test images), and each one's accuracy minus the first's per BER, paired by trial."""
    from mcel.evaluate import evaluate, paired_difference
    from mcel.io import write_json

    model, config = run_a
    others = [_load_other(args, run, config) for run in args.against]  # all, before any work
    x, y = data
    a = evaluate(model, x, y, args.ber, em, **kwargs)
    a.meta.update(meta)
    compared = []
    for run, (other, other_config) in zip(args.against, others):
        b = evaluate(other, x, y, args.ber, em, **kwargs)
        b.meta.update({**meta, "run_dir": str(run), "fmt": args.fmt or other_config.fmt})
        compared.append((b, paired_difference(a, b)))
    if len(compared) == 1:
        print_against(a, *compared[0])
    else:
        print_against_many(a, compared)
    _plot(args, {f"A: {args.run_dir}": a,
                 **{f"{_letter(i)}: {run}": b for i, (run, (b, _)) in
                    enumerate(zip(args.against, compared))}})
    if args.json:
        sides = [{"b": b.to_dict(), "difference": [dataclasses.asdict(d) for d in diffs]}
                 for b, diffs in compared]
        # one run: {"a", "b", "difference"} as before; several: "against" lists them
        body = sides[0] if len(sides) == 1 else {"against": sides}
        write_json(args.json, {"a": a.to_dict(), **body, "units": JSON_UNITS})
        print(f"wrote {args.json}")
    return 0


def _letter(i: int) -> str:
    """B, C, ... for the runs compared with A (then B27, B28, ... past Z)."""
    return chr(ord("B") + i) if i < 25 else f"B{i + 1}"


def _load_other(args, run, config) -> tuple:
    """An --against run, checked to be comparable with the first, in its --fmt."""
    from mcel.quant import set_format
    from mcel.runs import load_run

    other, other_config = load_run(run, args.device)
    if other_config.dataset != config.dataset:
        raise MCELError(f"--against {run} was trained on {other_config.dataset}, "
                        f"{args.run_dir} on {config.dataset}: compare runs of one dataset")
    if args.fmt:
        set_format(other, args.fmt)
    return other, other_config


def print_against(a, b, diffs) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"B = {b.meta['run_dir']} vs A = {a.meta['run_dir']}: clean "
                    f"{100 * b.clean_accuracy:.2f}% vs {100 * a.clean_accuracy:.2f}%",
              caption=f"{a.meta['samples']} test images, fault seed {a.seed}; trial t of A "
                      "and of B under the same fault stream; B - A: mean of the per-trial "
                      "differences [95% t-interval]")
    for c in ("BER", "A %", "B %", "B - A (points)", "95% CI (points)", "trials"):
        t.add_column(c, justify="right")
    for ra, rb, d in zip(a.results, b.results, diffs):
        t.add_row(f"{d.ber:g}", f"{100 * ra.mean:.2f}", f"{100 * rb.mean:.2f}",
                  f"{100 * d.mean:+.2f}", f"[{100 * d.ci_low:+.2f}, {100 * d.ci_high:+.2f}]",
                  str(d.trials))
    Console().print(t)


def print_against_many(a, compared: list) -> None:
    """Several runs against A: one row per run, each BER's accuracy and its difference to
    A with the 95% interval paired by trial."""
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"runs vs A = {a.meta['run_dir']} under the same faults",
              caption=f"{a.meta['samples']} test images, fault seed {a.seed}, "
                      f"{a.results[0].trials if a.results else 0} trials per BER; accuracy % "
                      "(run - A in points [95% interval paired by trial])")
    t.add_column("run")
    t.add_column("clean %", justify="right")
    for r in a.results:
        t.add_column(f"BER {r.ber:g}", justify="right")
    t.add_row(f"A: {a.meta['run_dir']}", f"{100 * a.clean_accuracy:.2f}",
              *(f"{100 * r.mean:.2f}" for r in a.results))
    for i, (b, diffs) in enumerate(compared):
        t.add_row(f"{_letter(i)}: {b.meta['run_dir']}", f"{100 * b.clean_accuracy:.2f}",
                  *(f"{100 * rb.mean:.2f} ({100 * d.mean:+.2f} [{100 * d.ci_low:+.2f}, "
                    f"{100 * d.ci_high:+.2f}])" for rb, d in zip(b.results, diffs)))
    Console().print(t)


def _by_layer(args, model, em, *, data: tuple, kwargs: dict, meta: dict) -> int:
    """--by-layer: one evaluation per layer group, a table of them, one JSON."""
    from mcel.io import write_json
    from mcel.sensitivity import by_layer, layer_groups

    patterns = [p.strip() for p in args.by_layer.split(",") if p.strip()] or None
    groups = layer_groups(model, patterns, weights=args.weights)
    (x, y) = data
    results = by_layer(model, x, y, args.ber, error_model=em, groups=patterns, **kwargs)
    modules = dict(model.named_modules())
    sizes = {g: sum(modules[n].weight.numel() for n in names) for g, names in groups.items()}
    print_by_layer(results, sizes, meta)
    if args.json:
        write_json(args.json, {"groups": {g: {"layers": groups[g], "weights": sizes[g],
                                              **r.to_dict()} for g, r in results.items()},
                               "meta": meta})
        print(f"wrote {args.json}")
    return 0


def _by_bit(args, model, em, *, data: tuple, kwargs: dict, meta: dict) -> int:
    """--by-bit: one evaluation per bit position, a table of them, one JSON."""
    from mcel.io import write_json
    from mcel.sensitivity import by_bit

    x, y = data
    results = by_bit(model, x, y, args.ber, error_model=em, **kwargs)
    print_by_layer(results, None, meta, split="bit")
    if args.json:
        write_json(args.json, {"bits": {g: r.to_dict() for g, r in results.items()},
                               "meta": meta})
        print(f"wrote {args.json}")
    return 0


def print_by_layer(results: dict, sizes: dict[str, int] | None, meta: dict, *,
                   split: str = "layer") -> None:
    """The table of --by-layer (``sizes``: weights per group) or --by-bit (None)."""
    from rich.console import Console
    from rich.table import Table

    first = next(iter(results.values()))
    bers = [r.ber for r in first.results if r.ber > 0]
    what = "layer group" if split == "layer" else "bit position of every code"
    rest = "layer" if split == "layer" else "bit"
    t = Table(title=f"faults in one {what} at a time; clean accuracy "
                    f"{100 * first.clean_accuracy:.2f}%",
              caption=f"{meta['samples']} test images, {meta['fmt']}, fault seed {first.seed}; "
                      f"accuracy % [95% CI] with every other {rest} fault-free")
    t.add_column("layers" if split == "layer" else "bit")
    if sizes is not None:
        t.add_column("weights", justify="right")
    for b in bers:
        t.add_column(f"BER {b:g}", justify="right")
    for g, res in results.items():
        cells = [f"{100 * r.mean:.2f} {_ci(r)}" for r in res.results if r.ber > 0]
        t.add_row(g, *([f"{sizes[g]:,}"] if sizes is not None else []), *cells)
    Console().print(t)


def _ci(r) -> str:
    """A 95% interval in percent, shown within [0, 100] (a t-interval of few trials can
    reach past either end; the JSON keeps it as computed)."""
    return f"[{100 * max(r.ci_low, 0.0):.2f}, {100 * min(r.ci_high, 1.0):.2f}]"


def print_eval(res) -> None:
    from rich.console import Console
    from rich.table import Table

    from mcel.faults import error_model_from_dict

    em = error_model_from_dict(res.error_model)
    shape = em.describe()
    shape = ("uniform flips in the weights" if shape.startswith("ber=") and "," not in shape
             else f"error model {shape} (each BER sets its {em.ber_sets})")
    took = f"{res.seconds:.2f} s" if res.seconds < 100 else f"{res.seconds:.0f} s"
    t = Table(title=f"clean accuracy {100 * res.clean_accuracy:.2f}%",
              caption=f"{res.meta.get('samples', '?')} test images, {res.meta.get('fmt', '?')}, "
                      f"{shape}, fault seed {res.seed}, {took}")
    for c in ("BER", "accuracy %", "95% CI", "std (points)", "trials", "empirical rate"):
        t.add_column(c, justify="right")
    for r in res.results:
        emp = sum(r.empirical_rates) / len(r.empirical_rates)
        t.add_row(f"{r.ber:g}", f"{100 * r.mean:.2f}",
                  _ci(r), f"{100 * r.std:.2f}",
                  str(r.trials), f"{emp:.3g}")
    Console().print(t)
    if res.precision != "fp32":
        print(f"{res.precision}: clean predictions agree with fp32 on "
              f"{100 * res.agreement:.2f}% of the test images")


def register(sub) -> None:
    e = sub.add_parser("evaluate", help="Monte-Carlo accuracy under bit errors")
    e.add_argument("run_dir", help="a run folder written by 'mcel train'")
    add_eval_flags(e)
    e.add_argument("--json", default=None, help="write the full result as JSON here; its "
                   "accuracies and rates are fractions in [0, 1] (default: none)")
    e.set_defaults(func=cmd_evaluate)
