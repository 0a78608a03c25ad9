"""The demo (the main job): every method trains and lands in demo.json and demo.md."""

import json

from mcel.demo import CLIP, demo_configs, run_demo


def test_demo_compares_the_loss_with_both_simple_defences():
    configs = demo_configs(epochs=1, seed=0)
    assert [c.loss for c in configs.values()] == ["ce", "mcel", "ce", "ce", "mcel"]
    assert [c.train_ber for c in configs.values()] == [0.0, 0.0, 0.01, 0.0, 0.0]
    assert [c.clip for c in configs.values()] == [None, None, None, CLIP, CLIP]


def test_demo_writes_every_method(tmp_path):
    rows = run_demo(tmp_path / "demo", epochs=1, trials=2, seed=0)
    saved = json.loads((tmp_path / "demo" / "demo.json").read_text())
    assert list(rows) == list(demo_configs(1, 0))
    assert set(saved["methods"]) == set(rows)  # the JSON sorts its keys
    table = (tmp_path / "demo" / "demo.md").read_text().splitlines()
    assert len(table) == 2 + len(rows)  # header, rule, one row per method
    for name, row in saved["methods"].items():
        assert row["config"]["clip"] == demo_configs(1, 0)[name].clip
        assert [r["ber"] for r in row["curve"]] == saved["bers"]
    assert (tmp_path / "demo" / "demo.png").stat().st_size > 0
