"""evaluate() on data as users hold it: DataLoaders and other iterables of batches."""

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from mcel import MCELError
from mcel.data import load_dataset
from mcel.evaluate import evaluate
from mcel.train import TrainConfig, train


@pytest.fixture(scope="module")
def setup():
    model, _ = train(TrainConfig(dataset="digits", model="mlp", model_kwargs={"hidden": 32},
                                 quant="int4", epochs=3, lr=0.01, limit_train=512))
    x, y = load_dataset("digits", "test", limit=300)
    return model, x, y


def test_a_loader_gives_the_tensor_path_results(setup):
    model, x, y = setup
    loader = DataLoader(TensorDataset(x, y), batch_size=64, shuffle=False)
    kw = dict(trials=12, seed=3, target_half_width=0.01, min_trials=4)
    a = evaluate(model, x, y, [0, 0.02, 0.05], batch_size=64, **kw)
    b = evaluate(model, loader, None, [0, 0.02, 0.05], **kw)
    assert a.clean_accuracy == b.clean_accuracy
    for ra, rb in zip(a.results, b.results):
        assert (ra.accuracies, ra.empirical_rates, ra.trials) == (rb.accuracies,
                                                                  rb.empirical_rates, rb.trials)
    # a plain list of batches streams too, with transient and activation faults
    batches = [(x[i:i + 100], y[i:i + 100]) for i in range(0, 300, 100)]
    c = evaluate(model, batches, None, [0.05], "ber=0,mode=transient", trials=3)
    d = evaluate(model, x, y, [0.05], "ber=0,mode=transient", trials=3, batch_size=100)
    assert c.results[0].accuracies == d.results[0].accuracies


def test_a_reshuffling_loader_is_refused(setup):
    model, x, y = setup
    loader = DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True)
    with pytest.raises(MCELError, match="shuffle=False"):
        evaluate(model, loader, None, [0.01], trials=3)


def test_bad_streams(setup):
    model, x, y = setup
    gen = ((x[i:i + 100], y[i:i + 100]) for i in range(0, 300, 100))
    with pytest.raises(MCELError, match="second pass"):
        evaluate(model, gen, None, [0.01], trials=2)
    with pytest.raises(MCELError, match="y is None"):
        evaluate(model, x, None, [0.01])
    with pytest.raises(MCELError, match=r"must be an \(x, y\) pair"):
        evaluate(model, [x[:10]], None, [0.01], trials=1)
    with pytest.raises(MCELError, match="no batches"):
        evaluate(model, [], None, [0.01], trials=1)
    with pytest.raises(MCELError, match="trial_batch > 1 needs"):
        evaluate(model, [(x, y)], None, [0.01], trial_batch=2)
    bad = [(x[:10], y[:10].float())]
    with pytest.raises(MCELError, match="integer class labels"):
        evaluate(model, bad, None, [0.01], trials=1)
    big = [(x[:10], torch.full((10,), 99))]
    with pytest.raises(MCELError, match="label 99 is out of range"):
        evaluate(model, big, None, [0.01], trials=1)


class _Replay:
    """Re-iterable batches whose later passes go through ``later`` (the first pass is
    ``batches`` as they are)."""

    def __init__(self, batches, later):
        self.batches, self.later, self.passes = batches, later, 0

    def __iter__(self):
        self.passes += 1
        for xb, yb in self.batches:
            yield (xb, yb) if self.passes == 1 else self.later(xb, yb)


def test_images_reordered_among_equal_labels_are_refused(setup):
    model, x, y = setup
    i, j = [int(k) for k in torch.nonzero(y[:100] == y[0]).flatten()[:2]]
    assert not torch.equal(x[i], x[j])

    def swap(xb, yb):  # same labels in the same order, two images trade places
        xb = xb.clone()
        xb[[i, j]] = xb[[j, i]]
        return xb, yb

    with pytest.raises(MCELError, match="shuffle=False"):
        evaluate(model, _Replay([(x[:100], y[:100])], swap), None, [0.01], trials=1)


def test_the_same_values_in_another_layout_are_accepted(setup):
    model, x, y = setup
    batches = [(x[k:k + 100], y[k:k + 100]) for k in range(0, 300, 100)]

    def column_major(xb, yb):  # the same values, each image stored transposed
        xt = xb.transpose(2, 3).contiguous().transpose(2, 3)
        assert torch.equal(xt, xb) and not xt.is_contiguous()
        return xt, yb

    replay = _Replay(batches, column_major)
    a = evaluate(model, replay, None, [0.05], trials=3, seed=1)
    b = evaluate(model, x, y, [0.05], trials=3, seed=1, batch_size=100)
    assert replay.passes == 4 and a.results[0].accuracies == b.results[0].accuracies


def test_a_nan_image_is_not_taken_for_a_reshuffle(setup):
    model, x, y = setup
    xn = x[:100].clone()
    xn[3, 0, 0, 0] = float("nan")
    res = evaluate(model, [(xn, y[:100])], None, [0.01], trials=2)
    assert res.results[0].trials == 2


def test_the_stream_benchmarks_lazy_dataset_reads_what_load_dataset_does(tmp_path):
    """benchmarks/bench_stream.py reads IDX files batch by batch: the same tensors, bit for
    bit, as mcel's loader, which reads them whole."""
    import importlib
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    try:
        bench = importlib.import_module("bench_stream")
    finally:
        sys.path.pop(0)
    bench.write_fake_idx(tmp_path, "test", 300)
    bench.write_fake_idx(tmp_path, "train", 20)  # load_dataset wants all four files
    (tmp_path / "raw").mkdir()
    files = bench.unpack(tmp_path, "test", tmp_path / "raw")
    x, y = load_dataset(bench.NAME, "test", tmp_path)
    loader = bench.loader(files, batch_size=128)
    xs, ys = zip(*loader)
    assert [len(b) for b in ys] == [128, 128, 44]
    assert torch.equal(torch.cat(xs), x) and torch.equal(torch.cat(ys), y)
    xi, yi = loader.dataset[[7, 8, 9, 2, 250]]  # runs of consecutive indices
    assert torch.equal(xi, x[[7, 8, 9, 2, 250]]) and torch.equal(yi, y[[7, 8, 9, 2, 250]])
    assert torch.equal(loader.dataset[5][0], x[5]) and int(loader.dataset[5][1]) == int(y[5])
    assert len(bench.loader(files, limit=100).dataset) == 100
    with pytest.raises(IndexError):
        loader.dataset[[299, 300]]
