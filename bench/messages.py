"""Message throughput: voxrelay against a bare grpcio bidirectional stream.

Both servers run as their own processes, started here: `voxrelay serve` with
the instant tone engine, and `python -m bench.messages bare-server`, a minimal
`Speech` servicer that answers each text request with the same number of
`StreamResponse(audio=AudioChunk(...))` messages of the same size that
voxrelay would send for it (plus the same three lifecycle messages). A
separate client process (`python -m bench.messages client`) drives 1, 10 and
100 concurrent sessions against each in turn and counts the audio messages it
receives over a timed window after a warm-up, with the server's CPU time over
the same window. The parent process only waits while a window runs, so on a
two-core machine the server and the client can each have a core.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import psutil  # type: ignore[import-untyped]

from bench.report import PLOTS, ROOT, Goal, Section, at_least, median, save_figure, spread
from bench.servers import (
    BareSpeechServicer,
    ServerProcess,
    free_port,
    lifecycle_response,
    start_server_process,
    stop_server_process,
)
from voxrelay.v1 import speech_pb2, speech_pb2_grpc

SAMPLE_RATE_HZ = 16000
"""The tone voice's native rate: audio goes out unresampled."""
CHUNK_MS = 20
"""`SessionConfig.chunk_ms`: 20 ms of 16 kHz int16, 640 bytes per audio message."""
MESSAGE_BYTES = SAMPLE_RATE_HZ * CHUNK_MS // 1000 * 2
TONE_MS_PER_CHAR = 10.0
"""voxrelay's `--tone-ms-per-char` default: 10 ms of audio per character."""
TURN_CHARS = (100, 500)
"""Each call speaks one turn of this many characters, drawn uniformly per call: 1 to
5 s of audio, 50 to 250 messages. Random lengths keep concurrent sessions from
moving in lockstep (all synthesizing at once, then all delivering)."""
SESSION_COUNTS = (1, 10, 100)
SERVERS = ("voxrelay", "bare grpcio")
GOAL_RATIO = 0.8
VOXRELAY_ARGS = ("--engines", "tone", "--default-voice", "tone/square", "--max-sessions", "5000")


def _requests(chars: int) -> list[speech_pb2.StreamRequest]:
    """What a call sends, to both servers: config, one turn of text, half-close.

    The text has no sentence end, so voxrelay speaks it as one segment.
    """
    config = speech_pb2.SessionConfig(voice="tone/square", chunk_ms=CHUNK_MS)
    return [
        speech_pb2.StreamRequest(config=config),
        speech_pb2.StreamRequest(text="a" * chars),
        speech_pb2.StreamRequest(turn_done=speech_pb2.TurnDone()),
    ]


# The bare server.


class BareSpeech(BareSpeechServicer):
    """The least a gRPC server can do to send the same messages as voxrelay.

    For each text request it yields TURN_STARTED, as many 640-byte audio
    messages as voxrelay makes of that text (every field voxrelay fills, set),
    and TURN_ENDED; at half-close SESSION_ENDED. No sentence splitting, no
    synthesis, no ordering: the wire cost alone.
    """

    async def Stream(
        self,
        request_iterator: AsyncIterable[speech_pb2.StreamRequest],
        context: grpc.aio.ServicerContext[speech_pb2.StreamRequest, speech_pb2.StreamResponse],
    ) -> AsyncIterator[speech_pb2.StreamResponse]:
        chunk_ms = CHUNK_MS
        turn = 0
        async for request in request_iterator:
            kind = request.WhichOneof("request")
            if kind == "config":
                chunk_ms = request.config.chunk_ms or CHUNK_MS
                continue
            if kind != "text":
                continue
            turn += 1
            yield lifecycle_response(speech_pb2.LIFECYCLE_EVENT_TURN_STARTED, turn)
            # The tone engine's length for this text, cut into chunk_ms messages.
            total = round(len(request.text) * TONE_MS_PER_CHAR * SAMPLE_RATE_HZ / 1000)
            step = SAMPLE_RATE_HZ * chunk_ms // 1000
            payload = bytes(2 * step)
            for offset in range(0, total, step):
                yield speech_pb2.StreamResponse(
                    audio=speech_pb2.AudioChunk(
                        data=payload if offset + step <= total else payload[: 2 * (total - offset)],
                        turn=turn,
                        segment=1,
                        encoding=speech_pb2.AUDIO_ENCODING_PCM_S16LE,
                        sample_rate_hz=SAMPLE_RATE_HZ,
                        offset_samples=offset,
                    )
                )
            yield lifecycle_response(speech_pb2.LIFECYCLE_EVENT_TURN_ENDED, turn)
        yield lifecycle_response(speech_pb2.LIFECYCLE_EVENT_SESSION_ENDED, 0)


async def serve_bare(listen: str) -> None:
    """Serve `BareSpeech` on `listen` until SIGTERM or SIGINT."""
    server = grpc.aio.server()
    speech_pb2_grpc.add_SpeechServicer_to_server(BareSpeech(), server)
    server.add_insecure_port(listen)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(None)


def start_bare_process(timeout_s: float = 30.0) -> ServerProcess:
    """The bare server as its own process, once it accepts connections."""
    target = f"127.0.0.1:{free_port()}"
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.messages", "bare-server", "--listen", target],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
    )
    with grpc.insecure_channel(target) as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=timeout_s)
        except grpc.FutureTimeoutError:
            process.kill()
            raise RuntimeError("the bare server did not start") from None
    return ServerProcess(target, process)


# The client process.


@dataclass
class _Counter:
    messages: int = 0
    audio_bytes: int = 0
    flowing: asyncio.Event = field(default_factory=asyncio.Event)
    """Set at the first audio message."""


def audio_data_bytes(raw: bytes) -> int:
    """The size of `audio.data` in a serialized `StreamResponse`; -1 if it is not audio.

    The client reads raw bytes instead of parsed messages, so that it costs less
    per message than the servers it measures (two varints instead of a parse).
    """
    if not raw or raw[0] != 0x0A:  # field 1 (audio), length-delimited
        return -1
    index = 1
    while raw[index] & 0x80:  # the AudioChunk's length
        index += 1
    index += 1
    if index >= len(raw) or raw[index] != 0x0A:  # field 1 (data) is written first
        return 0
    index += 1
    length = shift = 0
    while True:
        byte = raw[index]
        length |= (byte & 0x7F) << shift
        index += 1
        if not byte & 0x80:
            return length
        shift += 7


async def _session_loop(
    channel: grpc.aio.Channel, counter: _Counter, stop: asyncio.Event, seed: int
) -> None:
    stream: grpc.aio.StreamStreamMultiCallable[speech_pb2.StreamRequest, bytes] = (
        channel.stream_stream(
            "/voxrelay.v1.Speech/Stream",
            request_serializer=speech_pb2.StreamRequest.SerializeToString,
            response_deserializer=None,  # raw bytes: see audio_data_bytes
        )
    )
    lengths = random.Random(seed)
    while not stop.is_set():
        call = stream(iter(_requests(lengths.randint(*TURN_CHARS))))
        try:
            async for raw in call:
                size = audio_data_bytes(raw)
                if size >= 0:
                    counter.messages += 1
                    counter.flowing.set()
                    counter.audio_bytes += size
        finally:
            call.cancel()


def _cpu_s(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


async def measure_in_client(
    channel: grpc.aio.Channel, sessions: int, warmup_s: float, window_s: float, server_pid: int
) -> dict[str, float]:
    """Run `sessions` streaming sessions; count what arrives during the window."""
    counter = _Counter()
    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(_session_loop(channel, counter, stop, seed)) for seed in range(sessions)
    ]
    server, me = psutil.Process(server_pid), psutil.Process()

    def snapshot() -> tuple[int, int, float, float, float]:
        return (
            counter.messages,
            counter.audio_bytes,
            time.perf_counter(),
            _cpu_s(server),
            _cpu_s(me),
        )

    try:
        # The window opens once audio flows (a busy machine may take longer than the
        # warm-up to open every session), so it never measures zero messages.
        await asyncio.wait_for(counter.flowing.wait(), timeout=60.0)
        await asyncio.sleep(warmup_s)
        start = snapshot()
        await asyncio.sleep(window_s)
        end = snapshot()
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
    failures = [r for r in results if isinstance(r, Exception)]
    if failures:
        raise RuntimeError(f"{len(failures)} sessions failed, first: {failures[0]!r}")
    wall = end[2] - start[2]
    if end[0] == start[0]:
        raise RuntimeError(f"no audio message arrived in a {window_s} s window")
    return {
        "messages": end[0] - start[0],
        "audio_bytes": end[1] - start[1],
        "wall_s": wall,
        "server_cpu": (end[3] - start[3]) / wall,
        "client_cpu": (end[4] - start[4]) / wall,
    }


async def client_main() -> None:
    """Answer JSON commands on stdin, one measurement each, with JSON lines on stdout."""
    channels: dict[str, grpc.aio.Channel] = {}
    try:
        while line := await asyncio.to_thread(sys.stdin.readline):
            command = json.loads(line)
            target = command["target"]
            if target not in channels:
                channels[target] = grpc.aio.insecure_channel(target)
            result = await measure_in_client(
                channels[target],
                command["sessions"],
                command["warmup_s"],
                command["window_s"],
                command["server_pid"],
            )
            print(json.dumps(result), flush=True)
    finally:
        for channel in channels.values():
            await channel.close()


class ClientProcess:
    """The parent's handle on the client process."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self._process = process

    @classmethod
    async def start(cls) -> ClientProcess:
        """Start `python -m bench.messages client`."""
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.messages",
            "client",
            cwd=ROOT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        return cls(process)

    async def measure(
        self, server: ServerProcess, sessions: int, warmup_s: float, window_s: float
    ) -> dict[str, float]:
        """One measurement of `server` with `sessions` concurrent sessions."""
        command = {
            "target": server.target,
            "sessions": sessions,
            "warmup_s": warmup_s,
            "window_s": window_s,
            "server_pid": server.pid,
        }
        assert self._process.stdin is not None and self._process.stdout is not None
        self._process.stdin.write((json.dumps(command) + "\n").encode())
        await self._process.stdin.drain()
        line = await self._process.stdout.readline()
        if not line:
            raise RuntimeError("the benchmark client process died")
        result: dict[str, float] = json.loads(line)
        return result

    async def close(self) -> None:
        """End the client: close its stdin and wait."""
        if self._process.stdin is not None:
            self._process.stdin.close()
        try:
            await asyncio.wait_for(self._process.wait(), 10)
        except TimeoutError:
            self._process.kill()
            await self._process.wait()


# The section.


@dataclass
class _Point:
    rates: list[float]
    """Audio messages per second, one per repeat."""
    audio_rates: list[float]
    """Seconds of audio delivered per second."""
    server_cpu: list[float]
    client_cpu: list[float]

    @property
    def rate(self) -> float:
        return median(self.rates)

    def add(self, result: dict[str, float]) -> None:
        """Add one measurement from the client process."""
        self.rates.append(result["messages"] / result["wall_s"])
        audio_s = result["audio_bytes"] / 2 / SAMPLE_RATE_HZ
        self.audio_rates.append(audio_s / result["wall_s"])
        self.server_cpu.append(result["server_cpu"])
        self.client_cpu.append(result["client_cpu"])

    @property
    def server_us_per_message(self) -> list[float]:
        """Server CPU time per message, in microseconds, of each repeat."""
        return [1e6 * cpu / rate for cpu, rate in zip(self.server_cpu, self.rates, strict=True)]


def _to_audio_s(messages_per_s: Any) -> Any:
    return messages_per_s * CHUNK_MS / 1000


def _to_messages(audio_s_per_s: Any) -> Any:
    return audio_s_per_s * 1000 / CHUNK_MS


def _plot(points: dict[str, dict[int, _Point]], path: Path) -> None:
    """Throughput and server CPU per message against sessions, both servers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (rate_axes, cost_axes) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, style in (("voxrelay", "o-"), ("bare grpcio", "s--")):
        counts = sorted(points[name])
        series = [points[name][n] for n in counts]
        rate_axes.errorbar(
            counts,
            [p.rate for p in series],
            yerr=[spread(p.rates) for p in series],
            fmt=style,
            capsize=3,
            label=name,
        )
        cost_axes.errorbar(
            counts,
            [median(p.server_us_per_message) for p in series],
            yerr=[spread(p.server_us_per_message) for p in series],
            fmt=style,
            capsize=3,
            label=name,
        )
    for axes in (rate_axes, cost_axes):
        axes.set_xscale("log")
        axes.set_xticks(list(SESSION_COUNTS), [str(n) for n in SESSION_COUNTS])
        axes.set_xlabel("concurrent sessions")
        axes.set_ylim(bottom=0)
        axes.grid(True, alpha=0.3)
        axes.legend()
    rate_axes.set_ylabel(f"audio messages/s ({CHUNK_MS} ms, {MESSAGE_BYTES} B each)")
    seconds = rate_axes.secondary_yaxis("right", functions=(_to_audio_s, _to_messages))
    seconds.set_ylabel("audio seconds/s")
    rate_axes.set_title("Throughput (server process, loopback)")
    cost_axes.set_ylabel("server CPU per audio message (µs)")
    cost_axes.set_title("Server CPU cost per message")
    save_figure(figure, path)


async def run(quick: bool) -> Section:
    """Measure both servers at every session count, interleaved, and build the section."""
    repeats = 3 if quick else 7
    window_s = 0.3 if quick else 1.0
    # 100 sessions need longer to get past their first calls, whose audio is all
    # synthesized up front, into the steady state of calls starting and ending.
    warmup_s = {n: (0.1 + 0.003 * n) if quick else (0.3 + 0.007 * n) for n in SESSION_COUNTS}
    points = {name: {n: _Point([], [], [], []) for n in SESSION_COUNTS} for name in SERVERS}
    with contextlib.ExitStack() as servers_running:
        voxrelay = start_server_process(VOXRELAY_ARGS)
        servers_running.callback(stop_server_process, voxrelay)
        bare = start_bare_process()
        servers_running.callback(stop_server_process, bare)
        servers = dict(zip(SERVERS, (voxrelay, bare), strict=True))
        client = await ClientProcess.start()
        try:
            for repeat in range(repeats):
                order = list(SERVERS) if repeat % 2 == 0 else list(reversed(SERVERS))
                for sessions in SESSION_COUNTS:
                    for name in order:
                        result = await client.measure(
                            servers[name], sessions, warmup_s[sessions], window_s
                        )
                        points[name][sessions].add(result)
        finally:
            await client.close()

    rows: list[Sequence[str]] = []
    goals: list[Goal] = []
    for sessions in SESSION_COUNTS:
        ours, theirs = points["voxrelay"][sessions], points["bare grpcio"][sessions]
        ratios = [a / b for a, b in zip(ours.rates, theirs.rates, strict=True)]
        ratio = median(ratios)
        our_cost, their_cost = ours.server_us_per_message, theirs.server_us_per_message
        efficiency = [b / a for a, b in zip(our_cost, their_cost, strict=True)]
        rows.append(
            [
                str(sessions),
                f"{ours.rate:,.0f} ±{spread(ours.rates):,.0f}",
                f"{theirs.rate:,.0f} ±{spread(theirs.rates):,.0f}",
                f"{median(ours.audio_rates):.0f} / {median(theirs.audio_rates):.0f}",
                f"{at_least(ratio, GOAL_RATIO)} ±{spread(ratios):.2f}",
                f"{median(our_cost):.0f} / {median(their_cost):.0f}",
                f"{median(efficiency):.2f} ±{spread(efficiency):.2f}",
                f"{median(ours.server_cpu):.0%} / {median(theirs.server_cpu):.0%}",
                f"{median(ours.client_cpu):.0%} / {median(theirs.client_cpu):.0%}",
            ]
        )
        if sessions >= 10:
            goals.append(
                Goal(
                    f">= {GOAL_RATIO} x the bare grpcio message rate at {sessions} sessions",
                    f"{at_least(ratio, GOAL_RATIO)} x ({ours.rate:,.0f} vs {theirs.rate:,.0f} "
                    "msgs/s); "
                    f"CPU efficiency {median(efficiency):.2f}",
                    ratio >= GOAL_RATIO,
                )
            )
    plot = PLOTS / "messages.png"
    _plot(points, plot)
    return Section(
        title="Message throughput",
        method=(
            "Audio messages per second received by one client process running 1, 10 and 100 "
            "concurrent `Stream` sessions (one HTTP/2 connection per server), each session "
            f"calling again and again with config (`chunk_ms={CHUNK_MS}`: {MESSAGE_BYTES}-byte "
            f"messages of 16 kHz int16), one turn of {TURN_CHARS[0]} to {TURN_CHARS[1]} "
            "characters (1 to 5 s of audio, 50 to 250 messages; the same seeded lengths for "
            "both servers) and half-close. voxrelay runs the instant tone engine; the "
            "baseline is a bare grpcio asyncio servicer in this module that answers the same "
            "requests with byte-identical messages (same count, fields and sizes) and does no "
            "other work. Both servers are separate processes started by the bench "
            "(`voxrelay serve`, `python -m bench.messages bare-server`): that is how voxrelay "
            "is deployed, each gets its own event loop and GIL, psutil can charge CPU to each "
            "alone, and neither shares its interpreter with the client, a third process that "
            "reads raw bytes (no protobuf parsing) to stay as cheap as it can. Each point: "
            f"{warmup_s[1]:.2f} s (1 session) to {warmup_s[100]:.2f} s (100) of warm-up, then "
            f"messages counted over {window_s:g} s; {repeats} "
            "repeats, the two servers interleaved in alternating order; medians ± half the "
            "10-90th percentile range. CPU columns are % of one core over the window."
        ),
        header=[
            "sessions",
            "voxrelay msgs/s",
            "bare msgs/s",
            "audio s/s (vox / bare)",
            "rate voxrelay / bare",
            "server CPU µs/msg (vox / bare)",
            "CPU efficiency bare / vox",
            "server CPU (vox / bare)",
            "client CPU (vox / bare)",
        ],
        rows=rows,
        goals=goals,
        plots=[plot],
        notes=[
            "Audio s/s counts the audio bytes received: every message carries "
            f"{CHUNK_MS} ms but a turn's last, which may be shorter.",
            "Server CPU µs/msg is the server's CPU time over the window divided by the "
            "messages delivered in it: what one message costs the server, whichever process "
            "limits the rate. CPU efficiency bare / vox is the ratio of those costs, the "
            "rate ratio voxrelay could reach if the server alone were the limit.",
            f"Machine: {os.cpu_count()} cores. A server near 100 % of one core is the limit "
            "(its Python runs on one core); a client near 100 % means the client limited "
            "that rate; both well below means other work on the machine took the cores, "
            "which the interleaving spreads over both servers alike. " + _bound_note(points),
        ],
    )


def _bound_note(points: dict[str, dict[int, _Point]]) -> str:
    """Which side limited the bare server's rate, from the CPU figures."""
    bound = [n for n, point in points["bare grpcio"].items() if median(point.client_cpu) >= 0.9]
    if not bound:
        return "Here no client was the limit."
    listed = ", ".join(str(n) for n in sorted(bound))
    return (
        f"Here the bare server was client-bound at {listed} sessions (the client spends "
        "more CPU per message reading than the bare server does sending, and two cores "
        "cannot give both a full core): its rate, and so the rate ratio, understate the "
        "gap; the CPU-efficiency column does not."
    )


def main(argv: Sequence[str] | None = None) -> int:
    """`bare-server --listen HOST:PORT` or `client`: the processes the section starts."""
    parser = argparse.ArgumentParser(prog="python -m bench.messages")
    commands = parser.add_subparsers(dest="command", required=True)
    bare = commands.add_parser("bare-server", help="serve the bare baseline")
    bare.add_argument("--listen", required=True)
    commands.add_parser("client", help="run measurements given as JSON lines on stdin")
    args = parser.parse_args(argv)
    if args.command == "bare-server":
        asyncio.run(serve_bare(args.listen))
    else:
        asyncio.run(client_main())
    return 0


if __name__ == "__main__":
    sys.exit(main())
