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
