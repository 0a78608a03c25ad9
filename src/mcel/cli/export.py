"""``mcel export``: a run's memory image (what a memory holds for it, bit for bit), its
codes and where each tensor sits, for loading into real or simulated hardware."""

from __future__ import annotations

import argparse

from mcel.cli.common import add_device_flag
from mcel.quant.floats import FLOAT_FORMATS


def cmd_export(args: argparse.Namespace) -> int:
    from mcel.cli.evaluate import error_model_of
    from mcel.dumps import export_image
    from mcel.quant import set_format
    from mcel.runs import load_run

    args.error_model, args.transient = None, False
    em = error_model_of(args)  # only its targets: what is stored
    model, config = load_run(args.run_dir, args.device)
    if args.fmt:
        set_format(model, args.fmt)
    record = export_image(model, args.out, error_model=em, weights=args.weights,
                          meta={"run_dir": str(args.run_dir), "fmt": args.fmt or config.fmt,
                                "targets": list(em.targets)}, hex_word_bits=args.hex)
    hex_note = f", image.hex ({args.hex}-bit words)" if args.hex else ""
    print(f"wrote {args.out}/image.bin ({record['bytes']} bytes, {record['total_bits']} "
          f"stored bits in {len(record['tensors'])} tensors){hex_note}, codes.safetensors, "
          "layout.json")
    return 0


def register(sub) -> None:
    from mcel.cli.common import listed
    from mcel.faults import TARGETS
    from mcel.quant import list_formats

    e = sub.add_parser("export", help="write a run's memory image (its stored bits), codes "
                                      "and layout, for hardware; evaluate read-back dumps "
                                      "with 'mcel evaluate RUN --dumps'")
    e.add_argument("run_dir", help="a run folder written by 'mcel train'")
    e.add_argument("--out", required=True, help="folder for image.bin, codes.safetensors "
                                                "and layout.json")
    e.add_argument("--fmt", default=None, metavar=listed(list_formats()),
                   help="number format of the stored codes (default: the run's own)")
    e.add_argument("--targets", default=None, metavar=listed(TARGETS),
                   help="stored parts: weights, or weights,biases (default weights)")
    e.add_argument("--weights", default=None, choices=FLOAT_FORMATS.names(),
                   help="store the float (unquantized) layers in this IEEE format too "
                        "(default: only quantized layers are stored)")
    e.add_argument("--hex", type=int, default=None, metavar="WORD_BITS",
                   help="also write image.hex for Verilog's $readmemh, one word of WORD_BITS "
                        "(a multiple of 8) per line; 'mcel evaluate --dumps' reads .hex/.mem "
                        "files back (default: none)")
    add_device_flag(e)
    e.set_defaults(func=cmd_export)
