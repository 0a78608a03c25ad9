"""Margins and their link to bit-error tolerance.

The output margin of a sample is its target logit minus the largest other logit:
positive when it is classified correctly, and the distance a perturbation of the
logits must cover to change a correct prediction.

The tolerable BER of a trained model is the largest bit error rate at which its
accuracy stays within a point of its own clean accuracy (:func:`tolerable_ber`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

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
    from mcel.evaluate import predict_logits

    return margins_from_logits(predict_logits(model, x, batch_size).cpu(), y.cpu())


# -- tolerable BER: how much error rate a model takes before it loses a point ------------

@dataclass(frozen=True)
class Tolerance:
    """A tolerable BER. ``censored``: the accuracy never fell below the threshold on the
    grid, so ``ber`` is the grid's largest BER and only a lower bound (">= ber")."""

    ber: float
    censored: bool


def tolerable_ber(bers: Sequence[float], accuracies: Sequence[float], clean: float,
                  drop: float = 0.01) -> Tolerance:
    """The largest BER at which the accuracy stays at or above ``clean - drop``.

    ``accuracies[i]`` is one model's mean accuracy at ``bers[i]``. The walk starts at
    ``(0, clean)`` and goes up the grid; at the first BER whose accuracy is below
    ``clean - drop`` the answer is interpolated linearly in BER between that point and
    the last one that was within (``(0, clean)`` itself when the first nonzero BER is
    already below). Only the first crossing counts: a model that recovers at a higher
    BER had already lost the point. When no BER falls below, the answer is the grid's
    largest BER (0 for a grid without nonzero BERs), ``censored``.

    A grid BER of 0 is the clean accuracy by definition and is not read; a NaN accuracy
    is a BER that was not measured and is skipped, like one missing from the grid (the
    interpolation bridges the gap).

    >>> t = tolerable_ber([0, 0.001, 0.005, 0.01], [0.95, 0.946, 0.934, 0.80], clean=0.95)
    >>> round(t.ber, 9), t.censored  # halfway from 0.946 at 0.001 to 0.934 at 0.005
    (0.003, False)
    >>> tolerable_ber([0.001, 0.005], [0.949, 0.945], clean=0.95)
    Tolerance(ber=0.005, censored=True)
    """
    if len(bers) != len(accuracies):
        raise ValueError(f"{len(bers)} BERs but {len(accuracies)} accuracies")
    if math.isnan(clean):
        raise ValueError("the clean accuracy is NaN: there is no threshold to stay within")
    floor = clean - drop
    points = sorted((float(b), float(a)) for b, a in zip(bers, accuracies)
                    if b > 0 and not math.isnan(a))
    if len({b for b, _ in points}) != len(points):
        raise ValueError(f"a BER appears twice in {sorted(bers)}")
    last_b, last_a = 0.0, float(clean)
    for b, a in points:
        if a < floor:
            # last_a >= floor > a: the line between the two crosses the floor once
            return Tolerance(last_b + (last_a - floor) / (last_a - a) * (b - last_b), False)
        last_b, last_a = b, a
    return Tolerance(last_b, True)


# -- survival: which samples stay correct under bit errors ---------------------------

@dataclass(frozen=True)
class MarginBin:
    """Survival of the clean-correct samples in one margin decile."""

    margin_low: float
    margin_high: float
    margin_mean: float
    survival_mean: float
    count: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, eq=False)
class Survival:
    """What :func:`survival` measured. Per sample, (N,): ``margin``, the clean output
    margin (``z_y - max_{c != y} z_c``); ``clean_correct`` (bool); ``survival``, the
    fraction of trials in which a clean-correct sample is still classified correctly
    (NaN for samples that are wrong without faults). Over the clean-correct samples:
    ``spearman``/``spearman_p``, the rank correlation between margin and survival (NaN
    when either is constant), and ``bins``, survival by margin decile (ranks split into
    10 near-equal groups; robust to tied margins). ``accuracy`` is the mean over
    trials."""

    ber: float
    trials: int
    seed: int
    error_model: dict[str, Any]
    margin: Tensor
    clean_correct: Tensor
    survival: Tensor
    spearman: float
    spearman_p: float
    bins: tuple[MarginBin, ...]
    accuracy: float
    clean_accuracy: float


def survival(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    ber: float,
    error_model=None,
    *,
    trials: int = 50,
    seed: int = 0,
    batch_size: int = 1024,
    progress: bool = False,
) -> Survival:
    """How often each sample stays correct under bit errors, against its clean margin:
    the Monte-Carlo engine (:func:`mcel.evaluate.evaluate`) at ``ber`` for ``trials``
    trials, each sample's correctness kept. Returns a `Survival`."""
    from mcel.evaluate import evaluate, predict_logits

    ber = float(ber)
    logits = predict_logits(model, x, batch_size).cpu()
    y = y.cpu()
    margin = margins_from_logits(logits, y)
    clean_correct = logits.argmax(1) == y
    res = evaluate(model, x, y, [ber], error_model, trials=trials, seed=seed,
                   batch_size=batch_size, progress=progress, keep_correct=True)
    correct = res.meta["correct"][ber].float()  # (trials, N)
    surv = correct.mean(0)
    surv = torch.where(clean_correct, surv, torch.full_like(surv, float("nan")))
    m = margin[clean_correct].double().numpy()
    s = surv[clean_correct].double().numpy()
    rho, p = _spearman(m, s)
    r0 = res.results[0]
    return Survival(ber=ber, trials=r0.trials, seed=seed, error_model=res.error_model,
                    margin=margin, clean_correct=clean_correct, survival=surv,
                    spearman=rho, spearman_p=p, bins=_margin_bins(m, s), accuracy=r0.mean,
                    clean_accuracy=res.clean_accuracy)


def _spearman(m, s) -> tuple[float, float]:
    """Spearman's rho of ``m`` and ``s`` and its p-value; NaN when either is constant."""
    import warnings

    import numpy as np
    from scipy import stats

    # the p-value treats samples as independent, but they share every trial's faults:
    # read it as a description, not as an exact test
    if not (len(m) >= 2 and np.ptp(m) > 0 and np.ptp(s) > 0):
        return float("nan"), float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = stats.spearmanr(m, s)
    return float(r.statistic), float(r.pvalue)


def _margin_bins(m, s) -> tuple[MarginBin, ...]:
    """Survival ``s`` by decile of margin ``m`` (fewer bins for fewer samples)."""
    import numpy as np

    order = np.argsort(m, kind="stable")
    chunks = np.array_split(order, min(10, len(order))) if len(order) else []
    return tuple(MarginBin(margin_low=float(m[c].min()), margin_high=float(m[c].max()),
                           margin_mean=float(m[c].mean()), survival_mean=float(s[c].mean()),
                           count=int(len(c))) for c in chunks)


# -- flip certificate: the fewest output-layer bit flips that change a prediction ----

def _flip_delta_tables(values: Tensor, bits: int, codes: Tensor) -> tuple[Tensor, Tensor]:
    """For each code ``u`` in ``codes`` and each ``t`` in 1..bits: the largest and the
    smallest level change ``values[v] - values[u]`` over all codes ``v`` that differ
    from ``u`` in exactly ``t`` bits. Returns two float64 tensors (len(codes), bits).

    Enumerating every ``v`` is what makes multi-bit flips of one weight exact: in two's
    complement, flipping the MSB and a low bit together is not the sum of two
    independent single-bit gains of the best kind.
    """
    n = 1 << bits
    vals = values.double().cpu()
    allv = torch.arange(n)
    pop = torch.zeros(n, dtype=torch.long)
    for k in range(bits):
        pop += (allv >> k) & 1
    u_all = codes.long().cpu()
    base = vals[u_all]
    out_max = torch.empty(len(u_all), bits, dtype=torch.float64)
    out_min = torch.empty(len(u_all), bits, dtype=torch.float64)
    for k in range(1, bits + 1):
        masks = allv[pop == k]  # every XOR pattern of k bits
        step = max(1, (1 << 22) // len(masks))
        for i in range(0, len(u_all), step):
            dv = vals[u_all[i:i + step, None] ^ masks[None, :]] - base[i:i + step, None]
            out_max[i:i + step, k - 1] = dv.amax(1)
            out_min[i:i + step, k - 1] = dv.amin(1)
    return out_max, out_min


def _output_layer(model: nn.Module):
    from mcel.errors import MCELError
    from mcel.quant import QuantLinear, quant_layers

    layers = quant_layers(model)
    if not layers:
        raise MCELError("the model has no quantized layers; quantize it first "
                        "(mcel.quant.quantize_model, or mcel train --quant int4)")
    name, layer = layers[-1]
    if not isinstance(layer, QuantLinear):
        raise MCELError(f"the last quantized layer '{name}' is a {type(layer).__name__}; "
                        "flip certificates need a Linear output layer")
    return name, layer


@torch.inference_mode()
def output_features(model: nn.Module, x: Tensor, batch_size: int = 1024) -> tuple[Tensor, Tensor]:
    """(h, logits): the input the output layer computes with (after its own activation
    quantization, if any) and the model's logits, both on the CPU."""
    _, layer = _output_layer(model)
    feats: list[Tensor] = []

    def hook(mod, inputs):
        feats.append(mod.quantize_input(inputs[0]).detach().reshape(len(inputs[0]), -1).cpu())

    was = model.training
    model.eval()
    handle = layer.register_forward_pre_hook(hook)
    try:
        dev = next(model.parameters()).device
        logits = torch.cat([model(x[i:i + batch_size].to(dev)).cpu()
                            for i in range(0, len(x), batch_size)])
    finally:
        handle.remove()
        model.train(was)
    return torch.cat(feats), logits


def flip_certificate(model: nn.Module, x: Tensor, y: Tensor, *, max_flips: int = 16,
                     batch_size: int = 1024) -> Tensor:
    """Per sample, the fewest bit flips in the output layer's stored codes that can
    change its prediction; the rest of the network is held fixed and fault-free.

    Exact for that layer (the last quantized ``Linear``). With penultimate features
    ``h`` (the layer's input, activation-quantized if the layer does that) and logits
    ``z = W h + b`` (``W`` the dequantized codes, ``b`` the float bias, never faulted),
    changing code ``W[c, j]`` from ``u`` to ``v`` moves ``z_c`` by
    ``(value(v) - value(u)) * scale_c * h_j``. A prediction of target ``y`` changes
    when some ``c != y`` reaches ``z_c >= z_y``: **ties count as a change**, so the
    certificate is a lower bound on flips for a strict change. Only rows ``c`` and
    ``y`` matter for competitor ``c``, and the rows are independent, so the answer is
    ``min_c`` of a grouped knapsack: each weight element of rows ``c`` and ``y`` offers,
    for ``t = 1..bits`` flips among its own bits, its best gain towards closing the gap
    ``z_y - z_c`` (every code at Hamming distance ``t`` is enumerated); a DP over the
    total flip count finds the smallest count whose best total gain covers the gap.

    Only the ``max_flips`` best elements per ``t`` can appear in an optimal solution
    (exchange argument: an element outside them can be swapped for an unused better
    one), so the DP runs over at most ``max_flips * bits`` elements per (sample, class).

    Returns int64 (N,): 0 for samples that are not strictly correct without faults,
    else 1..``max_flips``, or ``max_flips + 1`` meaning "more than ``max_flips``".
    Computed in float64; the logits can differ from the model's float32 ones in the
    last bits, which only matters for exact ties.
    """
    from mcel.errors import MCELError

    if max_flips < 1:
        raise MCELError(f"max_flips must be >= 1, got {max_flips}")
    _, layer = _output_layer(model)
    qt = layer.quantized_weight()
    bits = qt.bits
    codes = qt.codes.cpu().long()  # (C, F)
    n_cls, n_feat = codes.shape
    scale = qt.scale.double().cpu().reshape(-1).expand(n_cls)  # per tensor or per row
    uniq, inv = codes.unique(return_inverse=True)
    dmax_u, dmin_u = _flip_delta_tables(qt.table(), bits, uniq)
    dmax = dmax_u[inv] * scale[:, None, None]  # (C, F, bits): largest change of W[c, j]
    dmin = dmin_u[inv] * scale[:, None, None]
    w = qt.dequantize().double().cpu()
    bias = layer.effective_bias()
    b = (bias.detach().double().cpu() if bias is not None
         else torch.zeros(n_cls, dtype=torch.float64))

    h_all, _ = output_features(model, x, batch_size)
    h_all = h_all.double()
    y = y.cpu().long()
    cap = int(max_flips)
    out = torch.empty(len(y), dtype=torch.long)
    # Keep the (n, C, 2F, bits) gain tensor near 4M elements.
    step = max(1, (1 << 22) // max(1, n_cls * 2 * n_feat * bits))
    for i in range(0, len(y), step):
        out[i:i + step] = _certificate_chunk(h_all[i:i + step], y[i:i + step], w=w, b=b,
                                             dmax=dmax, dmin=dmin, cap=cap)
    return out


def _certificate_chunk(h: Tensor, y: Tensor, *, w: Tensor, b: Tensor, dmax: Tensor,
                       dmin: Tensor, cap: int) -> Tensor:
    n, n_feat = h.shape
    n_cls, _, bits = dmax.shape
    z = h @ w.T + b  # (n, C)
    zy = z.gather(1, y[:, None])
    gap = zy - z  # (n, C): what competitor c must gain; <= 0 for c == y
    hp = h[:, None, :, None]
    pos = hp >= 0
    # Best increase of z_c with t flips in W[c, j]: h_j >= 0 wants the largest level change.
    up = torch.where(pos, dmax[None] * hp, dmin[None] * hp)  # (n, C, F, bits)
    # Best decrease of z_y with t flips in W[y, j].
    dmax_y, dmin_y = dmax[y], dmin[y]  # (n, F, bits)
    down = torch.where(pos[:, 0], -dmin_y * h[:, :, None], -dmax_y * h[:, :, None])
    items = torch.cat([up, down[:, None].expand(n, n_cls, n_feat, bits)], dim=2)
    # "At most t flips": a worse-than-nothing option is never taken.
    gains = items.clamp_min_(0)  # (n, C, 2F, bits)
    for t in range(1, bits):  # (a loop: cummax over a short last dim is slow)
        torch.maximum(gains[..., t], gains[..., t - 1], out=gains[..., t])
    n_items = gains.shape[2]
    k = min(cap * bits, n_items)
    if k < n_items:
        keep = torch.zeros(gains.shape[:3], dtype=torch.bool)
        for t in range(bits):
            top = gains[..., t].topk(min(cap, n_items), dim=2).indices
            keep.scatter_(2, top, True)
        idx = keep.double().topk(k, dim=2).indices  # every kept item, padded with others
        gains = gains.gather(2, idx[..., None].expand(n, n_cls, k, bits))
    # best[..., T]: the largest total gain with at most T flips (grouped knapsack).
    best = torch.zeros(n, n_cls, cap + 1, dtype=torch.float64)
    for item in range(gains.shape[2]):
        g = gains[:, :, item]
        new = best.clone()
        for t in range(1, min(bits, cap) + 1):
            new[..., t:] = torch.maximum(new[..., t:], best[..., :-t] + g[..., t - 1:t])
        best = new
    reached = best >= gap[..., None]  # (n, C, cap+1); T = 0 covers gap <= 0
    first = torch.where(reached.any(2), reached.float().argmax(2),
                        torch.full((n, n_cls), cap + 1))
    first.scatter_(1, y[:, None], cap + 1)  # c == y is no competitor
    return first.amin(1).long()


__all__ = ["output_margins", "margins_from_logits", "output_features", "flip_certificate",
           "survival", "Tolerance", "tolerable_ber"]
