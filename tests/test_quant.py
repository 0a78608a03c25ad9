"""Number formats, quantizers and quantized layers: exact round-trips and STE."""

import pytest
import torch
from torch import nn

from mcel import MCELError
from mcel.quant import (
    INT_BITS,
    QuantConv2d,
    QuantLinear,
    QuantSpec,
    decode,
    encode,
    list_formats,
    parse_scheme,
    quant_layers,
    quantize,
    quantize_model,
    quantize_values,
    set_format,
)

FORMATS = ["offset_binary", "sign_magnitude", "twos_complement"]


def test_formats_registered():
    assert list_formats() == FORMATS


def _reference_decode(code: int, bits: int, fmt: str) -> int:
    """Bit-by-bit reading of a code, independent of the vectorised implementation."""
    b = [(code >> i) & 1 for i in range(bits)]
    msb = b[bits - 1]
    if fmt == "twos_complement":
        return -msb * 2 ** (bits - 1) + sum(b[i] << i for i in range(bits - 1))
    if fmt == "sign_magnitude":
        mag = sum(b[i] << i for i in range(bits - 1))
        return -mag if msb else mag
    return code - 2 ** (bits - 1)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("bits", INT_BITS)
def test_every_code_round_trips(fmt, bits):
    qmax = 2 ** (bits - 1) - 1
    levels = torch.arange(-qmax, qmax + 1)
    codes = encode(levels, bits, fmt)
    assert int(codes.min()) >= 0 and int(codes.max()) < 2**bits
    assert len(set(codes.tolist())) == len(levels)  # injective
    assert torch.equal(decode(codes, bits, fmt), levels)
    # every code (also ones only a flip produces) decodes to the bit-level reference
    if bits <= 8:
        all_codes = torch.arange(2**bits)
        ref = torch.tensor([_reference_decode(c, bits, fmt) for c in range(2**bits)])
        assert torch.equal(decode(all_codes, bits, fmt), ref)


def test_sign_bit_flip_effect_per_format():
    # +3 in 4 bits with the MSB flipped
    v = torch.tensor([3])
    flip = 1 << 3
    assert decode(encode(v, 4, "twos_complement") ^ flip, 4, "twos_complement").item() == -5
    assert decode(encode(v, 4, "sign_magnitude") ^ flip, 4, "sign_magnitude").item() == -3
    assert decode(encode(v, 4, "offset_binary") ^ flip, 4, "offset_binary").item() == -5
    # LSB flip of 0
    assert decode(encode(torch.tensor([0]), 4, "offset_binary") ^ 1, 4, "offset_binary").item() == 1


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("granularity", ["tensor", "channel"])
@pytest.mark.parametrize("word", ["binary", "ternary", "int2", "int4", "int8", "int16"])
def test_quantize_idempotent_and_codes_in_range(word, fmt, granularity):
    scheme, bits = parse_scheme(word)
    w = torch.randn(6, 3, 3, 3, generator=torch.Generator().manual_seed(1))
    qt = quantize(w, bits, scheme=scheme, fmt=fmt, granularity=granularity)
    assert qt.codes.shape == w.shape
    assert qt.codes.dtype == (torch.uint8 if bits <= 8 else torch.int32)
    assert int(qt.codes.min()) >= 0 and int(qt.codes.max()) < 2**bits
    again = quantize(qt.dequantize(), bits, scheme=scheme, fmt=fmt, granularity=granularity)
    assert torch.equal(again.codes, qt.codes)
    torch.testing.assert_close(again.dequantize(), qt.dequantize())
    # values are the scheme's levels
    levels = qt.levels().unique()
    allowed = {"binary": {-1.0, 1.0}, "ternary": {-1.0, 0.0, 1.0}}.get(scheme)
    if allowed:
        assert set(levels.tolist()) <= allowed
    else:
        assert levels.abs().max() <= 2 ** (bits - 1) - 1


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("granularity", ["tensor", "channel"])
@pytest.mark.parametrize("word", ["binary", "ternary", "int2", "int4", "int8", "int16"])
def test_quantize_values_is_dequantize_bit_for_bit(word, fmt, granularity):
    scheme, bits = parse_scheme(word)
    # small weights round to -0.0 levels; the values must still equal the table's +0.0
    w = torch.randn(5, 4, 3, generator=torch.Generator().manual_seed(3)) * torch.tensor(
        [1.0, 1e-3, 0.5])
    w[0, 0, 0] = w.abs().max() * 4  # most weights round to zero
    before = w.clone()
    qt, values = quantize_values(w, bits, scheme=scheme, fmt=fmt, granularity=granularity)
    ref = quantize(w, bits, scheme=scheme, fmt=fmt, granularity=granularity)
    assert torch.equal(qt.codes, ref.codes) and torch.equal(qt.scale, ref.scale)
    deq = ref.dequantize()
    assert torch.equal(values.view(torch.int32), deq.view(torch.int32))  # bits, signed zeros
    assert torch.equal(w, before) and values.data_ptr() != w.data_ptr()


def test_abs_max_scale_matches_abs_amax():
    w = torch.randn(7, 5, 2, generator=torch.Generator().manual_seed(4))
    for gran, dims in (("tensor", (0, 1, 2)), ("channel", (1, 2))):
        qt = quantize(w, 8, granularity=gran)
        ref = w.abs().amax(dim=dims, keepdim=True) / 127
        assert torch.equal(qt.scale, ref)


def test_int_quantization_error_is_bounded():
    w = torch.randn(1000, generator=torch.Generator().manual_seed(2))
    for bits in (4, 8, 16):
        qt = quantize(w, bits)
        assert (qt.dequantize() - w).abs().max() <= qt.scale.item() / 2 + 1e-6


def test_per_channel_scales_follow_dim0():
    w = torch.stack([torch.linspace(-1, 1, 8), torch.linspace(-10, 10, 8)])
    qt = quantize(w, 8, granularity="channel")
    assert qt.scale.shape == (2, 1)
    torch.testing.assert_close(qt.scale.flatten(), torch.tensor([1 / 127, 10 / 127]))
    idx = torch.tensor([0, 9, 15])
    torch.testing.assert_close(qt.dequantize_at(idx), qt.dequantize().flatten()[idx])


def test_bad_quant_arguments():
    with pytest.raises(MCELError, match="int3"):
        parse_scheme("int33")
    with pytest.raises(MCELError, match="bits"):
        quantize(torch.randn(3), 9)
    with pytest.raises(MCELError, match="number format"):
        quantize(torch.randn(3), 8, fmt="ones_complement")
    with pytest.raises(MCELError, match="granularity"):
        quantize(torch.randn(3), 8, granularity="row")
    with pytest.raises(MCELError):
        QuantSpec("int4", act_bits=1)


def test_quant_layers_forward_uses_quantized_weights_and_ste():
    torch.manual_seed(0)
    lin = QuantLinear(5, 3, scheme="int", bits=4)
    x = torch.randn(2, 5)
    ref = x @ lin.quantized_weight().dequantize().T + lin.bias
    out = lin(x)
    torch.testing.assert_close(out, ref)
    out.sum().backward()
    # straight-through: the latent weight gets the gradient of the quantized one
    torch.testing.assert_close(lin.weight.grad, torch.ones(2, 3).T @ x)
    conv = QuantConv2d(2, 4, 3, padding=1, scheme="binary", bits=1)
    y = conv(torch.randn(1, 2, 5, 5))
    assert y.shape == (1, 4, 5, 5)


def test_trained_quant_linear_codes_are_integers_in_range():
    torch.manual_seed(0)
    net = quantize_model(nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2)), "int4")
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x, y = torch.randn(64, 4), (torch.rand(64) > 0.5).long()
    for _ in range(5):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    for _, layer in quant_layers(net):
        codes = layer.quantized_weight().codes
        assert codes.dtype == torch.uint8 and int(codes.max()) < 16


def test_quantize_model_include_exclude_and_format_switch():
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    x = torch.randn(2, 1, 8, 8)
    quantize_model(net, QuantSpec("int8", exclude=("0",), act_bits=8))
    assert isinstance(net[0], nn.Conv2d) and not isinstance(net[0], QuantConv2d)
    assert isinstance(net[3], QuantLinear)
    assert [n for n, _ in quant_layers(net)] == ["3"]
    net.eval()
    out = net(x)
    # a format changes the bit patterns, not the values
    codes_tc = net[3].quantized_weight().codes.clone()
    set_format(net, "sign_magnitude")
    torch.testing.assert_close(net(x), out)
    assert not torch.equal(net[3].quantized_weight().codes, codes_tc)
    assert quantize_model(nn.Linear(2, 2), "float").__class__ is nn.Linear


def test_activation_quantization_levels():
    lin = QuantLinear(4, 2, bits=8, act_bits=4)
    lin.train()
    x = torch.randn(32, 4)
    lin(x)
    lin.eval()
    seen = {}
    lin.register_forward_hook(lambda m, i, o: seen.setdefault("in", m.quantize_input(i[0])))
    lin(x)
    scale = lin.act_max / 7
    lv = seen["in"] / scale
    torch.testing.assert_close(lv, lv.round(), atol=1e-4, rtol=0)
    assert lv.abs().max() <= 7 + 1e-4


def test_a_quantization_pattern_that_matches_no_layer_is_refused():
    from torch import nn

    from mcel.errors import MCELError
    from mcel.quant import QuantSpec, quantize_model

    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    with pytest.raises(MCELError, match="pattern 'fc1' matches no layer; the layers are: 0, 2"):
        quantize_model(net, QuantSpec("int4", exclude=("fc1",)))
    assert type(net[0]).__name__ == "Linear"  # nothing converted


def test_quantize_model_keeps_parameters_dtype_ties_and_bare_layers():
    from torch import nn

    from mcel.errors import MCELError
    from mcel.evaluate import evaluate
    from mcel.quant import QuantSpec, quant_layers, quantize_model

    shared = nn.Linear(8, 8)
    frozen = nn.Linear(16, 8)
    frozen.weight.requires_grad_(False)
    net = nn.Sequential(nn.Flatten(), frozen, nn.ReLU(), shared, nn.ReLU(), shared,
                        nn.Linear(8, 4, bias=False))
    params = {id(p) for p in net.parameters()}
    quantize_model(net, "int4")
    assert {id(p) for p in net.parameters()} == params  # an optimizer built before still fits
    assert not net[1].weight.requires_grad
    assert net[3] is net[5] and len(quant_layers(net)) == 3  # one quantized layer, used twice
    assert type(quantize_model(nn.Linear(2, 2), "int4")).__name__ == "QuantLinear"
    assert QuantSpec("int4", include="1*").include == ("1*",)  # a string is one pattern
    double = quantize_model(nn.Sequential(nn.Flatten(), nn.Linear(16, 4)).double(), "int8")
    x = torch.randn(8, 1, 4, 4, dtype=torch.float64)
    assert double(x).dtype == torch.float64  # the layer keeps its dtype
    with pytest.raises(MCELError, match="holds torch.float64 weights; .*model.float()"):
        evaluate(double, x, torch.zeros(8, dtype=torch.long), [0.01], trials=1)


def test_layers_mcel_cannot_quantize_are_named_not_skipped():
    from torch import nn

    from mcel.errors import MCELError
    from mcel.quant import QuantSpec, quant_layers, quantize_model

    net = nn.Sequential(nn.ConvTranspose1d(1, 4, 3), nn.Flatten(), nn.Linear(28, 2))
    with pytest.raises(MCELError, match="layer '0' is a ConvTranspose1d.*exclude=\\('0',\\)"):
        quantize_model(net, "int4")
    quantize_model(net, QuantSpec("int4", exclude=("0",)))
    assert [n for n, _ in quant_layers(net)] == ["2"]


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("granularity", ["tensor", "channel"])
def test_every_convolution_quantizes_to_its_twin(dims, granularity):
    """Conv1d/2d/3d become QuantConv1d/2d/3d with the very Parameters and settings of the
    float layer; their forward is the float convolution of the dequantized codes."""
    from torch.nn import functional as F

    from mcel.quant import QuantConv1d, QuantConv3d

    torch.manual_seed(dims)
    float_cls = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims]
    twin = {1: QuantConv1d, 2: QuantConv2d, 3: QuantConv3d}[dims]
    conv = float_cls(2, 4, 3, stride=2, padding=1, dilation=1, groups=2)
    weight = conv.weight
    net = quantize_model(nn.Sequential(conv, nn.ReLU()), QuantSpec("int4", granularity=granularity))
    q = net[0]
    assert type(q) is twin and q.weight is weight
    assert (q.stride, q.padding, q.groups) == ((2,) * dims, (1,) * dims, 2)
    x = torch.randn(3, 2, *[7] * dims)
    conv_fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[dims]
    ref = conv_fn(x, q.quantized_weight().dequantize(), q.bias, stride=2, padding=1, groups=2)
    torch.testing.assert_close(q(x), ref)
    assert q.quantized_weight().codes.shape == weight.shape
    assert int(q.quantized_weight().codes.max()) < 16


def test_hooks_of_a_float_layer_carry_over_and_their_handles_still_remove_them():
    seen = []
    net = nn.Sequential(nn.Linear(4, 3), nn.ReLU())
    fwd = net[0].register_forward_hook(lambda m, i, o: seen.append(("fwd", type(m).__name__)))
    pre = net[0].register_forward_pre_hook(lambda m, i: seen.append(("pre", type(m).__name__)))
    net[0].register_full_backward_hook(lambda m, gi, go: seen.append(("bwd", type(m).__name__)))
    quantize_model(net, "int4")
    x = torch.randn(2, 4, requires_grad=True)
    net(x).sum().backward()
    assert seen == [("pre", "QuantLinear"), ("fwd", "QuantLinear"), ("bwd", "QuantLinear")]
    fwd.remove()
    pre.remove()
    seen.clear()
    net(x)
    assert seen == []


def test_layers_whose_parent_bypasses_their_forward_are_refused(monkeypatch):
    """MultiheadAttention computes with its projection weights itself, and a
    TransformerEncoderLayer's inference fast path with its Linear weights: quantized or
    faulty weights there would be ignored. quantize_model unpacks the attention it
    quantizes (tests/test_attention.py); one kept packed (excluded) while a layer inside
    it, or the encoder layer's feed-forward, is selected is refused with the exclude to
    use."""
    from mcel.errors import MCELError

    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
    with pytest.raises(MCELError, match="layer 'linear1' is in the model, a "
                                        "TransformerEncoderLayer, whose inference fast path"):
        quantize_model(layer, QuantSpec("int4", exclude=("self_attn", "self_attn.*")))
    monkeypatch.setattr(torch.backends.mha, "get_fastpath_enabled", lambda: False)
    with pytest.raises(MCELError, match="layer 'self_attn.out_proj' is in 'self_attn', a "
                                        r"MultiheadAttention.*exclude=\('self_attn', "
                                        r"'self_attn.\*'\)"):
        quantize_model(layer, QuantSpec("int4", exclude=("self_attn",)))
    quantize_model(layer, QuantSpec("int4", exclude=("self_attn", "self_attn.*")))
    assert [n for n, _ in quant_layers(layer)] == ["linear1", "linear2"]


@pytest.mark.parametrize("layer", [nn.LSTM(4, 4, batch_first=True), nn.Embedding(10, 4),
                                   nn.ConvTranspose2d(1, 2, 3)])
def test_rnns_embeddings_and_transposed_convs_are_named_not_left_float(layer):
    from mcel.errors import MCELError

    net = nn.Sequential(layer, nn.Flatten(), nn.LazyLinear(2))
    with pytest.raises(MCELError, match=f"layer '0' is a {type(layer).__name__}, which mcel "
                                        "does not quantize.*exclude=\\('0',\\)"):
        quantize_model(net, "int4")
