"""Sessions over replicas: spread, rolling restart and replica loss, with real voices.

Three `voxrelay serve --engines piper,espeak` processes on 127.0.0.2, 127.0.0.3 and
127.0.0.4, one port, `--prestop-delay 0.5 --shutdown-grace 2`; one `AsyncClient` over
`ipv4:` all three with `health_check=True` (round_robin, retry and resume as the
library does by default). For each voice, on fresh replicas:

- spread: sessions opened at once, each holding its place; each replica's
  `voxrelay_active_sessions` read while all are open;
- rolling restart: callers keep opening sessions (two turns of two sentences each)
  while each replica in turn gets SIGTERM, exits and is started again; a session
  fails if it raises, a turn is whole if it ended uncancelled with all of its text
  as spoken text and its segments' text covering every word;
- replica loss: sessions of three turns at real-time pace (PACE_REALTIME); once all
  have audio, the replica with the most is killed (SIGKILL). Resume time is from the
  kill (the failure cannot be visible earlier) to the next audio of each resumed
  session; the audio repeated is what the resumed sessions were sent twice.

All processes share this machine's cores with the client: replicas here prove the
behaviour, not capacity.

`python -m bench.replicas [--quick]` runs it alone; the suite runs it as a section.
"""

from __future__ import annotations

import asyncio
import re
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.report import Goal, Section, median, percentile, run_alone
from tests.processes import ServeProcess, active_sessions, replicas_target, running_replicas
from voxrelay import (
    AsyncClient,
    Audio,
    Resumed,
    SessionOptions,
    SessionStarted,
    TurnEnded,
    VoxrelayError,
)
from voxrelay.client import Pace

VOICES = ("piper/en_US-joe-medium", "espeak/en-us")
REPLICAS = 3
ARGS = ["--engines", "piper,espeak", "--prestop-delay", "0.5", "--shutdown-grace", "2"]
METHOD = (
    "Three `voxrelay serve --engines piper,espeak --prestop-delay 0.5 --shutdown-grace 2` "
    "processes on 127.0.0.2-4, one port; one AsyncClient over `ipv4:` all three with "
    "health_check (round_robin, retry and resume by default); fresh replicas per voice. "
    "Spread: sessions opened at once, each replica's voxrelay_active_sessions read while "
    "all are open. Rolling restart: callers keep opening sessions of two turns while each "
    "replica in turn gets SIGTERM, exits and restarts. Replica loss: sessions of three "
    "turns at PACE_REALTIME; once all have audio the busiest replica gets SIGKILL; resume "
    "time from the kill to each resumed session's next audio. A turn is whole when it "
    "ended uncancelled, its spoken text all of its text and its segments covering every "
    "word. Replicas and client share this machine's cores: behaviour, not capacity."
)
SPREAD_GOAL = 1.25
RESUME_GOAL_S = 1.0

SENTENCES = (
    "Thank you for calling, how can I help you today?",
    "Your order left our warehouse this morning.",
    "It should arrive within two working days.",
    "I have noted the new delivery address for you.",
    "Is there anything else I can do for you?",
    "The refund will show on your statement next week.",
    "Let me check the status of that request.",
    "Our records show the payment came through on Monday.",
)


@dataclass(frozen=True)
class Sizes:
    spread: int
    rolling_callers: int
    killed: int


SIZES = {
    # piper's sessions at real-time pace within what three replicas sharing two cores
    # with the client make in real time; espeak's far cheaper.
    (VOICES[0], False): Sizes(60, 6, 12),
    (VOICES[0], True): Sizes(60, 4, 6),
    (VOICES[1], False): Sizes(60, 9, 30),
    (VOICES[1], True): Sizes(60, 4, 9),
}


def turns_for(session: int, count: int) -> list[str]:
    """`count` turns of two sentences, different from session to session."""
    return [
        f"{SENTENCES[(session + 2 * t) % len(SENTENCES)]} "
        f"{SENTENCES[(session + 2 * t + 1) % len(SENTENCES)]} "
        for t in range(count)
    ]


@dataclass
class Tally:
    """What the sessions of one run gave."""

    sessions: int = 0
    failed: list[str] = field(default_factory=list)
    turns: int = 0
    whole_turns: int = 0
    resumed_sessions: int = 0
    resume_s: list[float] = field(default_factory=list)
    """From the kill to each resumed session's next audio."""
    reconnect_s: list[float] = field(default_factory=list)
    """From the kill to each `Resumed` (the new replica's session_started)."""
    repeated_s: float = 0.0
    repeated_segments: int = 0


def covered(text: str, places: set[tuple[int, int]]) -> bool:
    """Every word of `text` lies in one of the segments' places."""
    spoken = [False] * len(text)
    for offset, length in places:
        spoken[offset : offset + length] = [True] * length
    return all(spoken[m.start()] for m in re.finditer(r"\S+", text))


async def converse(
    client: AsyncClient,
    voice: str,
    texts: list[str],
    tally: Tally,
    *,
    pace: Pace = "",
    has_audio: asyncio.Event | None = None,
    killed_at: list[float] | None = None,
) -> None:
    """One session speaking `texts` as turns; its outcome added to `tally`."""
    tally.sessions += 1
    tally.turns += len(texts)
    places: dict[int, set[tuple[int, int]]] = {}
    waiting_since: float | None = None
    try:
        async with client.session(SessionOptions(voice=voice, pace=pace)) as session:
            for text in texts:
                await session.send_text(text)
                await session.turn_done()
            await session.close()
            async for event in session:
                if isinstance(event, Audio):
                    places.setdefault(event.turn, set()).add((event.text_offset, event.text_length))
                    if has_audio is not None:
                        has_audio.set()
                    if waiting_since is not None:
                        tally.resume_s.append(time.perf_counter() - waiting_since)
                        waiting_since = None
                    if event.repeated_samples:
                        tally.repeated_s += event.repeated_samples / event.sample_rate_hz
                elif isinstance(event, Resumed):
                    tally.resumed_sessions += 1
                    tally.repeated_segments += bool(event.repeated_samples)
                    waiting_since = killed_at[0] if killed_at else time.perf_counter()
                    tally.reconnect_s.append(time.perf_counter() - waiting_since)
                elif isinstance(event, TurnEnded):
                    text = texts[event.turn - 1]
                    if (
                        not event.cancelled
                        and event.spoken_text == text
                        and covered(text, places.get(event.turn, set()))
                    ):
                        tally.whole_turns += 1
    except VoxrelayError as error:
        tally.failed.append(str(error))


async def spread(
    client: AsyncClient, voice: str, replicas: list[ServeProcess], count: int
) -> list[int]:
    """Sessions per replica with `count` open at once."""
    sessions = [client.session(SessionOptions(voice=voice)) for _ in range(count)]
    try:
        for session in sessions:
            await session.open()
        for session in sessions:
            assert isinstance(await anext(session.events()), SessionStarted)
        return [await asyncio.to_thread(active_sessions, r) for r in replicas]
    finally:
        for session in sessions:
            await session.__aexit__(None, None, None)


async def rolling_restart(
    client: AsyncClient, voice: str, replicas: list[ServeProcess], callers: int
) -> Tally:
    """Callers open sessions one after another while each replica restarts in turn."""
    tally = Tally()
    restarting = True

    async def caller(n: int) -> None:
        session = n
        while restarting:
            await converse(client, voice, turns_for(session, 2), tally)
            session += callers

    running = [asyncio.create_task(caller(n)) for n in range(callers)]
    for replica in replicas:
        await asyncio.to_thread(replica.stop, signal.SIGTERM)
        await asyncio.to_thread(replica.restart)
    restarting = False
    await asyncio.gather(*running)
    return tally


async def replica_loss(
    client: AsyncClient, voice: str, replicas: list[ServeProcess], count: int
) -> Tally:
    """`count` real-time sessions; the busiest replica killed once all have audio."""
    tally = Tally()
    killed_at: list[float] = []
    audio = [asyncio.Event() for _ in range(count)]
    running = [
        asyncio.create_task(
            converse(
                client,
                voice,
                turns_for(n, 3),
                tally,
                pace="realtime",
                has_audio=audio[n],
                killed_at=killed_at,
            )
        )
        for n in range(count)
    ]
    await asyncio.gather(*(event.wait() for event in audio))
    loads = [await asyncio.to_thread(active_sessions, r) for r in replicas]
    victim = replicas[loads.index(max(loads))]
    killed_at.append(time.perf_counter())
    victim.process.send_signal(signal.SIGKILL)
    await asyncio.gather(*running)
    victim.process.wait()
    print(f"   killed a replica with {max(loads)} of {loads} sessions", file=sys.stderr)
    return tally


@dataclass
class VoiceResult:
    voice: str
    spread: list[int]
    rolling: Tally
    loss: Tally


async def measure(voice: str, sizes: Sizes, logs: Path) -> VoiceResult:
    with running_replicas(REPLICAS, ARGS, logs) as replicas:
        async with AsyncClient(replicas_target(replicas), health_check=True) as client:
            await client.voices()
            counts = await spread(client, voice, replicas, sizes.spread)
            print(f"   {voice}: spread {counts}", file=sys.stderr, flush=True)
            rolling = await rolling_restart(client, voice, replicas, sizes.rolling_callers)
            print(f"   {voice}: rolling restart {rolling}", file=sys.stderr, flush=True)
            loss = await replica_loss(client, voice, replicas, sizes.killed)
            print(f"   {voice}: replica loss {loss}", file=sys.stderr, flush=True)
    return VoiceResult(voice, counts, rolling, loss)


def section(results: Sequence[VoiceResult], spread_sessions: int) -> Section:
    rows: list[Sequence[str]] = []
    for r in results:
        ratio = max(r.spread) / max(min(r.spread), 1)
        resume = r.loss.resume_s
        rows.append(
            [
                r.voice,
                f"{sum(r.spread)} → {'/'.join(map(str, r.spread))} ({ratio:.2f}x)",
                f"{r.rolling.sessions}: {len(r.rolling.failed)} failed, "
                f"{r.rolling.whole_turns}/{r.rolling.turns} turns whole",
                f"{r.loss.resumed_sessions}/{r.loss.sessions} resumed, "
                f"{r.loss.turns - r.loss.whole_turns} lost turns, {len(r.loss.failed)} failed",
                f"{median(resume) * 1000:.0f} / {max(resume) * 1000:.0f} ms "
                f"({max(r.loss.reconnect_s) * 1000:.0f} ms to Resumed)"
                if resume
                else "-",
                f"{r.loss.repeated_s:.2f} s in {r.loss.repeated_segments} segments",
            ]
        )
    all_spread = [max(r.spread) / max(min(r.spread), 1) for r in results]
    failed = sum(len(r.rolling.failed) + len(r.loss.failed) for r in results)
    broken = sum(
        r.rolling.turns - r.rolling.whole_turns + r.loss.turns - r.loss.whole_turns for r in results
    )
    resumes = [s for r in results for s in r.loss.resume_s]
    worst = max(resumes, default=float("inf"))
    goals = [
        Goal(
            f"{spread_sessions} sessions over {REPLICAS} replicas: most-loaded within "
            f"{SPREAD_GOAL}x of least",
            f"{max(all_spread):.2f}x",
            max(all_spread) <= SPREAD_GOAL,
        ),
        Goal(
            "rolling restart and replica loss: zero failed sessions, every turn whole",
            f"{failed} failed, {broken} turns not whole",
            failed == 0 and broken == 0,
        ),
        Goal(
            f"resume time (kill → next audio) under {RESUME_GOAL_S:g} s",
            f"max {worst * 1000:.0f} ms, p90 {percentile(resumes, 90) * 1000:.0f} ms"
            if resumes
            else "no resume",
            worst < RESUME_GOAL_S,
        ),
    ]
    notes = [
        f"{r.voice}: {failure}"
        for r in results
        for failure in (r.rolling.failed + r.loss.failed)[:3]
    ]
    return Section(
        title="Replicas: spread, rolling restart, replica loss",
        method=METHOD,
        header=[
            "voice",
            "spread (sessions → per replica)",
            "rolling restart (sessions)",
            "SIGKILL of the busiest replica",
            "resume median / max (max kill → Resumed)",
            "audio repeated",
        ],
        rows=rows,
        goals=goals,
        notes=notes,
    )


async def run(quick: bool) -> Section:
    results = []
    with tempfile.TemporaryDirectory(prefix="voxrelay-replicas-") as logs:
        for voice in VOICES:
            folder = Path(logs) / voice.replace("/", "-")
            folder.mkdir()
            results.append(await measure(voice, SIZES[voice, quick], folder))
    return section(results, SIZES[VOICES[0], quick].spread)


def main(argv: Sequence[str] | None = None) -> int:
    return run_alone(
        run, argv, prog="python -m bench.replicas", description=__doc__, quick_help="fewer sessions"
    )


if __name__ == "__main__":
    sys.exit(main())
