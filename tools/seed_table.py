"""Mean accuracy over training seeds, with 95% t-intervals, from `mcel evaluate --json`
files, and differences paired by seed: the table behind results.md's comparisons of runs
trained outside a sweep (the headline on new seeds, MCEL vs ECC).

    python tools/seed_table.py DIR --cases ce.plain,ce.ecc64,mcel.plain \\
        --pairs mcel.plain:ce.ecc64 --seeds 5,6,7 [--pattern 'hl-{case}']

reads DIR/hl-ce-5.plain.json etc.: a case ``LABEL.TAG`` is the file
``{pattern}-{seed}.{tag}.json`` with ``{case}`` = LABEL. Prints one Markdown table: the
clean accuracy and every BER > 0 of the files, mean [interval] per case, then each pair's
difference (``A:B`` is A - B, in points) [interval over the paired seeds]; intervals of
accuracies clipped to [0, 100].
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from mcel.evaluate import t_interval  # noqa: E402


def load(folder: Path, pattern: str, case: str, seed: int) -> dict[float, float]:
    label, tag = case.rsplit(".", 1)
    d = json.loads((folder / f"{pattern.format(case=label)}-{seed}.{tag}.json").read_text())
    out = {r["ber"]: r["mean"] for r in d["results"] if r["ber"] > 0}
    out[0.0] = d["clean_accuracy"]
    return out


def cell(values: list[float], clip: bool) -> str:
    m, lo, hi = t_interval(values)
    if clip:
        return f"{100 * m:.1f} [{100 * max(lo, 0):.1f}, {100 * min(hi, 1):.1f}]"
    return f"{100 * m:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder", type=Path)
    p.add_argument("--cases", required=True, help="LABEL.TAG,... in table order")
    p.add_argument("--pairs", default="", help="A:B,... differences A - B paired by seed")
    p.add_argument("--seeds", required=True)
    p.add_argument("--pattern", default="{case}")
    args = p.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    cases = args.cases.split(",")
    data = {c: [load(args.folder, args.pattern, c, s) for s in seeds] for c in cases}
    bers = sorted(data[cases[0]][0])
    head = ["case"] + ["clean" if b == 0 else f"BER {b:g}" for b in bers]
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for c in cases:
        print(f"| {c} | " + " | ".join(cell([d[b] for d in data[c]], True) for b in bers) + " |")
    for pair in filter(None, args.pairs.split(",")):
        a, b_ = pair.split(":")
        for c in (a, b_):
            if c not in data:
                data[c] = [load(args.folder, args.pattern, c, s) for s in seeds]
        diffs = [cell([x[b] - y[b] for x, y in zip(data[a], data[b_])], False) for b in bers]
        print(f"| {a} - {b_} | " + " | ".join(diffs) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
