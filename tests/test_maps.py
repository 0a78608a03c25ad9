"""Memory layout, error maps and the error-model registry.

Rates are checked against binomial 99.9% Clopper-Pearson intervals (scipy), as in
test_faults.py; exactness of placement and undo is checked bit for bit.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy import stats

from mcel.cli import main
from mcel.engine import MemoryImage, state_digest
from mcel.errors import MCELError
from mcel.faults import (
    ERROR_MODELS,
    BitErrorModel,
    ErrorMap,
    MemoryLayout,
    apply_mask_,
    error_model_from_dict,
    parse_error_model,
    sample_mask,
)
from mcel.faults.error_map import make_map, write_map
from mcel.faults.layout import slot_addresses
from mcel.faults.sampler import FaultKey
from mcel.models import create_model
from mcel.quant import quantize_model


def assert_rate(k: int, n: int, p: float, what: str = "", confidence: float = 0.999) -> None:
    lo, hi = stats.binomtest(int(k), int(n)).proportion_ci(confidence)
    assert lo <= p <= hi, f"{what}: {k}/{n} = {k / n:.4g}, expected {p:.4g} in [{lo:.4g}, {hi:.4g}]"


def save(tmp_path, name="chip.npz", **arrays) -> str:
    path = str(tmp_path / name)
    np.savez(path, **arrays)
    return path


def positions(mask, bits: int) -> np.ndarray:
    """Flat bit positions a mask flips."""
    idx, xor = mask.index.numpy(), mask.xor.numpy().astype(np.int64)
    bit = np.arange(bits)
    hit = (xor[:, None] >> bit) & 1
    return np.sort((idx[:, None] * bits + bit)[hit == 1])


LAYOUTS = [MemoryLayout(banks=1, rows=4, row_words=2, word_bits=8),
           MemoryLayout(banks=3, rows=5, row_words=4, word_bits=4, bank_interleave=True),
           MemoryLayout(banks=2, rows=3, row_words=5, word_bits=8, bit_interleave=True),
           MemoryLayout(banks=2, rows=2, row_words=3, word_bits=2, bank_interleave=True,
                        bit_interleave=True)]


# -- layout -------------------------------------------------------------------------


@pytest.mark.parametrize("lay", LAYOUTS)
def test_layout_is_a_bijection_with_its_inverse(lay: MemoryLayout) -> None:
    a = np.arange(lay.capacity)
    cells = lay.cell_of(a)
    assert np.array_equal(np.sort(cells), a)  # every cell exactly once
    assert np.array_equal(lay.address_of(cells), a)
    bank, row, col, bit = lay.locate(a)
    assert bank.max() == lay.banks - 1 and row.max() == lay.rows - 1
    assert col.max() == lay.row_words - 1 and bit.max() == lay.word_bits - 1
    # past the capacity the memory is filled again from the start
    assert np.array_equal(lay.cell_of(a + 2 * lay.capacity), cells)


def test_layout_order_and_interleaving() -> None:
    lay = MemoryLayout(banks=2, rows=3, row_words=4, word_bits=8)
    bank, row, col, bit = lay.locate(np.arange(lay.capacity))
    # one word after another along a row, then the next row, then the next bank
    assert np.array_equal(bit[:8], np.arange(8)) and np.all(col[:8] == 0)
    assert col[8] == 1 and row[32] == 1 and col[32] == 0 and bank[96] == 1 and row[96] == 0
    assert np.all(np.diff(lay.cell_of(np.arange(lay.capacity))) == 1)  # plain: cells in order
    inter = MemoryLayout(banks=2, rows=3, row_words=4, word_bits=8, bank_interleave=True)
    b2 = inter.locate(np.arange(0, 64, 8))[0]
    assert b2.tolist() == [0, 1] * 4  # consecutive words go round the banks
    spread = MemoryLayout(banks=1, rows=2, row_words=4, word_bits=8, bit_interleave=True)
    # the 8 bits of word 0 sit 4 columns apart (one word column each bit)
    assert spread.cell_of(np.arange(8)).tolist() == [0, 4, 8, 12, 16, 20, 24, 28]


def test_slot_addresses_one_after_another() -> None:
    assert slot_addresses((("a", 40), ("b", 8), ("c", 16))) == {"a": 0, "b": 40, "c": 48}


@pytest.mark.parametrize("bad", [dict(rows=0), dict(word_bits=-1), dict(banks=True)])
def test_bad_layout_rejected(bad) -> None:
    with pytest.raises(MCELError, match="positive integer"):
        MemoryLayout(**bad)


# -- the registry -------------------------------------------------------------------


def test_registry_kinds_and_round_trips(tmp_path) -> None:
    assert {"bits", "map"} <= set(ERROR_MODELS)
    path = save(tmp_path, p=np.full((4, 32), 0.01))
    em = parse_error_model(f"map={path},persistent=0,shift=1,word_bits=8,exclude=fc1")
    assert isinstance(em, ErrorMap) and em.exclude == ("fc1",) and not em.persistent
    assert parse_error_model(em.describe()) == em
    assert error_model_from_dict(json.loads(json.dumps(em.to_dict()))) == em
    bits = BitErrorModel(p01=1e-3, p10=1e-2, protected_bits=(7,))
    assert "kind" not in bits.to_dict()  # stored results and run digests read as before
    assert error_model_from_dict(bits.to_dict()) == bits == parse_error_model(bits.describe())
    with pytest.raises(MCELError, match="unknown error-map key 'rows'"):
        parse_error_model(f"map={path},rows=3")
    with pytest.raises(MCELError, match="unknown error-model kind 'nope'"):
        error_model_from_dict({"kind": "nope"})


# -- per-cell statistics ------------------------------------------------------------

ROWS, COLS, BITS = 8, 64, 8  # 512 cells = 64 uint8 codes, a model that fills the map
LEVELS = np.array([0.0, 0.01, 0.05, 0.2, 0.5])


def level_map(tmp_path, **extra) -> tuple[str, np.ndarray]:
    p = LEVELS[np.arange(ROWS * COLS) % len(LEVELS)].reshape(ROWS, COLS)
    return save(tmp_path, p=p, **extra), p.reshape(-1)


def cell_counts(em, trials: int, seeds=(0,), codes=None) -> np.ndarray:
    lay = em.layout
    codes = torch.zeros(ROWS * COLS // BITS, dtype=torch.uint8) if codes is None else codes
    counts = np.zeros(lay.capacity, np.int64)
    for s in seeds:
        for t in range(trials):
            counts[lay.cell_of(positions(sample_mask(codes, BITS, em, seed=s, trial=t), BITS))] += 1
    return counts


def test_per_cell_rates_fresh_every_trial(tmp_path) -> None:
    path, p = level_map(tmp_path)
    em = parse_error_model(f"map={path},persistent=0,word_bits=8")
    trials = 1500
    counts = cell_counts(em, trials)
    for level in LEVELS:
        cells = p == level
        assert_rate(counts[cells].sum(), cells.sum() * trials, level, f"p={level}")
    assert counts[p == 0].sum() == 0
    for c in np.flatnonzero(p > 0)[:40]:  # each cell on its own (Bonferroni-wide interval)
        assert_rate(counts[c], trials, p[c], f"cell {c}", confidence=1 - 1e-5)


def test_persistent_map_same_cells_every_trial_rates_over_seeds(tmp_path) -> None:
    path, p = level_map(tmp_path)
    em = parse_error_model(f"map={path},word_bits=8")
    codes = torch.zeros(ROWS * COLS // BITS, dtype=torch.uint8)
    first = positions(sample_mask(codes, BITS, em, seed=3, trial=0), BITS)
    assert first.size > 0
    for t in (1, 7, 99):
        assert np.array_equal(positions(sample_mask(codes, BITS, em, seed=3, trial=t), BITS),
                              first)
    seeds = range(600)  # across chips (seeds) each cell fails at its own rate
    counts = cell_counts(em, 1, seeds=seeds)
    for level in LEVELS[1:]:
        cells = p == level
        assert_rate(counts[cells].sum(), cells.sum() * len(seeds), level, f"p={level}")


def test_shift_moves_the_model_over_the_same_cells(tmp_path) -> None:
    path, _ = level_map(tmp_path)
    em = parse_error_model(f"map={path},word_bits=8,shift=1")
    codes = torch.zeros(ROWS * COLS // BITS, dtype=torch.uint8)
    cap = ROWS * COLS
    base = positions(sample_mask(codes, BITS, em, seed=1, trial=0), BITS)
    moved = 0
    for t in range(1, 6):
        pos = positions(sample_mask(codes, BITS, em, seed=1, trial=t), BITS)
        # a full model over a rotated memory: the same failing cells, word-aligned rotation
        shifts = [s for s in range(0, cap, 8) if np.array_equal(np.sort((pos + s) % cap), base)]
        assert shifts, f"trial {t} is not a rotation of trial 0"
        moved += not np.array_equal(pos, base)
    assert moved >= 4  # 64 possible offsets: the same place twice in 5 is rare


def test_mean_rate_sweep_is_nested_and_exact(tmp_path) -> None:
    path, p = level_map(tmp_path)
    em = parse_error_model(f"map={path},persistent=0,word_bits=8")
    codes = torch.zeros(ROWS * COLS // BITS, dtype=torch.uint8)
    lo, hi = em.at_rate(1e-3), em.at_rate(2e-2)
    flips = 0
    for t in range(400):
        a = positions(sample_mask(codes, BITS, lo, seed=0, trial=t), BITS)
        b = positions(sample_mask(codes, BITS, hi, seed=0, trial=t), BITS)
        assert np.isin(a, b).all()  # the faults at a lower rate are among those at a higher
        flips += b.size
    # a Poisson-binomial count: its variance is below the binomial's, so this interval holds
    assert_rate(flips, 400 * p.size, 2e-2, "mean rate")
    assert isinstance(em.at_rate(0.0), BitErrorModel) and em.at_rate(0.0).ber == 0


def test_asymmetric_scales_per_stored_value(tmp_path) -> None:
    path = save(tmp_path, p=np.full((ROWS, COLS), 0.2), scale01=1.0, scale10=0.25)
    em = parse_error_model(f"map={path},persistent=0,word_bits=8")
    gen = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 256, (ROWS * COLS // BITS,), dtype=torch.uint8, generator=gen)
    stored = ((codes.numpy()[:, None] >> np.arange(8)) & 1).reshape(-1)
    k, trials = np.zeros(2, np.int64), 800
    for t in range(trials):
        pos = positions(sample_mask(codes, BITS, em, seed=0, trial=t), BITS)
        k += np.bincount(stored[pos], minlength=2)
    n = np.bincount(stored, minlength=2) * trials
    assert_rate(k[0], n[0], 0.2, "stored 0")
    assert_rate(k[1], n[1], 0.05, "stored 1")


def test_stuck_cells_read_their_value_and_override_flips(tmp_path) -> None:
    stuck = np.full((ROWS, COLS), -1, np.int8)
    stuck.reshape(-1)[::7] = 1
    stuck.reshape(-1)[3::7] = 0
    path = save(tmp_path, p=np.full((ROWS, COLS), 0.5), stuck=stuck)
    em = parse_error_model(f"map={path},persistent=0,word_bits=8")
    lay = em.layout
    gen = torch.Generator().manual_seed(1)
    for t in range(20):
        codes = torch.randint(0, 256, (ROWS * COLS // BITS,), dtype=torch.uint8, generator=gen)
        apply_mask_(codes, sample_mask(codes, BITS, em, seed=0, trial=t))
        bits = ((codes.numpy()[:, None] >> np.arange(8)) & 1).reshape(-1)
        value = stuck.reshape(-1)[lay.cell_of(np.arange(bits.size))]
        assert np.array_equal(bits[value >= 0], value[value >= 0])


@pytest.mark.parametrize("kind", ["row", "col"])
def test_whole_rows_and_columns_fail_at_their_rate(tmp_path, kind: str) -> None:
    rate, banks = 0.1, 2
    path = save(tmp_path, p=np.zeros((banks, ROWS, COLS)), **{f"{kind}_rate": rate})
    em = parse_error_model(f"map={path},persistent=0,word_bits=8")
    lay = em.layout
    n_codes = lay.capacity // BITS
    zeros, ones = torch.zeros(n_codes, dtype=torch.uint8), torch.full((n_codes,), 255,
                                                                      dtype=torch.uint8)
    failed = coin_ones = 0
    trials = 150
    for t in range(trials):
        # a failed line reads one value: it shows in the zeros (value 1) or the ones (0)
        hit1 = lay.cell_of(positions(sample_mask(zeros, BITS, em, seed=0, trial=t), BITS))
        hit0 = lay.cell_of(positions(sample_mask(ones, BITS, em, seed=0, trial=t), BITS))
        grid = np.zeros(lay.capacity, np.int8)
        grid[hit1], grid[hit0] = 1, 2
        grid = grid.reshape(banks, ROWS, COLS)
        lines = grid if kind == "row" else grid.transpose(0, 2, 1)
        whole = (lines > 0).all(axis=2)
        assert np.array_equal((lines > 0).any(axis=2), whole)  # only whole lines fail
        assert np.all(lines[whole].min(axis=1) == lines[whole].max(axis=1))  # one value each
        failed += int(whole.sum())
        coin_ones += int((lines[whole][:, 0] == 1).sum())
    n_lines = banks * (ROWS if kind == "row" else COLS)
    assert_rate(failed, n_lines * trials, rate, f"{kind} failures")
    assert_rate(coin_ones, failed, 0.5, "line values")


# -- through the engine -------------------------------------------------------------


def test_memory_image_places_each_layer_and_undoes_exactly(tmp_path) -> None:
    model = quantize_model(create_model("mlp", 10, (1, 8, 8)), "int4").eval()
    before = state_digest(model)
    with MemoryImage(model) as image:
        stored = image.stored()
        first_bits = stored[0][1]
        total = sum(n for _, n in stored)
        cols = 256
        rows = -(-total // cols)
        p = np.zeros(rows * cols)
        p[first_bits:total] = 1.0  # every cell past the first layer flips
        path = save(tmp_path, p=p.reshape(rows, cols))
        em = parse_error_model(f"map={path},word_bits=8")
        clean = [s.qt.codes.clone() for _, s in image.weights]
        stats = image.inject(em, seed=0, trial=0)
        assert torch.equal(image.weights[0][1].qt.codes, clean[0])  # the first layer: no fault
        for (_, s), c in zip(image.weights[1:], clean[1:]):
            assert torch.equal(s.qt.codes, c ^ 0xF)  # every bit of the later layers flipped
        assert stats.flipped_bits == total - first_bits
        image.restore()
        assert all(torch.equal(s.qt.codes, c) for (_, s), c in zip(image.weights, clean))
    assert state_digest(model) == before


def test_evaluate_with_a_map_from_the_command_line(tmp_path, capsys) -> None:
    out = tmp_path / "chip.npz"
    assert main(["make-map", "--rows", "64", "--cols", "256", "--cell-ber", "0.01",
                 "--row-rate", "0.01", "--out", str(out)]) == 0
    assert "mean rate" in capsys.readouterr().out
    run = tmp_path / "run"
    assert main(["train", "--dataset", "digits", "--model", "mlp", "--quant", "int4",
                 "--epochs", "1", "--limit-train", "200", "--limit-test", "100",
                 "--out", str(run)]) == 0
    js = tmp_path / "eval.json"
    assert main(["evaluate", str(run), "--error-model", f"map={out},shift=1,word_bits=8",
                 "--ber", "0,0.01", "--trials", "4", "--json", str(js)]) == 0
    res = json.loads(js.read_text())
    assert res["error_model"]["kind"] == "map"
    rates = res["results"][1]["empirical_rates"]
    assert all(r > 0 for r in rates) and len(set(rates)) > 1  # shifted: other cells per trial
    assert "map=" in capsys.readouterr().out


# -- bad map files ------------------------------------------------------------------


@pytest.mark.parametrize("arrays, match", [
    (dict(p=np.zeros(10)), "shape"),
    (dict(p=np.zeros((4, 32)), stuck=np.zeros((4, 16), np.int8)), "same shape"),
    (dict(p=np.full((4, 32), 1.5)), r"probabilities in \[0, 1\]"),
    (dict(p=np.full((4, 32), np.nan)), r"probabilities in \[0, 1\]"),
    (dict(stuck=np.full((4, 32), 2, np.int8)), "allowed: -1"),
    (dict(q=np.zeros((4, 32))), "unknown entries"),
    (dict(row_rate=np.float64(0.1)), "neither 'p'"),
    (dict(p=np.zeros((4, 32)), row_rate=np.float64(2.0)), "row_rate"),
    (dict(p=np.zeros((4, 30))), "multiple of word_bits"),
])
def test_bad_map_files_one_line_naming_the_file(tmp_path, arrays, match) -> None:
    path = save(tmp_path, **arrays)
    with pytest.raises(MCELError, match=match) as e:
        parse_error_model(f"map={path},word_bits=8")
    assert path in str(e.value) and "\n" not in str(e.value)


def test_unreadable_map_and_cli_errors(tmp_path, capsys) -> None:
    bad = tmp_path / "not.npz"
    bad.write_text("hello")
    for path in (bad, tmp_path / "missing.npz"):
        with pytest.raises(MCELError, match="mcel make-map"):
            parse_error_model(f"map={path}")
    assert main(["make-map", "--rows", "4", "--cols", "32", "--cell-ber", "2",
                 "--out", str(tmp_path / "x.npz")]) == 2
    assert "cell_ber" in capsys.readouterr().err
    assert not (tmp_path / "x.npz").exists()
    with pytest.raises(MCELError, match="persistent faults"):
        parse_error_model(f"map={save(tmp_path, p=np.zeros((4, 32)))},mode=transient")


# -- the generator ------------------------------------------------------------------


def test_make_map_statistics(tmp_path) -> None:
    m = make_map(rows=256, cols=512, banks=2, cell_ber=1e-3, spread=1.0, stuck_rate=0.01,
                 row_rate=0.05, scale10=0.5, seed=4)
    p, stuck = m["p"].astype(np.float64), m["stuck"]
    assert p.shape == stuck.shape == (2, 256, 512)
    # log-normal with mean cell_ber: the sample mean is within a few standard errors
    se = p.std() / np.sqrt(p.size)
    assert abs(p.mean() - 1e-3) < 5 * se and p.std() > 5e-4
    assert_rate(int((stuck >= 0).sum()), stuck.size, 0.01, "stuck cells")
    assert_rate(int((stuck == 1).sum()), int((stuck >= 0).sum()), 0.5, "stuck at 1")
    flat = make_map(rows=4, cols=32, cell_ber=0.02, spread=0.0)["p"]
    assert np.all(flat == np.float32(0.02))
    path = str(tmp_path / "m.npz")
    write_map(path, m)
    em = parse_error_model(f"map={path}")
    assert em.arrays.row_rate == 0.05 and em.arrays.scale10 == 0.5
    assert em.arrays.mean_rate == pytest.approx(p.mean() * 0.75)
    assert make_map(rows=4, cols=32, cell_ber=1e-3, seed=1)["p"].tolist() == \
        make_map(rows=4, cols=32, cell_ber=1e-3, seed=1)["p"].tolist()


def test_flat_map_at_a_ber_matches_uniform_flips(tmp_path) -> None:
    """A map with every cell at p, drawn afresh per trial, is uniform flips at p: the
    same law, so mean accuracies agree (Welch t-test) and so do the flip counts."""
    from mcel.data import load_dataset
    from mcel.evaluate import evaluate

    torch.manual_seed(0)
    model = quantize_model(create_model("mlp", 10, (1, 8, 8)), "int4")
    xt, yt = load_dataset("digits", "train", None)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(40):  # a quick fit, so that faults cost accuracy
        j = torch.randint(0, len(yt), (256,))
        loss = torch.nn.functional.cross_entropy(model(xt[j]), yt[j])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    x, y = load_dataset("digits", "test", None, limit=300)
    path = str(tmp_path / "flat.npz")
    write_map(path, make_map(rows=64, cols=512, cell_ber=0.01, spread=0.0))
    ber = 0.06
    res = {name: evaluate(model, x, y, [ber], em, trials=40, seed=s).results[0]
           for name, em, s in (("map", f"map={path},persistent=0,word_bits=8", 1),
                               ("uniform", "ber=1", 2))}
    a, b = res["map"], res["uniform"]
    clean = evaluate(model, x, y, [0.0], trials=1).clean_accuracy
    assert clean > 0.8 and b.mean < clean - 0.02  # the faults matter: a drop to compare
    assert stats.ttest_ind(a.accuracies, b.accuracies, equal_var=False).pvalue > 1e-3
    assert abs(np.mean(a.empirical_rates) - ber) < 4 * np.std(b.empirical_rates) + 1e-4


def test_batched_trials_and_grids_take_maps(tmp_path) -> None:
    """trial_batch > 1 draws each trial's map faults exactly as single trials do, and a
    sweep grid accepts a map spec (validated, kept in canonical form)."""
    from mcel.evaluate import evaluate
    from mcel.experiments.grid import expand

    path = str(tmp_path / "chip.npz")
    write_map(path, make_map(rows=64, cols=512, cell_ber=0.01, stuck_rate=1e-3, row_rate=0.02,
                             seed=2))
    torch.manual_seed(0)
    model = quantize_model(create_model("mlp", 10, (1, 8, 8)), "int4").eval()
    x, y = torch.randn(64, 1, 8, 8), torch.randint(0, 10, (64,))
    spec = f"map={path},shift=1,word_bits=16"
    one, four = (evaluate(model, x, y, [0.02], spec, trials=4, seed=3, trial_batch=k,
                          keep_correct=True) for k in (1, 4))
    assert one.results[0].empirical_rates == four.results[0].empirical_rates
    assert torch.equal(one.meta["correct"][0.02], four.meta["correct"][0.02])
    cells = expand({"base": {"dataset": "digits", "model": "mlp", "quant": "int4", "epochs": 1},
                    "grid": {"seed": [0]}, "eval": {"bers": [0, 0.01], "error_model": spec}})
    assert cells[0].plan.error_models == (parse_error_model(spec).describe(),)


@pytest.mark.parametrize("spec", ["persistent=0", "shift=1", "persistent=0,shift=1",
                                  "persistent=0,bit_interleave=1,word_bits=16"])
def test_native_kernel_draws_the_same_map_faults_as_numpy(tmp_path, spec) -> None:
    """Map draws through the C kernel (ladder, thinning, the part above 1/16, grouping
    per code) equal numpy's bit for bit, from low rates to rates where cells pass 1/16."""
    import mcel.faults.error_map as em_mod
    from mcel.faults import native

    if native.load() is None:
        pytest.skip(native.status())
    path = str(tmp_path / "chip.npz")
    write_map(path, make_map(rows=128, cols=1024, cell_ber=1e-3, spread=1.5, stuck_rate=1e-3,
                             row_rate=1e-2, col_rate=1e-2, scale01=0.5, seed=0))
    spec = spec if "word_bits" in spec else spec + ",word_bits=32"
    codes = torch.randint(0, 16, (128 * 1024 // 4,), dtype=torch.uint8,
                          generator=torch.Generator().manual_seed(0))
    caches = (em_mod._draw, em_mod._unshifted, em_mod._cells)
    for ber in (1e-4, 3e-3, 0.05):  # at 0.05 the weakest cells' groups pass 1/16
        em = parse_error_model(f"map={path},{spec}").at_rate(ber)
        for trial in range(2):
            for c in caches:
                c.cache_clear()
            a = sample_mask(codes, 4, em, seed=1, trial=trial)
            for c in caches:
                c.cache_clear()
            with native.disabled():
                b = sample_mask(codes, 4, em, seed=1, trial=trial)
            assert a.nbits_flipped > 0 and a.nbits_flipped == b.nbits_flipped
            assert torch.equal(a.index, b.index) and torch.equal(a.xor, b.xor), (ber, trial)


def test_layout_identity() -> None:
    assert MemoryLayout(banks=2).identity and MemoryLayout(banks=1, bank_interleave=True).identity
    assert not MemoryLayout(banks=2, bank_interleave=True).identity
    assert not MemoryLayout(bit_interleave=True).identity
    for lay in LAYOUTS:  # identity: every address is its own cell
        a = np.arange(lay.capacity)
        assert lay.identity == bool(np.array_equal(lay.cell_of(a), a))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_same_map_mask_on_cuda(tmp_path) -> None:
    path = save(tmp_path, p=np.full((ROWS, COLS), 0.05), scale10=0.5,
                stuck=np.where(np.arange(ROWS * COLS) % 11 == 0, 1, -1).reshape(ROWS, COLS))
    em = parse_error_model(f"map={path},word_bits=8,shift=1")
    codes = torch.randint(0, 256, (ROWS * COLS // BITS,), dtype=torch.uint8)
    a = sample_mask(codes, BITS, em, seed=0, trial=3)
    b = sample_mask(codes.cuda(), BITS, em, seed=0, trial=3)
    assert torch.equal(a.index, b.index.cpu()) and torch.equal(a.xor, b.xor.cpu())


def test_fresh_draw_in_one_kernel_call_recovers_from_overflow(tmp_path) -> None:
    """A fresh draw whose marks overflow the kernel's buffer gives None (the caller draws
    group by group) and leaves the shared bitmap clear, so the next draw is exact."""
    from dataclasses import replace

    import mcel.faults.error_map as em_mod
    from mcel.faults import native

    if native.load() is None:
        pytest.skip(native.status())
    path = str(tmp_path / "chip.npz")
    write_map(path, make_map(rows=64, cols=1024, cell_ber=1e-2, spread=1.0, seed=4))
    em = parse_error_model(f"map={path},persistent=0").at_rate(0.02)
    st = em_mod._strata(em.arrays, em.scale, em_mod.FRESH_GROUP)
    table = native.map_table(st.cells, st.ratios, st.tops, em.arrays.p.size)
    key = FaultKey(seed=0, trial=1, name="error-map", step=0)
    seeds = key.words(em_mod._FRESH, 9 * len(st.cells)).reshape(-1, 9)
    cells = native.map_draw(table, seeds)
    assert cells is not None and cells.size > 0
    assert np.all(np.diff(cells) > 0)  # sorted, unique
    tight = replace(table, cap=1)  # the same bitmap, a buffer too small
    assert native.map_draw(tight, seeds) is None
    assert not table.bitmap.any()
    assert np.array_equal(native.map_draw(table, seeds), cells)
    with native.disabled():  # the group-by-group path draws the same cells
        assert np.array_equal(em_mod._flip_cells(em.arrays, em.scale, key, em_mod.FRESH_GROUP),
                              cells)
