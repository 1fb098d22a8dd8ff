"""Sessions over replicas: `voxrelay serve` processes on 127.0.0.2, 127.0.0.3, ... (one
port), a client balancing over them, replicas refusing, restarted and killed."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import signal
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import pytest
import soundfile

import voxrelay
from tests.processes import (
    VOXRELAY,
    ServeProcess,
    active_sessions,
    replicas_target,
    running_replicas,
    user_env,
)

pytestmark = pytest.mark.timeout(240)

TONE = ["--engines", "tone", "--log-level", "info", "--max-segment-chars", "60"]
"""At most 60 characters a segment: each sentence below is one (text sent at once would
otherwise make segments of several)."""
SLOW_TONE = [*TONE, "--tone-ms-per-char", "12", "--tone-realtime-factor", "1"]
"""Audio made at real-time pace: a turn of three sentences lasts about 1.5 s."""
OPTIONS = voxrelay.SessionOptions(voice="tone/square", segmentation="sentences")
"""Every sentence below is over 20 characters and under 60: one segment each, however a
turn is cut."""
PACED = dataclasses.replace(OPTIONS, pace="realtime")
"""The same audio, sent at real-time pace: a session lasts as long as its audio."""


def turns_of(session: int) -> list[str]:
    """Two turns of three sentences, different for every session (the tone's amplitude
    names each sentence's text)."""
    return [
        f"Session {session} starts its first turn here. "
        f"The middle sentence of turn one goes on. "
        f"And the last one of turn one ends it {session}. ",
        f"Turn two for session {session} begins right now. "
        f"It carries a second sentence as well. "
        f"Finally the end of session {session} arrives. ",
    ]


@dataclass
class Spoken:
    """What one session's caller got."""

    started: voxrelay.SessionStarted | None = None
    audio: dict[int, list[voxrelay.Audio]] = field(default_factory=dict)
    ended: list[voxrelay.TurnEnded] = field(default_factory=list)
    resumed: list[voxrelay.Resumed] = field(default_factory=list)
    first_audio: asyncio.Event = field(default_factory=asyncio.Event)

    def turn_samples(self, turn: int) -> np.ndarray:
        """The turn's audio as a player keeps it: repeated samples skipped."""
        pieces = [a.samples[a.repeated_samples :] for a in self.audio.get(turn, [])]
        return np.concatenate(pieces) if pieces else np.zeros(0, np.int16)

    def segments(self, turn: int) -> list[tuple[int, int]]:
        """The turn's segments' places in its text, each once."""
        places = [(a.text_offset, a.text_length) for a in self.audio.get(turn, [])]
        return list(dict.fromkeys(places))

    def longest_segment(self) -> int:
        """Samples of the session's longest segment."""
        sizes: Counter[tuple[int, int]] = Counter()
        for chunks in self.audio.values():
            for a in chunks:
                sizes[a.turn, a.segment] += a.num_samples - a.repeated_samples
        return max(sizes.values(), default=0)

    def repeated(self) -> int:
        return sum(a.repeated_samples for chunks in self.audio.values() for a in chunks)


async def speak(
    client: voxrelay.AsyncClient,
    texts: list[str],
    spoken: Spoken,
    options: voxrelay.SessionOptions = OPTIONS,
) -> Spoken:
    """Send `texts` as turns, close, and keep every event until the session ends."""
    async with client.session(options) as session:
        for text in texts:
            await session.send_text(text)
            await session.turn_done()
        await session.close()
        async for event in session:
            if isinstance(event, voxrelay.SessionStarted):
                spoken.started = event
            elif isinstance(event, voxrelay.Audio):
                spoken.audio.setdefault(event.turn, []).append(event)
                spoken.first_audio.set()
            elif isinstance(event, voxrelay.TurnEnded):
                spoken.ended.append(event)
            elif isinstance(event, voxrelay.Resumed):
                spoken.resumed.append(event)
        assert session.state is voxrelay.ConnectionState.ENDED
    return spoken


def stop_all(replicas: list[ServeProcess]) -> None:
    """SIGTERM every replica still running and wait: their logs are complete."""
    for replica in replicas:
        if replica.process.poll() is None:
            replica.stop()


def sessions_served(replica: ServeProcess) -> set[str]:
    """Ids of the sessions a replica finished (its "session summary" log lines), over
    all of its runs; once it has stopped (`stop_all`)."""
    logs = sorted(replica.log.parent.glob(replica.log.name.split(".log")[0] + ".log*"))
    text = "".join(log.read_text() for log in logs)
    return set(re.findall(r"session summary session=([0-9a-f]+)", text))


async def reference(
    target: str, sessions: int, options: voxrelay.SessionOptions = OPTIONS
) -> list[Spoken]:
    """The same sessions without any failure."""
    async with voxrelay.AsyncClient(target) as client:
        return list(
            await asyncio.gather(
                *(speak(client, turns_of(n), Spoken(), options) for n in range(sessions))
            )
        )


def assert_whole(got: Spoken, expected: Spoken) -> None:
    """Every turn ended, with the failure-free run's segments and audio."""
    assert [(e.turn, e.cancelled) for e in got.ended] == [(1, False), (2, False)]
    for turn in (1, 2):
        assert got.segments(turn) == expected.segments(turn)
        assert np.array_equal(got.turn_samples(turn), expected.turn_samples(turn)), turn


async def test_sessions_spread_over_replicas_round_robin(tmp_path: Path) -> None:
    with running_replicas(3, TONE, tmp_path) as replicas:
        async with voxrelay.AsyncClient(replicas_target(replicas), health_check=True) as client:
            # Until every replica's connection is up (and its health SERVING), calls go
            # to those that are: hold sessions until each replica has one.
            held: list[voxrelay.AsyncSession] = []
            while not all(await asyncio.to_thread(lambda: [active_sessions(r) for r in replicas])):
                assert len(held) < 30, "a replica never got a session"
                held.append(client.session(OPTIONS))
                await held[-1].open()
                assert isinstance(await anext(held[-1].events()), voxrelay.SessionStarted)
            for session in held:
                await session.__aexit__(None, None, None)
            spoken = [await speak(client, turns_of(n), Spoken()) for n in range(9)]
        stop_all(replicas)
        ids = {s.started.session_id for s in spoken if s.started}
        served = [len(sessions_served(replica) & ids) for replica in replicas]
    # Round robin over three READY replicas: each gets every third session (pick_first
    # would give one replica all nine).
    assert served == [3, 3, 3], served


async def test_refused_sessions_go_to_another_replica(tmp_path: Path) -> None:
    """A replica at --max-sessions refuses (RESOURCE_EXHAUSTED before session_started):
    the client opens the session on the other one, with the text already sent; without
    retries the caller gets the refusal."""
    port_args = [*SLOW_TONE, "--max-sessions", "1"]
    with running_replicas(2, port_args, tmp_path) as replicas:
        target = replicas_target(replicas)
        async with voxrelay.AsyncClient(target) as client:
            await client.voices()
            holding = [client.session(OPTIONS) for _ in range(2)]
            for session in holding:
                await session.open()
                await session.send_text("Holding this replica for a while now. ")
                first = await anext(session.events())  # each holds a place (or is retried)
                assert isinstance(first, voxrelay.SessionStarted)
            # Both replicas are full: every retry is refused, then the caller is told.
            async with voxrelay.AsyncClient(
                target, retry=voxrelay.RetryPolicy(max_attempts=3)
            ) as other:
                with pytest.raises(voxrelay.VoxrelayError) as refused:
                    await speak(other, ["Refused everywhere at the moment. "], Spoken())
                with pytest.raises(voxrelay.VoxrelayError) as refused_text:
                    await other.synthesize("Refused everywhere too.", OPTIONS)
                with pytest.raises(voxrelay.VoxrelayError) as refused_events:
                    async for _ in other.synthesize_events("Refused as well.", OPTIONS):
                        pass
                assert refused_events.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED
            assert refused.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "gave up after 3 calls" in refused.value.message
            assert refused_text.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED
            # One replica frees its place: a new session lands there whichever it tries first.
            await holding[0].close()
            async for _ in holding[0]:
                pass
            await holding[0].__aexit__(None, None, None)
            for _ in range(2):
                got = await speak(client, ["Retried until a place was free. "], Spoken())
                assert [e.turn for e in got.ended] == [1] and got.resumed == []
                synthesized = await client.synthesize("Synthesize is retried too.", OPTIONS)
                assert synthesized.duration_s > 0
                events = [e async for e in client.synthesize_events("And its events.", OPTIONS)]
                assert isinstance(events[-1], voxrelay.SessionEnded)
            await holding[1].__aexit__(None, None, None)


async def test_the_text_budget_is_not_retried(tmp_path: Path) -> None:
    """RESOURCE_EXHAUSTED after session_started is the text budget: another replica
    would refuse it the same way, so the caller gets it at once."""
    with running_replicas(2, [*TONE, "--max-buffered-text-chars", "40"], tmp_path) as replicas:
        async with voxrelay.AsyncClient(replicas_target(replicas)) as client:
            with pytest.raises(voxrelay.VoxrelayError) as over:
                await speak(client, ["x" * 80], Spoken())
        stop_all(replicas)
        ids = set().union(*(sessions_served(replica) for replica in replicas))
    assert over.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "limit" in over.value.message
    assert len(ids) == 1  # one call, not one per replica


async def test_a_killed_replica_s_sessions_resume_whole(tmp_path: Path) -> None:
    """SIGKILL of a replica mid-turn: each of its sessions resumes on another one; every
    turn ends, with the same segments and audio as without the failure once the
    repeated samples are skipped, and at most one segment repeated per resume."""
    sessions = 6
    with running_replicas(3, SLOW_TONE, tmp_path) as replicas:
        target = replicas_target(replicas)
        expected = await reference(target, sessions)
        async with voxrelay.AsyncClient(target, health_check=True) as client:
            await client.voices()
            spoken = [Spoken() for _ in range(sessions)]
            running = [
                asyncio.create_task(speak(client, turns_of(n), spoken[n])) for n in range(sessions)
            ]
            await asyncio.gather(*(s.first_audio.wait() for s in spoken))
            victim = max(replicas, key=active_sessions)
            victim.stop(signal.SIGKILL)
            await asyncio.gather(*running)
        stop_all(replicas)
        survivors = set().union(*(sessions_served(r) for r in replicas if r is not victim))
    on_victim = {
        n for n, s in enumerate(spoken) if s.started and s.started.session_id not in survivors
    }
    assert on_victim, "no session was on the killed replica"
    assert {n for n, s in enumerate(spoken) if s.resumed} == on_victim
    for n in range(sessions):
        assert_whole(spoken[n], expected[n])
        for resumed in spoken[n].resumed:
            assert resumed.reason.startswith("UNAVAILABLE")
            # Said as a loss, not as the advice for a server that refuses plaintext.
            assert "lost during the session" in resumed.reason
            assert "TLS" not in resumed.reason
            assert resumed.repeated_samples <= expected[n].longest_segment()
        assert spoken[n].repeated() == sum(r.repeated_samples for r in spoken[n].resumed)


async def test_rolling_restart_loses_no_session(tmp_path: Path) -> None:
    """Each replica in turn stopped with SIGTERM and started again while sessions keep
    opening: no session fails, every turn is whole. The prestop delay keeps it serving
    (NOT_SERVING on health, which the client heeds) for 0.5 s; the 1 s grace then cuts
    the sessions still on it, which resume."""
    args = [*SLOW_TONE, "--prestop-delay", "0.5", "--shutdown-grace", "1"]
    with running_replicas(3, args, tmp_path) as replicas:
        target = replicas_target(replicas)
        expected = await reference(target, 3)
        async with voxrelay.AsyncClient(target, health_check=True) as client:
            await client.voices()
            spoken: list[Spoken] = []
            running: list[asyncio.Task[Spoken]] = []

            def open_sessions(count: int) -> None:
                for _ in range(count):
                    spoken.append(Spoken())
                    n = len(spoken) - 1
                    running.append(
                        asyncio.create_task(speak(client, turns_of(n % 3), spoken[n], PACED))
                    )

            for replica in replicas:
                open_sessions(3)
                await asyncio.gather(*(s.first_audio.wait() for s in spoken[-3:]))
                # Paced sessions last about 3 s: one on this replica now outlasts its 1.5 s.
                while not await asyncio.to_thread(active_sessions, replica):
                    open_sessions(1)
                    await spoken[-1].first_audio.wait()
                await asyncio.to_thread(replica.stop, signal.SIGTERM)
                open_sessions(2)
                await asyncio.to_thread(replica.restart)
            await asyncio.gather(*running)
    for n, got in enumerate(spoken):
        assert_whole(got, expected[n % 3])
    assert any(s.resumed for s in spoken)  # the grace cut sessions, which resumed


def test_the_blocking_session_resumes(tmp_path: Path) -> None:
    text = turns_of(7)[0]
    events: list[voxrelay.Event] = []
    with (
        running_replicas(2, SLOW_TONE, tmp_path) as replicas,
        voxrelay.Client(replicas_target(replicas)) as client,
        client.session(OPTIONS) as session,
    ):
        session.send_text(text)
        session.turn_done()
        session.close()
        for event in session:
            events.append(event)
            if isinstance(event, voxrelay.Audio) and len(events) == 3:  # its first audio
                max(replicas, key=active_sessions).stop(signal.SIGKILL)
        assert session.resumes == 1
        assert session.state is voxrelay.ConnectionState.ENDED
    resumed = [e for e in events if isinstance(e, voxrelay.Resumed)]
    ended = [e for e in events if isinstance(e, voxrelay.TurnEnded)]
    assert len(resumed) == 1 and resumed[0].turn == 1
    assert [(e.turn, e.spoken_text) for e in ended] == [(1, text)]
    assert [type(e).__name__ for e in events].count("TurnStarted") == 1


def test_say_resumes_and_writes_the_whole_audio(tmp_path: Path) -> None:
    """`voxrelay say` over replicas, its replica killed after the first audio: it
    resumes, and its file holds exactly the audio of a run without failure."""
    text = "".join(turns_of(3))
    with running_replicas(2, SLOW_TONE, tmp_path) as replicas:
        command = [
            str(VOXRELAY),
            "say",
            "--server",
            replicas_target(replicas),
            "--voice",
            "tone/square",
            "--segmentation",
            "sentences",
            text,
            "-o",
        ]
        env = user_env()
        subprocess.run([*command, str(tmp_path / "whole.wav")], env=env, check=True)
        saying = subprocess.Popen(
            [*command, str(tmp_path / "cut.wav")],
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert saying.stderr is not None
        lines = []
        for line in saying.stderr:
            lines.append(line)
            if "first audio after" in line:
                max(replicas, key=active_sessions).stop(signal.SIGKILL)
                break
        lines += saying.stderr.readlines()
        assert saying.wait(60) == 0, "".join(lines)
    resumed = [line for line in lines if "resumed on another server" in line]
    assert resumed, lines
    # Why, in words that fit a killed replica (gRPC's "Socket closed" once read as TLS).
    assert "lost during the session" in resumed[0] and "TLS" not in resumed[0], resumed
    # How much came again, in seconds, and that the file has it once.
    assert re.search(r"the \d+\.\d\d s of it received before the cut come again", resumed[0])
    assert "written to the file once" in resumed[0]
    whole, _ = soundfile.read(tmp_path / "whole.wav", dtype="int16")
    cut, _ = soundfile.read(tmp_path / "cut.wav", dtype="int16")
    assert np.array_equal(whole, cut)


async def test_a_cancel_while_the_replica_is_lost_ends_the_turn_where_heard(
    tmp_path: Path,
) -> None:
    """The replica killed in segment 2, then a barge-in 100 samples into segment 2
    before the client has resumed: the cancelled turn is not sent again, the client
    ends it, and what was heard is segment 1 (segment 2 was not heard whole)."""
    text = turns_of(5)[0]
    events: list[voxrelay.Event] = []
    with running_replicas(2, SLOW_TONE, tmp_path) as replicas:
        async with (
            voxrelay.AsyncClient(replicas_target(replicas)) as client,
            client.session(PACED) as session,
        ):
            await session.send_text(text)
            await session.turn_done()
            cancelled = False
            async for event in session:
                events.append(event)
                if isinstance(event, voxrelay.Audio) and event.segment == 2 and not cancelled:
                    await asyncio.to_thread(max(replicas, key=active_sessions).stop, signal.SIGKILL)
                    await session.cancel(played_samples=event.offset_samples + 100, turn=1)
                    await session.close()
                    cancelled = True
    first = next(e for e in events if isinstance(e, voxrelay.Audio) and e.segment == 1)
    after = [e for e in events if not isinstance(e, voxrelay.Audio)]
    assert after[2:] == [
        voxrelay.TurnEnded(1, True, text[: first.text_end], first.text_end),
        after[3],
        voxrelay.SessionEnded(),
    ]
    assert isinstance(after[3], voxrelay.Resumed) and after[3].turn == 0


async def test_text_sent_while_the_replica_is_lost_is_spoken(tmp_path: Path) -> None:
    """Turn 2 sent right after the replica died (the write meets the lost call, or the
    new one): it is kept and spoken, and turn 1 is whole."""
    texts = turns_of(4)
    got = Spoken()
    with running_replicas(2, SLOW_TONE, tmp_path) as replicas:
        expected = (await reference(replicas_target(replicas), 5))[4]
        async with (
            voxrelay.AsyncClient(replicas_target(replicas)) as client,
            client.session(OPTIONS) as session,
        ):
            await session.send_text(texts[0])
            await session.turn_done()
            sent = False
            async for event in session:
                if isinstance(event, voxrelay.Audio):
                    got.audio.setdefault(event.turn, []).append(event)
                    if not sent:
                        await asyncio.to_thread(
                            max(replicas, key=active_sessions).stop, signal.SIGKILL
                        )
                        await session.send_text(texts[1])
                        await session.turn_done()
                        await session.close()
                        sent = True
                elif isinstance(event, voxrelay.TurnEnded):
                    got.ended.append(event)
                elif isinstance(event, voxrelay.Resumed):
                    got.resumed.append(event)
    assert len(got.resumed) == 1
    assert_whole(got, expected)


async def test_an_espeak_session_resumes_with_the_uncut_audio(tmp_path: Path) -> None:
    """A real voice: espeak-ng replicas, sessions at real-time pace, the busiest
    replica killed after the first audio; each turn has the segments of a run without
    failure and, repeated samples skipped, its length (espeak-ng's runs of one text
    differ by some tens of milliseconds of silence, with or without a failure)."""
    espeak = voxrelay.SessionOptions(voice="espeak/en-us", segmentation="sentences")
    args = ["--engines", "espeak", "--max-segment-chars", "60"]
    with running_replicas(2, args, tmp_path) as replicas:
        target = replicas_target(replicas)
        paced = dataclasses.replace(espeak, pace="realtime")
        expected = await reference(target, 2, paced)
        async with voxrelay.AsyncClient(target) as client:
            await client.voices()
            spoken = [Spoken() for _ in range(2)]
            running = [
                asyncio.create_task(speak(client, turns_of(n), spoken[n], paced)) for n in range(2)
            ]
            await asyncio.gather(*(s.first_audio.wait() for s in spoken))
            await asyncio.to_thread(max(replicas, key=active_sessions).stop, signal.SIGKILL)
            await asyncio.gather(*running)
    assert sum(len(s.resumed) for s in spoken) >= 1
    for got, want in zip(spoken, expected, strict=True):
        assert [(e.turn, e.cancelled, e.spoken_text) for e in got.ended] == [
            (n, False, text) for n, text in enumerate(turns_of(spoken.index(got)), 1)
        ]
        for turn in (1, 2):
            assert got.segments(turn) == want.segments(turn)
            difference = len(got.turn_samples(turn)) - len(want.turn_samples(turn))
            # 50 ms a segment: what espeak-ng's runs of one text differ by here.
            assert abs(difference) <= 0.05 * 22050 * len(want.segments(turn)), difference
        for resumed in got.resumed:
            assert 0 < resumed.repeated_samples <= want.longest_segment()
