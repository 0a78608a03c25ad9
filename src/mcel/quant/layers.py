"""Quantized layers and ``quantize_model``.

A quantized layer keeps float *latent* weights for training and sees their quantized
values in every forward (fake quantization with a straight-through estimator). Its
stored form, the one a memory holds, is ``layer.quantized_weight()``: codes + scale.

Two hooks let the bit-error engine act without touching the layer's state:

* ``weight_override`` / ``bias_override``: float tensors used instead of the
  fake-quantized weight / float bias (the engine writes the dequantized *faulty* codes
  there; persistent faults).
* ``weight_fault`` / ``act_fault``: a callable ``QuantizedTensor -> QuantizedTensor``
  applied to freshly quantized codes in each forward (transient faults: error-injection
  training, activation faults). A weight hook may also offer ``faulty_values(layer)``,
  the same faulty weights computed without a whole-tensor round trip through codes
  (None: use the codes).

Both are plain attributes, not parameters or buffers: the state dict never sees them.
"""

from __future__ import annotations

import fnmatch
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mcel.errors import MCELError
from mcel.quant import brevitas
from mcel.quant.attention import unpack_attention
from mcel.quant.core import (
    GRANULARITIES,
    QuantizedTensor,
    check_bits,
    fake_quantize,
    levels_to_codes,
    parse_scheme,
    quantize,
)
from mcel.quant.formats import get_format
from mcel.registry import names_shown

FaultFn = Callable[[QuantizedTensor], QuantizedTensor]


@dataclass(frozen=True)
class QuantSpec:
    """How to quantize a model.

    ``weights`` is a scheme word (``binary``, ``ternary``, ``int2`` .. ``int8``,
    ``int16``, ``float``); ``fmt`` the number format of the stored codes; ``act_bits``
    quantizes each quantized layer's input to signed k-bit levels (None: float);
    ``include``/``exclude`` are fnmatch patterns over module names; ``clip`` bounds the
    latent weights to ``[-clip, clip]`` and fixes the k-bit codes' range to it (weight
    clipping, Stutz et al. 2021; `clip_weights` applies it after an optimizer step).
    ``clip_rel`` sets each layer's clip relative to its own scale instead: ``clip_rel /
    sqrt(fan_in)``, the bound of PyTorch's default initialisation, so one number fits
    layers of any width (`layer_clip`). ``clip_auto`` sets one clip for the whole model
    from its shape: ``clip_auto / sqrt(median fan_in)`` over its quantized layers
    (`auto_clip`); a small-fan-in first layer then gets the same range as the rest.
    ``layers`` gives some layers a scheme of their own, ``(pattern, scheme)`` pairs
    (mixed precision, e.g. ``(("features.0", "int8"),)``; ``"float"`` keeps a layer in
    float); no layer may match two of the patterns, so their order does not matter.
    """

    weights: str = "int8"
    fmt: str = "twos_complement"
    granularity: str = "tensor"
    act_bits: int | None = None
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()
    clip: float | None = None
    clip_rel: float | None = None
    clip_auto: float | None = None
    layers: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        parse_scheme(self.weights)
        pairs = tuple(self.layers.items()) if isinstance(self.layers, dict) else self.layers
        try:
            pairs = tuple((p, w) for p, w in pairs)
        except (TypeError, ValueError):
            raise MCELError(f"layers={self.layers!r}: give (layer pattern, scheme) pairs, "
                            "e.g. {'features.0': 'int8'}") from None
        for pattern, word in pairs:
            if not isinstance(pattern, str) or not isinstance(word, str):
                raise MCELError(f"layers: {pattern!r}: {word!r} is not a layer pattern and a "
                                "scheme word")
            parse_scheme(word)
        object.__setattr__(self, "layers", tuple((p, w.strip().lower()) for p, w in pairs))
        for key in ("clip", "clip_rel", "clip_auto"):
            v = getattr(self, key)
            if v is not None and not (isinstance(v, (int, float)) and not isinstance(v, bool)
                                      and math.isfinite(v) and v > 0):
                raise MCELError(f"{key} must be a finite number > 0, got {v!r}")
        given = [k for k in ("clip", "clip_rel", "clip_auto") if getattr(self, k) is not None]
        if len(given) > 1:
            raise MCELError(f"give one of clip (a range for every layer), clip_rel (a range "
                            f"per layer) and clip_auto (a range from the model's shape), "
                            f"not {' and '.join(given)}")
        get_format(self.fmt)
        if self.granularity not in GRANULARITIES:
            raise MCELError(
                f"unknown granularity '{self.granularity}'; valid: {', '.join(GRANULARITIES)}"
            )
        if self.act_bits is not None:
            check_bits("int", self.act_bits)
        for key in ("include", "exclude"):  # one pattern may be given as a plain string
            v = getattr(self, key)
            object.__setattr__(self, key, (v,) if isinstance(v, str) else tuple(v))

    @property
    def clipped(self) -> bool:
        """Whether the weights are clipped, by any of ``clip``, ``clip_rel``, ``clip_auto``."""
        return any(v is not None for v in (self.clip, self.clip_rel, self.clip_auto))

    @property
    def scheme(self) -> str:
        return parse_scheme(self.weights)[0]

    @property
    def bits(self) -> int | None:
        return parse_scheme(self.weights)[1]

    def selects(self, name: str) -> bool:
        """Whether layer ``name`` is quantized (included, not excluded, not kept float)."""
        return any(fnmatch.fnmatch(name, p) for p in self.include) and not any(
            fnmatch.fnmatch(name, p) for p in self.exclude
        ) and self.scheme_for(name) != "float"

    def scheme_for(self, name: str) -> str:
        """The scheme word of layer ``name``: its own from ``layers``, else ``weights``."""
        own = [w for p, w in self.layers if fnmatch.fnmatch(name, p)]
        if len(own) > 1:
            raise MCELError(f"layer '{name}' matches {len(own)} of the per-layer schemes "
                            f"({', '.join(p for p, _ in self.layers)}); make them disjoint")
        return own[0] if own else self.weights

    def for_layer(self, name: str) -> QuantSpec:
        """This spec with layer ``name``'s own scheme as ``weights`` (no per-layer list)."""
        return replace(self, weights=self.scheme_for(name), layers=())

    def to_dict(self) -> dict:
        d = asdict(self)
        d["include"], d["exclude"] = list(self.include), list(self.exclude)
        d["layers"] = dict(self.layers)
        return d


class _QuantMixin:
    """Shared fake-quant logic of QuantLinear and the QuantConv layers."""

    weight: nn.Parameter
    bias: nn.Parameter | None

    def _init_quant(self, *, scheme: str, bits: int, fmt: str, granularity: str,
                    act_bits: int | None, clip: float | None) -> None:
        check_bits(scheme, bits)
        self.scheme, self.bits, self.fmt, self.granularity = scheme, bits, fmt, granularity
        self.clip = None if clip is None else float(clip)
        self.act_bits = act_bits
        self.weight_override: Tensor | None = None
        self.bias_override: Tensor | None = None
        self.weight_fault: FaultFn | None = None
        self.act_fault: FaultFn | None = None
        if act_bits is not None:
            # Running max of |input|: fixes the activation scale at eval time.
            self.register_buffer("act_max", torch.zeros(()))  # type: ignore[attr-defined]

    def quantized_weight(self) -> QuantizedTensor:
        """The stored form of the current weights (codes + scale)."""
        return quantize(self.weight, self.bits, scheme=self.scheme, fmt=self.fmt,
                        granularity=self.granularity, clip=self.clip)

    def effective_weight(self) -> Tensor:
        if self.weight_override is not None:
            return self.weight_override
        if self.weight_fault is None:
            return fake_quantize(self.weight, self.scheme, self.bits, self.granularity,
                                 clip=self.clip)
        # a fault hook may compute the faulty values itself, touching only what flips
        sparse = getattr(self.weight_fault, "faulty_values", None)
        faulty = sparse(self) if sparse is not None else None
        if faulty is None:
            faulty = self.weight_fault(self.quantized_weight()).dequantize()
        return self.weight + (faulty - self.weight).detach()  # STE through the faults

    def effective_bias(self) -> Tensor | None:
        return self.bias if self.bias_override is None else self.bias_override

    def quantize_input(self, x: Tensor) -> Tensor:
        if self.act_bits is None:
            return x
        qmax = (1 << (self.act_bits - 1)) - 1
        if self.training:
            with torch.no_grad():
                m = x.detach().abs().amax()
                self.act_max.copy_(torch.where(self.act_max > 0, 0.9 * self.act_max + 0.1 * m, m))
        scale = (self.act_max / qmax).clamp_min(1e-8)
        levels = torch.clamp(torch.round(x.detach() / scale), -qmax, qmax)
        if self.act_fault is not None:
            codes = levels_to_codes(levels, "int", self.act_bits, self.fmt)
            qt = self.act_fault(QuantizedTensor(codes, scale, self.act_bits, self.fmt, "int"))
            return x + (qt.dequantize() - x).detach()
        return x + (levels * scale - x).detach()

    def quant_repr(self) -> str:
        name = "float" if self.scheme is None else (
            f"int{self.bits}" if self.scheme == "int" else self.scheme)
        act = f", act_bits={self.act_bits}" if self.act_bits else ""
        clip = f", clip={self.clip:g}" if self.clip is not None else ""
        return f"quant={name}, fmt={self.fmt}, granularity={self.granularity}{act}{clip}"


class QuantLinear(_QuantMixin, nn.Linear):
    """``nn.Linear`` whose weights are quantized in every forward."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 scheme: str = "int", bits: int = 8, fmt: str = "twos_complement",
                 granularity: str = "tensor", act_bits: int | None = None,
                 clip: float | None = None) -> None:
        super().__init__(in_features, out_features, bias)
        self._init_quant(scheme=scheme, bits=bits, fmt=fmt, granularity=granularity,
                         act_bits=act_bits, clip=clip)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(self.quantize_input(x), self.effective_weight(), self.effective_bias())

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self.quant_repr()}"


class _QuantConv(_QuantMixin):
    """The quantized forward of every convolution; the class below it names the shape."""

    def __init__(self, *args, scheme: str = "int", bits: int = 8, fmt: str = "twos_complement",
                 granularity: str = "tensor", act_bits: int | None = None,
                 clip: float | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._init_quant(scheme=scheme, bits=bits, fmt=fmt, granularity=granularity,
                         act_bits=act_bits, clip=clip)

    def forward(self, x: Tensor) -> Tensor:
        x = self.quantize_input(x)
        return self._conv_forward(x, self.effective_weight(), self.effective_bias())

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self.quant_repr()}"


class QuantConv1d(_QuantConv, nn.Conv1d):
    """``nn.Conv1d`` whose weights are quantized in every forward (audio, time series)."""


class QuantConv2d(_QuantConv, nn.Conv2d):
    """``nn.Conv2d`` whose weights are quantized in every forward."""


class QuantConv3d(_QuantConv, nn.Conv3d):
    """``nn.Conv3d`` whose weights are quantized in every forward (video, volumes)."""


# float layer type -> its quantized twin; isinstance order: a subclass of nn.Conv2d
# converts as a Conv2d, as before
QUANT_TWINS: dict[type[nn.Module], type[nn.Module]] = {
    nn.Linear: QuantLinear, nn.Conv1d: QuantConv1d, nn.Conv2d: QuantConv2d,
    nn.Conv3d: QuantConv3d,
}
QUANTIZABLE = tuple(QUANT_TWINS)


QUANT_LAYERS = (QuantLinear, QuantConv1d, QuantConv2d, QuantConv3d)


def layer_clip(spec: QuantSpec, weight: Tensor) -> float | None:
    """The clip of a layer with this ``weight``: ``spec.clip``, or ``spec.clip_rel /
    sqrt(fan_in)`` (fan_in: inputs per output unit, kernel included), which is the bound
    of PyTorch's default initialisation of Linear and Conv layers.

    >>> layer_clip(QuantSpec("int4", clip_rel=1.0), torch.zeros(10, 64))
    0.125
    """
    if spec.clip_rel is None:
        return spec.clip
    return spec.clip_rel / math.sqrt(weight[0].numel())


def auto_clip(c: float, fan_ins: Sequence[int]) -> float:
    """The model-wide clip of ``clip_auto=c``: ``c / sqrt(median fan_in)`` of the layers
    (inputs per output unit, kernel included).

    >>> auto_clip(1.0, [9, 576, 3136, 2048])  # VGG3: median 1312
    0.0276...
    """
    return c / math.sqrt(float(np.median(np.asarray(fan_ins, dtype=np.float64))))


def _resolve_auto_clip(spec: QuantSpec, layers: Sequence[nn.Module]) -> QuantSpec:
    """``spec`` with ``clip_auto`` turned into the one ``clip`` of these layers."""
    if spec.clip_auto is None:
        return spec
    fan_ins = [m.weight[0].numel() for m in layers] or [1]
    return replace(spec, clip=auto_clip(spec.clip_auto, fan_ins), clip_auto=None)


_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


def _warn_without_norm(model: nn.Module, spec: QuantSpec) -> None:
    """Clipping bounds the weights' scale; behind a normalization layer that scale does not
    matter, without one it bounds the activations and logits too (measured: docs/results.md,
    "Clipping without normalization layers")."""
    if spec.clipped and not any(isinstance(m, _NORMS) for m in model.modules()):
        warnings.warn("this model has no normalization layer (BatchNorm, LayerNorm, "
                      "GroupNorm): a clip bounds its activations as well as its weights and "
                      "cost 3-8 clean points on such a CNN in our tests; compare clean "
                      "accuracy with an unclipped run", UserWarning, stacklevel=3)


@torch.no_grad()
def _check_alive(name: str, q: nn.Module) -> nn.Module:
    """A clipped layer whose every weight rounds to 0 starts dead: its output is its bias,
    and behind a normalization layer no gradient reaches it (an int2 VGG3 with a clip of
    0.055 trained at chance for 6 epochs). Better a clear error before training."""
    if q.clip is not None and q.scheme != "binary" and q.weight.numel() > 0:
        w = fake_quantize(q.weight, q.scheme, q.bits, q.granularity, clip=q.clip)
        if not bool(w.any()):
            raise MCELError(
                f"layer '{name}': with {q.scheme}{q.bits if q.scheme == 'int' else ''} codes "
                f"clipped at {q.clip:.4g} every weight (at most "
                f"{float(q.weight.abs().max()):.3g} at initialization) rounds to 0, so the layer "
                "starts dead and does not train; use a smaller clip (e.g. --clip-auto 1) or "
                "more bits")
    return q


def _share_hooks(old: nn.Module, new: nn.Module) -> None:
    """The quantized layer takes over the float layer's hooks (forward, backward,
    state-dict): the very dicts, so the handles the user holds still remove them."""
    for name, value in vars(old).items():
        if name.endswith("_hooks") or name.endswith("_hooks_with_kwargs") \
                or name in ("_forward_hooks_always_called", "_is_full_backward_hook"):
            setattr(new, name, value)


def _convert(m: nn.Module, spec: QuantSpec) -> nn.Module:
    scheme, bits = parse_scheme(spec.weights)
    kw = dict(scheme=scheme, bits=bits, fmt=spec.fmt, granularity=spec.granularity,
              act_bits=spec.act_bits, clip=layer_clip(spec, m.weight))
    if isinstance(m, nn.Linear):
        q: nn.Module = QuantLinear(m.in_features, m.out_features, m.bias is not None, **kw)
    else:
        twin = next(t for f, t in QUANT_TWINS.items() if isinstance(m, f))
        q = twin(m.in_channels, m.out_channels, m.kernel_size, stride=m.stride,
                 padding=m.padding, dilation=m.dilation, groups=m.groups,
                 bias=m.bias is not None, padding_mode=m.padding_mode, **kw)
    # the very Parameter objects of the layer: their dtype, device and requires_grad,
    # weights tied to other modules and an optimizer built beforehand all stay valid
    q.weight = m.weight
    q.bias = m.bias
    _share_hooks(m, q)
    for name, buf in q.named_buffers():  # act_max: on the layer's device, in its dtype
        setattr(q, name, buf.to(device=m.weight.device, dtype=m.weight.dtype))
    q.train(m.training)
    if kw["clip"] is not None:  # start inside the range, as every later step will be
        clip_weights(q)
    return q


# layers with weights that mcel knows of; the ones it does not quantize are named, not
# skipped (RNNs, embeddings, transposed convolutions, ...)
_WEIGHTED = (nn.Linear, nn.modules.conv._ConvNd, nn.Bilinear, nn.RNNBase, nn.Embedding,
             nn.EmbeddingBag)


def _quantizes_itself(m: nn.Module) -> bool:
    """mcel's quantized layers and Brevitas ones: already quantized, left as they are
    (the engine reads a Brevitas layer's own integer weights)."""
    return isinstance(m, QUANT_LAYERS) or brevitas.is_layer(m)


def _why_not(m: nn.Module) -> str | None:
    """Why mcel cannot quantize this layer with weights (None: it can, or it has none)."""
    if isinstance(m, _WEIGHTED) and not isinstance(m, (*QUANTIZABLE, *QUANT_LAYERS)):
        return (f"a {type(m).__name__}, which mcel does not quantize (Linear and "
                "Conv1d/2d/3d only)")
    return None


def _bypassing(model: nn.Module) -> dict[str, str]:
    """Modules that compute with their children's weights without calling the children's
    forward, by name: a quantized layer inside one would stay float in that path, and
    its faults would change nothing. MultiheadAttention always (its in_proj and
    out_proj), TransformerEncoderLayer in its inference fast path."""
    found = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.MultiheadAttention):
            found[name] = ("a MultiheadAttention, which computes with its projection weights "
                           "itself")
        elif isinstance(m, nn.TransformerEncoderLayer) and \
                isinstance(m.self_attn, nn.MultiheadAttention) and \
                torch.backends.mha.get_fastpath_enabled():  # (unpacked: no fast path)
            found[name] = ("a TransformerEncoderLayer, whose inference fast path computes "
                           "with its Linear weights itself (torch.backends.mha."
                           "set_fastpath_enabled(False) turns that path off)")
    return found


def refuse_bypassed(model: nn.Module, selected: Sequence[str], *, float_storage: bool = False
                    ) -> None:
    """One MCELError for the first of the ``selected`` layers that is inside a bypassing
    module, or is one (better than a model that is quietly half float, or whose faults
    change nothing). ``float_storage``: the layers are stored as floats (--weights)."""
    bypassing = _bypassing(model)
    for name in selected:
        parent = next((p for p in bypassing
                       if name == p or p == "" or name.startswith(p + ".")), None)
        if parent is None:
            continue
        where = f"'{parent}'" if parent else "the model"
        keep = f"'{parent}', '{parent}.*'" if parent else f"'{name}',"
        fix = ("unpack its attention first with mcel.quant.unpack_attention(model)"
               if float_storage else f"keep it in float with QuantSpec(..., exclude=({keep}))")
        raise MCELError(f"layer '{name}' is in {where}, {bypassing[parent]}: quantized or "
                        f"faulty weights there would be ignored; {fix}")


def quantize_model(model: nn.Module, spec: QuantSpec | str) -> nn.Module:
    """Replace the ``nn.Linear``/``nn.Conv1d``/``nn.Conv2d``/``nn.Conv3d`` layers selected
    by ``spec`` with quantized ones, in place, and return the model (the new layer when
    ``model`` is itself one).

    The new layers take over the old ones' Parameter objects, so dtype, device,
    ``requires_grad``, tied weights and an existing optimizer carry over; a layer used
    twice is replaced by one quantized layer in both places. Hooks registered on an old
    layer carry over (their handles still remove them). Layers that are already
    quantized, mcel's or Brevitas', are left as they are (convert a float model to
    change the scheme).

    >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> _ = quantize_model(net, QuantSpec("int4", exclude=("0",)))
    >>> [type(m).__name__ for m in net]
    ['Linear', 'ReLU', 'QuantLinear']
    """
    if isinstance(spec, str):
        spec = QuantSpec(spec)
    if not isinstance(spec, QuantSpec):
        raise MCELError(f"spec must be a QuantSpec or a scheme name like 'int4', got "
                        f"{spec!r}")
    if spec.scheme == "float" and not spec.layers:
        return model
    # attention as four Linear layers: quantized below like any other (see attention.py)
    model = unpack_attention(model, spec.selects)
    if (isinstance(model, QUANTIZABLE) and not _quantizes_itself(model)
            and _why_not(model) is None):
        if not spec.selects(""):
            return model
        return _check_alive(type(model).__name__, _convert(  # a bare layer
            model, _resolve_auto_clip(spec, [model]).for_layer("")))
    candidates = [(name, module)
                  for name, module in model.named_modules(remove_duplicate=False)
                  if isinstance(module, QUANTIZABLE) and not _quantizes_itself(module)]
    names = _check_patterns(model, spec)
    odd = next(((n, why) for n, m in model.named_modules()
                if spec.selects(n) and (why := _why_not(m)) is not None), None)
    if odd is not None:  # better than a model that is quietly half float
        raise MCELError(f"layer '{odd[0]}' is {odd[1]}; keep it in float with "
                        f"QuantSpec(..., exclude=('{odd[0]}',))")
    refuse_bypassed(model, [n for n in names if spec.selects(n)])
    _warn_without_norm(model, spec)
    # clip_auto: one range for all, from the shapes of the layers it quantizes
    spec = _resolve_auto_clip(spec, list({id(m): m for n, m in candidates
                                          if spec.selects(n)}.values()))
    converted: dict[int, nn.Module] = {}
    for name, module in candidates:
        if not spec.selects(name):
            continue
        if id(module) not in converted:
            converted[id(module)] = _check_alive(name, _convert(module, spec.for_layer(name)))
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, converted[id(module)])
    return model


def _check_patterns(model: nn.Module, spec: QuantSpec) -> list[str]:
    """The names of the layers with weights; a pattern of ``spec`` that matches none of
    them is refused (a typo, most likely). Patterns may name any layer with weights (a
    ConvTranspose2d to keep in float, say)."""
    names = [name for name, m in model.named_modules()
             if isinstance(m, (*_WEIGHTED, nn.MultiheadAttention))]
    for p in (*spec.exclude, *(q for q in spec.include if q != "*"), *dict(spec.layers)):
        if names and not any(fnmatch.fnmatch(n, p) for n in names):
            raise MCELError(f"quantization pattern '{p}' matches no layer; the layers are: "
                            f"{names_shown(names)}")
    return names


def quant_layers(model: nn.Module) -> list[tuple[str, _QuantMixin]]:
    """(name, layer) for every quantized layer, in module order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, QUANT_LAYERS)]


@torch.no_grad()
def clip_weights(model: nn.Module) -> None:
    """Clamp the latent weights of every clipped quantized layer to ``[-clip, clip]``;
    call it after each optimizer step (``mcel train --clip`` does)."""
    layers = [model] if isinstance(model, QUANT_LAYERS) else [m for _, m in quant_layers(model)]
    for layer in layers:
        if layer.clip is not None:
            layer.weight.clamp_(-layer.clip, layer.clip)


def set_format(model: nn.Module, fmt: str) -> None:
    """Store every quantized layer's codes in another number format (no retraining: the
    levels are the same, only their bit patterns change). Brevitas layers take it too,
    as a plain attribute their stored form is read with (`mcel.quant.brevitas`)."""
    get_format(fmt)
    for _, layer in quant_layers(model) + brevitas.layers(model):
        layer.fmt = fmt


__all__: Sequence[str] = [
    "QuantSpec", "QuantLinear", "QuantConv1d", "QuantConv2d", "QuantConv3d", "quantize_model",
    "quant_layers", "set_format",
    "clip_weights",
    "layer_clip",
    "auto_clip",
]

