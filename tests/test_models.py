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


@pytest.mark.parametrize("in_shape", [(1, 7, 28), (28, 28), (0, 28, 28)])
def test_bad_shape_is_a_user_error(in_shape: tuple[int, ...]) -> None:
    with pytest.raises(MCELError):
        create_model("mlp", in_shape=in_shape)


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
