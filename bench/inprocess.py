"""The command line the in-process benchmarks share (``bench.fanout_cpu``, ``bench.select_cpu``).

Each measures one function's own CPU per due message in rounds after a warm-up, can pause after
the warm-up for a profiler to attach, and folds a py-spy raw profile into its own components.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any


def main(
    argv: list[str] | None,
    *,
    description: str,
    count_flag: str,
    count_help: str,
    default_count: int,
    default_warmup: int,
    run: Callable[[int, int, int, float], dict[str, Any]],
    fold: Callable[[Path], dict[str, float]],
) -> int:
    """Parse the shared options, then fold a profile or run and print (and write) the figures."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(count_flag, type=int, default=default_count, help=count_help)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=default_warmup)
    parser.add_argument(
        "--settle",
        type=float,
        default=0.0,
        help="seconds to wait after the warm-up (time to attach a profiler: py-spy --pid)",
    )
    parser.add_argument("--output", type=Path, help="write the figures as JSON here")
    parser.add_argument("--fold", type=Path, help="only fold a py-spy raw profile and print it")
    args = parser.parse_args(argv)
    if args.fold:
        for name, share in fold(args.fold).items():
            print(f"{share:5.1f} %  {name}")
        return 0
    count = getattr(args, count_flag.removeprefix("--").replace("-", "_"))
    figures = run(count, args.rounds, args.warmup, args.settle)
    text = json.dumps(figures, indent=2)
    print(text)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n")
    return 0
