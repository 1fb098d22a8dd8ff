"""The piper servers' load, voxrelay at a base revision against this working tree.

    python -m bench.load_compare --base REV [--clients 16] [--window 12] [--rounds 3]

Both servers run `voxrelay serve --engines piper,espeak` side by side; each round loads
one, then the other (the order alternating), with the clients of `bench.piper_servers`:
a closed loop (each client's next reply as soon as the last has ended) and
conversations (the next once a listener has heard the last). Prints, per revision,
first audio from the send, the listener's wait and longest silence within a reply
(p50 / p90, ms) and throughput, so a change's effect under load is seen in one run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path

from bench.compare import start_revision, worktree
from bench.piper_servers import Load, loaded, spread, voxrelay_speaker
from bench.servers import ServerProcess, stop_server_process

ARGUMENTS = ("--engines", "piper,espeak")
NAMES = ("base", "this tree")


async def compare(base: Path, clients: int, window_s: float, rounds: int) -> list[str]:
    """Rounds of both loads on both revisions; return one summary line per load and revision."""
    loads = {(name, paced): Load() for name in NAMES for paced in (False, True)}
    with contextlib.ExitStack() as running:
        servers: dict[str, ServerProcess] = {}
        for name in NAMES:
            servers[name] = start_revision(base if name == "base" else None, ARGUMENTS)
            running.callback(stop_server_process, servers[name])
        for round_ in range(rounds):
            for name in NAMES if round_ % 2 == 0 else tuple(reversed(NAMES)):
                server = servers[name]
                connect = partial(voxrelay_speaker, server.target)
                for paced in (False, True):
                    load = loads[(name, paced)]
                    await loaded(connect, server.pid, clients, window_s, load, paced)
            print(f"   round {round_ + 1} of {rounds} done", file=sys.stderr, flush=True)
    lines = []
    for (name, paced), load in loads.items():
        kind = "conversations" if paced else "closed loop"
        lines.append(
            f"{name}, {clients} clients, {kind}, {len(load.turns)} turns: first audio "
            f"{spread([t.first_audio_s for t in load.turns])}, listener's wait "
            f"{spread([h.wait_s for h in load.heard])}, longest silence within a reply "
            f"{spread([h.worst_gap_s for h in load.heard])} ms (p50 / p90); "
            f"{load.throughput:.2f} audio s/s"
        )
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.load_compare", description=__doc__)
    parser.add_argument("--base", required=True, help="git revision to compare against")
    parser.add_argument("--clients", type=int, default=16, help="clients at once")
    parser.add_argument("--window", type=float, default=12.0, help="seconds per load window")
    parser.add_argument("--rounds", type=int, default=3, help="windows per revision and load")
    args = parser.parse_args(argv)
    print(f"piper servers' load: {args.base} against this working tree", file=sys.stderr)
    with worktree(args.base) as base:
        for line in asyncio.run(compare(base, args.clients, args.window, args.rounds)):
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
