"""Losses: MCEL, the margin cross-entropy loss, and its baselines.

MCEL (Yayla & Kumar, 2026) is cross-entropy computed after the target logit has been
lowered by a margin ``m``::

    MCEL(z, y) = CE(z - m * onehot(y), y)

Its gradient keeps pushing until the target logit leads every other logit by about
``m``, so the trained network ends with large output margins; a bit flip then has to
move a logit by more than the margin to change the prediction.

Raw-logit margins can be met by simply growing all logits (a larger last-layer scale),
which buys no tolerance. ``normalize`` therefore measures the margin on a fixed logit
scale: ``"l2"`` divides each sample's logits by their L2 norm, ``"std"`` standardises
them (zero mean, unit standard deviation); both then multiply by ``scale``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mcel.errors import MCELError
from mcel.registry import Registry, did_you_mean

NORMALIZATIONS = ("none", "l2", "std")
# Defaults from the study (docs/results.md): the normalised forms lost accuracy at high
# BER, so raw-logit margins are the default. Margin 10 is a starting point, not a rule:
# it helped most on the large int4 VGG7, error injection beat it on the small int4 VGG3,
# and large fixed margins were worse than CE on small MLPs. Tune it with `mcel tune-margin`.
DEFAULT_MARGIN = 10.0
DEFAULT_SCALE = 8.0
MHL_MARGIN = 1.0  # the hinge margin b of MHL, in logits
_EPS = 1e-6


def normalize_logits(input: Tensor, normalize: str = "none",
                     scale: float = DEFAULT_SCALE) -> Tensor:
    """Put logits (N, C, ...) on the scale in which the margin is measured (class dim 1)."""
    if normalize == "none":
        return input
    if normalize == "l2":
        return scale * input / input.norm(dim=1, keepdim=True).clamp_min(_EPS)
    if normalize == "std":
        var, mean = torch.var_mean(input, dim=1, keepdim=True, correction=0)
        return (input - mean) * var.add(_EPS).rsqrt().mul(scale)
    raise MCELError(f"unknown normalize '{normalize}'; valid: {', '.join(NORMALIZATIONS)}")


def _target_shift(input: Tensor, target: Tensor, ignore_index: int) -> Tensor:
    """The one-hot (or class-probability) matrix the margin is scaled by."""
    if target.is_floating_point():  # class probabilities: shift by m * p(class)
        if target.shape != input.shape:
            raise MCELError(
                f"probability targets must have the input's shape {tuple(input.shape)}, "
                f"got {tuple(target.shape)}"
            )
        return target.to(input.dtype)
    valid = target != ignore_index
    safe = torch.where(valid, target, 0).unsqueeze(1)
    return torch.zeros_like(input).scatter_(1, safe, valid.unsqueeze(1).to(input.dtype))


def _check_margin(margin) -> None:
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) \
            or not math.isfinite(margin) or margin < 0:
        raise MCELError(f"margin must be a finite number >= 0, got {margin!r}")


def mcel_loss(
    input: Tensor,
    target: Tensor,
    margin: float = DEFAULT_MARGIN,
    *,
    normalize: str = "none",
    scale: float = DEFAULT_SCALE,
    weight: Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> Tensor:
    """Margin cross-entropy ``CE(norm(z) - margin * onehot(y), y)``.

    Arguments follow :func:`torch.nn.functional.cross_entropy` (input (N, C) or
    (N, C, d1, ...), class-index or class-probability targets, ``weight``,
    ``ignore_index``, ``reduction``, ``label_smoothing``), plus ``margin`` (in logit
    units of the chosen scale), ``normalize`` (``"none"``, ``"l2"``, ``"std"``) and
    ``scale`` (the logit scale ``s`` used by ``"l2"`` and ``"std"``).

    With ``margin=0`` and ``normalize="none"`` it is exactly cross-entropy:

    >>> z, y = torch.randn(4, 3), torch.tensor([0, 2, 1, 2])
    >>> torch.allclose(mcel_loss(z, y, margin=0.0), F.cross_entropy(z, y))
    True
    >>> bool(mcel_loss(z, y, margin=2.0) > F.cross_entropy(z, y))
    True
    """
    _check_margin(margin)
    if not target.dtype.is_floating_point and target.dtype != torch.long:
        target = target.long()  # uint8/int32 class indices, as cross_entropy takes them
    if input.dim() < 2:
        # CE also accepts unbatched (C,) input; give it a batch dim and take it off again.
        out = mcel_loss(
            input.unsqueeze(0), target.unsqueeze(0), margin, normalize=normalize, scale=scale,
            weight=weight, ignore_index=ignore_index, reduction=reduction,
            label_smoothing=label_smoothing,
        )
        return out.squeeze(0) if reduction == "none" else out
    z = normalize_logits(input, normalize, scale)
    if margin != 0:
        z = z.sub(_target_shift(z, target, ignore_index), alpha=margin)
    return F.cross_entropy(
        z, target, weight=weight, ignore_index=ignore_index, reduction=reduction,
        label_smoothing=label_smoothing,
    )


class MCELoss(nn.CrossEntropyLoss):
    """Drop-in replacement for :class:`torch.nn.CrossEntropyLoss` with an output margin:
    cross-entropy of the logits with ``margin`` subtracted from the true class's logit,
    so training pushes it at least that far above the others (:func:`mcel_loss`).

    Takes every argument of ``nn.CrossEntropyLoss`` (``weight`` first, as there), plus,
    by name only: ``margin`` (default 10, in logits; ``margin=0`` is plain
    cross-entropy), ``normalize`` (``"none"``, the default, or ``"l2"``/``"std"``: the
    margin is then measured on normalised logits times ``scale``) and ``scale``.

    >>> loss = MCELoss(margin=2.0)
    >>> loss(torch.zeros(2, 4), torch.tensor([1, 3])).item() > 0
    True
    """

    def __init__(
        self,
        weight: Tensor | None = None,
        size_average=None,
        ignore_index: int = -100,
        reduce=None,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
        *,
        margin: float = DEFAULT_MARGIN,
        normalize: str = "none",
        scale: float = DEFAULT_SCALE,
    ) -> None:
        if isinstance(weight, (int, float)):
            raise MCELError("MCELoss's first argument is the class weight, as in "
                            f"nn.CrossEntropyLoss; give the margin by name: "
                            f"MCELoss(margin={weight})")
        super().__init__(weight, size_average, ignore_index, reduce, reduction, label_smoothing)
        _check_margin(margin)
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) \
                or not math.isfinite(scale) or scale <= 0:
            raise MCELError(f"scale must be a finite number > 0, got {scale!r}")
        if normalize not in NORMALIZATIONS:
            raise MCELError(f"unknown normalize '{normalize}'; valid: {', '.join(NORMALIZATIONS)}")
        self.margin, self.normalize, self.scale = float(margin), normalize, float(scale)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return mcel_loss(
            input, target, self.margin, normalize=self.normalize, scale=self.scale,
            weight=self.weight, ignore_index=self.ignore_index, reduction=self.reduction,
            label_smoothing=self.label_smoothing,
        )

    def extra_repr(self) -> str:
        return f"margin={self.margin}, normalize={self.normalize!r}, scale={self.scale}"


def mhl_loss(input: Tensor, target: Tensor, margin: float = MHL_MARGIN,
             reduction: str = "mean") -> Tensor:
    """Multi-class hinge loss ``mean(max(0, b - t * z))`` with ``t = +1`` for the target
    class and ``-1`` otherwise (the loss used to train binarized networks for margins).

    >>> mhl_loss(torch.tensor([[3.0, -3.0]]), torch.tensor([0]), margin=1.0).item()
    0.0
    """
    t = 2.0 * F.one_hot(target, input.shape[1]).to(input.dtype) - 1.0
    per = (margin - t * input).clamp_min(0).mean(dim=1)
    if reduction == "none":
        return per
    if reduction == "sum":
        return per.sum()
    if reduction == "mean":
        return per.mean()
    raise MCELError(f"unknown reduction '{reduction}'; valid: none, mean, sum")


class MHLoss(nn.Module):
    """Module form of :func:`mhl_loss`."""

    def __init__(self, margin: float = MHL_MARGIN, reduction: str = "mean") -> None:
        super().__init__()
        self.margin, self.reduction = float(margin), reduction

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return mhl_loss(input, target, self.margin, self.reduction)


@dataclass(frozen=True)
class LossEntry:
    """A registered loss: how to build it, which keyword arguments it takes (the training
    settings ``margin``, ``normalize``, ``scale`` and the module's own), and the margin
    it trains at when none is given (None: it takes no margin)."""

    build: Callable[..., nn.Module]
    takes: tuple[str, ...]
    default_margin: float | None = None


# what create_loss passes on: the training settings every loss is built from, and the
# keyword arguments of the loss modules themselves
_SETTINGS = ("margin", "normalize", "scale")
_CE_ARGS = ("weight", "ignore_index", "reduction", "label_smoothing")
LOSSES: Registry[LossEntry] = Registry("loss")
LOSSES.add("ce", LossEntry(
    lambda margin, normalize=None, scale=None, **ce: nn.CrossEntropyLoss(**ce),
    _SETTINGS + _CE_ARGS))
LOSSES.add("mcel", LossEntry(
    lambda margin, normalize="none", scale=DEFAULT_SCALE, **ce: MCELoss(
        margin=margin, normalize=normalize, scale=scale, **ce),
    _SETTINGS + _CE_ARGS, DEFAULT_MARGIN))
LOSSES.add("mhl", LossEntry(
    lambda margin, normalize=None, scale=None, reduction="mean": MHLoss(margin, reduction),
    _SETTINGS + ("reduction",), MHL_MARGIN))


def default_margin(loss: str) -> float | None:
    """The margin ``loss`` trains at when the config gives none (None: it takes none).

    >>> default_margin("mcel"), default_margin("mhl"), default_margin("ce")
    (10.0, 1.0, None)
    """
    return LOSSES.get(loss).default_margin


def create_loss(name: str, **kwargs) -> nn.Module:
    """Build a loss by registry name: ``ce``, ``mcel`` or ``mhl``. ``margin``,
    ``normalize`` and ``scale`` are the training settings (``None`` where a loss has no
    use for them, or for a margin: the loss's `default_margin`; CE takes no margin);
    ``ce``/``mcel`` also take ``nn.CrossEntropyLoss``'s arguments, ``mhl`` a ``reduction``.

    >>> create_loss("mcel", margin=3.0, normalize="std")
    MCELoss(margin=3.0, normalize='std', scale=8.0)
    """
    entry = LOSSES.get(name)
    for key in kwargs:
        if key not in entry.takes:
            raise MCELError(f"loss '{name}' takes no '{key}'{did_you_mean(key, entry.takes)}; "
                            f"it takes: {', '.join(entry.takes)}")
    margin = kwargs.pop("margin", None)
    if margin is not None and entry.default_margin is None:
        raise MCELError(f"loss '{name}' takes no margin; use 'mcel' for a margin")
    return entry.build(entry.default_margin if margin is None else margin, **kwargs)


def list_losses() -> list[str]:
    return LOSSES.names()


__all__ = ["MCELoss", "MHLoss", "mcel_loss", "mhl_loss", "normalize_logits", "create_loss",
           "list_losses", "default_margin", "LossEntry", "LOSSES", "DEFAULT_MARGIN",
           "DEFAULT_SCALE", "MHL_MARGIN", "NORMALIZATIONS"]
