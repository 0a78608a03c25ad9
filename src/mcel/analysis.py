"""Margins and their link to bit-error tolerance.

The output margin of a sample is its target logit minus the largest other logit:
positive when it is classified correctly, and the distance a perturbation of the
logits must cover to change a correct prediction.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def margins_from_logits(logits: Tensor, y: Tensor) -> Tensor:
    """Per-sample ``z_y - max_{c != y} z_c``.

    >>> margins_from_logits(torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]]), torch.tensor([0, 1]))
    tensor([ 1.5000, -2.0000])
    """
    target = logits.gather(1, y.view(-1, 1)).squeeze(1)
    others = logits.scatter(1, y.view(-1, 1), float("-inf"))
    return target - others.amax(1)


def output_margins(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 1024) -> Tensor:
    """Output margins of ``model`` (its quantized, fault-free forward) on ``(x, y)``."""
    from mcel.train import predict_logits

    return margins_from_logits(predict_logits(model, x, batch_size).cpu(), y.cpu())
