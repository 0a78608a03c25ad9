"""Applying bit errors to a quantized model, without copying it.

``MemoryImage`` is what a memory holds for a model: the codes and scales of every
quantized layer's weights (and, when targeted, biases). The model's layers read their
weights from the image (``weight_override``), so a trial is::

    flip mask -> XOR into the codes -> dequantize only the flipped elements -> forward
              -> XOR the same mask again (exact undo) -> restore those elements

No deep copy, no re-quantization per trial, and the model's parameters and buffers are
never written: after any evaluation the model is bit-identical to before.

Transient faults (compute errors, error-injection training, activation faults) are
drawn afresh in every forward through the layers' ``weight_fault``/``act_fault`` hooks,
each call with its own key ``(seed, call, name)`` so they stay reproducible.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from mcel.errors import MCELError
from mcel.faults import BitErrorModel, FaultKey, FlipMask, apply_mask_, inject, sample_mask
from mcel.faults.sampler import reads_codes
from mcel.quant import QuantizedTensor, quant_layers
from mcel.quant.core import SCHEMES, code_dtype, levels_to_codes
from mcel.quant.stored import bias_bits, no_stored_layers_error, stored_layers


@dataclass(frozen=True)
class _Redraw:
    """An applied mask kept as its key. Drawn again it is the same mask, as long as the
    draw does not read the stored bits (no asymmetric rates, no stuck cells): then
    nothing of the trial stays in memory while the forward runs."""

    error_model: BitErrorModel
    seed: int
    trial: int

    def mask(self, slot: _Slot) -> FlipMask:
        return sample_mask(slot.qt.codes, slot.qt.bits, self.error_model, seed=self.seed,
                           trial=self.trial, name=slot.name)


@dataclass
class _Slot:
    """One stored tensor: its codes (the truth) and the float values the forward reads."""

    name: str
    qt: QuantizedTensor
    values: Tensor  # dequantized, shaped like the parameter
    masks: list = field(default_factory=list)  # applied FlipMasks / _Redraws, oldest first

    def apply(self, mask: FlipMask, redraw: _Redraw | None = None) -> None:
        """XOR ``mask`` into the codes and refresh only the values it touches; keep
        ``redraw`` (its key) instead of the mask when given."""
        _xor_and_refresh(self.qt, self.values.view(-1), mask)
        self.masks.append(mask if redraw is None else redraw)

    def undo(self) -> None:
        """Undo the newest mask: XOR it out again and refresh the same values, which
        gives back exactly the clean ones (values are ``table[code] * scale``), so
        nothing is saved per trial but the sparse mask, or only its key."""
        entry = self.masks.pop()
        mask = entry.mask(self) if isinstance(entry, _Redraw) else entry
        _xor_and_refresh(self.qt, self.values.view(-1), mask)


def _numpy_ok(qt: QuantizedTensor, values: Tensor) -> bool:
    # CPU float32 (the usual case): numpy's fancy indexing is ~5x faster than torch's
    # index_put on CPU and gives the same IEEE products (one float32 multiply each).
    # (IEEE codes are decoded, not looked up in a table: the torch path)
    return (values.device.type == "cpu" and values.dtype == torch.float32
            and qt.scheme != "float"
            and qt.scale.dtype == torch.float32 and not qt.scale.requires_grad)


def _xor_and_refresh(qt: QuantizedTensor, values: Tensor, mask: FlipMask) -> None:
    """Apply ``mask`` to ``qt.codes`` and rewrite ``values`` at its indices from the new
    codes (exactly ``qt.dequantize_at``)."""
    if not _numpy_ok(qt, values):
        apply_mask_(qt.codes, mask)
        values.index_copy_(0, mask.index, qt.dequantize_at(mask.index).to(values.dtype))
        return
    idx = mask.index.numpy()
    codes = qt.codes.view(-1).numpy()
    codes[idx] ^= mask.xor.numpy()  # indices are unique: each code is touched once
    new = qt.table().numpy()[codes[idx]]
    scale = qt.scale.detach().numpy().reshape(-1)
    if scale.size == 1:
        new *= scale[0]
    else:  # channel scales run along dim 0
        new *= scale[idx // qt.codes[0].numel()]
    values.numpy()[idx] = new


@dataclass
class InjectionStats:
    flipped_bits: int = 0
    total_bits: int = 0

    @property
    def empirical_rate(self) -> float:
        return self.flipped_bits / self.total_bits if self.total_bits else 0.0


class MemoryImage:
    """The stored codes of a quantized model, wired into its forward.

    Use as a context manager; inside it the model computes with the image's values.
    ``error_model`` is needed here only when it targets biases (their codes are then kept
    too); leaving the block undoes every flip. The stored layers are mcel's quantized
    layers, Brevitas layers, and, when ``weights`` names an IEEE format (``"float32"``,
    ``"bfloat16"``, ``"float16"``), plain ``nn.Linear``/``nn.Conv1d``/``2d``/``3d`` layers, whose
    codes are their weights' bit patterns (`mcel.quant.stored`).

    >>> import torch
    >>> from mcel.faults import BitErrorModel
    >>> from mcel.models import create_model
    >>> from mcel.quant import quantize_model
    >>> model = quantize_model(create_model("mlp", 10, (1, 8, 8)), "int4").eval()
    >>> x = torch.randn(4, 1, 8, 8)
    >>> clean = model(x)
    >>> error_model = BitErrorModel(ber=0.05)
    >>> with MemoryImage(model, error_model) as image:
    ...     stats = image.inject(error_model, seed=0, trial=3)
    ...     faulty = model(x)
    >>> stats.flipped_bits > 0, torch.equal(faulty, clean), torch.equal(model(x), clean)
    (True, False, True)
    """

    def __init__(self, model: nn.Module, error_model: BitErrorModel | None = None, *,
                 weights: str | None = None) -> None:
        layers = stored_layers(model, weights)
        if not layers:
            raise no_stored_layers_error()
        odd = next((s for s in layers if s.layer.weight.dtype != torch.float32), None)
        if odd is not None:  # the image keeps float32 values; a mixed forward would fail late
            raise MCELError(f"layer '{odd.name}' holds {odd.layer.weight.dtype} weights; the "
                            "fault engine computes in float32: evaluate model.float()"
                            + (f" (weights='{weights}' still stores them as {weights})"
                               if weights else ""))
        self.model = model
        self.layers = layers
        self.weights: list[tuple[object, _Slot]] = []
        self.biases: list[tuple[object, _Slot]] = []
        want_bias = error_model is not None and "biases" in error_model.targets
        with torch.no_grad():
            for s in layers:
                qt, values = s.weight()
                self.weights.append((s.layer, _Slot(f"{s.name}.weight", qt, values)))
                if want_bias and s.layer.bias is not None:
                    qb, bvalues = s.bias()
                    self.biases.append((s.layer, _Slot(f"{s.name}.bias", qb, bvalues)))

    def __enter__(self) -> MemoryImage:
        for s in self.layers:  # e.g. plain float layers learn to read the overrides
            s.source.attach(s.layer)
        for layer, slot in self.weights:
            layer.weight_override = slot.values
        for layer, slot in self.biases:
            layer.bias_override = slot.values
        return self

    def __exit__(self, *exc) -> None:
        self.restore()
        for layer, _ in self.weights:
            layer.weight_override = None
        for layer, _ in self.biases:
            layer.bias_override = None
        for s in self.layers:
            s.source.detach(s.layer)

    def slots(self, error_model: BitErrorModel) -> Iterator[_Slot]:
        for _, slot in self.weights:
            if error_model.applies_to(slot.name.rsplit(".", 1)[0], "weights"):
                yield slot
        for _, slot in self.biases:
            if error_model.applies_to(slot.name.rsplit(".", 1)[0], "biases"):
                yield slot

    def stored(self) -> tuple[tuple[str, int], ...]:
        """Every stored tensor as ``(name, stored bits)``, in slot order: what an error
        model that knows addresses (an error map) is placed on (`ErrorModel.place`)."""
        return tuple((s.name, s.qt.numel_bits) for _, s in self.weights + self.biases)

    def codes(self) -> list[tuple[str, QuantizedTensor]]:
        """Every stored tensor as ``(name, its codes and scale)``, in slot (address) order."""
        return [(s.name, s.qt) for _, s in self.weights + self.biases]

    @torch.no_grad()
    def inject_masks(self, masks: dict[str, FlipMask]) -> InjectionStats:
        """Flip given bits: ``masks`` maps stored tensor names (as `stored` names them) to
        the flips of each, e.g. read from a faulty memory dump (`mcel.dumps`)."""
        stats = InjectionStats(total_bits=self.total_bits)
        slots = {s.name: s for _, s in self.weights + self.biases}
        for name, mask in masks.items():
            slots[name].apply(mask)
            stats.flipped_bits += mask.nbits_flipped
        return stats

    @property
    def total_bits(self) -> int:
        return sum(s.qt.numel_bits for _, s in self.weights + self.biases)

    @torch.no_grad()
    def inject(self, error_model: BitErrorModel, *, seed: int, trial: int) -> InjectionStats:
        """Flip the bits of trial ``trial`` (persistent faults) into the stored codes."""
        stats = InjectionStats()
        error_model = error_model.place(self.stored())
        ecc = getattr(error_model, "ecc", None)
        for slot, mask in self._draw(error_model, seed, trial):
            # a redrawable mask is dropped now and drawn again by restore(): it would
            # otherwise stay live through the forward (memory ~ BER x stored bits)
            redraw = None if ecc or reads_codes(error_model, slot.qt.bits) else _Redraw(
                error_model, seed, trial)
            slot.apply(mask, redraw)
            stats.flipped_bits += mask.nbits_flipped
            stats.total_bits += mask.nbits_total
        return stats

    def _draw(self, error_model, seed: int, trial: int) -> list[tuple[_Slot, FlipMask]]:
        """The masks of one trial, slot by slot; with ``ecc`` only the flips that SEC-DED
        does not correct (`mcel.faults.ecc`), over the words of the whole image."""
        pairs = [(slot, sample_mask(slot.qt.codes, slot.qt.bits, error_model, seed=seed,
                                    trial=trial, name=slot.name))
                 for slot in self.slots(error_model)]
        k = getattr(error_model, "ecc", None)
        if not k:
            return pairs
        from mcel.faults.ecc import correct
        from mcel.faults.layout import slot_addresses

        first = slot_addresses(self.stored())
        kept = correct([(first[s.name], s.qt.bits, m) for s, m in pairs], k=k,
                       rate=error_model.mean_rate(), seed=seed, trial=trial,
                       ways=error_model.ecc_interleave)
        return [(s, m) for (s, _), m in zip(pairs, kept)]

    @torch.no_grad()
    def stacked_values(
        self, error_model: BitErrorModel, *, seed: int, trials: Sequence[int]
    ) -> tuple[list[Tensor], list[Tensor], list[InjectionStats]]:
        """The values of every weight (and bias) slot under each of ``trials``, stacked
        along a new dim 0: one copy of the weights per trial, for running the trials as
        one batched forward. Each trial's faults are exactly those of `inject` with the
        same key; the image itself is left unchanged."""
        stats = [InjectionStats() for _ in trials]
        error_model = error_model.place(self.stored())
        drawn = [{id(s): m for s, m in self._draw(error_model, seed, t)} for t in trials]
        targeted = set(drawn[0]) if drawn else set()
        out: list[list[Tensor]] = [[], []]
        for kind, pairs in enumerate((self.weights, self.biases)):
            for _, slot in pairs:
                stack = slot.values.unsqueeze(0).repeat(len(trials), *[1] * slot.values.dim())
                if id(slot) in targeted:
                    for k in range(len(trials)):
                        mask = drawn[k][id(slot)]
                        slot.apply(mask)  # XOR + refresh the touched values, copy them out
                        stack[k].view(-1)[mask.index] = slot.values.view(-1)[mask.index]
                        slot.undo()
                        stats[k].flipped_bits += mask.nbits_flipped
                        stats[k].total_bits += mask.nbits_total
                out[kind].append(stack)
        return out[0], out[1], stats

    @torch.no_grad()
    def restore(self) -> None:
        """Undo every injection, newest first (XOR is its own inverse)."""
        for _, slot in self.weights + self.biases:
            while slot.masks:
                slot.undo()


class _CallCounter:
    """Gives every transient forward its own trial number, so redraws are reproducible."""

    def __init__(self, first: int = 0) -> None:
        self.n = first

    def next(self) -> int:
        self.n += 1
        return self.n - 1


class _Transient:
    """The faults of one tensor, redrawn at every forward (trial = the forward counter)."""

    def __init__(self, error_model: BitErrorModel, seed: int, name: str,
                 counter: _CallCounter, *, step: int = 0) -> None:
        self.error_model, self.seed, self.name, self.counter = error_model, seed, name, counter
        self.step = step

    def _key(self) -> FaultKey:
        return FaultKey(seed=self.seed, trial=self.counter.next(), name=self.name,
                        step=self.step)

    def __call__(self, qt: QuantizedTensor) -> QuantizedTensor:
        """The stored tensor with this forward's faults (a faulty copy of the codes)."""
        return dataclasses.replace(
            qt, codes=inject(qt.codes, qt.bits, self.error_model, self._key()))

    def faulty_values(self, layer) -> Tensor | None:
        """``layer``'s faulty weights, exactly ``self(layer.quantized_weight())
        .dequantize()``, computed from the float weights with only the flipped elements
        encoded, flipped and decoded; None when the draw reads the stored bits
        (asymmetric rates, stuck cells): then the caller takes the whole-tensor path."""
        bits, scheme = layer.bits, layer.scheme
        if reads_codes(self.error_model, bits):
            return None
        w = layer.weight.detach().float().contiguous()  # channels_last: flat = logical order
        levels, scale = SCHEMES.get(scheme).levels(w, bits, layer.granularity, layer.clip)
        if levels.data_ptr() == w.data_ptr():
            levels = levels.clone()
        # the draw does not read the codes: a buffer of their size and type stands in,
        # and takes the flipped codes at the flipped positions only
        stand_in = torch.empty(w.shape, dtype=code_dtype(bits), device=w.device)
        key = self._key()
        mask = sample_mask(stand_in, bits, self.error_model, seed=key.seed, trial=key.trial,
                           name=key.name, step=key.step)
        index = mask.index
        codes = levels_to_codes(levels.reshape(-1)[index], scheme, bits, layer.fmt)
        stand_in.view(-1)[index] = codes ^ mask.xor
        faulty = QuantizedTensor(stand_in, scale, bits, layer.fmt, scheme)
        # as quantize_values: "+ 0" makes a rounded -0.0 the table's +0.0
        values = levels.mul_(scale).add_(0.0)
        values.view(-1)[index] = faulty.dequantize_at(index)
        return values


# FaultKey.step of the faults drawn while training: a stream of their own, so that no
# evaluation (step 0) ever meets a fault pattern the model was trained on
TRAINING_STEP = 1


@contextlib.contextmanager
def transient_weight_faults(model: nn.Module, error_model: BitErrorModel | None, *, seed: int,
                            first_call: int = 0, targets: tuple[str, ...] = ("weights",),
                            step: int = 0):
    """Redraw faults in every forward (compute errors; error-injection training).

    Weights get faults when ``"weights"`` is targeted, inputs of quantized layers when
    ``"activations"`` is (that needs ``act_bits``). Gradients pass straight through.
    """
    if error_model is None:
        yield
        return
    layers = quant_layers(model)
    # draws per forward: up to one per layer and kind; a call's first draw number leaves
    # room for all of them (weights and activations used to overlap the next call's)
    kinds = sum(k in targets for k in ("weights", "activations"))
    counter = _CallCounter(first_call * max(1, len(layers) * max(1, kinds)))
    hooked = []
    try:
        for name, layer in layers:
            if "weights" in targets and error_model.applies_to(name, "weights"):
                layer.weight_fault = _Transient(error_model, seed, f"{name}.weight", counter,
                                                step=step)
                hooked.append(layer)
            if "activations" in targets and error_model.applies_to(name, "activations"):
                if layer.act_bits is None:
                    raise MCELError(f"activation faults need quantized activations, but layer "
                                    f"'{name}' has none; train with --act-bits K")
                layer.act_fault = _Transient(error_model, seed, f"{name}.act", counter,
                                             step=step)
                hooked.append(layer)
        yield
    finally:
        for layer in hooked:
            layer.weight_fault = None
            layer.act_fault = None


def faults_during(model: nn.Module, error_model: BitErrorModel | str | float, *,
                  seed: int = 0, step: int = 0):
    """Error-injection training in your own loop: every forward inside the block sees
    fresh transient bit errors in the stored codes of ``model``'s quantized layers
    (weights, and activations where the error model targets them), with gradients
    passed straight through to the float weights::

        for step, (x, y) in enumerate(loader):
            with mcel.faults_during(model, 0.01, seed=0, step=step):
                loss = loss_fn(model(x), y)
            opt.zero_grad(); loss.backward(); opt.step()

    ``error_model`` is a `BitErrorModel`, a spec (``"ber=0.01,protected=-1"``) or a
    plain BER. ``step`` numbers the forwards (pass your step counter: the k-th forward
    inside the block is forward ``step + k``), so every step draws other faults, the same
    ones for the same seed and step; the faults come from the training stream
    (``TRAINING_STEP``), which no evaluation ever draws. ``mcel train`` uses this block
    around each epoch.
    """
    from mcel.faults import parse_error_model

    if isinstance(error_model, (int, float)) and not isinstance(error_model, bool):
        error_model = BitErrorModel(ber=float(error_model))
    elif isinstance(error_model, str):
        error_model = parse_error_model(error_model)
    if not isinstance(error_model, BitErrorModel):
        raise MCELError(f"error_model must be a BitErrorModel, a spec or a BER, got "
                        f"{type(error_model).__name__}")
    if not quant_layers(model):
        raise MCELError("the model has no quantized layers; quantize it first "
                        "(mcel.quantize_model)")
    if "biases" in error_model.targets:
        raise MCELError("faults during training hit weights and activations, not biases; "
                        "drop 'biases' from targets")
    em = dataclasses.replace(error_model, mode="transient")
    return transient_weight_faults(model, em, seed=seed, first_call=step,
                                   targets=em.targets, step=TRAINING_STEP)


def state_digest(model: nn.Module) -> str:
    """SHA-256 over every parameter and buffer: proves an evaluation changed nothing."""
    import hashlib

    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        if v.numel():  # hashed through the buffer protocol: no copy of the weights
            h.update(v.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


__all__ = ["MemoryImage", "InjectionStats", "transient_weight_faults", "faults_during",
           "state_digest",
           "bias_bits", "quant_layers", "TRAINING_STEP"]
