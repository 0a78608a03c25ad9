"""Monte-Carlo evaluation of accuracy under bit errors.

For every trial ``t`` and bit error rate ``p`` the engine flips the bits of trial ``t``
(the same random stream at every ``p``, so the flips at a lower rate are a subset of
those at a higher one), measures accuracy on the whole test set, and undoes the flips.
Per BER it reports the mean accuracy over trials, its standard deviation, a 95%
Student-t confidence interval of the mean, every per-trial accuracy and the empirical
error rate each trial produced, and the wall time of each trial next to that of the
clean pass (``EvalResult.clean_seconds``), so the engine's overhead is visible.

Adaptive mode adds trials until the interval's half-width is below a target (or a
trial budget is spent), so a flat curve costs few trials and a noisy one gets more.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from scipy import stats as sps
from torch import Tensor, nn

from mcel.checks import check_bers, check_data, check_labels_fit, check_targets
from mcel.console import progress as progress_bar
from mcel.engine import MemoryImage, state_digest, transient_weight_faults
from mcel.errors import MCELError
from mcel.faults import ERROR_MODELS, BitErrorModel
from mcel.precision import autocast, check_runs_on
from mcel.quant.stored import no_stored_layers_error, stored_layers


def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): Student-t interval of the mean. One value says nothing about the
    spread: its interval is the whole range an accuracy can take, [0, 1].

    >>> m, lo, hi = t_interval([0.8, 0.9, 1.0])
    >>> round(m, 3), round(lo, 3), round(hi, 3)
    (0.9, 0.652, 1.148)
    """
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, 0.0, 1.0
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = float(sps.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def at_rate(error_model: BitErrorModel, ber: float) -> BitErrorModel:
    """The error model with its largest per-bit rate set to ``ber``
    (`BitErrorModel.at_rate`: the model knows how its rates scale)."""
    return error_model.at_rate(ber)


def narrow_enough(accs: Sequence[float], ber: float, half_width: float) -> bool:
    """The adaptive mode's stopping test for one BER: the trials' 95% interval is within
    +-``half_width``, and at a BER above 0 the trials disagree somewhere (agreeing trials
    show too few trials, not certainty).

    >>> narrow_enough([0.9, 0.9, 0.9], 0.01, 0.005), narrow_enough([0.9, 0.9], 0.0, 0.005)
    (False, True)
    """
    if ber > 0 and max(accs) == min(accs):
        return False
    _, lo, hi = t_interval(accs)
    return (hi - lo) / 2 <= half_width


@dataclass
class BerResult:
    """The trials at one BER: mean accuracy with its 95% interval (``ci_low``,
    ``ci_high``), the spread over trials (``std``), each trial's accuracy and empirical
    bit error rate (flipped / stored bits; NaN where no stored bits were targeted) and
    wall time."""

    ber: float
    mean: float
    std: float
    ci_low: float
    ci_high: float
    trials: int
    accuracies: list[float]
    empirical_rates: list[float]
    trial_seconds: list[float] = field(default_factory=list)  # inject + forward + undo

    @classmethod
    def from_trials(cls, ber: float, accs: list[float], rates: list[float],
                    seconds: list[float] | None = None) -> BerResult:
        mean, lo, hi = t_interval(accs)
        n = len(accs)
        sd = math.sqrt(sum((a - mean) ** 2 for a in accs) / (n - 1)) if n > 1 else 0.0
        return cls(ber, mean, sd, lo, hi, len(accs), accs, rates, list(seconds or []))

    @property
    def half_width(self) -> float:
        return (self.ci_high - self.ci_low) / 2


@dataclass
class EvalResult:
    """What `evaluate` returns: the clean accuracy, one `BerResult` per BER (``results``),
    the error model and seed used, timings and ``meta``; ``table()`` gives one summary
    row per BER, ``to_dict()`` everything (as written by ``mcel evaluate --json``)."""

    clean_accuracy: float
    error_model: dict[str, Any]
    seed: int
    results: list[BerResult]
    seconds: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)
    clean_seconds: float = 0.0  # the one clean pass over the data (the overhead baseline)
    precision: str = "fp32"  # of every forward pass above (see mcel.precision)
    # fraction of samples whose clean prediction at this precision equals the fp32 one
    # (1.0 in fp32): what the faster precision costs
    agreement: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def table(self) -> list[dict[str, float]]:
        return [{"ber": r.ber, "mean": r.mean, "ci_low": r.ci_low, "ci_high": r.ci_high,
                 "std": r.std, "trials": r.trials} for r in self.results]


@dataclass(frozen=True)
class Difference:
    """Accuracy of one model minus another's at one BER, paired by trial: the mean of the
    per-trial differences and its 95% t-interval (a fraction; one trial: [-1, 1])."""

    ber: float
    mean: float
    ci_low: float
    ci_high: float
    trials: int


def paired_difference(a: EvalResult, b: EvalResult) -> list[Difference]:
    """``b`` minus ``a`` at every BER, paired by trial. Both must come from the same fault
    seed, error model, BERs and trial counts; trial t of each then draws the same fault
    stream (in models with the same stored layers the same cells flip), so each pair
    shares the faults' luck and the difference needs about 3x fewer trials than
    independent seeds would (docs/performance.md, section 3)."""
    if a.seed != b.seed or a.error_model != b.error_model:
        raise MCELError("a paired comparison needs both evaluations under the same fault "
                        "seed and error model")
    if [r.ber for r in a.results] != [r.ber for r in b.results]:
        raise MCELError("a paired comparison needs both evaluations at the same BERs")
    out = []
    for ra, rb in zip(a.results, b.results):
        if ra.trials != rb.trials:
            raise MCELError(f"at BER {ra.ber:g} one evaluation has {ra.trials} trials and the "
                            f"other {rb.trials}: a paired comparison needs a fixed trial "
                            "count (no adaptive stopping)")
        diffs = [y - x for x, y in zip(ra.accuracies, rb.accuracies)]
        mean, lo, hi = t_interval(diffs) if len(diffs) > 1 else (diffs[0], -1.0, 1.0)
        out.append(Difference(ra.ber, mean, lo, hi, len(diffs)))
    return out


class _Column:
    """A 1-D tensor built batch by batch, in storage that doubles when full (or holds
    ``capacity`` from the start): a few allocations for any number of batches. A small
    tensor kept per batch would lie between that batch's large freed blocks, and glibc,
    serving those from its heap, then keeps about 1 MiB resident per batch: the peak of
    a stream would grow with the dataset."""

    def __init__(self, capacity: int = 0) -> None:
        self.data: Tensor | None = None
        self.n, self.capacity = 0, capacity

    def append(self, t: Tensor) -> None:
        end = self.n + len(t)
        if self.data is None or end > len(self.data):
            grown = (t if self.data is None else self.data).new_empty(
                self.capacity if self.capacity >= end else 2 * end)
            if self.data is not None:
                grown[:self.n] = self.data[:self.n]
            self.data = grown
        self.data[self.n:end] = t
        self.n = end

    def values(self) -> Tensor:
        return self.data[:self.n]


class _Forward:
    """Predictions (and per-sample correctness) of the model on fixed data: ``(x, y)``
    tensors, cut into ``batch_size`` slices, or any re-iterable of ``(x, y)`` batches (a
    DataLoader), streamed: its images are never held all at once. Every pass must give
    the same batches in the same order (checked: the labels and a fingerprint of each
    sample), or the trials would not see the same data. A stream keeps about 12 bytes
    per sample for that: its label (which the statistics need anyway) and its
    fingerprint."""

    def __init__(self, model: nn.Module, x, y: Tensor | None, *, batch_size: int,
                 precision: str = "fp32") -> None:
        self.dev = next(model.parameters()).device
        self.model, self.batch_size, self.precision = model, batch_size, precision
        self.loader = x if y is None else None
        self.x = None if y is None else x.to(self.dev)
        self.y = None if y is None else y.to(self.dev)
        self.max_label = None if y is None else int(y.max())  # once: no GPU wait per trial
        # what the first streamed pass saw: labels and fingerprints, and where each
        # batch ends
        self._labels, self._prints, self._ends = _Column(), _Column(), [0]

    def batches(self):
        if self.loader is None:
            for i in range(0, len(self.x), self.batch_size):
                yield self.x[i:i + self.batch_size]
            return
        yield from self._stream()

    def _stream(self):
        first = self.y is None
        n = 0
        for n, batch in enumerate(self.loader, 1):
            xb, yb = _pair(batch)
            if first:
                xb, yb = check_data(xb, yb)
                self._labels.append(yb.cpu().long())
                self._prints.append(_fingerprint(xb))
                self._ends.append(self._labels.n)
            elif n >= len(self._ends) or not self._same_batch(n - 1, xb, yb):
                raise MCELError(_RESHUFFLED)
            yield xb.to(self.dev)
        if first:
            if n == 0:
                raise MCELError("the data gave no batches")
            self.y = self._labels.values().to(self.dev)
            self.max_label = int(self.y.max())
        elif n != len(self._ends) - 1:
            raise MCELError(_RESHUFFLED if n else "the data gave no batches on its second "
                            "pass (a generator?); pass a DataLoader or a list of batches, "
                            "which every trial can read again")

    def _same_batch(self, i: int, xb: Tensor, yb: Tensor) -> bool:
        """Whether a later pass's batch ``i`` is the first pass's (labels, fingerprints)."""
        lo, hi = self._ends[i], self._ends[i + 1]
        prints = self._prints.values()[lo:hi]
        return (yb.shape == (hi - lo,) and not yb.dtype.is_floating_point
                and torch.equal(yb.cpu().long(), self._labels.values()[lo:hi])
                and _same_bits(_fingerprint(xb).to(prints), prints))

    @torch.inference_mode()
    def predict(self, precision: str | None = None) -> Tensor:
        outs = _Column(0 if self.y is None else len(self.y))
        with autocast(precision or self.precision, self.dev):
            for xb in self.batches():
                logits = self.model(xb)
                outs.append(predicted(logits))
        check_labels_fit(self.max_label, logits)  # known once the first pass is over
        return outs.values()

    def correct(self) -> Tensor:
        return self.predict() == self.y

    def accuracy(self) -> float:
        return self.correct().float().mean().item()


def predicted(logits: Tensor) -> Tensor:
    """The predicted class of each sample; -1 (never a label: always wrong) where the
    logits hold a NaN, whose argmax would be a hardware accident (torch picks the NaN).

    >>> predicted(torch.tensor([[0.1, 0.9], [float("nan"), 0.9]])).tolist()
    [1, -1]
    """
    return torch.where(logits.isnan().any(1), -1, logits.argmax(1))


_RESHUFFLED = ("the data gave other batches on a later pass (a DataLoader with shuffle=True, "
               "or random transforms?); every trial must see the same images in the same "
               "order: use shuffle=False and fixed transforms")


def _pair(batch) -> tuple[Tensor, Tensor]:
    """An ``(x, y)`` batch as two tensors, or one MCELError line."""
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return torch.as_tensor(batch[0]), torch.as_tensor(batch[1])
    raise MCELError(f"each batch must be an (x, y) pair, got {type(batch).__name__}"
                    + (f" of {len(batch)}" if isinstance(batch, (tuple, list)) else ""))


def _fingerprint(x: Tensor) -> Tensor:
    """Each sample's sum: another image order (even among images of the same label) or
    a random transform changes it, and the same values give the same sums, bit for bit,
    in any memory layout (``flatten`` copies a strided batch into the same row-major
    order, and each sample is summed in the same order). Float32 and wider sum in their
    own type, at memory speed (a float64 sum of float32 data costs a conversion per
    element: about 10% of a small MLP's pass); half precisions sum in float32."""
    x = x.detach()
    if x.dim() < 2:  # one number per sample is its own fingerprint
        return x.clone()
    half = x.is_floating_point() and x.element_size() < 4
    return x.flatten(1).sum(1, dtype=torch.float32 if half else None)


def _same_bits(a: Tensor, b: Tensor) -> bool:
    """Equal shape, type and bits (NaN included, which ``torch.equal`` calls unequal)."""
    return (a.shape == b.shape and a.dtype == b.dtype and a.device == b.device
            and torch.equal(a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8)))


@torch.inference_mode()
def predict_logits(model: nn.Module, x: Tensor, batch_size: int = 1024) -> Tensor:
    """The logits of ``model`` in eval mode on ``x`` (fault-free), batch by batch on the
    model's device; the model's mode is restored."""
    was = model.training
    model.eval()
    dev = next(model.parameters()).device
    out = torch.cat([model(x[i:i + batch_size].to(dev)) for i in range(0, len(x), batch_size)])
    model.train(was)
    return out


def accuracy(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 1024) -> float:
    """Top-1 accuracy of ``model`` (fault-free, eval mode) on ``(x, y)``."""
    x, y = check_data(x, y)
    logits = predict_logits(model, x, batch_size)
    check_labels_fit(int(y.max()), logits)
    return (logits.argmax(1).cpu() == y.cpu()).float().mean().item()


def evaluate(
    model: nn.Module,
    x,
    y: Tensor | None,
    bers: Sequence[float],
    error_model: BitErrorModel | None = None,
    *,
    trials: int = 100,
    seed: int = 0,
    batch_size: int = 1024,
    target_half_width: float | None = None,
    min_trials: int = 10,
    progress: bool = False,
    keep_correct: bool = False,
    trial_batch: int = 1,
    precision: str = "fp32",
    weights: str | None = None,
) -> EvalResult:
    """Accuracy of ``model`` on ``(x, y)`` under bit errors at each rate in ``bers``.

    ``x`` and ``y`` are tensors, or ``x`` is any re-iterable of ``(x, y)`` batches (a
    ``torch.utils.data.DataLoader`` with ``shuffle=False``) and ``y`` is None: then the
    batches are streamed in every pass, and a loader that gives other batches on a later
    pass is refused.

    ``error_model`` gives the kind of faults (default: uniform, persistent, weights);
    each BER in ``bers`` sets its largest rate (an error map: its mean rate; see
    :func:`at_rate`). With ``target_half_width`` (e.g. 0.005 for +-0.5 points) each BER
    stops adding trials once its 95% interval is that narrow (`narrow_enough`), between
    ``min_trials`` and ``trials``; its result does not depend on the other BERs.
    ``keep_correct`` stores per-trial, per-sample correctness in ``meta`` (for margin
    analysis). ``trial_batch`` runs that many trials as one batched forward
    (``torch.func.vmap`` over stacked weight sets, one weight copy per trial): for small
    models on a GPU; persistent weight faults only; same faults and results. The
    model's state is bit-identical afterwards (checked). ``precision="bf16"`` runs every
    forward under bf16 autocast (the codes and faults are the same; activations and
    dequantized weights are rounded inside the forward) and reports in ``agreement`` the
    fraction of samples whose clean prediction matches fp32.

    ``weights`` stores the plain ``nn.Linear``/``nn.Conv1d``/``2d``/``3d`` layers of a
    float model in an IEEE format (``"float32"``, ``"bfloat16"``, ``"float16"``) and flips
    those bits; mcel's and Brevitas' quantized layers carry their own stored form
    (`mcel.quant.stored`). A sample whose logits hold a NaN counts as wrong.
    """
    bers = check_bers(bers)
    _check_trial_counts(trials, min_trials, target_half_width, batch_size)
    em = _error_model(error_model)
    x, y = _check_source(x, y, trial_batch)
    _check_faults_fit(model, em, trial_batch, weights)
    check_runs_on(precision, next(model.parameters()).device)
    modes = {m: m.training for m in model.modules()}  # each module's own, restored below
    model.eval()
    try:
        return _evaluate(model, x, y, bers=bers, em=em, trials=trials, seed=seed,
                         batch_size=batch_size, target_half_width=target_half_width,
                         min_trials=min_trials, progress=progress, keep_correct=keep_correct,
                         trial_batch=trial_batch, precision=precision, weights=weights)
    finally:
        for m, mode in modes.items():
            m.training = mode


def _check_source(x, y: Tensor | None, trial_batch: int):
    """``(x, y)`` tensors, checked; or, with ``y`` None, ``x`` an iterable of ``(x, y)``
    batches (read in every trial)."""
    if y is not None:
        return check_data(x, y)
    if isinstance(x, Tensor) or not hasattr(x, "__iter__"):
        raise MCELError("y is None: pass the labels, or pass x as an iterable of (x, y) "
                        "batches such as a DataLoader")
    if trial_batch > 1:
        raise MCELError("trial_batch > 1 needs (x, y) tensors, not batches from a loader")
    return x, y


def _check_trial_counts(trials: int, min_trials: int, target_half_width: float | None,
                        batch_size: int) -> None:
    if trials < 1:
        raise MCELError(f"trials must be >= 1, got {trials}")
    if target_half_width is not None and not 2 <= min_trials:
        raise MCELError(f"min_trials must be >= 2 (one trial shows no spread), got "
                        f"{min_trials}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise MCELError(f"batch_size must be an integer >= 1, got {batch_size!r}")


def _error_model(error_model: BitErrorModel | str | None) -> BitErrorModel:
    """A model, a spec as on the command line, or None: fault-free."""
    if isinstance(error_model, str):
        from mcel.faults import parse_error_model

        error_model = parse_error_model(error_model)
    kinds = tuple(ERROR_MODELS.get(k) for k in ERROR_MODELS)
    if error_model is not None and not isinstance(error_model, kinds):
        raise MCELError(f"error_model must be a BitErrorModel (or another registered kind) "
                        f"or a spec string like 'ber=1e-3', got {type(error_model).__name__}")
    return error_model or BitErrorModel(ber=0.0)


def _check_faults_fit(model: nn.Module, em: BitErrorModel, trial_batch: int,
                      weights: str | None = None) -> None:
    """The model stores something the error model can flip, in a way the trials can run."""
    if next(model.parameters(), None) is None:
        raise MCELError("the model has no parameters: nothing is stored, nothing can flip")
    if isinstance(trial_batch, bool) or not isinstance(trial_batch, int) or trial_batch < 1:
        raise MCELError(f"trial_batch must be an integer >= 1, got {trial_batch!r}")
    if trial_batch > 1 and (em.mode == "transient" or "activations" in em.targets):
        raise MCELError("trial_batch > 1 needs persistent faults in weights/biases; "
                        "use trial_batch=1 for transient or activation faults")
    if em.mode == "transient" and "biases" in em.targets:
        raise MCELError("transient faults hit weights and activations (compute errors); "
                        "bias faults are persistent only: drop 'biases' or the transient mode")
    _check_stored_layers(model, em, trial_batch, weights)
    check_targets(model, em, weights)


def _check_stored_layers(model: nn.Module, em: BitErrorModel, trial_batch: int,
                         weights: str | None) -> None:
    """Layers other than mcel's (float, Brevitas) take persistent faults, one trial at a
    time for Brevitas."""
    layers = stored_layers(model, weights)
    if not layers:
        raise no_stored_layers_error()
    foreign = next((s for s in layers if s.source.name != "mcel"), None)
    if foreign is not None and (em.mode == "transient" or "activations" in em.targets):
        raise MCELError(f"transient and activation faults are drawn inside mcel's quantized "
                        f"layers, and layer '{foreign.name}' is a {foreign.source.name} layer; "
                        "use persistent faults in weights/biases")
    brevitas = next((s for s in layers if s.source.name == "brevitas"), None)
    if brevitas is not None and trial_batch > 1:  # its quantizers are autograd Functions
        raise MCELError(f"trial_batch > 1 runs the forward under torch.func.vmap, which "
                        f"Brevitas layers (here '{brevitas.name}') do not support; use "
                        "trial_batch=1")


@contextlib.contextmanager
def _calls_of(model: nn.Module, layers: list[nn.Module]):
    """Count each stored layer's forward calls in the block (the clean pass) and warn
    about layers that never ran: their weights are read some other way (``F.linear(x,
    layer.weight)``) or not used, so the faults the engine puts there change nothing."""
    calls = {id(m): 0 for m in layers}

    def hook(module, args, output):
        calls[id(module)] += 1

    handles = [m.register_forward_hook(hook) for m in layers]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
    idle = [n for n, m in model.named_modules() if calls.get(id(m)) == 0]
    if idle:
        warnings.warn(f"stored layer(s) {', '.join(idle)} never ran in a forward pass: their "
                      "weights are read some other way (e.g. F.linear(x, layer.weight)) or "
                      "not used, so faults there change nothing in these results",
                      UserWarning, stacklevel=4)


def _evaluate(model, x, y, *, bers, em, trials, seed, batch_size, target_half_width,
              min_trials, progress, keep_correct, trial_batch, precision,
              weights) -> EvalResult:
    before = state_digest(model)
    fwd = _Forward(model, x, y, batch_size=batch_size, precision=precision)
    t0 = time.perf_counter()
    accs: dict[float, list[float]] = {b: [] for b in bers}
    rates: dict[float, list[float]] = {b: [] for b in bers}
    secs: dict[float, list[float]] = {b: [] for b in bers}
    correct_log: dict[float, list[Tensor]] = {b: [] for b in bers}

    batched = trial_batch > 1
    with MemoryImage(model, em, weights=weights) as image, progress_bar(progress) as bar:
        tc = time.perf_counter()
        with _calls_of(model, [layer for layer, _ in image.weights]):  # warns on unused
            pred = fwd.predict()
        clean = (pred == fwd.y).float().mean().item()
        clean_seconds = time.perf_counter() - tc
        agreement = 1.0 if precision == "fp32" else (
            (fwd.predict("fp32") == pred).float().mean().item())
        task = bar.add_task("evaluate", total=trials * len(bers), info="")
        t, active = 0, list(bers)  # BERs still adding trials
        while t < trials and active:
            block = list(range(t, min(t + trial_batch, trials)))
            for b in active:
                tt = time.perf_counter()
                corrs, rs = _trials(model, fwd, image, at_rate(em, b), seed=seed, block=block,
                                    batched=batched)
                # .item() below waits for the device, so this is the trials' wall time
                accs_b = [c.float().mean().item() for c in corrs]
                each = (time.perf_counter() - tt) / len(block)
                accs[b] += accs_b
                rates[b] += rs
                secs[b] += [each] * len(block)
                if keep_correct:
                    correct_log[b] += [c.cpu() for c in corrs]
                bar.update(task, advance=len(block), info=f"ber {b:g} acc {accs_b[-1]:.3f}")
            t += len(block)
            if target_half_width is not None:
                counts = range(max(min_trials, t - len(block) + 1), t + 1)
                _stop_narrow(active, (accs, rates, secs, correct_log),
                             half_width=target_half_width, counts=counts)
    if state_digest(model) != before:  # the engine's core promise; never expected to fire
        raise RuntimeError("evaluation changed the model's state")
    result = EvalResult(
        clean_accuracy=clean, error_model=em.to_dict(), seed=seed,
        results=[BerResult.from_trials(b, accs[b], rates[b], secs[b]) for b in bers],
        seconds=time.perf_counter() - t0, clean_seconds=clean_seconds,
        precision=precision, agreement=agreement,
    )
    if keep_correct:
        result.meta["correct"] = {b: torch.stack(v) for b, v in correct_log.items()}
    return result


def _stop_narrow(active: list[float], logs: tuple[dict, ...], *, half_width: float,
                 counts: range) -> None:
    """Take the BERs whose interval is narrow enough off ``active``.

    Each BER stops on its own, at the first trial count at which its interval is narrow
    enough, so its row does not depend on which other BERs were evaluated with it (a
    sweep that adds a BER later gets the same rows). A batch may have run past that
    count: its extra trials are dropped from every log (accuracies first), so the result
    does not depend on trial_batch either."""
    for b in list(active):
        done = _narrow_at(logs[0][b], b, half_width, counts)
        if done is not None:
            for d in logs:
                del d[b][done:]
            active.remove(b)


def _trials(model: nn.Module, fwd: _Forward, image: MemoryImage, em: BitErrorModel, *,
            seed: int, block: list[int], batched: bool) -> tuple[list[Tensor], list[float]]:
    """Per-sample correctness and empirical rate of each trial of ``block`` (one trial
    unless ``batched``) under ``em``, already at its BER."""
    if batched:
        return _batched_trials(fwd, image, em, seed=seed, block=block)
    if em.mode == "transient" or "activations" in em.targets:
        _, rate, corr = _transient_trial(model, fwd, image, em, seed=seed, trial=block[0])
        return [corr], [rate]
    st = image.inject(em, seed=seed, trial=block[0])
    corrs = [fwd.correct()]
    image.restore()
    return corrs, [st.empirical_rate]


def _narrow_at(accs: list[float], ber: float, half_width: float, counts: range) -> int | None:
    """The first trial count in ``counts`` at which ``accs`` is narrow enough."""
    return next((n for n in counts if narrow_enough(accs[:n], ber, half_width)), None)


def _batched_trials(fwd: _Forward, image: MemoryImage, em: BitErrorModel, *, seed: int,
                    block: list[int]) -> tuple[list[Tensor], list[float]]:
    """Trials ``block`` as one vmapped forward over stacked weight sets."""
    ws, bs, stats = image.stacked_values(em, seed=seed, trials=block)
    layers_w = [layer for layer, _ in image.weights]
    layers_b = [layer for layer, _ in image.biases]

    def predict(w: list[Tensor], b: list[Tensor], xb: Tensor) -> Tensor:
        for layer, v in zip(layers_w, w):
            layer.weight_override = v
        for layer, v in zip(layers_b, b):
            layer.bias_override = v
        return predicted(fwd.model(xb))

    batched = torch.func.vmap(predict, in_dims=(0, 0, None))
    try:
        with torch.no_grad(), autocast(fwd.precision, fwd.dev):
            preds = torch.cat([batched(ws, bs, fwd.x[i:i + fwd.batch_size])
                               for i in range(0, len(fwd.x), fwd.batch_size)], dim=1)
    finally:  # back to the image's own values
        for layer, slot in image.weights:
            layer.weight_override = slot.values
        for layer, slot in image.biases:
            layer.bias_override = slot.values
    correct = preds == fwd.y
    return list(correct.unbind(0)), [st.empirical_rate for st in stats]


def _transient_trial(model, fwd: _Forward, image: MemoryImage, em: BitErrorModel, *,
                     seed: int, trial: int):
    """Faults redrawn in every forward (compute errors) and/or in activations."""
    # persistent faults in stored weights and biases go into the image; the forward
    # redraws the rest (activations; weights in transient mode)
    stored = em.mode == "persistent" and ("weights" in em.targets or "biases" in em.targets)
    st = image.inject(em, seed=seed, trial=trial) if stored else None
    targets = tuple(t for t in em.targets
                    if t == "activations" or (t == "weights" and em.mode == "transient"))
    # Layers read weights from the image, so transient weight faults go through it too.
    if "weights" in targets:
        for layer, _ in image.weights:
            layer.weight_override = None
    with transient_weight_faults(model, em, seed=seed, first_call=(trial + 1) << 20,
                                 targets=targets):
        corr = fwd.correct()
    for layer, slot in image.weights:
        layer.weight_override = slot.values
    image.restore()
    rate = st.empirical_rate if st is not None else float("nan")
    return corr.float().mean().item(), rate, corr


__all__ = ["evaluate", "EvalResult", "BerResult", "Difference", "paired_difference",
           "t_interval", "at_rate", "narrow_enough",
           "accuracy", "predict_logits", "check_data", "check_labels_fit", "check_targets"]
