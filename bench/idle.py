"""Idle cost: CPU and resident memory of a voxrelay server process holding idle sessions.

The server is `voxrelay serve` (tone engine, `--max-sessions 5000`, the default
300 s idle timeout, so no session times out during the run) in its own
process. A separate client process (`python -m bench.idle client`) opens
sessions on command and holds them: each is a `Stream` call that sent its
config and one text chunk without a sentence end, got its TURN_STARTED, and
then sends nothing and half-closes nothing. psutil reads the server's CPU time
and RSS over a window at 0, 100 and 1000 open sessions; the client's own CPU
is not counted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import grpc
import psutil  # type: ignore[import-untyped]

from bench.report import ROOT, Goal, Section, median, spread
from bench.servers import ServerProcess, start_server_process, stop_server_process
from voxrelay.v1 import speech_pb2, speech_pb2_grpc

SERVER_ARGS = ("--engines", "tone", "--default-voice", "tone/square", "--max-sessions", "5000")
SESSION_COUNTS = (0, 100, 1000)
STREAMS_PER_CONNECTION = 100
"""Sessions share connections, 100 to a connection (so 1000 sessions use 10)."""
IDLE_TEXT = "Hello there, this is the start of a sentence that has not ended yet"
CPU_GOAL_PERCENT = 1.0
MEMORY_GOAL_KIB = 100.0

_Call = grpc.aio.StreamStreamCall[speech_pb2.StreamRequest, speech_pb2.StreamResponse]


# The client process.


class IdleSessions:
    """Idle sessions held open against one server, on connections of `per_connection`."""

    def __init__(self, target: str, per_connection: int) -> None:
        self._target = target
        self._per_connection = per_connection
        self._channels: list[grpc.aio.Channel] = []
        self._calls: list[_Call] = []

    def _stub(self, index: int) -> speech_pb2_grpc.SpeechAsyncStub:
        """The stub for the `index`-th session: its connection, opened when first needed."""
        while len(self._channels) <= index // self._per_connection:
            # A local subchannel pool: every channel gets its own TCP connection.
            options = [("grpc.use_local_subchannel_pool", 1)]
            self._channels.append(grpc.aio.insecure_channel(self._target, options=options))
        return speech_pb2_grpc.SpeechStub(self._channels[index // self._per_connection])

    async def warm_up(self) -> None:
        """One complete short session, so the server's lazy imports and caches exist."""
        call = self._stub(0).Stream(
            iter(
                [
                    speech_pb2.StreamRequest(config=speech_pb2.SessionConfig()),
                    speech_pb2.StreamRequest(text="Warm up."),
                    speech_pb2.StreamRequest(turn_done=speech_pb2.TurnDone()),
                ]
            )
        )
        async for _ in call:
            pass

    async def _open_one(self, index: int) -> _Call:
        call: _Call = self._stub(index).Stream()
        await call.write(speech_pb2.StreamRequest(config=speech_pb2.SessionConfig()))
        await call.write(speech_pb2.StreamRequest(text=IDLE_TEXT))
        response = await call.read()
        if isinstance(response, speech_pb2.StreamResponse) and response.HasField("session_started"):
            response = await call.read()  # the call's first message; TURN_STARTED next
        if not (
            isinstance(response, speech_pb2.StreamResponse)
            and response.lifecycle.event == speech_pb2.LIFECYCLE_EVENT_TURN_STARTED
        ):
            raise RuntimeError(f"an idle session got {response!r} instead of TURN_STARTED")
        return call

    async def open_until(self, total: int, batch: int = 100) -> None:
        """Open sessions until `total` are open, `batch` at a time."""
        while len(self._calls) < total:
            first = len(self._calls)
            count = min(batch, total - first)
            calls = await asyncio.gather(*(self._open_one(first + i) for i in range(count)))
            self._calls.extend(calls)

    async def close(self) -> None:
        """Cancel every call and close every connection."""
        for call in self._calls:
            call.cancel()
        self._calls.clear()
        for channel in self._channels:
            await channel.close()
        self._channels.clear()


async def client_main(target: str, per_connection: int) -> None:
    """Answer `{"open": n}` commands on stdin: hold n idle sessions, then reply."""
    sessions = IdleSessions(target, per_connection)
    try:
        await sessions.warm_up()
        print(json.dumps({"ready": True}), flush=True)
        while line := await asyncio.to_thread(sys.stdin.readline):
            total = int(json.loads(line)["open"])
            await sessions.open_until(total)
            print(json.dumps({"open": total}), flush=True)
    finally:
        await sessions.close()


class ClientProcess:
    """The parent's handle on `python -m bench.idle client`."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self._process = process

    @classmethod
    async def start(cls, target: str, per_connection: int) -> ClientProcess:
        """Start the client; it connects and runs one warm-up session before returning."""
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.idle",
            "client",
            target,
            "--per-connection",
            str(per_connection),
            cwd=ROOT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        client = cls(process)
        await client._reply()
        return client

    async def _reply(self) -> dict[str, object]:
        assert self._process.stdout is not None
        line = await asyncio.wait_for(self._process.stdout.readline(), 60)
        if not line:
            raise RuntimeError("the idle-session client process died")
        reply: dict[str, object] = json.loads(line)
        return reply

    async def open_until(self, total: int) -> None:
        """Have `total` idle sessions open (the client opens the difference)."""
        assert self._process.stdin is not None
        self._process.stdin.write((json.dumps({"open": total}) + "\n").encode())
        await self._process.stdin.drain()
        await self._reply()

    async def close(self) -> None:
        """End the client (its calls are cancelled and its connections closed)."""
        if self._process.stdin is not None:
            self._process.stdin.close()
        try:
            await asyncio.wait_for(self._process.wait(), 20)
        except TimeoutError:
            self._process.kill()
            await self._process.wait()


# Measuring the server.


@dataclass
class Sample:
    """The server over a window: CPU (% of one core), RSS (bytes) at the end, wake-ups/s."""

    cpu_percent: float
    rss: int
    wakeups_per_s: float
    """Context switches per second of all its threads (gRPC core's included)."""
    loop_wakeups_per_s: float
    """Context switches per second of its main thread, the one running the event loop."""


def _context_switches(process: psutil.Process) -> tuple[int, int]:
    """Context switches so far (each a wake-up or preemption): all threads, main thread."""
    total = main = 0
    for thread in process.threads():
        try:
            switches = psutil.Process(thread.id).num_ctx_switches()
        except psutil.NoSuchProcess:  # the thread ended meanwhile
            continue
        count = switches.voluntary + switches.involuntary
        total += count
        if thread.id == process.pid:
            main = count
    return total, main


async def measure_server(pid: int, window_s: float) -> Sample:
    """CPU time delta over wall time across `window_s`, the RSS after it, and wake-ups/s.

    The CPU figure has psutil's tick resolution (10 ms); the context switches of
    every thread count each wake-up exactly, so they show any polling directly.
    """
    process = psutil.Process(pid)
    switches, before, started = _context_switches(process), process.cpu_times(), time.perf_counter()
    await asyncio.sleep(window_s)
    after, ended = process.cpu_times(), time.perf_counter()
    total, main = _context_switches(process)
    used = (after.user + after.system) - (before.user + before.system)
    wall = ended - started
    return Sample(
        100 * used / wall,
        int(process.memory_info().rss),
        (total - switches[0]) / wall,
        (main - switches[1]) / wall,
    )


@dataclass
class _Level:
    cpu: list[float] = field(default_factory=list)
    wakeups: list[float] = field(default_factory=list)
    loop_wakeups: list[float] = field(default_factory=list)
    rss: list[int] = field(default_factory=list)
    per_session: list[float] = field(default_factory=list)


async def measure_once(
    counts: Sequence[int], per_connection: int, settle_s: float, window_s: float
) -> dict[int, Sample]:
    """A fresh server; at each session count (ascending), settle, then sample a window."""
    server: ServerProcess = start_server_process(SERVER_ARGS)
    try:
        client = await ClientProcess.start(server.target, per_connection)
        try:
            samples = {}
            for count in counts:
                await client.open_until(count)
                await asyncio.sleep(settle_s)
                samples[count] = await measure_server(server.pid, window_s)
            return samples
        finally:
            await client.close()
    finally:
        stop_server_process(server)


def _kib(value: float) -> str:
    return f"{value / 1024:,.1f} KiB"


def _mib(value: float) -> str:
    return f"{value / 1024 / 1024:,.1f} MiB"


async def run(quick: bool) -> Section:
    """Measure idle cost at 0, 100 and 1000 sessions on fresh servers, repeatedly."""
    repeats = 1 if quick else 3
    settle_s, window_s = (0.5, 2.5) if quick else (0.5, 4.0)
    levels = {count: _Level() for count in SESSION_COUNTS}
    for _ in range(repeats):
        samples = await measure_once(SESSION_COUNTS, STREAMS_PER_CONNECTION, settle_s, window_s)
        for count, sample in samples.items():
            level = levels[count]
            level.cpu.append(sample.cpu_percent)
            level.wakeups.append(sample.wakeups_per_s)
            level.loop_wakeups.append(sample.loop_wakeups_per_s)
            level.rss.append(sample.rss)
            if count:
                level.per_session.append((sample.rss - samples[0].rss) / count)
    solo: dict[int, Sample] = {}
    if not quick:
        # The same 1000 sessions, each on its own connection (one client per session).
        solo = await measure_once((0, 1000), 1, settle_s, window_s)

    rows: list[Sequence[str]] = []
    for count, level in levels.items():
        rows.append(
            [
                f"{count}",
                f"{median(level.cpu):.2f} % ±{spread(level.cpu):.2f}",
                f"{median(level.wakeups):.1f} / {median(level.loop_wakeups):.1f}",
                f"{_mib(median(level.rss))} ±{_mib(spread(level.rss))}",
                f"{_kib(median(level.per_session))} ±{_kib(spread(level.per_session))}"
                if count
                else "-",
            ]
        )
    if solo:
        rows.append(
            [
                "1000, one connection each",
                f"{solo[1000].cpu_percent:.2f} %",
                f"{solo[1000].wakeups_per_s:.1f} / {solo[1000].loop_wakeups_per_s:.1f}",
                _mib(solo[1000].rss),
                _kib((solo[1000].rss - solo[0].rss) / 1000),
            ]
        )
    top = levels[max(SESSION_COUNTS)]
    cpu = median(top.cpu)
    per_session = median(top.per_session)
    goals = [
        Goal(
            f"< {CPU_GOAL_PERCENT:g} % of one core with {max(SESSION_COUNTS)} idle sessions",
            f"{cpu:.2f} %",
            cpu < CPU_GOAL_PERCENT,
        ),
        Goal(
            f"< {MEMORY_GOAL_KIB:g} KiB of memory per idle session",
            f"{_kib(per_session)} (at {max(SESSION_COUNTS)} sessions)",
            per_session < MEMORY_GOAL_KIB * 1024,
        ),
    ]
    notes = [
        "Memory per session is (RSS at n - RSS at 0) / n on the same server; RSS at 0 is "
        "taken after one complete warm-up session, so one-time imports and caches are not "
        "charged to idle sessions.",
        f"CPU resolution: psutil reads clock ticks (10 ms), so ±{1 / window_s:.1f} % over a "
        f"{window_s:g} s window. Wake-ups/s (context switches, from /proc) are exact: those "
        "of the event-loop thread show whether anything in voxrelay polls; the rest are "
        "gRPC core's own timer and event-engine threads, about 10/s whatever the number "
        "of sessions.",
    ]
    if solo:
        extra = (solo[1000].rss - solo[0].rss) / 1000 - per_session
        notes.append(
            f"With one connection per session, each session costs {_kib(extra)} more: the "
            "connection's own buffers in gRPC's core."
        )
    return Section(
        title="Idle sessions",
        method=(
            "CPU (% of one core: psutil `cpu_times` delta / wall time) and resident memory of "
            "a `voxrelay serve` process (tone engine, `--max-sessions 5000`, default 300 s "
            "idle timeout) holding 0, then 100, then 1000 idle sessions, each a `Stream` call "
            "that sent config and one text chunk with no sentence end, received TURN_STARTED "
            f"and then sends nothing. Sessions are opened by a separate client process, "
            f"{STREAMS_PER_CONNECTION} to a connection, so its CPU is not counted. Each "
            f"level: {settle_s:g} s to settle, then a {window_s:g} s window; {repeats} "
            f"fresh server{'s' if repeats > 1 else ''}, medians ± half the 10-90th "
            "percentile range."
        ),
        header=[
            "idle sessions",
            "server CPU",
            "wake-ups/s (all threads / event loop)",
            "server RSS",
            "memory per session",
        ],
        rows=rows,
        goals=goals,
        notes=notes,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """`client TARGET`: the idle-session client process the section starts."""
    parser = argparse.ArgumentParser(prog="python -m bench.idle")
    commands = parser.add_subparsers(dest="command", required=True)
    client = commands.add_parser("client", help="hold idle sessions, opened on command")
    client.add_argument("target")
    client.add_argument("--per-connection", type=int, default=STREAMS_PER_CONNECTION)
    args = parser.parse_args(argv)
    asyncio.run(client_main(args.target, args.per_connection))
    return 0


if __name__ == "__main__":
    sys.exit(main())
