"""MCEL against PyTorch's own cross-entropy and against independent formulas."""

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mcel import MCELError, MCELoss, MHLoss, create_loss, mcel_loss, mhl_loss
from mcel.losses import list_losses, normalize_logits

SHAPES = [(7, 5), (4, 3, 6), (3, 4, 2, 5)]
REDUCTIONS = ["mean", "sum", "none"]


def _inputs(shape, seed=0, ignore=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64) * 3
    n, c, rest = shape[0], shape[1], shape[2:]
    y = torch.randint(0, c, (n, *rest), generator=g)
    if ignore:
        y.view(-1)[::3] = -100
    return x, y


@pytest.mark.parametrize(
    "shape,reduction,weighted,ignore,smoothing",
    list(itertools.product(SHAPES, REDUCTIONS, [False, True], [False, True], [0.0, 0.2])),
)
def test_margin_zero_equals_cross_entropy(shape, reduction, weighted, ignore, smoothing):
    x, y = _inputs(shape, ignore=ignore)
    w = torch.linspace(0.5, 2.0, shape[1], dtype=torch.float64) if weighted else None
    kw = dict(weight=w, reduction=reduction, label_smoothing=smoothing)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours = mcel_loss(x1, y, margin=0.0, **kw)
    ref = F.cross_entropy(x2, y, **kw)
    torch.testing.assert_close(ours, ref)
    ours.sum().backward()
    ref.sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad)
    # the module form too
    torch.testing.assert_close(MCELoss(margin=0.0, **kw)(x, y), nn.CrossEntropyLoss(**kw)(x, y))


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_probability_targets_margin_zero(reduction):
    x = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    p = torch.softmax(torch.randn(6, 4, dtype=torch.float64), dim=1)
    torch.testing.assert_close(
        mcel_loss(x, p, margin=0.0, reduction=reduction), F.cross_entropy(x, p, reduction=reduction)
    )


def test_unbatched_input():
    x, y = torch.randn(5), torch.tensor(2)
    torch.testing.assert_close(mcel_loss(x, y, margin=0.0), F.cross_entropy(x, y))
    torch.testing.assert_close(
        mcel_loss(x, y, margin=1.0), F.cross_entropy(x - 1.0 * F.one_hot(y, 5), y)
    )


def test_margin_is_a_shift_of_the_target_logit():
    x, y = _inputs((9, 6), seed=1)
    m = 1.7
    manual = x.clone()
    manual[torch.arange(9), y] -= m
    torch.testing.assert_close(mcel_loss(x, y, margin=m), F.cross_entropy(manual, y))


def test_margin_with_ignore_index_leaves_ignored_rows_out():
    x, y = _inputs((9, 6), seed=2, ignore=True)
    keep = y != -100
    torch.testing.assert_close(
        mcel_loss(x, y, margin=2.0), mcel_loss(x[keep], y[keep], margin=2.0)
    )


def test_gradient_pushes_until_the_margin_is_met():
    # A sample whose target leads by far more than the margin gets (almost) no gradient;
    # one that leads by less than the margin still does.
    y = torch.tensor([0])
    far = torch.tensor([[30.0, 0.0, 0.0]], requires_grad=True)
    near = torch.tensor([[1.0, 0.0, 0.0]], requires_grad=True)
    mcel_loss(far, y, margin=3.0).backward()
    mcel_loss(near, y, margin=3.0).backward()
    assert far.grad.abs().max() < 1e-8
    assert near.grad[0, 0] < -0.1
    # plain CE is already nearly satisfied at lead 4, MCEL with margin 3 is not
    lead4 = torch.tensor([[4.0, 0.0, 0.0]])
    assert mcel_loss(lead4, y, margin=3.0) > 5 * F.cross_entropy(lead4, y)


def test_normalized_margins_cannot_be_met_by_scaling_logits():
    x, y = _inputs((8, 5), seed=3)
    for norm in ("l2", "std"):
        a = mcel_loss(x, y, margin=2.0, normalize=norm)
        b = mcel_loss(10 * x, y, margin=2.0, normalize=norm)
        torch.testing.assert_close(a, b)
    assert mcel_loss(10 * x, y, margin=2.0) != mcel_loss(x, y, margin=2.0)


def test_normalizations_match_their_formulas():
    x, _ = _inputs((5, 7), seed=4)
    l2 = normalize_logits(x, "l2", scale=4.0)
    torch.testing.assert_close(l2.norm(dim=1), torch.full((5,), 4.0, dtype=x.dtype))
    st = normalize_logits(x, "std", scale=3.0)
    torch.testing.assert_close(st.mean(dim=1), torch.zeros(5, dtype=x.dtype), atol=1e-9, rtol=0)
    torch.testing.assert_close(st.std(dim=1, unbiased=False), torch.full((5,), 3.0, dtype=x.dtype),
                               rtol=1e-5, atol=1e-5)
    # std normalisation ignores a per-sample shift
    torch.testing.assert_close(st, normalize_logits(x + 5.0, "std", scale=3.0))


def test_bad_arguments_are_clear_errors():
    x, y = _inputs((3, 4))
    with pytest.raises(MCELError, match="normalize"):
        mcel_loss(x, y, normalize="cosine")
    with pytest.raises(MCELError, match="normalize"):
        MCELoss(normalize="bogus")
    with pytest.raises(MCELError, match="margin"):
        mcel_loss(x, y, margin=float("nan"))
    with pytest.raises(MCELError, match="shape"):
        mcel_loss(x, torch.rand(3, 5), margin=1.0)


def test_mhl_matches_a_loop():
    x, y = _inputs((6, 4), seed=5)
    total = 0.0
    for i in range(6):
        for c in range(4):
            t = 1.0 if c == y[i] else -1.0
            total += max(0.0, 1.5 - t * x[i, c].item())
    torch.testing.assert_close(mhl_loss(x, y, margin=1.5), torch.tensor(total / 24, dtype=x.dtype))
    assert MHLoss(margin=1.5)(x, y).item() == pytest.approx(total / 24)


def test_registry():
    assert list_losses() == ["ce", "mcel", "mhl"]
    assert isinstance(create_loss("ce"), nn.CrossEntropyLoss)
    loss = create_loss("mcel", margin=4.0, normalize="l2", scale=5.0)
    assert (loss.margin, loss.normalize, loss.scale) == (4.0, "l2", 5.0)
    with pytest.raises(MCELError, match="did you mean 'mcel'"):
        create_loss("mcell")


def test_create_loss_passes_on_or_refuses_every_argument():
    from mcel.losses import create_loss

    w = torch.tensor([1.0, 2.0, 3.0])
    loss = create_loss("mcel", margin=2.0, reduction="sum", weight=w)
    assert loss.reduction == "sum" and torch.equal(loss.weight, w)
    assert create_loss("ce", reduction="none").reduction == "none"
    assert create_loss("mhl", margin=2.0, reduction="sum").reduction == "sum"
    with pytest.raises(MCELError, match="takes no 'margn' \\(did you mean 'margin'\\?\\)"):
        create_loss("mcel", margn=5)
    with pytest.raises(MCELError, match="loss 'ce' takes no margin"):
        create_loss("ce", margin=5)


def test_mceloss_argument_traps_are_caught_at_construction():
    with pytest.raises(MCELError, match="give the margin by name: MCELoss\\(margin=3.0\\)"):
        MCELoss(3.0)
    for bad in (-1.0, float("inf"), "a"):
        with pytest.raises(MCELError, match="margin must be a finite number >= 0"):
            MCELoss(margin=bad)
    with pytest.raises(MCELError, match="scale must be"):
        MCELoss(normalize="l2", scale=0.0)


def test_integer_targets_of_any_width():
    z, y = torch.randn(6, 4), torch.tensor([0, 3, 1, 2, 2, 0])
    want = MCELoss(margin=2.0)(z, y)
    for dtype in (torch.uint8, torch.int32, torch.int16):
        assert torch.equal(MCELoss(margin=2.0)(z, y.to(dtype)), want)
