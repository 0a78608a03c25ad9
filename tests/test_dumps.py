"""Memory images as files (`mcel export`) and read-back dumps (`mcel evaluate --dumps`):
a dump that holds the bits of an engine trial gives exactly that trial's accuracy."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from mcel import MCELError
from mcel.cli import main
from mcel.data import load_dataset
from mcel.dumps import dump_masks, evaluate_dumps, image_bits, image_bytes
from mcel.engine import MemoryImage, state_digest
from mcel.evaluate import evaluate
from mcel.faults import BitErrorModel, parse_error_model
from mcel.faults.error_map import write_map
from mcel.models import create_model
from mcel.quant import QuantSpec, quantize_model


def _model(fmt="twos_complement", granularity="tensor"):
    torch.manual_seed(0)
    net = create_model("mlp", 10, (1, 8, 8), hidden=32)
    return quantize_model(net, QuantSpec("int4", fmt=fmt, granularity=granularity)).eval()


def _dump_of_trial(model, em, seed, trial, path):
    """The image as a memory would hold it during engine trial ``trial``."""
    with MemoryImage(model, em) as image:
        image.inject(em, seed=seed, trial=trial)
        bits = image_bits(image)
    path.write_bytes(np.packbits(bits, bitorder="little").tobytes())
    return path


@pytest.mark.parametrize("fmt,granularity,targets", [
    ("twos_complement", "tensor", ("weights",)),
    ("sign_magnitude", "channel", ("weights", "biases")),
])
def test_a_dump_of_an_engine_trial_gives_that_trials_accuracy(tmp_path, fmt, granularity,
                                                              targets):
    model = _model(fmt, granularity)
    x, y = load_dataset("digits", "test")
    em = BitErrorModel(ber=0.05, targets=targets)
    before = state_digest(model)
    res = evaluate(model, x, y, [0.05], em, trials=4, seed=7)
    dumps = [_dump_of_trial(model, em, 7, t, tmp_path / f"d{t}.bin") for t in range(4)]
    got = evaluate_dumps(model, x, y, dumps, error_model=em)
    assert [d["accuracy"] for d in got.dumps] == res.results[0].accuracies
    assert [d["rate"] for d in got.dumps] == res.results[0].empirical_rates
    assert got.clean_accuracy == res.clean_accuracy
    assert state_digest(model) == before  # every dump undone, bit for bit


def test_the_image_is_in_the_address_order_of_error_maps(tmp_path):
    """One stuck cell of a map, at a cell whose clean bit differs: the image read back
    differs in exactly that address (identity layout: cell index = address)."""
    model = _model()
    with MemoryImage(model) as image:
        clean = image_bits(image)
    address = 5000 + int(np.flatnonzero(clean[5000:] == 0)[0])
    rows, cols = 16, 1024  # 16,384 cells hold the MLP's 9,472 stored bits
    stuck = np.full((rows, cols), -1, np.int8)
    stuck.reshape(-1)[address] = 1
    write_map(str(tmp_path / "chip.npz"), {"stuck": stuck})
    em = parse_error_model(f"map={tmp_path / 'chip.npz'},word_bits=32")
    with MemoryImage(model, em) as image:
        image.inject(em, seed=0, trial=0)
        faulty = image_bits(image)
    assert np.flatnonzero(faulty ^ clean).tolist() == [address]


def test_export_writes_the_image_codes_and_layout(tmp_path, capsys):
    from mcel.train import TrainConfig, train

    cfg = TrainConfig(dataset="digits", model="mlp", model_kwargs={"hidden": 32}, epochs=1,
                      limit_train=256, limit_test=100)
    train(cfg, tmp_path / "run")
    out = tmp_path / "exp"
    assert main(["export", str(tmp_path / "run"), "--out", str(out), "--fmt",
                 "sign_magnitude"]) == 0
    lay = json.loads((out / "layout.json").read_text())
    data = (out / "image.bin").read_bytes()
    assert lay["bytes"] == len(data) == (lay["total_bits"] + 7) // 8
    bits = np.unpackbits(np.frombuffer(data, np.uint8), bitorder="little")
    codes = load_file(str(out / "codes.safetensors"))
    for t in lay["tensors"]:  # code i, bit b at first_address + i * bits + b
        c = codes[f"{t['name']}.codes"].reshape(-1).long().numpy()
        n, k = c.size, t["bits"]
        back = bits[t["first_address"]:t["first_address"] + n * k].reshape(n, k)
        assert np.array_equal((back << np.arange(k)).sum(1), c)
        assert t["fmt"] == "sign_magnitude"
    # the clean image read back: no flips, the clean accuracy
    js = tmp_path / "d.json"
    assert main(["evaluate", str(tmp_path / "run"), "--fmt", "sign_magnitude", "--dumps",
                 str(out / "image.bin"), "--json", str(js)]) == 0
    res = json.loads(js.read_text())
    assert res["dumps"][0]["flipped_bits"] == 0
    assert res["dumps"][0]["accuracy"] == res["clean_accuracy"]


def test_bad_dumps_are_one_line_errors(tmp_path, capsys):
    model = _model()
    x, y = load_dataset("digits", "test", limit=50)
    (tmp_path / "short.bin").write_bytes(b"\0" * 10)
    with pytest.raises(MCELError, match="holds 10 bytes; this run's memory image is"):
        evaluate_dumps(model, x, y, [tmp_path / "short.bin"])
    with pytest.raises(MCELError, match="does not exist"):
        evaluate_dumps(model, x, y, [tmp_path / "nope.bin"])
    with MemoryImage(model) as image:
        clean = image_bytes(image)
        assert image.total_bits % 8 == 0
        assert dump_masks(image, clean, clean + b"\xff" * 8) == {}  # past the image: unread


def test_the_unused_bits_of_the_last_byte_are_not_read(tmp_path):
    torch.manual_seed(0)
    from torch import nn

    net = quantize_model(nn.Sequential(nn.Flatten(), nn.Linear(64, 3)), QuantSpec("int4"))
    with MemoryImage(net.eval()) as image:  # 192 weight codes x 4 bits; + 3 biases below
        assert image.total_bits == 768
    em = BitErrorModel(ber=0.0, targets=("weights", "biases"))
    with MemoryImage(net, em) as image:
        clean = image_bytes(image)
        assert image.total_bits == 780 and len(clean) == 98  # 4 bits of the last byte unused
        last = bytes([clean[-1] ^ 0xF0])  # flip only the unused high nibble
        assert dump_masks(image, clean, clean[:-1] + last) == {}
        one = bytes([clean[-1] ^ 0x01])  # address 776: bias code 2 (of 0..2), bit 0
        masks = dump_masks(image, clean, clean[:-1] + one)
        (name, mask), = masks.items()
        assert name.endswith("bias") and mask.index.tolist() == [2] and mask.nbits_flipped == 1


def test_dumps_refuse_flags_that_draw_faults(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path), "--dumps", "a.bin", "--adaptive", "0.01"]) == 2
    err = capsys.readouterr().err
    assert "--adaptive draws or compares faults" in err and len(err.splitlines()) == 1


def test_hex_images_round_trip_and_read_back_as_dumps(tmp_path):
    """$readmemh text: word w's bit b is address w * W + b; a .hex dump of an engine trial
    gives the same accuracy as the binary one."""
    from mcel.dumps import from_hex, to_hex

    model = _model()
    x, y = load_dataset("digits", "test", limit=100)
    em = BitErrorModel(ber=0.05)
    binary = _dump_of_trial(model, em, 3, 0, tmp_path / "d.bin")
    data = binary.read_bytes()
    for w in (8, 32, 64):
        text = to_hex(data, w)
        assert from_hex(text) == data + bytes(-len(data) % (w // 8))
    first = int(to_hex(data, 32).splitlines()[0], 16)  # address b of word 0 is its bit b
    bits = np.unpackbits(np.frombuffer(data[:4], np.uint8), bitorder="little")
    assert all((first >> b) & 1 == bits[b] for b in range(32))
    (tmp_path / "d.hex").write_text("// written by a simulator\n@0\n" + to_hex(data, 32))
    a = evaluate_dumps(model, x, y, [binary])
    b = evaluate_dumps(model, x, y, [tmp_path / "d.hex"])
    assert a.dumps[0]["accuracy"] == b.dumps[0]["accuracy"]
    assert a.dumps[0]["flipped_bits"] == b.dumps[0]["flipped_bits"] > 0
    (tmp_path / "odd.hex").write_text("0001\n01\n")
    with pytest.raises(MCELError, match="line 2: '01' is not a hex word like the others"):
        evaluate_dumps(model, x, y, [tmp_path / "odd.hex"])
