"""Before/after: real-time playback slack of two revisions of voxrelay, side by side.

    python -m bench.realtime_compare --base REV [--voice NAME] [--sessions N] [--repeats 8]

Starts `voxrelay serve` for one real voice from a `git worktree` of REV and from
this working tree, and runs the real-voice section's real-time trial against
each in turn, alternating which goes first: N listeners start together, each
streams its sentences 50 ms apart and plays its audio back at real-time pace
from its first audio plus the jitter buffer. Unlike the section's search, every
trial runs to the end. Each listener's slack is how early its latest-arriving
audio message came before it had to play (below 0: an underrun). Prints each
trial, then per revision the medians over trials of the worst and the median
listener's slack, of the gap between them (how unevenly lateness is shared; the
machine's speed moves both, less so their gap), of the listeners' first audio
(p50 and p95 within a trial) and of the delivered throughput, and how many
trials had an underrun. The scheduler's before/after in the
optimisation log was measured this way.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.compare import start_revision, worktree
from bench.real_voice import FULL, PIPER, Clients, Listener, listen, texts_for
from bench.report import median, percentile
from bench.servers import ServerProcess, stop_server_process


@dataclass(frozen=True)
class Outcome:
    """One trial run to the end."""

    worst_slack_s: float
    median_slack_s: float
    throughput: float
    """Audio s delivered per wall s."""
    first_audio_p50_s: float
    first_audio_p95_s: float
    """Over the listeners: from a listener's start to its first audio."""


async def trial(server: ServerProcess, voice: str, sessions: int) -> Outcome:
    """`sessions` real-time listeners at once, each to the end of its text."""
    clients = Clients(server.target)
    listeners = [Listener() for _ in range(sessions)]
    started = time.perf_counter()
    try:
        await asyncio.gather(
            *(
                listen(clients, voice, sentences, listener)
                for sentences, listener in zip(texts_for(FULL, sessions), listeners, strict=True)
            )
        )
    finally:
        await clients.close()
    wall = time.perf_counter() - started
    errors = [listener.error for listener in listeners if listener.error]
    if errors:
        raise RuntimeError(f"{len(errors)} sessions failed, the first: {errors[0]}")
    slack = [listener.worst_slack_s for listener in listeners]
    first = [lis.first_audio_s for lis in listeners if lis.first_audio_s is not None]
    return Outcome(
        min(slack),
        median(slack),
        sum(lis.audio_s for lis in listeners) / wall,
        percentile(first, 50),
        percentile(first, 95),
    )


async def compare(base: Path, voice: str, sessions: int, repeats: int) -> list[str]:
    """Trials against the base and this tree, alternating; return the summary lines."""
    engine = voice.partition("/")[0]
    arguments = ["--engines", engine, "--default-voice", voice, "--max-sessions", "100000"]
    names = ("base", "this tree")
    outcomes: dict[str, list[Outcome]] = {name: [] for name in names}
    with contextlib.ExitStack() as running:
        servers: dict[str, ServerProcess] = {}
        for name in names:
            servers[name] = start_revision(base if name == "base" else None, arguments)
            running.callback(stop_server_process, servers[name])
        for repeat in range(repeats):
            for name in names if repeat % 2 == 0 else tuple(reversed(names)):
                outcome = await trial(servers[name], voice, sessions)
                outcomes[name].append(outcome)
                print(
                    f"   {name}: worst slack {outcome.worst_slack_s * 1000:.0f} ms, median "
                    f"{outcome.median_slack_s * 1000:.0f} ms, {outcome.throughput:.1f} audio s/s",
                    file=sys.stderr,
                    flush=True,
                )
    lines = []
    for name in names:
        runs = outcomes[name]
        lines.append(
            f"{name}: {voice}, {sessions} sessions, {len(runs)} trials: worst listener's slack "
            f"median {median([o.worst_slack_s for o in runs]) * 1000:.0f} ms, median "
            f"listener's {median([o.median_slack_s for o in runs]) * 1000:.0f} ms, the gap "
            f"between them {median([o.median_slack_s - o.worst_slack_s for o in runs]) * 1000:.0f}"
            " ms, first audio p50 "
            f"{median([o.first_audio_p50_s for o in runs]) * 1000:.0f} ms, p95 "
            f"{median([o.first_audio_p95_s for o in runs]) * 1000:.0f} ms, "
            f"throughput {median([o.throughput for o in runs]):.1f} audio s/s, trials with an "
            f"underrun {sum(o.worst_slack_s < 0 for o in runs)}"
        )
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.realtime_compare", description=__doc__)
    parser.add_argument("--base", required=True, help="git revision to compare against")
    parser.add_argument("--voice", default=PIPER, help="a piper or espeak voice")
    parser.add_argument("--sessions", type=int, default=24, help="listeners per trial")
    parser.add_argument("--repeats", type=int, default=8, help="trials per revision")
    args = parser.parse_args(argv)
    print(f"real-time slack: {args.base} against this working tree", file=sys.stderr)
    with worktree(args.base) as base:
        for line in asyncio.run(compare(base, args.voice, args.sessions, args.repeats)):
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
