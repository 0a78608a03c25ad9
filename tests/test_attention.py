"""Attention unpacked into four Linear layers (mcel.quant.attention): the same outputs as
nn.MultiheadAttention, and a transformer whose every weight mcel stores is one that runs."""

import copy

import pytest
import torch
from torch import nn

from mcel.engine import MemoryImage, state_digest
from mcel.errors import MCELError
from mcel.evaluate import evaluate
from mcel.faults import BitErrorModel
from mcel.quant import quant_layers, quantize_model
from mcel.quant.attention import UnpackedMultiheadAttention, from_mha, unpack_attention


def _inputs(batch_first, kdim=8, vdim=8):
    g = torch.Generator().manual_seed(1)

    def mk(n, d):
        return torch.randn((2, n, d) if batch_first else (n, 2, d), generator=g)
    return mk(4, 8), mk(3, kdim), mk(3, vdim)


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("kw", [{}, {"kdim": 6, "vdim": 5}, {"bias": False}])
def test_unpacked_attention_computes_what_multihead_attention_does(batch_first, kw):
    torch.manual_seed(0)
    m = nn.MultiheadAttention(8, 2, batch_first=batch_first, **kw).eval()
    u = from_mha(m).eval()
    q, k, v = _inputs(batch_first, kw.get("kdim", 8), kw.get("vdim", 8))
    am = torch.rand(4, 3, generator=torch.Generator().manual_seed(2)) > 0.6
    am[:, 0] = False  # every query attends to something
    kpm = torch.zeros(2, 3, dtype=torch.bool)
    kpm[1, 2] = True
    cases = [{}, {"attn_mask": am}, {"key_padding_mask": kpm},
             {"attn_mask": torch.randn(4, 4, 3)},  # one mask per (batch, head)
             {"attn_mask": am, "key_padding_mask": kpm, "average_attn_weights": False},
             {"need_weights": False}]
    for args in cases:
        (a, wa), (b, wb) = m(q, k, v, **args), u(q, k, v, **args)
        torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-5)
        assert (wa is None) == (wb is None)
        if wa is not None:
            torch.testing.assert_close(wb, wa, atol=1e-6, rtol=1e-5)
    x = torch.randn(4, 8)  # unbatched
    if not kw:
        torch.testing.assert_close(u(x, x, x)[0], m(x, x, x)[0], atol=1e-6, rtol=1e-5)


def _encoder():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
    return nn.Sequential(nn.TransformerEncoder(layer, 2), nn.Flatten(), nn.Linear(5 * 16, 3))


def test_an_unpacked_encoder_gives_the_same_outputs_in_eval():
    enc = _encoder().eval()
    unpacked = unpack_attention(copy.deepcopy(enc))
    assert sum(isinstance(m, UnpackedMultiheadAttention) for m in unpacked.modules()) == 2
    assert not any(isinstance(m, nn.MultiheadAttention) for m in unpacked.modules())
    x = torch.randn(3, 5, 16)
    with torch.no_grad():  # eval + no_grad: the original takes its fused fast path
        torch.testing.assert_close(unpacked(x), enc(x), atol=1e-5, rtol=1e-5)


def test_a_quantized_transformer_stores_only_weights_that_run():
    """Every stored layer of the quantized encoder matters in eval + no_grad (the fused
    paths are declined): overriding any one layer's weight changes the output, and
    faults change accuracy; the model is bit-identical after an evaluation."""
    model = quantize_model(_encoder(), "int4").eval()
    names = [n for n, _ in quant_layers(model)]
    assert "0.layers.0.self_attn.q_proj" in names and "0.layers.1.linear2" in names
    assert len(names) == 2 * 6 + 1
    x = torch.randn(64, 5, 16)
    with torch.no_grad():
        clean = model(x)
        for n, layer in quant_layers(model):
            layer.weight_override = torch.zeros_like(layer.weight)
            assert not torch.equal(model(x), clean), n  # what mcel stores is what runs
            layer.weight_override = None
        y = clean.argmax(1)
    before = state_digest(model)
    res = evaluate(model, x, y, [0.0, 0.05], BitErrorModel(ber=0.0), trials=4, seed=0)
    assert res.clean_accuracy == 1.0 and res.results[1].mean < 1.0
    assert state_digest(model) == before


def test_attention_unpacked_before_training_trains():
    """A transformer quantized before its optimizer is built trains (new Parameters)."""
    model = quantize_model(_encoder(), "int8")
    x, y = torch.randn(64, 5, 16), torch.randint(0, 3, (64,))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = None
    for _ in range(30):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        first = loss.item() if first is None else first
    assert loss.item() < first * 0.5


def test_unpacking_refuses_what_it_cannot_copy_and_float_storage_names_it():
    m = nn.MultiheadAttention(8, 2, add_bias_kv=True)
    with pytest.raises(MCELError, match="add_bias_kv or add_zero_attn"):
        from_mha(m)
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True).eval()
    unpack_attention(layer)
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        clean = layer(x)
        with MemoryImage(layer, BitErrorModel(ber=0.0), weights="float32"):
            layer.linear1.weight_override.zero_()  # the float storage's values run too
            assert not torch.equal(layer(x), clean)
