"""Bit error models: which stored bits can go wrong, and at which rates.

A `BitErrorModel` is a value (frozen, hashable, JSON-able). It says nothing about which
bits flip in a given trial; that is the sampler's job (`mcel.faults.sampler`). Every
model reduces, for a given code width, to two per-position lookup tables
``rate[stored_value][bit_position]`` (see `BitErrorModel.rate_tables`) plus a stuck-at
fraction, which is all the sampler needs.

Rates are per stored bit (DESIGN.md: "BER means per stored bit"):

- ``ber``: every bit flips independently with probability ``ber``.
- ``p01`` / ``p10``: asymmetric; a stored 0 becomes 1 with ``p01``, a stored 1 becomes
  0 with ``p10`` (e.g. RRAM/FeFET retention). A missing one of the two is 0.
- ``bit_rates``: one rate per bit position, index 0 = least significant bit; its length
  must equal the code width it is used with.
- ``protected_bits``: positions that never flip and are never stuck (e.g. ``(7,)`` or
  ``(-1,)``: the MSB, such as the sign bit of int8 two's complement kept in ECC memory).
- ``stuck_at``: fraction of cells (bits) stuck; a stuck cell reads ``stuck_value``
  whatever was written (``None``: each stuck cell is stuck at 0 or 1 with prob. 1/2).
- ``burst``: multi-bit upsets: each fault event flips that many adjacent stored bits
  (consecutive addresses of one tensor: code ``i`` bit ``b`` at ``i * bits + b``), as a
  particle strike upsets neighbouring SRAM cells. Events start at the rate
  ``1 - (1 - ber) ** (1 / burst)``, so every bit still flips with probability exactly
  ``ber``; only ``ber`` models take it (not ``p01``/``p10``/``bit_rates``).
- ``ecc``: SEC-DED over words of that many stored data bits (64: 72-bit words); a word
  with one faulty bit reads back clean (`mcel.faults.ecc`). ``ecc_interleave=I`` deals
  consecutive addresses to ``I`` words in turn (bit interleaving), so that a burst of up
  to ``I`` bits hits each word once.
- ``targets``, ``include``, ``exclude``, ``mode``: where the model applies (tensor
  kinds, fnmatch patterns of layer names) and when it is drawn ("persistent": once per
  trial, memory faults; "transient": at every forward, compute faults).

>>> m = parse_error_model("p01=1e-3,p10=1e-2,protected=7")
>>> m.describe()
'p01=0.001,p10=0.01,protected=7'
>>> parse_error_model(m.describe()) == m
True
>>> BitErrorModel(ber=1e-3).with_ber(1e-2).ber
0.01
>>> parse_error_model("ber=1e-3,burst=2,ecc=64").describe()
'ber=0.001,burst=2,ecc=64'

Other kinds of error model (an error map read from a file, `mcel.faults.error_map`)
follow the `ErrorModel` protocol and are registered in `ERROR_MODELS` under the spec key
that starts their spec (``"map=chip.npz,..."``); the sampler and the engine only use
the protocol, so a new kind is one new file plus its registration.
"""

from __future__ import annotations

import fnmatch
import numbers
from collections.abc import Callable, Iterable, Mapping
from dataclasses import KW_ONLY, dataclass, fields, replace
from typing import Any, ClassVar, Protocol

import numpy as np

from mcel.errors import MCELError
from mcel.registry import Registry

TARGETS = ("weights", "biases", "activations")
MODES = ("persistent", "transient")


def _rate(name: str, value: Any, optional: bool = True) -> float | None:
    """A probability: a finite real number in [0, 1] (NaN fails the range test too)."""
    if value is None and optional:
        return None
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not ok or not 0.0 <= float(value) <= 1.0:
        raise MCELError(f"{name}={value!r} is not a valid rate; allowed: a number in [0, 1]")
    return float(value)


def _items(name: str, value: Any, kind: type, what: str) -> tuple[Any, ...]:
    """One item or an iterable of items, all of type ``kind`` (bool is not an int)."""
    try:
        items = (value,) if isinstance(value, (str, int)) else tuple(value)
    except TypeError:
        items = (value,)
    if not all(isinstance(x, kind) and not isinstance(x, bool) for x in items):
        raise MCELError(f"{name}={value!r}; allowed: {what}")
    return items


class ErrorModel(Protocol):
    """What the sampler, the engine and `mcel.evaluate` use of an error model.

    ``targets``, ``include``, ``exclude`` and ``mode`` mean what they mean for
    `BitErrorModel`. `place` hands the model where every stored tensor lives (the
    `MemoryImage`'s slots in order, as ``(name, stored bits)``); a model that does not
    care returns itself. The sampler draws a `BitErrorModel` with its own ladder (from
    `BitErrorModel.rate_tables`); any other kind gives the bit positions of one draw in
    `fault_positions` and the sampler builds, applies and undoes the XOR mask from them.
    """

    kind: ClassVar[str]  # its spec key and registry name; "bits" for BitErrorModel
    ber_sets: ClassVar[str]  # what `at_rate` sets to the BER, in words ("largest rate")
    targets: tuple[str, ...]
    include: tuple[str, ...]
    exclude: tuple[str, ...]
    mode: str

    def applies_to(self, name: str, target: str = "weights") -> bool: ...
    def at_rate(self, ber: float) -> ErrorModel: ...
    def check_bits(self, bits: int) -> None: ...
    def place(self, stored: tuple[tuple[str, int], ...]) -> ErrorModel: ...
    def to_dict(self) -> dict[str, Any]: ...
    def describe(self) -> str: ...


class DrawnModel(ErrorModel, Protocol):
    """An error model other than `BitErrorModel`: it draws its own fault positions."""

    def reads_codes(self, bits: int) -> bool:
        """Whether a draw reads the stored bits (then its masks are kept, not redrawn)."""
        ...

    def fault_positions(self, codes: Any, bits: int, key: Any) -> np.ndarray:
        """Sorted unique flat bit positions (``code_index * bits + bit``) of ``codes``
        whose stored bit changes in the draw named by ``key`` (a `FaultKey`)."""
        ...


# Kinds of error model by spec key: a spec whose first key names a kind is that kind's
# (``"map=chip.npz,..."``); any other spec is a BitErrorModel's. A new kind is
# registered in mcel/faults/__init__.py (so that importing its module twice, as
# doctest collection may, cannot register it twice).
ERROR_MODELS: Registry[Any] = Registry("error-model kind")


@dataclass(frozen=True)
class BitErrorModel:
    """What can go wrong in stored integer codes, and at which per-bit rates.

    See the module docstring for the meaning of each field. At least one of ``ber``,
    ``p01``/``p10``, ``bit_rates`` or ``stuck_at`` must be given (``ber=0`` is a valid,
    error-free model). ``ber`` excludes ``p01``/``p10``; ``bit_rates`` excludes both.
    """

    ber: float | None = None
    _: KW_ONLY
    p01: float | None = None
    p10: float | None = None
    bit_rates: tuple[float, ...] | None = None
    protected_bits: tuple[int, ...] = ()
    stuck_at: float | None = None
    stuck_value: int | None = None
    targets: tuple[str, ...] = ("weights",)
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    mode: str = "persistent"
    burst: int = 1
    ecc: int | None = None
    ecc_interleave: int = 1

    def __post_init__(self) -> None:
        def put(name: str, value: Any) -> None:  # normalise a field of the frozen instance
            object.__setattr__(self, name, value)

        for name in ("ber", "p01", "p10", "stuck_at"):
            put(name, _rate(name, getattr(self, name)))
        if self.ber is not None and (self.p01 is not None or self.p10 is not None):
            raise MCELError("give either ber or p01/p10, not both (ber means p01 = p10 = ber)")
        if self.bit_rates is not None:
            if isinstance(self.bit_rates, (str, bytes)) or not isinstance(
                self.bit_rates, Iterable
            ):
                raise MCELError(f"bit_rates={self.bit_rates!r} must be a sequence of rates")
            rates = tuple(_rate(f"bit_rates[{i}]", r, False) for i, r in enumerate(self.bit_rates))
            if not rates:
                raise MCELError("bit_rates=() is empty; give one rate per bit position")
            if any(x is not None for x in (self.ber, self.p01, self.p10)):
                raise MCELError("bit_rates cannot be combined with ber, p01 or p10")
            put("bit_rates", rates)
        if all(x is None for x in (self.ber, self.p01, self.p10, self.bit_rates, self.stuck_at)):
            raise MCELError("no rate given; set ber, p01/p10, bit_rates or stuck_at (ber=0: none)")

        prot = _items("protected_bits", self.protected_bits, numbers.Integral, "bit positions")
        put("protected_bits", tuple(sorted({int(b) for b in prot})))

        sv = self.stuck_value
        if sv is not None:
            if isinstance(sv, bool) or not isinstance(sv, numbers.Integral) or sv not in (0, 1):
                raise MCELError(f"stuck_value={sv!r}; allowed: 0, 1 or None (random)")
            if self.stuck_at is None:
                raise MCELError("stuck_value needs stuck_at (the fraction of stuck cells)")
            put("stuck_value", int(sv))

        targets = _items("targets", self.targets, str, f"a non-empty subset of {TARGETS}")
        bad = [t for t in targets if t not in TARGETS]
        if bad or not targets:
            raise MCELError(f"targets={targets!r}; allowed: a non-empty subset of {TARGETS}")
        put("targets", tuple(dict.fromkeys(targets)))
        put("include", _items("include", self.include, str, "fnmatch patterns"))
        put("exclude", _items("exclude", self.exclude, str, "fnmatch patterns"))
        if self.mode not in MODES:
            raise MCELError(f"mode={self.mode!r}; allowed: {', '.join(MODES)}")
        _check_burst(self)
        check_ecc(self)

    kind: ClassVar[str] = "bits"
    ber_sets: ClassVar[str] = "largest rate"

    # -- derived views -------------------------------------------------------------

    @property
    def is_uniform(self) -> bool:
        """True for a plain ``ber`` model (possibly with protection and stuck-at)."""
        return self.ber is not None

    def max_rate(self) -> float:
        """Largest per-bit rate of any kind in the model (flip or stuck-at)."""
        rates = [self.ber, self.p01, self.p10, self.stuck_at, *(self.bit_rates or ())]
        return max(r for r in rates if r is not None)

    def mean_rate(self) -> float:
        """The mean per-bit rate of a cell that holds a random bit: what the check bits
        of ``ecc`` words fail at (a stuck cell reads wrong half the time)."""
        if self.bit_rates is not None:
            flip = float(np.mean(self.bit_rates))
        elif self.ber is not None:
            flip = self.ber
        else:
            flip = ((self.p01 or 0.0) + (self.p10 or 0.0)) / 2
        return min(1.0, flip + (self.stuck_at or 0.0) / 2)

    def with_ber(self, ber: float) -> BitErrorModel:
        """A copy at another uniform rate (for BER sweeps); only for ``ber`` models."""
        if not self.is_uniform:
            raise MCELError(f"with_ber needs a uniform ber model, not '{self.describe()}'")
        return replace(self, ber=ber)

    def at_rate(self, ber: float) -> BitErrorModel:
        """This model with its largest per-bit rate set to ``ber`` (one sweep axis for
        every model).

        A uniform model gets ``ber`` and keeps its ``stuck_at`` fraction as given (a
        property of the memory, not of the flip rate); an asymmetric, per-bit or
        stuck-only model keeps its shape (all rates, ``stuck_at`` included, scaled
        together). BER 0 is always the fault-free model.
        """
        if self.is_uniform:
            if ber == 0 and self.stuck_at:
                return replace(self.with_ber(0.0), stuck_at=None)
            return self.with_ber(ber)
        top = self.max_rate()
        if top == 0:
            raise MCELError("the error model has no nonzero rate to sweep")
        f = ber / top

        def s(r):
            return None if r is None else min(1.0, r * f)

        return replace(self, p01=s(self.p01), p10=s(self.p10), stuck_at=s(self.stuck_at),
                       bit_rates=None if self.bit_rates is None
                       else tuple(min(1.0, r * f) for r in self.bit_rates))

    def protected_mask(self, bits: int) -> np.ndarray:
        """Boolean array over bit positions 0..bits-1 (LSB first): True = never faulty."""
        mask = np.zeros(bits, dtype=bool)
        for b in self.protected_bits:
            if not -bits <= b < bits:
                raise MCELError(f"protected bit {b} is outside a {bits}-bit code")
            mask[b] = True  # negative b counts from the MSB, as in Python indexing
        return mask

    def rate_tables(self, bits: int) -> tuple[np.ndarray, np.ndarray]:
        """Per-position flip rates (float64, LSB first) for a stored 0 and a stored 1."""
        if self.bit_rates is not None:
            if len(self.bit_rates) != bits:
                raise MCELError(
                    f"bit_rates has {len(self.bit_rates)} entries but the codes have {bits} bits"
                )
            r0 = np.array(self.bit_rates, dtype=np.float64)
            r1 = r0.copy()
        elif self.ber is not None:
            r0 = np.full(bits, self.ber)
            r1 = r0.copy()
        else:
            r0 = np.full(bits, self.p01 or 0.0)
            r1 = np.full(bits, self.p10 or 0.0)
        prot = self.protected_mask(bits)
        r0[prot] = 0.0
        r1[prot] = 0.0
        return r0, r1

    def check_bits(self, bits: int) -> None:
        """One MCELError line when the model cannot be drawn for ``bits``-wide codes
        (``bit_rates`` of another length, a protected bit outside the code)."""
        self.rate_tables(bits)

    def place(self, stored: tuple[tuple[str, int], ...]) -> BitErrorModel:
        """Itself: per-bit rates do not depend on where a tensor is stored."""
        return self

    def applies_to(self, name: str, target: str = "weights") -> bool:
        """Whether tensor ``name`` of kind ``target`` is exposed to this model."""
        if target not in self.targets:
            return False
        if self.include and not any(fnmatch.fnmatchcase(name, p) for p in self.include):
            return False
        return not any(fnmatch.fnmatchcase(name, p) for p in self.exclude)

    # -- serialisation -------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of all fields (tuples become lists)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    @classmethod
    def parse(cls, spec: str) -> BitErrorModel:
        """A model from a spec in `parse_error_model` syntax."""
        return _parse_bits(spec)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BitErrorModel:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            valid = ", ".join(sorted(names))
            raise MCELError(f"unknown error-model fields {unknown}; valid: {valid}")
        kw = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return cls(**kw)

    def describe(self) -> str:
        """Short spec in `parse_error_model` syntax (non-default fields only)."""
        parts: list[str] = []
        for f in fields(self):
            v = getattr(self, f.name)
            if v == f.default:
                continue
            key = "protected" if f.name == "protected_bits" else f.name
            vals = v if isinstance(v, tuple) else (v,)
            parts.append(f"{key}=" + ",".join(x if isinstance(x, str) else repr(x) for x in vals))
        return ",".join(parts)


def _check_burst(em: BitErrorModel) -> None:
    """``burst`` is a small positive integer, and only uniform flips come in bursts."""
    b = em.burst
    if isinstance(b, bool) or not isinstance(b, numbers.Integral) or not 1 <= b <= 1024:
        raise MCELError(f"burst={b!r}: the adjacent bits one fault event flips, an integer "
                        "in [1, 1024] (1: independent flips)")
    object.__setattr__(em, "burst", int(b))
    if b > 1 and em.ber is None:
        raise MCELError("burst needs a uniform rate: give ber (bursts flip bits whatever "
                        "they hold, so p01/p10 and bit_rates do not apply)")


def check_ecc(em) -> None:
    """``ecc`` (of a `BitErrorModel` or an error map) is SEC-DED over words of a few data
    bits, on stored (persistent) words, interleaved ``ecc_interleave`` ways."""
    k, ways = em.ecc, em.ecc_interleave
    if isinstance(ways, bool) or not isinstance(ways, numbers.Integral) or not 1 <= ways <= 256:
        raise MCELError(f"ecc_interleave={ways!r}: the code words that consecutive addresses "
                        "are dealt to, an integer in [1, 256] (1: none)")
    object.__setattr__(em, "ecc_interleave", int(ways))
    if k is None:
        if ways > 1:
            raise MCELError("ecc_interleave spreads the words of a code: give ecc=K too")
        return
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 4 <= k <= 4096:
        raise MCELError(f"ecc={k!r}: the data bits per SEC-DED word, an integer in "
                        "[4, 4096] (64 for the usual 72-bit words)")
    object.__setattr__(em, "ecc", int(k))
    if em.mode != "persistent" or "activations" in em.targets:
        raise MCELError("ecc corrects words stored in memory: persistent faults in weights "
                        "and biases only (no mode=transient, no activations)")


# -- spec parser for the CLI --------------------------------------------------------

# Key -> (field name, converter of the list of raw strings). A Registry gives unknown
# keys the usual "did you mean" message.
_KEYS: Registry[tuple[str, Callable[[list[str]], Any]]] = Registry("error-model key")


def _one(key: str, conv: Callable[[str], Any]) -> Callable[[list[str]], Any]:
    def f(vals: list[str]) -> Any:
        if len(vals) != 1:
            raise MCELError(f"{key} takes one value, got {','.join(vals)!r}")
        return conv(vals[0])

    return f


def _float(key: str) -> Callable[[str], float]:
    def f(s: str) -> float:
        try:
            return float(s)
        except ValueError:
            raise MCELError(f"{key}={s!r} is not a number") from None

    return f


def _int(key: str) -> Callable[[str], int]:
    def f(s: str) -> int:
        try:
            return int(s)
        except ValueError:
            raise MCELError(f"{key}={s!r} is not an integer") from None

    return f


def _stuck_value(s: str) -> int | None:
    return None if s.lower() in ("none", "random") else _int("stuck_value")(s)


for _k in ("ber", "p01", "p10", "stuck_at"):
    _KEYS.add(_k, (_k, _one(_k, _float(_k))))
_KEYS.add("bit_rates", ("bit_rates", lambda v: tuple(map(_float("bit_rates"), v))))
_KEYS.add("protected", ("protected_bits", lambda v: tuple(map(_int("protected"), v))))
_KEYS.add("stuck_value", ("stuck_value", _one("stuck_value", _stuck_value)))
_KEYS.add("targets", ("targets", tuple))
_KEYS.add("include", ("include", tuple))
_KEYS.add("exclude", ("exclude", tuple))
_KEYS.add("mode", ("mode", _one("mode", str)))
_KEYS.add("ecc", ("ecc", _one("ecc", _int("ecc"))))
_KEYS.add("ecc_interleave", ("ecc_interleave", _one("ecc_interleave", _int("ecc_interleave"))))
_KEYS.add("burst", ("burst", _one("burst", _int("burst"))))


def parse_error_model(spec: str) -> ErrorModel:
    """Parse ``"key=value,..."``; a comma-separated item without ``=`` continues the
    previous key's list (``"ber=1e-2,protected=7,6"``, ``"bit_rates=0,0,1e-3"``). A spec
    whose first key names a registered kind (``"map=chip.npz,..."``) is that kind's;
    any other is a `BitErrorModel`'s.

    >>> parse_error_model("stuck_at=1e-3,stuck_value=1").stuck_value
    1
    """
    first = spec.split(",", 1)[0].partition("=")[0].strip()
    return ERROR_MODELS.get(first if first in ERROR_MODELS else "bits").parse(spec)


def error_model_from_dict(d: Mapping[str, Any]) -> ErrorModel:
    """The model that ``to_dict`` gave ``d``: its ``"kind"`` names the kind (none: a
    `BitErrorModel`, whose dict has no kind, so stored results read as before)."""
    kind = d.get("kind", "bits")
    return ERROR_MODELS.get(kind).from_dict({k: v for k, v in d.items() if k != "kind"})


def spec_items(spec: str) -> dict[str, list[str]]:
    """``"k=v,w,k2=v2"`` -> ``{"k": ["v", "w"], "k2": ["v2"]}`` (keys not checked)."""
    raw: dict[str, list[str]] = {}
    key: str | None = None
    for item in (s.strip() for s in spec.split(",")):
        if "=" in item:
            key, _, val = (x.strip() for x in item.partition("="))
            if key in raw:
                raise MCELError(f"'{key}' is given twice in error model '{spec}'")
            raw[key] = [val]
        elif item and key is not None:
            raw[key].append(item)
        elif item or not spec.strip():
            raise MCELError(f"cannot parse error model '{spec}'; expected e.g. 'ber=1e-3'")
    return raw


def _parse_bits(spec: str) -> BitErrorModel:
    kw = {}
    for k, vals in spec_items(spec).items():
        name, conv = _KEYS.get(k)  # unknown key -> MCELError listing the valid ones
        kw[name] = conv(vals)
    return BitErrorModel(**kw)


ERROR_MODELS.add("bits", BitErrorModel)
