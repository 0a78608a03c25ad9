"""The command line: end-to-end runs and one-line errors with exit code 2."""

import json
import os
import re
import subprocess
import sys

import pytest

from mcel.cli import main

TRAIN = ["train", "--dataset", "digits", "--model", "mlp", "--quant", "int4", "--epochs", "2",
         "--lr", "0.01", "--batch-size", "64", "--limit-train", "400", "--limit-test", "200"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(TRAIN + ["--loss", "mcel", "--margin", "2", "--out", str(out)]) == 0
    return out


def test_train_then_evaluate_json(run_dir, tmp_path, capsys):
    js = tmp_path / "eval.json"
    assert main(["evaluate", str(run_dir), "--ber", "0,0.01,0.05", "--trials", "5",
                 "--json", str(js)]) == 0
    res = json.loads(js.read_text())
    assert [r["ber"] for r in res["results"]] == [0.0, 0.01, 0.05]
    r = res["results"][2]
    assert len(r["accuracies"]) == 5 and len(r["empirical_rates"]) == 5
    assert r["ci_low"] <= r["mean"] <= r["ci_high"]
    assert res["error_model"]["ber"] == 0.0 and 0 < res["clean_accuracy"] <= 1
    assert "clean accuracy" in capsys.readouterr().out


def test_evaluate_other_format_and_error_model(run_dir, capsys):
    assert main(["evaluate", str(run_dir), "--ber", "0.01", "--trials", "3", "--fmt",
                 "sign_magnitude", "--error-model", "p01=0.001,p10=0.01"]) == 0


def test_yaml_config_and_flag_override(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("dataset: digits\nmodel: mlp\nepochs: 5\nlimit_train: 200\nlimit_test: 100\n")
    out = tmp_path / "run"
    assert main(["train", "--config", str(cfg), "--epochs", "1", "--out", str(out)]) == 0
    saved = json.loads((out / "config.json").read_text())
    assert saved["epochs"] == 1 and saved["limit_train"] == 200


@pytest.mark.parametrize("argv,needle", [
    (TRAIN[:2] + ["digts", "--out", "{tmp}/x"], "did you mean 'digits'"),
    (TRAIN + ["--quant", "int9", "--out", "{tmp}/x"], "unknown quantization 'int9'"),
    (TRAIN + ["--loss", "mcle", "--out", "{tmp}/x"], "did you mean 'mcel'"),
    (TRAIN + ["--config", "{tmp}/bad.yaml", "--out", "{tmp}/x"], "not valid YAML"),
    (TRAIN + ["--config", "{tmp}/nope.yaml", "--out", "{tmp}/x"], "does not exist"),
    (["evaluate", "{tmp}", "--ber", "0.1"], "not a finished run folder"),
    (["evaluate", "{run}", "--ber", "1.5"], "outside [0, 1]"),
    (["evaluate", "{run}", "--ber", "nan"], "outside [0, 1]"),
    (["evaluate", "{run}", "--error-model", "ber=-1"], "ber"),
    (["evaluate", "{run}", "--fmt", "ones_complement"], "number format"),
    (TRAIN + ["--device", "mps", "--out", "{tmp}/x"], "unknown device 'mps'"),
    (TRAIN + ["--seed", str(2**70), "--out", "{tmp}/x"], "seed must be an integer"),
    (TRAIN + ["--config", "{tmp}", "--out", "{tmp}/x"], "cannot read config file"),
    (TRAIN + ["--config", "{tmp}/latin1.yaml", "--out", "{tmp}/x"], "is not text"),
    (TRAIN + ["--out", ""], "empty folder name"),
    (TRAIN + ["--out", "{tmp}/bad.yaml"], "is a file, not a folder"),
    (["evaluate", "{run}", "--ber", "0", "--json", "{run}/model.safetensors"],
     "belongs to the run folder"),
    (["evaluate", "{run}", "--ber", "0", "--json", "{tmp}/link.json"], "link or special file"),
    (["evaluate", "{run}", "--ber", "0", "--json", "{tmp}/bad.yaml"], "not a JSON file"),
    (["evaluate", "{run}", "--ber", "0", "--json", ""], "empty file name"),
    (["evaluate", "{run}", "--ber", "0", "--targets", ""], "targets"),
    (["evaluate", "{run}", "--error-model", "ber=1e-3,include=zzz"], "matches no quantized"),
    (["evaluate", "{run}", "--ber", "0.01", "--adaptive", "5"], "in (0, 1)"),
])
def test_user_errors_are_one_line_exit_2(argv, needle, tmp_path, run_dir, capsys):
    (tmp_path / "bad.yaml").write_text("epochs: [1,\n")
    (tmp_path / "latin1.yaml").write_bytes(b"\xff\xfe")
    (tmp_path / "target.json").write_text("{}")
    (tmp_path / "link.json").symlink_to(tmp_path / "target.json")
    argv = [a.format(tmp=tmp_path, run=run_dir) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and "Traceback" not in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "x").exists() or not any((tmp_path / "x").iterdir())


@pytest.mark.parametrize("argv,needle", [
    (["evaluate", "RUN", "--ber", "abc"], "argument --ber: expected comma-separated numbers"),
    (["evaluate", "RUN", "--ber", "1e-2,,"], "empty item in '1e-2,,'"),
    (["train", "--dataset", "digits"], "the following arguments are required: --out"),
    (["tune-margin", "--ber", "0.01", "--loss", "ce"], "unrecognized arguments: --loss"),
    (["bogus"], "invalid choice: 'bogus'"),
])
def test_parser_errors_are_one_line_exit_2(argv, needle, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1 and err.endswith("--help')"), err


def test_bare_command_prints_help_and_help_shows_defaults(capsys):
    assert main([]) == 2
    assert "tune-margin" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    out = capsys.readouterr().out
    assert "(default 100)" in out and "(default 0,1e-3,1e-2)" in out and "(default auto)" in out


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_out(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    assert main(TRAIN + ["--out", str(ro / "run")]) == 2
    assert "cannot write" in capsys.readouterr().err


def test_unwritable_out_file_in_the_way(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert main(TRAIN + ["--out", str(tmp_path / "file" / "run")]) == 2
    assert "cannot write" in capsys.readouterr().err


def test_console_script_runs():
    r = subprocess.run([sys.executable, "-m", "mcel.cli", "--version"], capture_output=True,
                       text=True)
    assert r.returncode == 0 and r.stdout.startswith("mcel ")
    assert "native ladder kernel:" in r.stdout


def test_margins_of_a_float_model_fails_before_making_its_folder(tmp_path, capsys):
    run = tmp_path / "float-run"
    argv = [a if a != "int4" else "float" for a in TRAIN]
    assert main(argv + ["--epochs", "1", "--out", str(run)]) == 0
    assert main(["margins", str(run), "--out", str(tmp_path / "m")]) == 2
    assert "holds a float model" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_the_package_exposes_the_api_lazily():
    code = ("import sys, mcel; assert 'mcel.engine' not in sys.modules; "
            "from mcel import BitErrorModel, quantize_model, MemoryImage; "
            "assert mcel.evaluate.evaluate and mcel.train.train and mcel.quant.QuantSpec")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_a_percentage_given_as_ber_suggests_the_fraction(run_dir, capsys):
    assert main(["evaluate", str(run_dir), "--ber", "0,2", "--trials", "2"]) == 2
    err = capsys.readouterr().err
    assert "BER 2.0 is outside [0, 1]; BERs are fractions: did you mean 0.02 (2%)?" in err


def test_evaluate_prints_percent_and_the_whole_caption(run_dir, capsys, monkeypatch):
    import mcel.evaluate as ev

    real = ev.evaluate

    def slow(*a, **k):  # an evaluation of 100 s or more keeps its caption
        res = real(*a, **k)
        res.seconds = 123.0
        return res

    monkeypatch.setattr(ev, "evaluate", slow)
    assert main(["evaluate", str(run_dir), "--ber", "0,0.01", "--trials", "2"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert re.search(r"clean accuracy \d+\.\d\d%", out) and "accuracy %" in out
    assert "test images" in out and "fault seed 0, 123 s" in out


# -- help that explains itself ------------------------------------------------------------

def _subparsers():
    import argparse

    from mcel.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices


def _entry(help_text: str, flag: str) -> str:
    """The help of one option: its line(s) up to the next option, whitespace joined."""
    lines = help_text.splitlines()
    start = next(i for i, ln in enumerate(lines) if re.match(rf"\s+{flag}\b", ln))
    end = next((i for i in range(start + 1, len(lines))
                # an option starts 2 columns in; its wrapped help lines further in
                if re.match(r" {2}-", lines[i]) or not lines[i].strip()), len(lines))
    return " ".join(" ".join(lines[start:end]).split())


def test_every_flag_shows_its_default_and_its_choices():
    import argparse

    from mcel.cli.common import floats

    checked = 0
    for name, sub in _subparsers().items():
        text = sub.format_help()
        for action in sub._actions:
            if (not action.option_strings or action.nargs == 0 or action.required
                    or isinstance(action, argparse._HelpAction)):
                continue  # positionals, on/off switches, required flags, --help
            flag = action.option_strings[-1]
            entry = _entry(text, flag)
            assert "default" in entry, f"mcel {name} {flag}: {entry}"
            if action.default not in (None, argparse.SUPPRESS):  # the value itself
                shown = re.search(r"\(default ([^)]*)\)", entry)
                assert shown, f"mcel {name} {flag}: {entry}"
                value = (floats(shown.group(1)) if isinstance(action.default, list)
                         else action.type(shown.group(1)) if action.type else shown.group(1))
                assert value == action.default, f"mcel {name} {flag}: {entry}"
            names = action.choices or ()
            if isinstance(action.metavar, str) and action.metavar.startswith("{"):
                names = action.metavar.strip("{}").split(",")
            for choice in names:
                assert choice in entry, f"mcel {name} {flag}: {choice} not in {entry}"
            checked += 1
    assert checked > 80  # every command's flags were walked


def test_training_flags_show_the_registries_names_and_the_config_defaults():
    from mcel.cli.common import TRAIN_FLAGS
    from mcel.config import OPTIMIZERS, TrainConfig
    from mcel.data import list_datasets
    from mcel.losses import list_losses
    from mcel.models import list_models
    from mcel.quant import list_formats, parse_scheme

    text = _subparsers()["train"].format_help()
    expected = {"dataset": list_datasets(), "model": list_models(), "loss": list_losses(),
                "fmt": list_formats(), "optimizer": list(OPTIMIZERS)}
    for key, names in expected.items():
        listed = re.search(rf"--{key} \{{([^}}]*)\}}", text).group(1).split(",")
        assert listed == names, key
    quant = re.search(r"--quant \{([^}]*)\}", text).group(1).split(",")
    assert "int4" in quant and "float" in quant
    for word in quant:  # every word listed is one the config takes
        parse_scheme(word)
    for key in TRAIN_FLAGS:
        default = getattr(TrainConfig, key)
        if default is None:
            continue
        shown = f"{default:g}" if isinstance(default, float) else str(default)
        assert f"(default {shown})" in _entry(text, "--" + key.replace("_", "-")), key


def test_one_device_default_for_every_command(tmp_path):
    from mcel.cli import build_parser
    from mcel.cli.common import train_config
    from mcel.config import TrainConfig

    assert TrainConfig().device == "auto"
    parser = build_parser()
    for argv in (["train", "--out", "x"], ["tune-margin", "--ber", "0.01"]):
        assert train_config(parser.parse_args(argv)).device == "auto"
    for argv in (["evaluate", "run"], ["margins", "run"], ["attack", "run"]):
        assert parser.parse_args(argv).device == "auto", argv
    for name, sub in _subparsers().items():
        for action in sub._actions:
            if "--device" in action.option_strings:
                assert "(default auto)" in _entry(sub.format_help(), "--device"), name


def test_train_prints_its_accuracy_in_percent(tmp_path, capsys):
    assert main(TRAIN + ["--epochs", "1", "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert re.search(r"clean test accuracy \d+\.\d\d%; run folder", out), out
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert 0 < saved["test_acc"] <= 1  # files keep fractions


def test_evaluate_json_says_its_units_and_device(run_dir, tmp_path):
    js = tmp_path / "eval.json"
    assert main(["evaluate", str(run_dir), "--ber", "0.01", "--trials", "2", "--json",
                 str(js)]) == 0
    meta = json.loads(js.read_text())["meta"]
    assert meta["units"] == "accuracies and bit error rates are fractions in [0, 1]"
    import torch

    assert meta["device"] == ("cuda:0" if torch.cuda.is_available() else "cpu")  # auto


def test_threads_are_set_for_the_command_recorded_and_given_back(tmp_path, capsys):
    """--threads pins torch's CPU threads for one command (float sums depend on it), the
    run's epoch rows and the evaluation's JSON record the count, and the process gets its
    own count back."""
    import torch

    before = torch.get_num_threads()
    out, js = tmp_path / "run", tmp_path / "eval.json"
    assert main(TRAIN + ["--epochs", "1", "--threads", "1", "--out", str(out)]) == 0
    assert torch.get_num_threads() == before
    rows = json.loads((out / "metrics.json").read_text())["epochs"]
    assert [r["threads"] for r in rows] == [1]
    assert rows[0]["cpu"] == torch.backends.cpu.get_cpu_capability()  # e.g. AVX2, AVX512
    assert main(["evaluate", str(out), "--ber", "0.01", "--trials", "2", "--threads", "1",
                 "--json", str(js)]) == 0
    meta = json.loads(js.read_text())["meta"]
    assert meta["torch_threads"] == 1 and meta["cpu"] == rows[0]["cpu"]
    capsys.readouterr()
    assert main(["evaluate", str(out), "--ber", "0.01", "--threads", "0"]) == 2
    err = capsys.readouterr().err
    assert err == "mcel evaluate: error: --threads must be a positive integer, got 0\n"


def test_a_run_resumed_at_another_thread_count_says_so():
    import torch

    from mcel.precision import cpu_threads
    from mcel.train import _check_threads

    cpu, logs = torch.device("cpu"), []
    with cpu_threads(1):
        _check_threads({"epochs": [{"threads": 1}]}, cpu, logs.append)
        _check_threads({"epochs": [{"epoch": 1}]}, cpu, logs.append)  # older runs: unknown
        assert logs == []
    with cpu_threads(2):
        _check_threads({"epochs": [{"threads": 1}]}, cpu, logs.append)
    assert len(logs) == 1 and "trained with 1 CPU thread(s) so far and resumes with 2" in logs[0]


def test_against_compares_two_runs_trial_by_trial(run_dir, tmp_path, capsys):
    """--against: both runs under the same fault streams; B - A is the mean of the per-trial
    differences with a t-interval over them, and A's numbers are what evaluating A alone
    gives."""
    from mcel.evaluate import t_interval

    ce = tmp_path / "ce"
    assert main(TRAIN + ["--loss", "ce", "--out", str(ce)]) == 0
    js, alone = tmp_path / "vs.json", tmp_path / "a.json"
    args = ["--ber", "0,0.05", "--trials", "6", "--seed", "3"]
    png = tmp_path / "vs.png"
    assert main(["evaluate", str(ce), "--against", str(run_dir), *args, "--json", str(js),
                 "--plot", str(png)]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"
    out = capsys.readouterr().out
    assert "B - A (points)" in out and f"B = {run_dir}" in out
    res = json.loads(js.read_text())
    assert main(["evaluate", str(ce), *args, "--json", str(alone)]) == 0
    for r, ra in zip(json.loads(alone.read_text())["results"], res["a"]["results"]):
        assert (r["accuracies"], r["empirical_rates"]) == (ra["accuracies"],
                                                           ra["empirical_rates"])
    d0, d5 = res["difference"]
    assert d0["ber"] == 0.0 and d0["ci_low"] == d0["ci_high"] == d0["mean"]  # no faults
    diffs = [b - a for a, b in zip(res["a"]["results"][1]["accuracies"],
                                   res["b"]["results"][1]["accuracies"])]
    mean, lo, hi = t_interval(diffs)
    assert (d5["mean"], d5["ci_low"], d5["ci_high"], d5["trials"]) == pytest.approx(
        (mean, lo, hi, 6))
    capsys.readouterr()
    assert main(["evaluate", str(ce), "--against", str(run_dir), "--adaptive", "0.01"]) == 2
    err = capsys.readouterr().err
    assert "give a fixed --trials, without --adaptive" in err and len(err.splitlines()) == 1
    assert main(["evaluate", str(ce), "--by-layer", "--plot", str(tmp_path / "x.png")]) == 2
    assert "--plot draws whole runs'" in capsys.readouterr().err


def test_against_several_runs_pairs_each_with_the_first(run_dir, tmp_path, capsys):
    """--against RUN RUN: one row per run; the same run against itself differs by exactly
    0 in every trial, and each run's numbers are what its own evaluation gives."""
    js, alone = tmp_path / "vs.json", tmp_path / "b.json"
    args = ["--ber", "0,0.05", "--trials", "5", "--seed", "2"]
    assert main(["evaluate", str(run_dir), "--against", str(run_dir), str(run_dir), *args,
                 "--json", str(js)]) == 0
    out = capsys.readouterr().out
    assert "C: " in out and "vs A = " in out
    res = json.loads(js.read_text())
    assert len(res["against"]) == 2
    for side in res["against"]:
        assert all(d["mean"] == d["ci_low"] == d["ci_high"] == 0 for d in side["difference"])
    assert main(["evaluate", str(run_dir), *args, "--json", str(alone)]) == 0
    assert [r["accuracies"] for r in json.loads(alone.read_text())["results"]] == [
        r["accuracies"] for r in res["against"][1]["b"]["results"]]
    capsys.readouterr()
    assert main(["evaluate", str(run_dir), "--against", str(run_dir), str(tmp_path / "no"),
                 *args]) == 2
    assert "is missing" in capsys.readouterr().err


def test_paired_difference_needs_the_same_faults():
    from mcel.errors import MCELError
    from mcel.evaluate import BerResult, EvalResult, paired_difference

    def res(seed=0, trials=3):
        r = BerResult.from_trials(0.01, [0.5 + 0.1 * t for t in range(trials)], [0.01] * trials)
        return EvalResult(0.9, {"ber": 0.0}, seed, [r])

    (d,) = paired_difference(res(), res())
    assert (d.mean, d.ci_low, d.ci_high) == (0.0, 0.0, 0.0)
    with pytest.raises(MCELError, match="same fault seed"):
        paired_difference(res(), res(seed=1))
    with pytest.raises(MCELError, match="3 trials and the other 4"):
        paired_difference(res(), res(trials=4))
