"""Before/after: the message throughput of two revisions of voxrelay, side by side.

    python -m bench.compare --base REV [--sessions 10,100] [--repeats 7]

Starts `voxrelay serve` (the messages section's settings) from a `git worktree`
of REV and from this working tree, plus the bare grpcio baseline, and drives
all three in turn from the messages section's client process, interleaved
repeat by repeat, so both revisions see the same machine. Prints, per session
count, each server's median rate and server CPU per message, and each
revision's rate and CPU efficiency against the bare server. The optimisation
log's A/B figures were measured this way.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from bench.messages import VOXRELAY_ARGS, ClientProcess, start_bare_process
from bench.report import ROOT, median, spread
from bench.servers import ServerProcess, start_server_process, stop_server_process

_STUBS = ROOT / "client" / "voxrelay" / "v1"


@contextlib.contextmanager
def worktree(revision: str) -> Iterator[Path]:
    """A checkout of `revision` in a temporary directory, with generated stubs (its own,
    or this tree's for revisions that did not commit them)."""
    with tempfile.TemporaryDirectory(prefix="voxrelay-base-") as parent:
        path = Path(parent) / "tree"
        subprocess.run(
            ["git", "worktree", "add", "--detach", "--quiet", str(path), revision],
            cwd=ROOT,
            check=True,
        )
        try:
            # Revisions before the stubs were committed have none: they get this tree's.
            base_stubs = path / "client" / "voxrelay" / "v1"
            if not any(base_stubs.glob("*_pb2.py")):
                for stub in _STUBS.glob("*_pb2*.py*"):
                    (base_stubs / stub.name).write_bytes(stub.read_bytes())
            yield path
        finally:
            subprocess.run(
                ["git", "worktree", "remove", "--force", str(path)], cwd=ROOT, check=False
            )


def start_revision(tree: Path | None, arguments: Sequence[str] = VOXRELAY_ARGS) -> ServerProcess:
    """`voxrelay serve ARGUMENTS` from `tree` (None: this working tree); by default as
    the messages section runs it."""
    if tree is None:
        return start_server_process(arguments)
    # On PYTHONPATH, the base's packages come before the editable install of this tree.
    path = os.pathsep.join([str(tree / "server"), str(tree / "client")])
    return start_server_process(arguments, extra_env={"PYTHONPATH": path})


async def compare(
    base: Path, session_counts: Sequence[int], repeats: int, window_s: float
) -> list[str]:
    """Measure base, this tree and bare, interleaved; return the printed lines."""
    names = ("base", "this tree", "bare grpcio")
    rates: dict[tuple[str, int], list[float]] = {(n, s): [] for n in names for s in session_counts}
    costs: dict[tuple[str, int], list[float]] = {(n, s): [] for n in names for s in session_counts}
    with contextlib.ExitStack() as running:
        servers: dict[str, ServerProcess] = {}
        for name in names:  # each stopped at the end, even if a later one fails to start
            if name == "bare grpcio":
                servers[name] = start_bare_process()
            else:
                servers[name] = start_revision(base if name == "base" else None)
            running.callback(stop_server_process, servers[name])
        client = await ClientProcess.start()
        try:
            for repeat in range(repeats):
                order = names if repeat % 2 == 0 else tuple(reversed(names))
                for sessions in session_counts:
                    for name in order:
                        warmup_s = 0.3 + 0.007 * sessions
                        result = await client.measure(servers[name], sessions, warmup_s, window_s)
                        rate = result["messages"] / result["wall_s"]
                        rates[name, sessions].append(rate)
                        costs[name, sessions].append(1e6 * result["server_cpu"] / rate)
        finally:
            await client.close()
    lines = []
    for sessions in session_counts:
        parts = [f"{sessions} sessions:"]
        for name in names:
            parts.append(
                f"{name} {median(rates[name, sessions]):,.0f} msgs/s "
                f"({median(costs[name, sessions]):.1f} µs/msg)"
            )
        bare_rates, bare_costs = rates["bare grpcio", sessions], costs["bare grpcio", sessions]
        for name in names[:2]:
            ratio = [a / b for a, b in zip(rates[name, sessions], bare_rates, strict=True)]
            efficiency = [b / a for a, b in zip(costs[name, sessions], bare_costs, strict=True)]
            parts.append(
                f"| {name} / bare: rate {median(ratio):.2f} ±{spread(ratio):.2f}, "
                f"CPU efficiency {median(efficiency):.2f}"
            )
        lines.append(" ".join(parts))
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__)
    parser.add_argument("--base", required=True, help="git revision to compare against")
    parser.add_argument("--sessions", default="10,100", help="comma-separated session counts")
    parser.add_argument("--repeats", type=int, default=7, help="interleaved repeats")
    parser.add_argument("--window", type=float, default=1.0, help="seconds counted per point")
    args = parser.parse_args(argv)
    session_counts = [int(part) for part in args.sessions.split(",") if part.strip()]
    print(f"message throughput: {args.base} against this working tree", file=sys.stderr)
    with worktree(args.base) as base:
        for line in asyncio.run(compare(base, session_counts, args.repeats, args.window)):
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
