"""The fault engine on real quantized models: exactness, no side effects, statistics."""

import math

import pytest
import torch
from scipy import stats
from torch import nn

from mcel import MCELError
from mcel.engine import MemoryImage, state_digest, transient_weight_faults
from mcel.evaluate import at_rate, evaluate, t_interval
from mcel.faults import BitErrorModel, FaultKey, FlipMask, inject
from mcel.quant import QuantSpec, quant_layers, quantize_model


def _model(scheme="int4", act_bits=None, seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    net = quantize_model(net, QuantSpec(scheme, act_bits=act_bits))
    if act_bits:  # calibrate the activation ranges as training would
        net.train()(torch.randn(64, 1, 4, 4))
    return net.eval()


def _data(n=256, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 4, 4, generator=g)
    return x, torch.randint(0, 4, (n,), generator=g)


def test_image_forward_equals_independently_faulted_weights():
    model = _model()
    x, _ = _data()
    em = BitErrorModel(ber=0.05)
    clean = model(x)
    # reference: build faulty weights from the codes with the public inject()
    ref = []
    for name, layer in quant_layers(model):
        qt = layer.quantized_weight()
        codes = inject(qt.codes, qt.bits, em, FaultKey(seed=3, trial=7, name=f"{name}.weight"))
        ref.append((layer, (qt.table()[codes.long()] * qt.scale)))
    for layer, w in ref:  # dense dequantization of the whole faulty tensor
        layer.weight_override = w
    expected = model(x)
    for layer, _ in ref:
        layer.weight_override = None
    with MemoryImage(model, em) as image:
        torch.testing.assert_close(model(x), clean)
        st = image.inject(em, seed=3, trial=7)
        faulty = model(x)
        image.restore()
        torch.testing.assert_close(model(x), clean, rtol=0, atol=0)
    torch.testing.assert_close(faulty, expected)
    assert st.flipped_bits > 0
    assert not torch.allclose(faulty, clean)


def test_evaluation_leaves_model_bit_identical():
    model = _model("int8", act_bits=8)
    x, y = _data()
    before = state_digest(model)
    params = {k: v.clone() for k, v in model.state_dict().items()}
    for em in (BitErrorModel(ber=0.0), BitErrorModel(p01=0.01, p10=0.1),
               BitErrorModel(ber=0.0, targets=("weights", "biases", "activations")),
               BitErrorModel(ber=0.0, mode="transient")):
        evaluate(model, x, y, [0.0, 0.01, 0.2], em, trials=3, seed=0)
    assert state_digest(model) == before
    for k, v in model.state_dict().items():
        assert torch.equal(v, params[k])
    assert all(layer.weight_override is None and layer.weight_fault is None
               for _, layer in quant_layers(model))


def test_ber_zero_is_clean_and_empirical_rate_matches():
    model = _model()
    x, y = _data()
    res = evaluate(model, x, y, [0.0, 0.02], trials=20, seed=0)
    r0, r2 = res.results
    assert r0.accuracies == [res.clean_accuracy] * 20
    assert r0.std == 0.0 and r0.empirical_rates == [0.0] * 20
    # pooled empirical rate over all trials within a binomial 99.9% interval of 2%
    nbits = sum(layer.weight.numel() * 4 for _, layer in quant_layers(model))
    flips = round(sum(r2.empirical_rates) * nbits)
    lo, hi = stats.binomtest(flips, nbits * 20, 0.02).proportion_ci(0.999)
    assert lo <= 0.02 <= hi


def test_nested_flips_across_bers():
    model = _model()
    em = BitErrorModel(ber=0.0)
    with MemoryImage(model, em) as image:
        clean = [s.qt.codes.clone() for _, s in image.weights]
        prev = None
        for b in (0.001, 0.01, 0.1):
            image.inject(at_rate(em, b), seed=5, trial=2)
            flipped = [s.qt.codes ^ c for (_, s), c in zip(image.weights, clean)]  # bits
            image.restore()
            if prev is not None:  # every bit flipped at the lower rate flips here too
                assert all(torch.equal(p & f, p) for p, f in zip(prev, flipped))
                assert sum(int(f.count_nonzero()) for f in flipped) > sum(
                    int(p.count_nonzero()) for p in prev)
            prev = flipped


def test_same_seed_same_result_different_seed_differs():
    model = _model()
    x, y = _data()
    a = evaluate(model, x, y, [0.05], trials=5, seed=1).results[0].accuracies
    b = evaluate(model, x, y, [0.05], trials=5, seed=1).results[0].accuracies
    c = evaluate(model, x, y, [0.05], trials=5, seed=2).results[0].accuracies
    assert a == b and a != c


def test_t_interval_matches_scipy():
    vals = [0.91, 0.88, 0.93, 0.90, 0.87]
    m, lo, hi = t_interval(vals)
    ref = stats.t.interval(0.95, len(vals) - 1, loc=m, scale=stats.sem(vals))
    assert (lo, hi) == pytest.approx(ref)


def test_adaptive_mode_stops_once_interval_is_narrow():
    model = _model()
    x, y = _data()
    wide = evaluate(model, x, y, [0.01], trials=200, target_half_width=0.5, min_trials=5)
    assert wide.results[0].trials == 5
    narrow = evaluate(model, x, y, [0.05], trials=40, target_half_width=1e-6, min_trials=5)
    assert narrow.results[0].trials == 40
    mid = evaluate(model, x, y, [0.05], trials=400, target_half_width=0.01, min_trials=5)
    r = mid.results[0]
    assert r.half_width <= 0.01 and 5 <= r.trials < 400


def test_adaptive_rows_do_not_depend_on_the_other_bers():
    # each BER stops on its own: a sweep that adds a BER later gets the same rows
    model, (x, y) = _model(), _data()
    alone = evaluate(model, x, y, [0.01], trials=60, target_half_width=0.02, min_trials=5)
    both = evaluate(model, x, y, [0.01, 0.1], trials=60, target_half_width=0.02, min_trials=5)
    assert both.results[0].accuracies == alone.results[0].accuracies
    assert both.results[0].trials != both.results[1].trials or both.results[0].trials == 60


def test_adaptive_mode_never_stops_on_trials_that_all_agree():
    # at a BER so low that most trials flip nothing, agreeing trials would give a zero
    # width: the run goes on until trials disagree (or the budget ends); BER 0 is exact
    model, (x, y) = _model(), _data()
    res = evaluate(model, x, y, [0.0, 1e-5], trials=30, target_half_width=0.005, min_trials=3)
    r0, r1 = res.results
    assert r0.trials == 3  # BER 0 is exact: it stops at min_trials
    assert max(r1.accuracies) > min(r1.accuracies) or r1.trials == 30
    with pytest.raises(MCELError, match="min_trials must be >= 2"):
        evaluate(model, x, y, [0.01], trials=5, target_half_width=0.01, min_trials=1)


def _conv_net(dims: int) -> tuple[nn.Module, torch.Tensor]:
    """A quantized Conv{dims}d + BatchNorm + Linear model and inputs of 16 values each."""
    torch.manual_seed(0)
    conv, norm = {1: (nn.Conv1d, nn.BatchNorm1d), 2: (nn.Conv2d, nn.BatchNorm2d),
                  3: (nn.Conv3d, nn.BatchNorm3d)}[dims]
    net = nn.Sequential(conv(1, 4, 3, padding=1), norm(4), nn.ReLU(), nn.Flatten(),
                        nn.Linear(64, 4))
    shape = {1: (16,), 2: (4, 4), 3: (2, 2, 4)}[dims]
    return quantize_model(net, QuantSpec("int4")).eval(), _data()[0].reshape(-1, 1, *shape)


@pytest.mark.parametrize("targets,dims", [(("weights",), 2), (("weights", "biases"), 2),
                                          (("weights", "biases"), 1), (("weights",), 3)])
def test_batched_trials_equal_sequential_trials(targets, dims):
    """vmapped trials see exactly the faults of the sequential path: same per-sample
    predictions, same empirical rates, and the model is untouched (1d, 2d, 3d convs)."""
    model, x = _conv_net(dims)
    with torch.no_grad():
        y = model(x).argmax(1)  # clean accuracy 1, so faults show
    em = BitErrorModel(ber=0.0, targets=targets)
    before = state_digest(model)
    one = evaluate(model, x, y, [0.01, 0.05], em, trials=7, keep_correct=True)
    many = evaluate(model, x, y, [0.01, 0.05], em, trials=7, trial_batch=3,
                    keep_correct=True, batch_size=100)
    assert state_digest(model) == before
    for a, b in zip(one.results, many.results):
        assert a.accuracies == b.accuracies and a.empirical_rates == b.empirical_rates
        assert len(b.trial_seconds) == 7
    for ber in (0.01, 0.05):
        assert torch.equal(one.meta["correct"][ber], many.meta["correct"][ber])
    assert one.results[1].mean < one.results[0].mean < one.clean_accuracy


@pytest.mark.parametrize("fmt", ["twos_complement", "sign_magnitude", "offset_binary"])
@pytest.mark.parametrize("granularity", ["tensor", "channel"])
def test_restore_gives_back_the_clean_values_bit_for_bit(fmt, granularity):
    model = quantize_model(
        nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)),
        QuantSpec("int4", fmt=fmt, granularity=granularity)).eval()
    em = BitErrorModel(ber=0.2, targets=("weights", "biases"))
    with MemoryImage(model, em) as image:
        slots = [s for _, s in image.weights + image.biases]
        clean = [s.values.clone() for s in slots]
        codes = [s.qt.codes.clone() for s in slots]
        for trial in range(3):  # stacked masks, undone newest first
            image.inject(em, seed=0, trial=trial)
        assert any(not torch.equal(s.values, c) for s, c in zip(slots, clean))
        image.restore()
        for s, c, k in zip(slots, clean, codes):
            assert torch.equal(s.values.view(torch.int32), c.view(torch.int32))
            assert torch.equal(s.qt.codes, k)


@pytest.mark.parametrize("em,redrawn", [
    (BitErrorModel(ber=0.05), True),
    (BitErrorModel(bit_rates=(0.0, 0.01, 0.05, 0.1)), True),
    (BitErrorModel(p01=0.02, p10=0.1), False),  # draws read the stored bits
    (BitErrorModel(ber=0.01, stuck_at=0.05), False),
])
def test_masks_that_do_not_read_the_codes_are_redrawn_not_kept(em, redrawn):
    model = _model()
    with MemoryImage(model, em) as image:
        slots = [s for _, s in image.weights]
        clean = [s.values.clone() for s in slots]
        codes = [s.qt.codes.clone() for s in slots]
        for trial in (4, 9):
            image.inject(em, seed=3, trial=trial)
        kept = [m for s in slots for m in s.masks]
        assert len(kept) == 2 * len(slots)
        assert all(isinstance(m, FlipMask) != redrawn for m in kept)
        assert any(not torch.equal(s.qt.codes, k) for s, k in zip(slots, codes))
        image.restore()
        for s, c, k in zip(slots, clean, codes):
            assert torch.equal(s.values.view(torch.int32), c.view(torch.int32))
            assert torch.equal(s.qt.codes, k)


def test_batched_adaptive_stops_where_sequential_stops():
    model = _model()
    x, y = _data()
    kw = dict(trials=60, target_half_width=0.03, min_trials=4)
    one = evaluate(model, x, y, [0.02, 0.05], **kw)
    for k in (5, 16):
        many = evaluate(model, x, y, [0.02, 0.05], trial_batch=k, **kw)
        assert [r.trials for r in many.results] == [r.trials for r in one.results]
        assert [r.accuracies for r in many.results] == [r.accuracies for r in one.results]
    assert 4 <= one.results[0].trials < 60  # the stop fell inside a batch


def test_batched_trials_reject_transient_and_bad_sizes():
    model = _model()
    x, y = _data()
    with pytest.raises(MCELError, match="persistent"):
        evaluate(model, x, y, [0.01], BitErrorModel(ber=0.0, mode="transient"), trial_batch=2)
    with pytest.raises(MCELError, match="trial_batch"):
        evaluate(model, x, y, [0.01], trial_batch=0)


@pytest.mark.parametrize("quant,fmt,granularity", [
    ("int4", "twos_complement", "tensor"), ("int4", "sign_magnitude", "channel"),
    ("int8", "offset_binary", "channel"), ("int3", "twos_complement", "tensor"),
    ("binary", "twos_complement", "tensor"), ("ternary", "sign_magnitude", "channel"),
])
@pytest.mark.parametrize("em", [BitErrorModel(ber=0.05),
                                BitErrorModel(ber=0.2, protected_bits=(-1,))])
def test_sparse_transient_values_equal_the_whole_tensor_path(quant, fmt, granularity, em):
    from mcel.engine import _CallCounter, _Transient
    torch.manual_seed(0)
    net = quantize_model(nn.Sequential(nn.Linear(16, 32), nn.Linear(32, 4)),
                         QuantSpec(quant, fmt=fmt, granularity=granularity))
    for name, layer in quant_layers(net):
        with torch.no_grad():
            layer.weight[0, :3] = 0.0  # exact zeros: their sign must not leak into values
        for trial in range(3):
            sparse = _Transient(em, 7, name, _CallCounter(trial)).faulty_values(layer)
            whole = _Transient(em, 7, name, _CallCounter(trial))(layer.quantized_weight())
            want = whole.dequantize()
            assert sparse is not None and sparse.dtype == want.dtype
            assert torch.equal(sparse.view(torch.int32), want.view(torch.int32))
            if not (quant == "binary" and em.protected_bits):  # (its one bit is protected)
                assert not torch.equal(want, layer.quantized_weight().dequantize())


def test_code_dependent_transient_faults_take_the_whole_tensor_path():
    from mcel.engine import _CallCounter, _Transient
    layer = quant_layers(_model())[0][1]
    for em in (BitErrorModel(p01=0.1, p10=0.01), BitErrorModel(ber=0.01, stuck_at=0.1)):
        assert _Transient(em, 0, "1.weight", _CallCounter()).faulty_values(layer) is None


def test_transient_faults_redraw_every_forward_and_are_reproducible():
    model = _model()
    x, _ = _data()
    em = BitErrorModel(ber=0.05, mode="transient")
    with torch.no_grad(), transient_weight_faults(model, em, seed=0):
        a, b = model(x), model(x)
    with torch.no_grad(), transient_weight_faults(model, em, seed=0):
        a2 = model(x)
    assert not torch.allclose(a, b)
    torch.testing.assert_close(a, a2)


def test_activation_and_bias_targets():
    x, y = _data()
    res = evaluate(_model(act_bits=4), x, y, [0.0, 0.2],
                   BitErrorModel(ber=0.0, targets=("activations",)), trials=4)
    # an untrained model sits at chance, so look at the spread: faults move predictions
    assert res.results[0].std == 0 and res.results[1].std > 0
    assert math.isnan(res.results[1].empirical_rates[0])  # no stored weight bits were hit
    res = evaluate(_model(), x, y, [0.3], BitErrorModel(ber=0.0, targets=("biases",)), trials=3)
    assert 0 < res.results[0].empirical_rates[0] < 1
    with pytest.raises(MCELError, match="act-bits"):
        evaluate(_model(), x, y, [0.1], BitErrorModel(ber=0.0, targets=("activations",)),
                 trials=1)
    # biases beside activations: both hit (the bias faults used to be dropped)
    both = evaluate(_model(act_bits=4), x, y, [0.3],
                    BitErrorModel(ber=0.0, targets=("biases", "activations")), trials=2)
    assert 0 < both.results[0].empirical_rates[0] < 1
    with pytest.raises(MCELError, match="bias faults are persistent only"):
        evaluate(_model(), x, y, [0.1],
                 BitErrorModel(ber=0.0, targets=("weights", "biases"), mode="transient"),
                 trials=1)


def test_layer_include_exclude():
    model = _model()
    x, y = _data()
    em = BitErrorModel(ber=0.0, exclude=("1",))  # only the output layer '3' is faulty
    with MemoryImage(model, em) as image:
        clean = [s.qt.codes.clone() for _, s in image.weights]
        image.inject(at_rate(em, 0.1), seed=0, trial=0)
        hit = {s.name for (_, s), c in zip(image.weights, clean) if not torch.equal(s.qt.codes, c)}
        image.restore()
    assert hit == {"3.weight"}


def test_at_rate_scales_shaped_models():
    em = BitErrorModel(p01=1e-3, p10=1e-2)
    scaled = at_rate(em, 0.05)
    assert scaled.p10 == pytest.approx(0.05) and scaled.p01 == pytest.approx(0.005)
    assert at_rate(BitErrorModel(ber=0.1), 0.2).ber == 0.2


def test_bad_evaluation_input():
    model = _model()
    x, y = _data()
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(MCELError, match="BER"):
            evaluate(model, x, y, [bad], trials=1)
    with pytest.raises(MCELError, match="quantized"):
        evaluate(nn.Sequential(nn.Flatten(), nn.Linear(16, 4)), x, y, [0.1], trials=1)


@pytest.mark.parametrize("change,match", [
    (lambda x, y: (x, y[:, None]), "1-D tensor of integer class labels"),
    (lambda x, y: (x, y.float()), "1-D tensor of integer class labels"),
    (lambda x, y: (x, y[:1]), "256 samples but y 1 labels"),
    (lambda x, y: (x, y + 20), "out of range for a model with 4 outputs"),
    (lambda x, y: (x, y - 20), "labels must be >= 0"),
    (lambda x, y: (x[:0], y[:0]), "holds no samples"),
])
def test_labels_that_would_broadcast_into_a_wrong_accuracy_are_refused(change, match):
    # pred == y broadcasts: (N, 1) labels used to give ~1/C accuracy without a word
    from mcel.train import accuracy

    model, (x, y) = _model(), _data()
    xb, yb = change(x, y)
    with pytest.raises(MCELError, match=match):
        evaluate(model, xb, yb, [0.01], trials=1)
    with pytest.raises(MCELError, match=match):
        accuracy(model, xb, yb)


def test_evaluate_takes_a_scalar_ber_and_a_spec_string_and_refuses_duplicates():
    model, (x, y) = _model(), _data()
    a = evaluate(model, x, y, 0.01, "ber=0", trials=2)
    b = evaluate(model, x, y, [0.01], BitErrorModel(ber=0), trials=2)
    assert a.table() == b.table()
    with pytest.raises(MCELError, match="each BER once"):
        evaluate(model, x, y, [0.01, 0.01], trials=1)
    with pytest.raises(MCELError, match="batch_size"):
        evaluate(model, x, y, [0.01], trials=1, batch_size=0)
    with pytest.raises(MCELError, match="list of bit error rates"):
        evaluate(model, x, y, "0.01", trials=1)


def test_every_module_gets_its_own_mode_back_even_after_an_error():
    model, (x, y) = _model(), _data()
    model.train()
    model[1].eval()  # e.g. a frozen layer inside a model being trained
    evaluate(model, x, y, [0.01], trials=1)
    assert model.training and not model[1].training and model[3].training
    with pytest.raises(MCELError):
        evaluate(model, x, y, [0.01], BitErrorModel(ber=0, targets=("activations",)), trials=1)
    assert model.training and not model[1].training and model[3].training


def test_ber_zero_is_fault_free_for_every_model_shape():
    from mcel.faults import parse_error_model

    model, (x, y) = _model(), _data()
    for spec in ("ber=0,stuck_at=0.05", "p01=0.001,p10=0.002,stuck_at=0.05", "stuck_at=0.05"):
        res = evaluate(model, x, y, [0.0], parse_error_model(spec), trials=2)
        assert res.results[0].empirical_rates == [0.0, 0.0], spec
        assert res.results[0].mean == res.clean_accuracy


def test_a_stored_layer_that_never_runs_is_named():
    """A layer whose weight the model reads itself (F.linear(x, self.fc.weight)) never
    runs its own forward: the engine's faults there change nothing, and evaluate says so."""
    import warnings

    class ReadsWeight(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(16, 4)
            self.head = nn.Linear(16, 4)

        def forward(self, x):
            x = x.flatten(1)
            return nn.functional.linear(x, self.fc.weight) + self.head(x)

    torch.manual_seed(0)
    model = quantize_model(ReadsWeight(), "int4").eval()
    x, y = _data()
    with pytest.warns(UserWarning, match="stored layer\\(s\\) fc never ran"):
        evaluate(model, x, y, [0.01], trials=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every layer of an ordinary model runs
        evaluate(_model(), x, y, [0.01], trials=2)
