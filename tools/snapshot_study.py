"""Take a snapshot of a running (or finished) sweep into docs/study/<grid>/: a consistent
copy of its database (SQLite's backup API, so a sweep may be writing to it meanwhile),
left as one plain file, its report regenerated beside it, and docs/study/README.md
rewritten (a test fails when the index is stale).

    python tools/snapshot_study.py study/fashion-resnet20-full/fashion-resnet20-full.db

The grid's name is the database's stem; the snapshot goes to docs/study/<name>/. The
report covers the cells of configs/study/<name>.yaml as it is now (`mcel report --grid`):
runs of cells the grid has since dropped or changed stay in the database, named in a note.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def snapshot(db: Path, docs: Path = ROOT / "docs" / "study") -> Path:
    """Copy ``db`` to ``docs/<stem>/<stem>.db`` (written beside, then moved into place)
    and return the copy's path."""
    folder = docs / db.stem
    folder.mkdir(parents=True, exist_ok=True)
    target, part = folder / db.name, folder / (db.name + ".part")
    part.unlink(missing_ok=True)
    src = sqlite3.connect(f"file:{db.resolve()}?mode=ro", uri=True)
    dst = sqlite3.connect(part)
    try:
        src.backup(dst)
        dst.execute("PRAGMA journal_mode=DELETE")  # one plain file, no -wal beside it
    finally:
        dst.close()
        src.close()
    part.replace(target)
    return target


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("db", type=Path, help="the sweep's database")
    args = p.parse_args(argv)
    if not args.db.is_file():
        print(f"snapshot_study: {args.db} does not exist", file=sys.stderr)
        return 2
    copy = snapshot(args.db)
    from mcel.report.build import build_report

    grid = ROOT / "configs" / "study" / f"{copy.stem}.yaml"
    md = build_report(copy, copy.parent, grid=grid if grid.exists() else None)
    sys.path.insert(0, str(ROOT / "tools"))
    import study_index

    study_index.main([])
    print(f"wrote {copy}, {md} and docs/study/README.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
