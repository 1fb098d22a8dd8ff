"""Run the benchmark suite: `python -m bench [--quick] [--only NAME ...]`.

Each section measures one figure of the performance goals side by side with
its baseline in the same run, prints a table and adds itself to BENCHMARKS.md;
plots go to bench/plots/.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys
import time
from collections.abc import Awaitable, Callable
from typing import cast

from bench.report import PLOTS, ROOT, Section, write_report

SECTIONS = (
    "ttfa",
    "ordering",
    "messages",
    "real_voice",
    "first_audio",
    "voice_agent",
    "piper_servers",
    "idle",
    "barge_in",
    "word_timing",
    "http_speech",
    "soak",
    "memory",
    "adapters_livekit",
    "adapters",
    "replicas",
)
"""Modules of this package, each with `async def run(quick: bool) -> Section`."""


async def run_all(names: list[str], quick: bool) -> list[Section]:
    sections = []
    for name in names:
        module = importlib.import_module(f"bench.{name}")
        run = cast(Callable[[bool], Awaitable[Section]], module.run)
        started = time.perf_counter()
        print(f"-- {name} ...", file=sys.stderr, flush=True)
        section = await run(quick)
        print(section.console(), flush=True)
        print(f"-- {name} took {time.perf_counter() - started:.0f} s", file=sys.stderr)
        sections.append(section)
    return sections


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (a few minutes)")
    parser.add_argument("--only", nargs="*", choices=SECTIONS, help="run only these sections")
    parser.add_argument(
        "--output", default=str(ROOT / "BENCHMARKS.md"), help="report file to write"
    )
    args = parser.parse_args()
    PLOTS.mkdir(parents=True, exist_ok=True)
    names = list(args.only or SECTIONS)
    sections = asyncio.run(run_all(names, args.quick))
    command = "make bench-quick" if args.quick else "make bench"
    if args.only:
        command = f"python -m bench{' --quick' if args.quick else ''} --only {' '.join(names)}"
    from pathlib import Path

    write_report(sections, quick=args.quick, command=command, path=Path(args.output))
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
