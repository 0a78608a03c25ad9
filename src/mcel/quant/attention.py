"""Attention with its projections as layers of their own, so they can be quantized.

``nn.MultiheadAttention`` keeps its query/key/value projections in one packed weight and
computes with it (and with ``out_proj``'s weight) itself, never calling a layer's
forward; a quantized layer or a flipped bit there would change nothing. ``unpack_attention``
replaces each one by `UnpackedMultiheadAttention`: the same computation through four
``nn.Linear`` layers (``q_proj``, ``k_proj``, ``v_proj``, ``out_proj``), which
``quantize_model``, the fault engine and ``--weights`` then treat as any Linear.

The unpacked module declines PyTorch's fused inference paths (``TransformerEncoderLayer``'s
fast path and ``TransformerEncoder``'s nested tensors), which would read packed weights
again: it has no packed projection (``in_proj_weight`` is None), which those paths check.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mcel.errors import MCELError


class UnpackedMultiheadAttention(nn.Module):
    """``nn.MultiheadAttention``'s forward (same arguments, same outputs) through four
    Linear layers. Build one from a trained module with `from_mha`."""

    # what the fused paths of TransformerEncoder(Layer) check before reading packed
    # weights: none here, so they take the ordinary path through this module's forward
    in_proj_weight = None
    in_proj_bias = None
    _qkv_same_embed_dim = False

    def __init__(self, embed_dim: int, num_heads: int, *, dropout: float = 0.0,
                 bias: bool = True, kdim: int | None = None, vdim: int | None = None,
                 batch_first: bool = False) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise MCELError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.head_dim = embed_dim // num_heads
        self.dropout, self.batch_first = dropout, batch_first
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.k_proj = nn.Linear(kdim or embed_dim, embed_dim, bias=bias)
        self.v_proj = nn.Linear(vdim or embed_dim, embed_dim, bias=bias)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)

    def forward(self, query: Tensor, key: Tensor, value: Tensor,
                key_padding_mask: Tensor | None = None, need_weights: bool = True,
                attn_mask: Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[Tensor, Tensor | None]:
        if is_causal and attn_mask is None:  # as torch: the flag is a hint about the mask
            raise RuntimeError("Need attn_mask if specifying the is_causal hint.")
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = (t.unsqueeze(0 if self.batch_first else 1)
                                 for t in (query, key, value))
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        if not self.batch_first:  # (L, B, E) -> (B, L, E)
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        b, length, _ = query.shape
        q, k, v = (self._heads(p(t)) for p, t in ((self.q_proj, query), (self.k_proj, key),
                                                  (self.v_proj, value)))
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)
        scores = scores + self._additive_mask(attn_mask, key_padding_mask, scores)
        attn = F.dropout(torch.softmax(scores, dim=-1), self.dropout, self.training)
        out = (attn @ v).transpose(1, 2).reshape(b, length, self.embed_dim)
        out = self.out_proj(out)
        if not self.batch_first:
            out = out.transpose(0, 1)
        weights = None
        if need_weights:
            weights = attn.mean(1) if average_attn_weights else attn
        if unbatched:
            out = out.squeeze(0 if self.batch_first else 1)
            weights = weights.squeeze(0) if weights is not None else None
        return out, weights

    def _heads(self, t: Tensor) -> Tensor:
        """(B, S, E) -> (B, heads, S, head_dim)."""
        return t.view(t.shape[0], t.shape[1], self.num_heads, self.head_dim).transpose(1, 2)

    def _additive_mask(self, attn_mask: Tensor | None, key_padding_mask: Tensor | None,
                       scores: Tensor) -> Tensor | float:
        """Both masks as one float tensor added to the scores (bool True: not attended)."""
        b, heads, length, source = scores.shape
        total: Tensor | float = 0.0
        if attn_mask is not None:
            m = _as_float_mask(attn_mask, scores.dtype)
            total = m.view(b, heads, length, source) if m.dim() == 3 else m
        if key_padding_mask is not None:
            total = total + _as_float_mask(key_padding_mask, scores.dtype).view(
                b, 1, 1, source)
        return total


def _as_float_mask(mask: Tensor, dtype: torch.dtype) -> Tensor:
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
            mask, float("-inf"))
    return mask.to(dtype)


@torch.no_grad()
def from_mha(m: nn.MultiheadAttention) -> UnpackedMultiheadAttention:
    """An `UnpackedMultiheadAttention` that computes what ``m`` computes (its weights
    copied into four Linear layers, on its device and in its dtype)."""
    if m.bias_k is not None or m.add_zero_attn:
        raise MCELError("a MultiheadAttention with add_bias_kv or add_zero_attn cannot be "
                        "unpacked; keep it in float with exclude=")
    e = m.embed_dim
    u = UnpackedMultiheadAttention(e, m.num_heads, dropout=m.dropout,
                                   bias=m.in_proj_bias is not None, kdim=m.kdim, vdim=m.vdim,
                                   batch_first=m.batch_first)
    if m._qkv_same_embed_dim:
        weights = m.in_proj_weight.split(e)
    else:
        weights = (m.q_proj_weight, m.k_proj_weight, m.v_proj_weight)
    biases = m.in_proj_bias.split(e) if m.in_proj_bias is not None else (None,) * 3
    for proj, w, bias in zip((u.q_proj, u.k_proj, u.v_proj), weights, biases):
        proj.weight.copy_(w)
        if bias is not None:
            proj.bias.copy_(bias)
    u.out_proj.weight.copy_(m.out_proj.weight)
    if m.out_proj.bias is not None:
        u.out_proj.bias.copy_(m.out_proj.bias)
    ref = m.out_proj.weight
    return u.to(device=ref.device, dtype=ref.dtype).train(m.training)


def unpack_attention(model: nn.Module, selects=lambda name: True) -> nn.Module:
    """Replace, in place, each ``nn.MultiheadAttention`` whose name ``selects`` accepts by
    an `UnpackedMultiheadAttention` (new Parameters: build optimizers afterwards), and
    turn off the nested-tensor path of the ``nn.TransformerEncoder``s around them.
    Returns the model (the new module when ``model`` is itself one)."""
    if isinstance(model, nn.MultiheadAttention):
        return from_mha(model) if selects("") else model
    found = [(n, m) for n, m in model.named_modules()
             if isinstance(m, nn.MultiheadAttention) and selects(n)]
    for name, m in found:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, from_mha(m))
    if found:
        for m in model.modules():
            if isinstance(m, nn.TransformerEncoder):
                m.use_nested_tensor = False  # nested inputs would skip the unpacked forward
    return model


__all__ = ["UnpackedMultiheadAttention", "from_mha", "unpack_attention"]
