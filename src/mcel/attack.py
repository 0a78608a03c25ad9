"""Worst-case bit flips: a progressive bit search over the stored codes.

Random faults answer "how accurate at BER p"; this answers "how few flips, chosen by an
adversary (or by bad luck), break the model". It follows the Bit-Flip Attack's
progressive bit search (Rakin et al., ICCV 2019), on mcel's own stored codes, in the
number format they are stored in:

1. one forward and backward on an attack batch gives the loss gradient ``g`` of every
   stored weight value;
2. for every weight and every bit of its code, flipping that bit moves the value by a
   known ``delta = (table[code ^ bit] - table[code]) * scale``; the first-order loss gain
   ``g * delta`` ranks the candidates, and the ``candidates`` best of each layer are kept;
3. each candidate is flipped, the attack batch's loss measured, and the flip undone; the
   one that raises the loss most stays flipped;
4. repeat up to ``budget`` flips, measuring accuracy on held-out test images after each.

So each flip costs one forward + backward on the attack batch plus ``layers x
candidates`` forwards on it, and a candidate's forward re-runs only the modules from its
layer on (the ones before it give what they gave in step 1, and replay that). The model
is restored bit for bit afterwards (checked), and the search is deterministic: ties are
broken by layer order and flat index.

`attack_run` attacks a trained run folder with `AttackSettings` (what ``mcel attack``
runs, once per run folder or once for every run of a sweep's database): the attack batch
is drawn from the training split with the settings' seed, accuracy is measured on the
first test images, and the result records the settings, so a folder of results can tell
whether a new request matches them.
"""

from __future__ import annotations

import fnmatch
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mcel.engine import MemoryImage, state_digest
from mcel.errors import MCELError
from mcel.evaluate import accuracy
from mcel.faults.sampler import FlipMask
from mcel.quant import quant_layers


@dataclass(frozen=True)
class Flip:
    """One flipped bit: ``layer``'s stored code at flat ``index``, bit ``bit`` (0 = LSB)."""

    layer: str
    index: int
    bit: int


@dataclass
class AttackResult:
    """The flips in the order they were chosen; ``accuracy[k]`` is the test accuracy
    after the first ``k`` flips (``accuracy[0]``: clean) and ``loss[k]`` the attack
    batch's loss."""

    flips: list[Flip]
    accuracy: list[float]
    loss: list[float]
    seconds: float = 0.0
    meta: dict = field(default_factory=dict)

    def flips_to(self, level: float) -> int | None:
        """The fewest flips after which accuracy is at or below ``level`` (None: the
        budget did not get there)."""
        return next((k for k, a in enumerate(self.accuracy) if a <= level), None)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AttackResult:
        """The result a JSON file of ``to_dict`` holds (one MCELError line if it is not
        one)."""
        try:
            return cls(flips=[Flip(**f) for f in d["flips"]],
                       accuracy=[float(a) for a in d["accuracy"]],
                       loss=[float(v) for v in d["loss"]],
                       seconds=float(d.get("seconds", 0.0)), meta=dict(d.get("meta", {})))
        except (KeyError, TypeError, ValueError) as e:
            raise MCELError(f"not an attack result ({type(e).__name__}: {e}); was it written "
                            "by 'mcel attack'?") from None


@dataclass(frozen=True)
class AttackSettings:
    """Everything that decides an attack's result on a run (where the data lives and the
    device do not): the defaults of ``mcel attack``. ``fmt`` None: the run's own number
    format; ``levels`` None: `default_levels` of the run's dataset; ``stop``: stop once
    accuracy is at or below the lowest level; ``seed``: the attack batch's draw."""

    budget: int = 20
    candidates: int = 5
    fmt: str | None = None
    layers: tuple[str, ...] = ("*",)
    attack_samples: int = 128
    test_samples: int = 1000
    levels: tuple[float, ...] | None = None
    stop: bool = False
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["layers"] = list(self.layers)
        d["levels"] = None if self.levels is None else list(self.levels)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AttackSettings:
        levels = d.get("levels")
        return cls(**{**d, "layers": tuple(d.get("layers", ("*",))),
                      "levels": None if levels is None else tuple(levels)})


def default_levels(num_classes: int) -> list[float]:
    """Accuracies whose flip counts are reported unless asked otherwise: half, and 1.1x
    chance (a model at chance answers at random; 10% over it is where it is broken)."""
    return [0.5, round(1.1 * (1.0 / num_classes), 4)]


def attack_run(run_dir: str | Path, settings: AttackSettings = AttackSettings(), *,
               device: str = "cpu", data_dir: str | None = None) -> AttackResult:
    """Attack the trained run in ``run_dir`` with ``settings``; ``data_dir``: the dataset
    folder (default: the run's own). ``meta`` records the run folder, the format attacked,
    the flips to each level (None: not within the flips made) and the settings."""
    import torch

    from mcel.data import dataset_info, load_dataset
    from mcel.io import JSON_UNITS
    from mcel.quant import set_format
    from mcel.runs import load_run

    model, config = load_run(run_dir, device)
    if settings.fmt:
        set_format(model, settings.fmt)
    data_dir = data_dir or config.data_dir
    # the attacker's batch comes from the training split, drawn with the seed; accuracy
    # is measured on held-out test images
    x_tr, y_tr = load_dataset(config.dataset, "train", data_dir)
    pick = torch.randperm(len(y_tr), generator=torch.Generator().manual_seed(settings.seed))
    pick = pick[:settings.attack_samples]
    x_te, y_te = load_dataset(config.dataset, "test", data_dir, limit=settings.test_samples)
    levels = (list(settings.levels) if settings.levels is not None
              else default_levels(dataset_info(config.dataset, data_dir).num_classes))
    res = bit_flip_attack(model, (x_tr[pick], y_tr[pick]), (x_te, y_te),
                          budget=settings.budget, candidates=settings.candidates,
                          layers=settings.layers, stop_at=min(levels) if settings.stop else None)
    res.meta.update(run_dir=str(run_dir), fmt=settings.fmt or config.fmt, seed=settings.seed,
                    flips_to={f"{lv:g}": res.flips_to(lv) for lv in levels},
                    units=JSON_UNITS, settings=settings.to_dict())
    return res


REPLAY = True  # tests turn it off to check that replaying changes nothing


class _Prefix:
    """The outputs of a model's leaf modules on one forward, in call order. A candidate
    flip in a layer changes nothing that runs before that layer's first call (the model
    is in eval mode), so a forward for it replays those outputs instead of computing
    them: half the work of a forward, on average over the layers."""

    def __init__(self, model: nn.Module) -> None:
        self.leaves = [m for m in model.modules() if next(m.children(), None) is None]
        self.calls: list[tuple[nn.Module, Tensor | None]] = []

    @contextmanager
    def recording(self) -> Iterator[None]:
        self.calls = []
        hooks = [m.register_forward_hook(self._record) for m in self.leaves]
        try:
            yield
        finally:
            for h in hooks:
                h.remove()

    def _record(self, module: nn.Module, args: Any, output: Any) -> None:
        # a copy: in-place ops later in the forward must not change what is replayed
        out = output.detach().clone() if isinstance(output, Tensor) else None
        self.calls.append((module, out))

    @contextmanager
    def replaying(self, layer: nn.Module) -> Iterator[None]:
        """Modules whose every call came before ``layer``'s first return those calls'
        outputs (copies, in order) instead of running."""
        first = next((i for i, (m, _) in enumerate(self.calls) if m is layer), 0)
        before: dict[nn.Module, list[Tensor]] = {}
        for m, out in self.calls[:first]:
            before.setdefault(m, []).append(out)
        later = {m for m, _ in self.calls[first:]}
        patched = [m for m, outs in before.items()  # hooks of others would run twice
                   if REPLAY and m not in later and all(o is not None for o in outs)
                   and not m._forward_hooks and not m._forward_pre_hooks]
        for m in patched:
            outs = iter(before[m])
            m.forward = lambda *a, _outs=outs, **k: next(_outs).clone()
        try:
            yield
        finally:
            for m in patched:
                del m.forward


def _grads(model: nn.Module, image: MemoryImage, x: Tensor, y: Tensor) -> tuple[float, list]:
    """The attack batch's loss and its gradient with respect to every stored value."""
    leaves = []
    for layer, slot in image.weights:
        leaf = slot.values.detach().requires_grad_(True)
        layer.weight_override = leaf
        leaves.append(leaf)
    try:
        with torch.enable_grad():
            loss = F.cross_entropy(model(x), y)
            grads = torch.autograd.grad(loss, leaves)
    finally:
        for layer, slot in image.weights:
            layer.weight_override = slot.values
    return loss.item(), list(grads)


def _best_bits(slot, grad: Tensor, k: int) -> list[tuple[float, int, int]]:
    """The ``k`` (gain, index, bit) of a layer with the largest first-order loss gain."""
    qt = slot.qt
    codes = qt.codes.reshape(-1).long()
    table = qt.table()
    g = grad.reshape(-1)
    scale = qt.scale.expand_as(qt.codes).reshape(-1) if qt.scale.numel() > 1 else qt.scale
    base = table[codes]
    best: list[tuple[float, int, int]] = []
    for b in range(qt.bits):
        gain = g * (table[codes ^ (1 << b)] - base) * scale.reshape(-1)
        top = torch.topk(gain, min(k, gain.numel()))
        best += [(v, i, b) for v, i in zip(top.values.tolist(), top.indices.tolist())]
    best.sort(key=lambda t: (-t[0], t[1], t[2]))
    return best[:k]


def _mask(slot, index: int, bit: int) -> FlipMask:
    codes = slot.qt.codes
    return FlipMask(torch.tensor([index], device=codes.device),
                    torch.tensor([1 << bit], dtype=codes.dtype, device=codes.device),
                    1, codes.numel() * slot.qt.bits)


@torch.inference_mode()
def _loss(model: nn.Module, x: Tensor, y: Tensor) -> float:
    return F.cross_entropy(model(x), y).item()


def bit_flip_attack(model: nn.Module, attack: tuple[Tensor, Tensor], test: tuple[Tensor, Tensor],
                    *, budget: int = 20, candidates: int = 5,
                    layers: Sequence[str] = ("*",), batch_size: int = 1024,
                    stop_at: float | None = None) -> AttackResult:
    """Progressive bit search over ``model``'s stored codes (see the module docstring).

    ``attack``: the ``(x, y)`` batch whose loss the search raises; ``test``: held-out
    images on which accuracy is reported after every flip. ``layers``: fnmatch patterns
    of the quantized layers the search may flip. ``stop_at``: stop early once test
    accuracy is at or below this. Codes are attacked in each layer's own number format
    (``mcel.quant.set_format`` changes it).
    """
    if budget < 1 or candidates < 1:
        raise MCELError(f"budget and candidates must be >= 1, got {budget} and {candidates}")
    allowed = {n for n, _ in quant_layers(model)
               if any(fnmatch.fnmatch(n, p) for p in layers)}
    if not allowed:
        names = ", ".join(n for n, _ in quant_layers(model)) or "none"
        raise MCELError(f"no quantized layer matches {list(layers)}; the layers are: {names}")
    dev = next(model.parameters()).device
    xa, ya = (t.to(dev) for t in attack)
    xt, yt = (t.to(dev) for t in test)
    before, modes = state_digest(model), {m: m.training for m in model.modules()}
    model.eval()
    t0 = time.perf_counter()
    flips: list[Flip] = []
    try:
        with MemoryImage(model, None) as image:
            by_name = {slot.name.rsplit(".", 1)[0]: slot for _, slot in image.weights}
            accs = [accuracy(model, xt, yt, batch_size)]
            losses = [_loss(model, xa, ya)]
            while len(flips) < budget and not (stop_at is not None and accs[-1] <= stop_at):
                flip, loss = _one_flip(model, image, (xa, ya), allowed=allowed,
                                       candidates=candidates)
                flips.append(flip)
                by_name[flip.layer].apply(_mask(by_name[flip.layer], flip.index, flip.bit))
                losses.append(loss)
                accs.append(accuracy(model, xt, yt, batch_size))
    finally:
        for m, mode in modes.items():
            m.training = mode
    if state_digest(model) != before:  # the image restores every code; never expected
        raise RuntimeError("the attack changed the model's state")
    return AttackResult(flips, accs, losses, time.perf_counter() - t0,
                        meta={"attack_samples": len(ya), "test_samples": len(yt),
                              "candidates": candidates, "layers": sorted(allowed)})


def _one_flip(model, image, data, *, allowed, candidates) -> tuple[Flip, float]:
    """The flip, among each allowed layer's best candidates, that raises the loss on
    ``data`` (the attack's samples) most."""
    xa, ya = data
    prefix = _Prefix(model)
    with prefix.recording():
        _, grads = _grads(model, image, xa, ya)
    best: tuple[float, Flip] | None = None
    for (layer, slot), grad in zip(image.weights, grads):
        name = slot.name.rsplit(".", 1)[0]
        if name not in allowed:
            continue
        for _, index, bit in _best_bits(slot, grad, candidates):
            slot.apply(_mask(slot, index, bit))
            with prefix.replaying(layer):
                loss = _loss(model, xa, ya)
            slot.undo()
            if best is None or loss > best[0]:
                best = (loss, Flip(name, index, bit))
    assert best is not None
    return best[1], best[0]


__all__ = ["AttackResult", "AttackSettings", "Flip", "attack_run", "bit_flip_attack",
           "default_levels"]
