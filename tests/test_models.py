"""Model registry: every registered model is checked the same way (timm style)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mcel.errors import MCELError
from mcel.models import count_parameters, create_model, list_models

SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32)]
# Large models get tiny batches; BatchNorm in training mode needs at least 2 samples.
BATCH = {"vgg7": 2, "resnet20": 2}
WEIGHT_CLASSES = (nn.Conv2d, nn.Linear)
NORM_CLASSES = (nn.BatchNorm1d, nn.BatchNorm2d)


@pytest.mark.parametrize("in_shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", list_models())
def test_forward_backward(name: str, in_shape: tuple[int, int, int]) -> None:
    torch.manual_seed(0)
    num_classes = 7  # not 10, so a hard-coded class count fails
    model = create_model(name, num_classes=num_classes, in_shape=in_shape)
    n = BATCH.get(name, 4)
    x = torch.randn(n, *in_shape)
    y = torch.arange(n) % num_classes

    logits = model(x)
    assert logits.shape == (n, num_classes)
    assert torch.isfinite(logits).all()

    loss = nn.functional.cross_entropy(logits, y)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    opt.zero_grad()
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{pname} is not used in forward"
        assert torch.isfinite(p.grad).all(), pname
    opt.step()
    with torch.no_grad():
        loss_after = nn.functional.cross_entropy(model(x), y)
    assert loss_after.item() != loss.item()

    # Inference on a single sample (BatchNorm in eval mode).
    model.eval()
    with torch.no_grad():
        assert model(x[:1]).shape == (1, num_classes)


@pytest.mark.parametrize("name", list_models())
def test_weights_only_in_quantizable_layers(name: str) -> None:
    """quantize_model swaps Conv2d/Linear; any other weight-holding layer would escape it."""
    model = create_model(name, in_shape=(1, 8, 8))
    weighted = [m for m in model.modules() if isinstance(m, WEIGHT_CLASSES)]
    assert weighted, "no Conv2d or Linear layer"
    for mname, m in model.named_modules():
        if any(True for _ in m.parameters(recurse=False)):
            assert isinstance(m, WEIGHT_CLASSES + NORM_CLASSES), (mname, type(m))


@pytest.mark.parametrize("name", list_models())
def test_output_layer_is_named_classifier_and_has_bias(name: str) -> None:
    model = create_model(name, num_classes=5, in_shape=(1, 8, 8))
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    last_name, last = linears[-1]
    assert last_name.startswith("classifier")
    assert last.out_features == 5
    assert last.bias is not None


@pytest.mark.parametrize("name", list_models())
def test_deterministic_under_seed(name: str) -> None:
    torch.manual_seed(123)
    a = create_model(name, in_shape=(1, 8, 8)).state_dict()
    torch.manual_seed(123)
    b = create_model(name, in_shape=(1, 8, 8)).state_dict()
    torch.manual_seed(124)
    c = create_model(name, in_shape=(1, 8, 8)).state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_construction_leaves_batchnorm_statistics_untouched() -> None:
    # The dry run that sizes the classifier must not update running statistics.
    model = create_model("vgg3", in_shape=(1, 8, 8))
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert int(m.num_batches_tracked) == 0
            assert torch.equal(m.running_mean, torch.zeros_like(m.running_mean))
    assert model.training


def test_required_models_registered() -> None:
    assert {"mlp", "lenet5", "vgg3", "vgg7", "resnet20"} <= set(list_models())
    assert list_models("vgg*") == ["vgg3", "vgg7"]
    assert list_models("nothing*") == []


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(MCELError, match="vgg3") as info:
        create_model("vgg33")
    assert "did you mean" in str(info.value)


def test_unknown_option_is_a_user_error() -> None:
    with pytest.raises(MCELError, match="width"):
        create_model("vgg3", hidden=12)


@pytest.mark.parametrize(("name", "in_shape"), [("vgg3", (1, 7, 28)), ("mlp", (28, 28)),
                                               ("mlp", (0, 28, 28)), ("resnet20", (3, 1, 1))])
def test_bad_shape_is_a_user_error(name: str, in_shape: tuple[int, ...]) -> None:
    with pytest.raises(MCELError):
        create_model(name, in_shape=in_shape)


def test_an_mlp_takes_feature_vectors() -> None:
    net = create_model("mlp", num_classes=3, in_shape=(30, 1, 1))
    assert net.eval()(torch.zeros(5, 30, 1, 1)).shape == (5, 3)


@pytest.mark.parametrize(
    ("name", "option", "small", "large"),
    [
        ("mlp", "hidden", 16, 64),
        ("vgg3", "width", 0.125, 0.25),
        ("vgg7", "width", 0.0625, 0.125),
        ("resnet20", "width", 0.5, 1.0),
    ],
)
def test_size_options_change_parameter_count(name: str, option: str, small: float,
                                             large: float) -> None:
    n_small = count_parameters(create_model(name, in_shape=(1, 8, 8), **{option: small}))
    n_large = count_parameters(create_model(name, in_shape=(1, 8, 8), **{option: large}))
    assert n_small < n_large


def test_count_parameters_matches_hand_count() -> None:
    # mlp on 1x8x8 with hidden=16, 3 classes: bias-free hidden Linears, BN (2 per unit).
    model = create_model("mlp", num_classes=3, in_shape=(1, 8, 8), hidden=16)
    expected = 64 * 16 + 2 * 16 + 16 * 16 + 2 * 16 + 16 * 3 + 3
    assert count_parameters(model) == expected


def test_lenet5_classic_shape_on_mnist() -> None:
    # 28 -> conv(pad 2) 28 -> pool 14 -> conv 10 -> pool 5: fc1 sees 16*5*5 = 400 inputs.
    model = create_model("lenet5", in_shape=(1, 28, 28))
    assert model.classifier[0].in_features == 400


USER_MODEL = '''
from torch import nn

from my_blocks import BLOCK_NAME  # a file beside it, as researchers split their code


def tiny(num_classes, in_shape, hidden=16):
    c, h, w = in_shape
    return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, hidden), nn.BatchNorm1d(hidden),
                         nn.ReLU(), nn.Linear(hidden, num_classes))


def classes_only(num_classes=10):  # torchvision-style: no in_shape
    return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))


def not_a_model(num_classes, in_shape):
    return "a string"


raise_here = None
'''


@pytest.fixture
def user_models(tmp_path, monkeypatch):
    """Your own model as a file and as an importable module."""
    (tmp_path / "my_models.py").write_text(USER_MODEL)
    (tmp_path / "my_blocks.py").write_text("BLOCK_NAME = 'block'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path / "my_models.py"


def test_your_own_model_by_file_or_module_path(user_models) -> None:
    from mcel.models import resolve_model

    for name in (f"{user_models}:tiny", "my_models:tiny"):
        model = create_model(name, num_classes=4, in_shape=(1, 8, 8), hidden=8)
        assert model[1].in_features == 64 and model[1].out_features == 8
        assert model[-1].out_features == 4
    assert resolve_model(f"{user_models}:tiny") is resolve_model(f"{user_models}:tiny")
    model = create_model("my_models:classes_only", num_classes=3, in_shape=(1, 8, 8))
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 3)


@pytest.mark.parametrize("name,needle", [
    ("no_such_module_here:tiny", "cannot import no_such_module_here (ModuleNotFoundError"),
    ("/no/such/file.py:tiny", "the file /no/such/file.py does not exist"),
    ("my_models:nope", "my_models has no function 'nope'"),
    ("my_models:raise_here", "my_models has no function 'raise_here'"),
    ("my_models:not_a_model", "returned str, not an nn.Module"),
])
def test_your_own_model_mistakes_are_one_line(user_models, name, needle) -> None:
    with pytest.raises(MCELError, match=re_escape(needle)):
        create_model(name, num_classes=4, in_shape=(1, 8, 8))
    with pytest.raises(MCELError, match="unknown option"):
        create_model("my_models:tiny", num_classes=4, in_shape=(1, 8, 8), depth=3)


def re_escape(text: str) -> str:
    import re

    return re.escape(text)


def test_your_own_model_trains_sweeps_and_evaluates_from_the_command_line(
        user_models, tmp_path, capsys) -> None:
    """The whole CLI path: a grid naming a model file, the sweep (worker processes load
    the file themselves), and `mcel evaluate` of a run it trained."""
    from mcel.cli import main

    grid = tmp_path / "grid.yaml"
    grid.write_text(f"""\
name: own
base: {{dataset: digits, model: "{user_models}:tiny", model_kwargs: {{hidden: 16}},
       quant: int4, epochs: 2, lr: 0.01, limit_train: 300, limit_test: 100}}
grid:
  method: [{{loss: ce}}, {{loss: mcel, margin: 5}}]
eval: {{bers: [0, 0.02], trials: 3}}
""")
    out = tmp_path / "out"
    assert main(["sweep", str(grid), "--out", str(out), "--jobs", "2"]) == 0
    run = next((out / "runs").iterdir())
    assert main(["evaluate", str(run), "--ber", "0.02", "--trials", "2"]) == 0
    capsys.readouterr()
    assert main(["train", "--model", "my_models:nope", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.strip().endswith("my_models has no function 'nope'") and len(err.splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_a_model_file_imports_the_files_beside_it(tmp_path, monkeypatch) -> None:
    import sys

    monkeypatch.setattr(sys, "path", list(sys.path))  # restored after the test
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "net.py").write_text("from blocks import head\n\n"
                                 "def build(num_classes, in_shape):\n"
                                 "    return head(in_shape[0] * in_shape[1] * in_shape[2], "
                                 "num_classes)\n")
    (proj / "blocks.py").write_text("from torch import nn\n\n"
                                    "def head(n, k):\n"
                                    "    return nn.Sequential(nn.Flatten(), nn.Linear(n, k))\n")
    model = create_model(f"{proj / 'net.py'}:build", num_classes=5, in_shape=(1, 8, 8))
    assert model[1].out_features == 5
