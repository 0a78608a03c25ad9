"""``mcel make-map``: write a synthetic chip-like error map (`mcel.faults.error_map`)."""

from __future__ import annotations

import argparse


def cmd_make_map(args: argparse.Namespace) -> int:
    from mcel.faults.error_map import check_map, make_map, write_map

    arrays = make_map(rows=args.rows, cols=args.cols, banks=args.banks, cell_ber=args.cell_ber,
                      spread=args.spread, stuck_rate=args.stuck_rate, row_rate=args.row_rate,
                      col_rate=args.col_rate, scale01=args.scale01, scale10=args.scale10,
                      seed=args.seed)
    write_map(args.out, arrays)
    m = check_map(arrays, args.out)
    stuck = int((m.stuck >= 0).sum())
    print(f"wrote {args.out}: {args.banks} x {args.rows} x {args.cols} cells, mean rate "
          f"{m.mean_rate:.3g}, {stuck} stuck cells, row rate {m.row_rate:g}, column rate "
          f"{m.col_rate:g}")
    print(f"use it: mcel evaluate RUN --error-model map={args.out} --ber 0,{m.mean_rate:.3g}")
    return 0


def register(sub) -> None:
    m = sub.add_parser("make-map", help="write a synthetic error map (weak cells, stuck "
                       "cells, failing rows and columns) for --error-model map=FILE")
    m.add_argument("--rows", type=int, required=True, help="rows (word lines) per bank")
    m.add_argument("--cols", type=int, required=True,
                   help="cells (bits) per row; a multiple of the word width used with it")
    m.add_argument("--banks", type=int, default=1, help="memory banks")
    m.add_argument("--cell-ber", type=float, default=0.0,
                   help="mean flip probability of a cell (log-normal over the cells)")
    m.add_argument("--spread", type=float, default=1.0,
                   help="sigma of the cells' log probability; 0: every cell at --cell-ber")
    m.add_argument("--stuck-rate", type=float, default=0.0,
                   help="fraction of cells stuck at 0 or 1 (a fair coin each)")
    m.add_argument("--row-rate", type=float, default=0.0, help="chance a whole row fails")
    m.add_argument("--col-rate", type=float, default=0.0, help="chance a whole column fails")
    m.add_argument("--scale01", type=float, default=1.0,
                   help="a stored 0 flips with p x this (asymmetric memories)")
    m.add_argument("--scale10", type=float, default=1.0, help="a stored 1 flips with p x this")
    m.add_argument("--seed", type=int, default=0, help="seed of the map itself")
    m.add_argument("--out", required=True, help="the .npz file to write")
    m.set_defaults(func=cmd_make_map)
