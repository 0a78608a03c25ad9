"""Weight clipping with and without normalization layers: the tutorial's small CNN.

The study's models (MLP, VGG3, VGG7, ResNet-20) have batch norm after every hidden
layer, and on them `--clip-auto 2` never cost clean accuracy. This checks the same recipe
on a model without it: the tutorial's `SmallCNN` (two 3x3 convolutions of 16 and 32
channels, max pooling, one linear layer; docs/tutorial.md), as it is and with a
`BatchNorm2d` after each convolution. Digits (1,400 training / 397 test images, the
tutorial's split), int4, Adam 3e-3, 10 epochs, 5 initialisation seeds; CE, MCEL m=10,
each with and without `clip_auto=2` (and MCEL with `clip_auto=4` on the plain CNN);
accuracy at BER 0 / 1% / 2% (20 persistent-fault trials, evaluation seed 0).

    .venv/bin/python docs/study/clip-without-norm/run.py     # ~6 min on one core

Writes results.json beside this file and prints mean accuracy and the paired difference
to CE with its 95% t-interval over the seeds.
"""

import json
from pathlib import Path

import numpy as np
import torch
from scipy import stats
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import mcel

SEEDS, BERS, EPOCHS = range(5), [0.0, 0.01, 0.02], 10
METHODS = {  # name: (loss, clip_auto)
    "CE": (lambda: nn.CrossEntropyLoss(), None),
    "MCEL": (lambda: mcel.MCELoss(margin=10.0), None),
    "CE + clip_auto 2": (lambda: nn.CrossEntropyLoss(), 2.0),
    "MCEL + clip_auto 2": (lambda: mcel.MCELoss(margin=10.0), 2.0),
    "MCEL + clip_auto 4": (lambda: mcel.MCELoss(margin=10.0), 4.0),
}


class SmallCNN(nn.Module):
    def __init__(self, norm: bool):
        super().__init__()
        bn = (lambda c: nn.BatchNorm2d(c)) if norm else (lambda c: nn.Identity())
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), bn(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), bn(32), nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Linear(32 * 2 * 2, 10)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


def data():
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16
    y = torch.tensor(digits.target)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    tr, te = order[:1400], order[1400:]
    return (x[tr], y[tr]), DataLoader(TensorDataset(x[te], y[te]), batch_size=200)


def fit(model, loss_fn, x, y, seed):
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    loader = DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    model.train()
    for _ in range(EPOCHS):
        for xb, yb in loader:
            loss = loss_fn(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            mcel.quant.clip_weights(model)
    return model.eval()


def main():
    torch.set_num_threads(1)
    (x, y), test = data()
    out = {}
    for norm in (False, True):
        key = "with batch norm" if norm else "without normalization"
        acc = out.setdefault(key, {})
        for seed in SEEDS:
            for name, (loss, clip_auto) in METHODS.items():
                if norm and clip_auto == 4.0:
                    continue
                torch.manual_seed(seed)
                spec = mcel.QuantSpec("int4", clip_auto=clip_auto)
                model = mcel.quantize_model(SmallCNN(norm), spec)
                model = fit(model, loss(), x, y, seed)
                res = mcel.evaluate.evaluate(model, test, None, bers=BERS, trials=20, seed=0)
                acc.setdefault(name, []).append([r["mean"] for r in res.table()])
        ce = np.array(acc["CE"])
        print(f"\n{key} (% at BER {', '.join(f'{b:g}' for b in BERS)}; Δ vs CE [95% CI])")
        for name, v in acc.items():
            a, d = 100 * np.array(v), 100 * (np.array(v) - ce)
            h = stats.t.ppf(0.975, len(d) - 1) * d.std(axis=0, ddof=1) / np.sqrt(len(d))
            print(f"  {name:20s}", " | ".join(
                f"{a[:, j].mean():5.1f} Δ {d[:, j].mean():+5.1f} [{d[:, j].mean() - h[j]:+.1f}, "
                f"{d[:, j].mean() + h[j]:+.1f}]" for j in range(len(BERS))))
    path = Path(__file__).with_name("results.json")
    path.write_text(json.dumps({"bers": BERS, "seeds": list(SEEDS), "epochs": EPOCHS,
                                "accuracy": out}, indent=1))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
