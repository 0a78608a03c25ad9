"""The ``mcel`` command: parsing, progress and exit codes over the library.

User mistakes (``MCELError``, unreadable files, bad YAML) print one line and exit 2;
nothing else is caught, so real bugs keep their traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

from mcel.errors import MCELError
from mcel.losses import DEFAULT_MARGIN, DEFAULT_SCALE, MHL_MARGIN

EXIT_USAGE = 2


def _split_list(text: str, cast, what: str) -> list:
    """A comma-separated command-line list, each item through ``cast``."""
    items = text.split(",")
    if any(not v.strip() for v in items) and text.strip():
        raise argparse.ArgumentTypeError(f"empty item in '{text}'")
    try:
        vals = [cast(v) for v in items if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got '{text}'") from None
    if not vals:
        raise argparse.ArgumentTypeError(f"expected at least one value, got '{text}'")
    return vals


def _floats(text: str) -> list[float]:
    return _split_list(text, float, "numbers")


def _ints(text: str) -> list[int]:
    vals = _split_list(text, int, "integers")
    if min(vals) < 0:
        raise argparse.ArgumentTypeError(f"expected non-negative integers, got '{text}'")
    return vals


def _load_yaml(path: str) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise MCELError(f"config file {path} does not exist") from None
    except OSError as e:  # a folder, no permission
        raise MCELError(f"cannot read config file {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise MCELError(f"config file {path} is not text (UTF-8 YAML expected)") from None
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise MCELError(f"config file {path} is not valid YAML{at}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise MCELError(f"config file {path} must hold a mapping of keys to values")
    return data


# -- train ---------------------------------------------------------------------------

_TRAIN_FLAGS = {
    # flag: (config key, type, help)
    "dataset": (str, "dataset name (digits, mnist, fashion-mnist, cifar10, cifar100, svhn)"),
    "data_dir": (str, "folder with the dataset files (else $MCEL_DATA, then "
                      "~/.cache/mcel/datasets)"),
    "model": (str, "model name (mlp, lenet5, vgg3, vgg7, resnet20)"),
    "quant": (str, "weight scheme: binary, ternary, int2..int8, int16, float"),
    "fmt": (str, "number format: twos_complement, sign_magnitude, offset_binary"),
    "granularity": (str, "scale per 'tensor' or per output 'channel'"),
    "act_bits": (int, "quantize layer inputs to K-bit integers"),
    "loss": (str, "ce, mcel or mhl"),
    "margin": (float, f"margin of mcel (default {DEFAULT_MARGIN:g}) or mhl (default "
                      f"{MHL_MARGIN:g}), in logit units of the chosen scale"),
    "normalize": (str, "logit scale of the MCEL margin: none, l2, std"),
    "scale": (float, f"logit scale s for normalize l2/std (default {DEFAULT_SCALE:g})"),
    "optimizer": (str, "adam or sgd"),
    "lr": (float, "learning rate"),
    "momentum": (float, "SGD momentum"),
    "weight_decay": (float, "weight decay"),
    "schedule": (str, "cosine, step or none"),
    "epochs": (int, "training epochs"),
    "batch_size": (int, "batch size"),
    "seed": (int, "random seed"),
    "device": (str, "auto, cpu, cuda, cuda:N"),
    "train_ber": (float, "error-injection training: transient bit error rate in the weights"),
    "train_error_model": (str, "error-injection training with a full error-model spec"),
    "limit_train": (int, "use only the first N training samples"),
    "limit_test": (int, "use only the first N test samples"),
    "clip": (float, "weight clipping: keep weights in [-W, W] and fix the k-bit range to W"),
    "precision": (str, "forward-pass precision: fp32 or bf16 (autocast; pays on CPUs with "
                       "AMX/avx512_bf16 and on GPUs; weights, loss, optimizer stay fp32)"),
}


def _add_train_flags(p: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """The training settings as flags (all default to the config file / `TrainConfig`);
    ``skip``: settings the command chooses itself."""
    p.add_argument("--config", help="YAML file of training settings; flags override it")
    for key, (typ, help_) in _TRAIN_FLAGS.items():
        if key in skip:
            continue
        p.add_argument("--" + key.replace("_", "-"), dest=key, type=typ, default=None, help=help_)
    p.add_argument("--quant-exclude", action="append", default=None,
                   help="keep layers matching this name pattern in float (repeatable)")


def _train_config(args: argparse.Namespace, base: dict[str, Any] | None = None):
    from mcel.config import TrainConfig

    d: dict[str, Any] = dict(base or {})
    if getattr(args, "config", None):
        d.update(_load_yaml(args.config))
    for key in _TRAIN_FLAGS:
        v = getattr(args, key, None)
        if v is not None:
            d[key] = v
    if getattr(args, "data_dir", None):  # the run folder must work from any directory
        d["data_dir"] = str(Path(args.data_dir).absolute())
    if getattr(args, "quant_exclude", None):
        d["quant_exclude"] = args.quant_exclude
    return TrainConfig.from_dict(d)


def cmd_train(args: argparse.Namespace) -> int:
    from mcel.distributed import is_main_process
    from mcel.train import train

    config = _train_config(args)
    _, metrics = train(config, args.out, progress=sys.stderr.isatty(), log=_log)
    if is_main_process():  # under torchrun every rank gets here; one line is enough
        print(f"clean test accuracy {metrics['test_acc']:.4f}; run folder {args.out}")
    return 0


# -- evaluate ------------------------------------------------------------------------

def _error_model(args: argparse.Namespace):
    from mcel.faults import BitErrorModel, parse_error_model

    em = parse_error_model(args.error_model) if args.error_model else BitErrorModel(ber=0.0)
    changes: dict[str, Any] = {}
    if args.targets is not None:
        changes["targets"] = tuple(t.strip() for t in args.targets.split(","))
    if args.transient:
        changes["mode"] = "transient"
    return dataclasses.replace(em, **changes) if changes else em


def _add_eval_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ber", type=_floats, default=[0.0, 1e-3, 1e-2],
                   help="comma-separated bit error rates (default 0,1e-3,1e-2)")
    p.add_argument("--trials", type=int, default=100, help="Monte-Carlo trials per BER (max)")
    p.add_argument("--seed", type=int, default=0, help="fault seed")
    p.add_argument("--error-model", default=None,
                   help="e.g. 'p01=1e-3,p10=1e-2', 'ber=1e-3,protected=-1', 'stuck_at=1e-3'; "
                        "--ber then sets its largest rate")
    p.add_argument("--targets", default=None, help="weights,biases,activations")
    p.add_argument("--transient", action="store_true", help="redraw faults at every forward")
    p.add_argument("--fmt", default=None, help="evaluate with codes stored in this number format")
    p.add_argument("--adaptive", type=float, default=None, metavar="HALF_WIDTH",
                   help="stop each BER once its 95%% interval is within +-HALF_WIDTH (e.g. 0.005)")
    p.add_argument("--batch-size", type=int, default=1024, help="images per forward")
    p.add_argument("--trial-batch", type=int, default=1, metavar="K",
                   help="run K trials as one batched forward (K weight copies; for small "
                        "models on a GPU; persistent weight/bias faults only)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--data-dir", default=None,
                   help="folder with the dataset files (default: the run's own)")
    p.add_argument("--limit-test", type=int, default=None,
                   help="evaluate on the first N test images only (a quick look)")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"),
                   help="precision of the faulty forward passes; bf16 also reports how "
                        "often its clean predictions agree with fp32")


def cmd_evaluate(args: argparse.Namespace) -> int:
    from mcel.data import load_dataset
    from mcel.evaluate import evaluate
    from mcel.io import write_json
    from mcel.quant import set_format
    from mcel.runs import load_run

    em = _error_model(args)
    model, config = load_run(args.run_dir, args.device)
    if args.fmt:
        set_format(model, args.fmt)
    x, y = load_dataset(config.dataset, "test", args.data_dir or config.data_dir,
                        limit=args.limit_test or config.limit_test)
    res = evaluate(model, x, y, args.ber, em, trials=args.trials, seed=args.seed,
                   batch_size=args.batch_size, target_half_width=args.adaptive,
                   progress=sys.stderr.isatty(), trial_batch=args.trial_batch,
                   precision=args.precision)
    res.meta.update(run_dir=str(args.run_dir), fmt=args.fmt or config.fmt, samples=len(y))
    _print_eval(res)
    if args.json:
        write_json(args.json, res.to_dict())
        print(f"wrote {args.json}")
    return 0


def _print_eval(res) -> None:
    from rich.console import Console
    from rich.table import Table

    from mcel.faults import BitErrorModel

    shape = BitErrorModel(**{k: tuple(v) if isinstance(v, list) else v
                             for k, v in res.error_model.items()}).describe()
    shape = ("uniform flips in the weights" if shape.startswith("ber=") and "," not in shape
             else f"error model {shape} (each BER sets its largest rate)")
    t = Table(title=f"clean accuracy {res.clean_accuracy:.4f}",
              caption=f"{res.meta.get('samples', '?')} test images, {res.meta.get('fmt', '?')}, "
                      f"{shape}, fault seed "
                      f"{res.seed}, {res.seconds:.2f} s" if res.seconds < 100 else
                      f"{res.seed}, {res.seconds:.0f} s")
    for c in ("BER", "accuracy", "95% CI", "std", "trials", "empirical rate"):
        t.add_column(c, justify="right")
    for r in res.results:
        emp = sum(r.empirical_rates) / len(r.empirical_rates)
        t.add_row(f"{r.ber:g}", f"{r.mean:.4f}", f"[{r.ci_low:.4f}, {r.ci_high:.4f}]",
                  f"{r.std:.4f}", str(r.trials), f"{emp:.3g}")
    Console().print(t)
    if res.precision != "fp32":
        print(f"{res.precision}: clean predictions agree with fp32 on "
              f"{100 * res.agreement:.2f}% of the test images")


# -- demo ----------------------------------------------------------------------------

def cmd_demo(args: argparse.Namespace) -> int:
    from mcel.demo import run_demo

    run_demo(args.out, epochs=args.epochs, trials=args.trials, seed=args.seed)
    return 0


# -- parser and entry point ------------------------------------------------------------

def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class _Parser(argparse.ArgumentParser):
    """argparse with the project's error style: one line and exit 2, not the usage block
    (subcommands inherit it through ``add_subparsers``)."""

    def __init__(self, *a, **kw) -> None:
        kw.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*a, **kw)

    def error(self, message: str):  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


class _HelpFormatter(argparse.HelpFormatter):
    """Shows a flag's default where its help does not already name it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("default" in text or default is None or default is False
                or default is argparse.SUPPRESS or not action.option_strings):
            return text
        shown = ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in default) \
            if isinstance(default, list) else "%(default)s"
        return f"{text} (default {shown})"


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="mcel", description="Make quantized neural networks tolerant to bit "
                "errors, and measure how tolerant they are. 'mcel COMMAND --help' for each.")
    p.add_argument("--version", action=_VersionAction)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train a quantized model (CE, MCEL, MHL, error injection)")
    _add_train_flags(t)
    t.add_argument("--out", required=True, help="run folder (resumes if it holds this config)")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="Monte-Carlo accuracy under bit errors")
    e.add_argument("run_dir", help="a run folder written by 'mcel train'")
    _add_eval_flags(e)
    e.add_argument("--json", default=None, help="write the full result as JSON here")
    e.set_defaults(func=cmd_evaluate)

    d = sub.add_parser("demo", help="CE vs MCEL vs error injection on digits (the main job)")
    d.add_argument("--out", default="demo-out", help="folder for the table and plot")
    d.add_argument("--epochs", type=int, default=30, help="training epochs per model")
    d.add_argument("--trials", type=int, default=30, help="Monte-Carlo trials per BER")
    d.add_argument("--seed", type=int, default=0, help="training and fault seed")
    d.set_defaults(func=cmd_demo)

    for register in _extra_commands():
        register(sub)
    return p


def _extra_commands() -> tuple:
    """Commands that live beside their subsystems (sweep; report, margins, tune-margin)."""
    from mcel.experiments.cli import add_sweep_command
    from mcel.report.cli import add_analysis_commands

    return (add_sweep_command, add_analysis_commands)


class _VersionAction(argparse.Action):
    """``--version``: what is installed and which sampler runs (built only when asked)."""

    def __init__(self, option_strings, dest, **kw) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS,
                         help="show the version and whether the native sampler is in use")

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(_version())
        parser.exit()


def _version() -> str:
    from mcel import __version__
    from mcel.faults import native

    return f"mcel {__version__}; {native.status()}"


def _check_common_flags(args: argparse.Namespace) -> None:
    """Flags several commands share, checked before any work: sizes are positive, an
    --adaptive half-width is a positive number, a --json file can be written."""
    import math

    for name in ("batch_size", "limit_train", "limit_test", "epochs", "trials", "trial_batch"):
        v = getattr(args, name, None)
        if v is not None and v < 1:
            raise MCELError(f"--{name.replace('_', '-')} must be a positive integer, got {v}")
    hw = getattr(args, "adaptive", None)
    if hw is not None and not (math.isfinite(hw) and 0 < hw < 1):
        raise MCELError(f"--adaptive is a 95% half-width of an accuracy, in (0, 1) (e.g. "
                        f"0.005 for +-0.5 points), got {hw}")
    if getattr(args, "json", None) is not None:
        from mcel.io import check_can_create

        check_can_create(args.json)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    if not (sys.argv[1:] if argv is None else argv):  # bare `mcel`: what there is to do
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    args = parser.parse_args(argv)
    try:
        _check_common_flags(args)
        return int(args.func(args) or 0)
    except MCELError as e:
        print(f"mcel {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"mcel {args.command}: interrupted; rerun the same command to resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
