"""Command-line entry for checkpoint conversion: `convert_main(["SRC", "DST", "--dtype", ...])`."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Optional, Sequence

from lsd_jax.models.dit import DTYPES


def convert_parser(prog: str = "lsd-jax convert") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Convert a SEDD / MDLM / RADD checkpoint (HF layout: config.json + "
        "model.safetensors or pytorch_model.bin, or an HF repo id) into a Flax directory.",
    )
    p.add_argument("src", metavar="SRC", help="HF-layout checkpoint directory or Hugging Face repo id")
    p.add_argument("dst", metavar="DST", help="new (or empty) output directory")
    p.add_argument("--dtype", choices=DTYPES, default="float32", help="parameter and compute dtype (default float32)")
    return p


def convert_main(argv: Optional[Sequence[str]] = None) -> int:
    """Parses SRC DST [--dtype], converts, prints the summary as JSON; 0 on success.

    The exit convention of every `lsd-jax` subcommand: a bad input (a CheckpointError,
    an unwritable DST) prints one line `lsd-jax convert: error: ...` to stderr and returns
    2, as does a usage error (argparse's message); --help returns 0.
    """
    from ports.sedd import CheckpointError, convert

    parser = convert_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2, message already printed)
        return int(e.code or 0)
    try:
        summary = convert(args.src, args.dst, dtype=args.dtype)
    except (CheckpointError, OSError) as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(convert_main())
