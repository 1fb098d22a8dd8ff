"""Worst-case memory: a server's RSS under adversarial input against its documented bound.

One `voxrelay serve` process (piper and espeak, `--workers 2`, `--max-sessions 16`,
`--max-segment-chars 400`, 1 MiB of audio buffered per session, 15 s send timeout,
5 s start timeout) takes bursts of the costliest requests there are, one phase at a
time, at the slowest speed (0.25) and on text of numbers to be spelled out with no
sentence end (the most speech per character, `NUMBER_GROUPS`):

1. piper's costliest runs: two sessions, one per piper worker, reading everything;
2. non-reading sessions: `--max-sessions` of them, half piper, half espeak, each
   sending a full text budget, on connections whose window never widens (no BDP
   probing), held until the server's send timeout ends them;
3. whole-text requests: `--max-sessions` `Synthesize` calls (espeak) of 1,000,000
   characters, each group of digits followed by a silent four-byte digit (so the text
   takes 4 bytes a character as a Python string), unread, then cancelled;
4. everything at once: the above mixed, with silent calls, text full of control
   characters and calls past `--max-sessions`.

Before the first phase (after one warm-up sentence per voice) and after each, once the
server has no active session, psutil reads the server's RSS; during a phase it is read
every 50 ms, and the kernel's high-water mark (VmHWM, reset through
`/proc/PID/clear_refs` as a phase starts) gives the exact peak. The bound is
`voxrelay_server.memory.memory_bound` for these settings, checked against the one the
server logs at start-up. Beside it, in fresh processes, piper itself (a plain
`PiperVoice`, as piper's own API runs it) and voxrelay's `PiperEngine` speak the same
400-character text of numbers, so the engine's own cost is measured in the same run.

`python -m bench.memory [--quick]` runs it alone; the suite runs it as a section (`run`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import re
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import psutil  # type: ignore[import-untyped]

from bench.report import PLOTS, ROOT, Goal, Section, save_figure
from bench.servers import (
    free_port,
    no_active_sessions,
    send_requests,
    start_server_process,
    stop_server_process,
)
from bench.soak import LogSummary, read_log
from voxrelay.v1 import speech_pb2, speech_pb2_grpc
from voxrelay_server.engines.espeak_engine import chunk_bytes, paused_segment_bytes
from voxrelay_server.engines.piper_engine import run_bytes, runs_held
from voxrelay_server.memory import (
    IDLE_TRIM_DELAY_S,
    MIB,
    PIPER_RUN_BYTES,
    EngineMemory,
    MemoryBound,
    memory_bound,
)
from voxrelay_server.settings import MAX_TEXT_CHUNK_CHARS, MAX_WHOLE_TEXT_CHARS, MIN_SPEED

PIPER, ESPEAK = "piper/en_US-joe-medium", "espeak/en-us"
WORKERS = 2
ESPEAK_WORKERS = 1
ESPEAK_SLOTS_PER_WORKER = 2
"""One segment speaking and one queued per espeak worker process (README, Bounds)."""
MAX_SEGMENT_CHARS = 400
NATIVE_RATE_HZ = 22050
"""The rate of both voices."""
AUDIO_BUFFER_BYTES = 1 << 20
MAX_BUFFERED_TEXT_CHARS = 65536
"""The server's default `--max-buffered-text-chars`, passed explicitly."""
START_TIMEOUT_S = 5.0
SAMPLE_EVERY_S = 0.05
QUIET_CPU = 0.05
"""An idle reading waits until the server uses less than this much of a core."""
QUIET_LIMIT_S = 60.0
AFTER_GOAL = 0.10
"""After a burst, RSS may be at most this much above its level before it."""
DRAIN_S = 20.0
"""How long a client reads a call the server has ended before giving up on it."""
LOW_MEMORY_BYTES = 2 << 30
"""A direct engine run is stopped when the machine has less than this available."""
NUMBER_GROUPS = (
    "777777777777", "999,999,999", "777777777777", "4711 0815 2342", "777777777777", "1234567"
)  # fmt: skip
"""Numbers spelled out make the most speech per character (at speed 0.25, `777777777777`
about 1.9 s of piper's speech and 1.2 s of espeak-ng's, `999,999,999` 1.4 and 0.8 s),
each group its own clause: piper's phonemizer drops the rest of a longer clause of
numbers (about 1,400 phonemes), which would speak less."""
BRAILLE = "".join(chr(0x2801 + n) for n in range(255))
"""Braille patterns, which espeak-ng reads out by name ("braille pattern dots one two
..."): with no space among them the most speech between two places a segment can be
stopped at (`espeak_engine.MAX_UNCUT_AUDIO_S`)."""
CONTROL_CHARACTERS = "\x00\x07\x1b[31m\x7f\x0b\x85"
FOUR_BYTE_DIGIT = "\U0001d7d5"
"""MATHEMATICAL BOLD DIGIT SEVEN: four bytes in UTF-8, and a Python string holding it takes
four bytes a character; espeak-ng says nothing for it."""
READER_CHARS = 4000

_Call = (
    grpc.aio.StreamStreamCall[Any, speech_pb2.StreamResponse]
    | grpc.aio.UnaryStreamCall[Any, speech_pb2.StreamResponse]
)
_LOCAL_POOL = ("grpc.use_local_subchannel_pool", 1)
"""A channel option: its own TCP connection, not one shared with other channels."""
_NO_BDP = ("grpc.http2.bdp_probe", 0)
"""A channel option: the receive window stays at its initial size, so unread audio
stays in the server rather than in the client's transport."""
CANCELLED = "cancelled by the client"
SERVER_FULL = "RESOURCE_EXHAUSTED (server full)"


@dataclass(frozen=True)
class Plan:
    """The server's settings and how long each phase lasts."""

    max_sessions: int
    send_timeout_s: float
    reading_s: float
    """How long the readers of phases 1 and 4 read before cancelling."""
    hold_s: float
    """How long the whole-text requests of phases 3 and 4 stay unread."""
    mixed: bool
    """Whether phase 4 runs."""
    direct_chars: int
    """Length of the text the engines speak directly."""

    def arguments(self, metrics_port: int) -> list[str]:
        return [
            "--engines", "piper,espeak",
            "--workers", str(WORKERS),
            "--espeak-workers", str(ESPEAK_WORKERS),
            "--max-sessions", str(self.max_sessions),
            "--max-segment-chars", str(MAX_SEGMENT_CHARS),
            "--max-buffered-text-chars", str(MAX_BUFFERED_TEXT_CHARS),
            "--session-audio-buffer-bytes", str(AUDIO_BUFFER_BYTES),
            "--send-timeout", f"{self.send_timeout_s:g}",
            "--start-timeout", f"{START_TIMEOUT_S:g}",
            "--metrics-listen", f"127.0.0.1:{metrics_port}",
            "--log-level", "info",
            "--log-format", "json",
        ]  # fmt: skip

    def bound(self, sessions: int | None = None) -> MemoryBound:
        """The documented bound for these settings (with `sessions` for `--max-sessions`:
        the bound's share for that many sessions)."""
        piper = EngineMemory(WORKERS, run_bytes(NATIVE_RATE_HZ), 0)
        espeak = EngineMemory(
            ESPEAK_SLOTS_PER_WORKER * ESPEAK_WORKERS,
            chunk_bytes(NATIVE_RATE_HZ),
            paused_segment_bytes(NATIVE_RATE_HZ),
        )
        return memory_bound(
            max_sessions=self.max_sessions if sessions is None else sessions,
            piper_runs=runs_held(WORKERS),
            engines=[piper, espeak],
            session_audio_buffer_bytes=AUDIO_BUFFER_BYTES,
            max_buffered_text_chars=MAX_BUFFERED_TEXT_CHARS,
        )

    @property
    def idle_limit_s(self) -> float:
        """How long the server may take to end a phase's sessions: non-reading piper
        sessions get a worker two at a time, and each then waits out the send timeout."""
        rounds = math.ceil(self.max_sessions / 2 / WORKERS) + 1
        return rounds * (self.send_timeout_s + 10) + 30


FULL = Plan(
    max_sessions=16, send_timeout_s=15, reading_s=20, hold_s=8, mixed=True, direct_chars=400
)
QUICK = Plan(max_sessions=4, send_timeout_s=5, reading_s=5, hold_s=3, mixed=False, direct_chars=40)


def number_run_on(chars: int, after: str = "") -> str:
    """`chars` characters of numbers with no sentence end, `after` after each group."""
    unit = "".join(f"{group}{after}, " for group in NUMBER_GROUPS)
    return (unit * (chars // len(unit) + 1))[:chars]


def pieces(text: str, most: int = 40) -> list[str]:
    """`text` in pieces of whole words, each at most `most` characters where it can be."""
    cut: list[str] = []
    for word in text.split(" "):
        if cut and len(cut[-1]) + 1 + len(word) <= most:
            cut[-1] += " " + word
        else:
            cut.append(word)
    return [piece for piece in cut if piece.strip()]


# The clients.


def _config(voice: str) -> speech_pb2.SessionConfig:
    return speech_pb2.SessionConfig(voice=voice, speed=MIN_SPEED)


def _requests(voice: str, text: str) -> list[speech_pb2.StreamRequest]:
    """Config at the slowest speed, `text` in chunks as large as allowed, turn_done."""
    size = MAX_TEXT_CHUNK_CHARS
    chunks = [text[i : i + size] for i in range(0, len(text), size)]
    return [
        speech_pb2.StreamRequest(config=_config(voice)),
        *(speech_pb2.StreamRequest(text=chunk) for chunk in chunks),
        speech_pb2.StreamRequest(turn_done=speech_pb2.TurnDone()),
    ]


@dataclass
class Outcomes:
    """What the clients of a phase saw: endings by kind of session, and audio read."""

    endings: Counter[str] = field(default_factory=Counter)
    audio_bytes: int = 0

    def describe(self) -> str:
        return "; ".join(f"{kind} {n}" for kind, n in sorted(self.endings.items()))


class Clients:
    """The benchmark's side: a shared channel, and a connection of its own (without BDP
    probing) for each session that is not to read. `outcomes` collects what they saw."""

    def __init__(
        self, target: str, metrics_url: str, idle_limit_s: float, gone: Callable[[], bool]
    ) -> None:
        self._target = target
        self.metrics_url = metrics_url
        self._idle_limit_s = idle_limit_s
        self.gone = gone
        """Whether the server has exited (waits on it then end at once)."""
        self._shared = grpc.aio.insecure_channel(target)
        self._own: list[grpc.aio.Channel] = []
        self.outcomes = Outcomes()

    def stub(self, *, own: bool = False) -> speech_pb2_grpc.SpeechAsyncStub:
        """A stub on the shared channel or, `own`, on a new connection without BDP probing."""
        channel = self._shared
        if own:
            channel = grpc.aio.insecure_channel(self._target, options=[_LOCAL_POOL, _NO_BDP])
            self._own.append(channel)
        return speech_pb2_grpc.SpeechStub(channel)

    async def finish(self, kind: str, call: _Call, within_s: float) -> None:
        """Read `call` for up to `within_s`, counting its audio, then note its ending: its
        status, or `CANCELLED` when it had not ended by then (it is cancelled)."""
        with contextlib.suppress(TimeoutError, grpc.aio.AioRpcError):
            async with asyncio.timeout(within_s):
                while (response := await call.read()) is not grpc.aio.EOF:
                    assert isinstance(response, speech_pb2.StreamResponse)
                    self.outcomes.audio_bytes += len(response.audio.data)
        ending = CANCELLED
        if call.done():
            code, details = await call.code(), await call.details()
            ending = code.name
            if code is grpc.StatusCode.RESOURCE_EXHAUSTED and "concurrent" in (details or ""):
                ending = SERVER_FULL
        else:
            call.cancel()
        self.outcomes.endings[f"{kind}: {ending}"] += 1

    async def reading(self, kind: str, voice: str, text: str, read_s: float) -> None:
        """A `Stream` session speaking `text`, read as fast as it comes for `read_s`."""
        call = self.stub().Stream()
        await send_requests(call, *_requests(voice, text), close=True)
        await self.finish(kind, call, read_s)

    async def non_reading(self, sessions: Sequence[tuple[str, str]]) -> None:
        """A `Stream` session per (voice, text) sending the text on a connection of its
        own, unread until the server has no active session left; then read to their ends."""
        calls = [self.stub(own=True).Stream() for _ in sessions]
        sent = (
            send_requests(call, *_requests(voice, text), close=True)
            for call, (voice, text) in zip(calls, sessions, strict=True)
        )
        await asyncio.gather(*sent)
        await no_active_sessions(self.metrics_url, self._idle_limit_s, self.gone)
        await asyncio.gather(*(self.finish("non-reading", call, DRAIN_S) for call in calls))

    async def whole_text(self, text: str, hold_s: float) -> None:
        """A `Synthesize` call of `text` (espeak), unread for `hold_s`, then cancelled."""
        request = speech_pb2.SynthesizeRequest(config=_config(ESPEAK), text=text)
        call = self.stub(own=True).Synthesize(request)
        await asyncio.sleep(hold_s)
        await self.finish("whole text", call, 0.0)

    async def silent(self) -> None:
        """A `Stream` call that sends nothing, until the server ends it (start timeout)."""
        await self.finish("silent", self.stub().Stream(), START_TIMEOUT_S + DRAIN_S)

    async def close(self) -> None:
        for channel in [self._shared, *self._own]:
            await channel.close()
        self._own.clear()


@dataclass(frozen=True)
class Burst:
    """A phase's name, what its clients send, and their part."""

    name: str
    load: str
    sessions: int
    """The most sessions it holds at once."""
    clients: Callable[[Clients], Awaitable[object]]


def bursts(plan: Plan) -> list[Burst]:
    """The phases of `plan`, in order."""
    sessions, read_s, hold_s = plan.max_sessions, plan.reading_s, plan.hold_s
    numbers = number_run_on(READER_CHARS)
    controls = number_run_on(READER_CHARS, after=CONTROL_CHARACTERS)  # spoken as spaces
    budget = number_run_on(MAX_BUFFERED_TEXT_CHARS)
    braille = (BRAILLE * (MAX_BUFFERED_TEXT_CHARS // len(BRAILLE) + 1))[:MAX_BUFFERED_TEXT_CHARS]
    whole = number_run_on(MAX_WHOLE_TEXT_CHARS, after=FOUR_BYTE_DIGIT)
    half = [PIPER] * (sessions - sessions // 2) + [ESPEAK] * (sessions // 2)
    unread = [(voice, budget if voice == PIPER else braille) for voice in half]
    listed = [
        Burst(
            "1. piper's costliest runs",
            f"{WORKERS} piper sessions (one per worker), {READER_CHARS:,} characters of "
            f"numbers each, read as fast as they come for {read_s:g} s",
            WORKERS,
            lambda c: asyncio.gather(
                *(c.reading("reader", PIPER, numbers, read_s) for _ in range(WORKERS))
            ),
        ),
        Burst(
            "2. non-reading sessions",
            f"{sessions} sessions (half piper on numbers, half espeak on braille patterns "
            f"with no space), {MAX_BUFFERED_TEXT_CHARS:,} characters each (a full text "
            "budget), unread until the server ends them",
            sessions,
            lambda c: c.non_reading(unread),
        ),
        Burst(
            "3. whole-text requests",
            f"{sessions} `Synthesize` calls (espeak) of {MAX_WHOLE_TEXT_CHARS:,} characters "
            "of numbers, each group followed by a four-byte digit, unread for "
            f"{hold_s:g} s, then cancelled",
            sessions,
            lambda c: asyncio.gather(*(c.whole_text(whole, hold_s) for _ in range(sessions))),
        ),
    ]
    if plan.mixed:
        quarter = sessions // 4
        silent = sessions - 2 * quarter - 4

        async def everything(c: Clients) -> None:
            held = asyncio.gather(
                c.non_reading(
                    [(PIPER, budget)] * (quarter // 2)
                    + [(ESPEAK, braille)] * (quarter - quarter // 2)
                ),
                *(c.reading("reader", PIPER, numbers, read_s) for _ in range(2)),
                c.reading("control characters", PIPER, controls, read_s),
                c.reading("control characters", ESPEAK, controls, read_s),
                *(c.whole_text(whole, hold_s) for _ in range(quarter)),
                *(c.silent() for _ in range(silent)),
            )
            await asyncio.sleep(1.0)  # every place taken: these are refused
            extra = (c.reading("past the limit", ESPEAK, numbers, DRAIN_S) for _ in range(2))
            await asyncio.gather(held, *extra)

        listed.append(
            Burst(
                "4. everything at once",
                f"{quarter} non-reading, 2 readers (piper), 2 with control characters "
                f"(piper, espeak), {quarter} whole-text and {silent} silent calls, then 2 "
                "more past `--max-sessions`",
                sessions,
                everything,
            )
        )
    return listed


# The server, watched.


def _status_bytes(pid: int, key: str) -> int | None:
    """A `key:` line of /proc/PID/status (in kB there) in bytes; None if unreadable."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1]) * 1024
    return None


def reset_peak(pid: int) -> bool:
    """Reset the kernel's high-water mark of `pid`'s RSS (VmHWM) to its RSS now."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


@dataclass(frozen=True)
class Point:
    """One reading: seconds since the start, the server's RSS, its children's RSS."""

    elapsed_s: float
    rss: int
    children: int


class Sampler:
    """Reads a server's RSS every `SAMPLE_EVERY_S` (its children's every tenth time)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._process = psutil.Process(pid)
        self.started = time.monotonic()
        self.points: list[Point] = []
        self._children = 0

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def rss(self) -> int:
        return int(self._process.memory_info().rss)

    def children_rss(self) -> int:
        """The espeak worker processes' RSS, summed."""
        total = 0
        for child in self._process.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                total += int(child.memory_info().rss)
        return total

    async def run(self) -> None:
        """Sample until cancelled or the server is gone."""
        count = 0
        while True:
            try:
                if count % 10 == 0:
                    self._children = self.children_rss()
                self.points.append(Point(self.elapsed(), self.rss(), self._children))
            except psutil.Error:
                return
            count += 1
            await asyncio.sleep(SAMPLE_EVERY_S)

    async def quiet(self, limit_s: float) -> float | None:
        """Wait until the server uses under `QUIET_CPU` of a core over a second (engine
        work of ended sessions finishes in its threads): how long that took, or None."""
        started = time.monotonic()
        while time.monotonic() - started < limit_s:
            before = self._process.cpu_times()
            await asyncio.sleep(1.0)
            after = self._process.cpu_times()
            if (after.user + after.system) - (before.user + before.system) < QUIET_CPU:
                return time.monotonic() - started
        return None

    def peak(self, since_s: float, high_water_mark: bool) -> tuple[int, int]:
        """The highest RSS since `since_s` of the server (the larger of the samples and,
        when it was reset then, VmHWM) and of its children (sampled)."""
        window = [p for p in self.points if p.elapsed_s >= since_s]
        sampled = max((p.rss for p in window), default=0)
        children = max((p.children for p in window), default=0)
        mark = _status_bytes(self.pid, "VmHWM") if high_water_mark else None
        return max(sampled, mark or 0), children


@dataclass
class Phase:
    """One burst and what it did to the server's memory (bytes)."""

    name: str
    load: str
    sessions: int
    started_s: float
    before: int
    ended_s: float = math.nan
    peak: int = 0
    after: int = 0
    children_peak: int = 0
    idle_wait_s: float | None = None
    """How long the server took to have no active session once the clients were done."""
    quiet_s: float | None = None
    """How long it then took to use (nearly) no CPU."""
    outcomes: Outcomes = field(default_factory=Outcomes)


@dataclass
class Measured:
    """Everything the server part measured."""

    plan: Plan
    bound: MemoryBound
    logged_bound: str | None = None
    """What the server logged after "memory can grow by"."""
    idle: int = 0
    idle_children: int = 0
    phases: list[Phase] = field(default_factory=list)
    points: list[Point] = field(default_factory=list)
    high_water_mark: bool = False
    """Whether VmHWM could be reset (else peaks are the 50 ms samples' only)."""
    crash: str | None = None
    exit_code: int | None = None
    log: LogSummary = field(default_factory=LogSummary)
    log_path: Path = Path()


async def _after_the_trim(idle_at: float) -> None:
    """Wait until the heap trim the server runs `IDLE_TRIM_DELAY_S` after its last
    session ended (`idle_at`) is done."""
    await asyncio.sleep(max(0.0, idle_at + IDLE_TRIM_DELAY_S + 1.0 - time.monotonic()))


def logged_bound(path: Path) -> str | None:
    """The bound the server logged at start-up: "N MiB above idle (terms)"."""
    with contextlib.suppress(OSError):
        match = _LOGGED_BOUND.search(path.read_text(encoding="utf-8", errors="replace"))
        if match is not None:
            return match.group(1)
    return None


_LOGGED_BOUND = re.compile(r"memory can grow by (\d+ MiB above idle \([^)]*\))")


async def measure(plan: Plan, log_path: Path) -> Measured:
    """Start a server (its log appended to `log_path`), warm it up, read its idle RSS,
    run the bursts with a reading after each, stop it."""
    metrics_port = free_port()
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    server = start_server_process(plan.arguments(metrics_port), log=log_path)
    print(f"memory: server log in {log_path}", file=sys.stderr, flush=True)
    measured = Measured(plan, plan.bound(), log_path=log_path)
    sampler = Sampler(server.pid)
    watcher = asyncio.create_task(sampler.run())
    clients = Clients(
        server.target, url, plan.idle_limit_s, lambda: server.process.poll() is not None
    )
    try:
        for voice in (PIPER, ESPEAK):
            await clients.reading("warm-up", voice, "Warm up, please.", DRAIN_S)
        await no_active_sessions(url, plan.idle_limit_s, clients.gone)
        idle_at = time.monotonic()
        await sampler.quiet(QUIET_LIMIT_S)
        await _after_the_trim(idle_at)
        measured.idle, measured.idle_children = sampler.rss(), sampler.children_rss()
        before = measured.idle
        for burst in bursts(plan):
            print(f"memory: {burst.name}", file=sys.stderr, flush=True)
            phase = Phase(burst.name, burst.load, burst.sessions, sampler.elapsed(), before)
            measured.high_water_mark = reset_peak(server.pid)
            clients.outcomes = phase.outcomes
            await burst.clients(clients)
            if clients.gone():
                break  # noted below
            phase.idle_wait_s = await no_active_sessions(url, plan.idle_limit_s, clients.gone)
            idle_at = time.monotonic()
            phase.quiet_s = await sampler.quiet(QUIET_LIMIT_S)
            await _after_the_trim(idle_at)
            phase.ended_s = sampler.elapsed()
            phase.peak, phase.children_peak = sampler.peak(
                phase.started_s, measured.high_water_mark
            )
            phase.after = before = sampler.rss()
            measured.phases.append(phase)
    except psutil.Error as error:
        measured.crash = f"the server vanished ({error!r})"
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        await clients.close()
        code = server.process.poll()
        if code is not None and measured.crash is None:
            measured.crash = f"the server exited with code {code}"
        stop_server_process(server)
    measured.points = sampler.points
    measured.exit_code = server.process.returncode
    measured.log = read_log(log_path)
    measured.logged_bound = logged_bound(log_path)
    return measured


# The engine called directly, in a process of its own.


@dataclass(frozen=True)
class Direct:
    """One text spoken by an engine in a fresh process (bytes, seconds)."""

    label: str
    before: int
    peak: int
    after: int
    audio_s: float
    seconds: float
    stopped: str | None = None
    """Why the run was stopped before its end, if it was."""
    phonemes: int = 0
    """Phonemes piper made of the whole text (0: not counted)."""
    phonemes_in_pieces: int = 0
    """Phonemes piper made of the text a few words at a time."""


DIRECT_KINDS = {
    "plain": "piper itself (plain `PiperVoice`, `synthesize`, length_scale 4)",
    "voxrelay": "voxrelay's `PiperEngine` (speed 0.25, allocator tuned as the server's)",
}


def speak_directly(kind: str, chars: int) -> dict[str, float]:
    """In this process: load the voice, warm up, speak `chars` characters of numbers at
    the slowest speed; RSS before, its high-water mark, RSS after, audio, time."""
    import gc

    from voxrelay_server.engines.piper_engine import bundled_joe_voice

    text = number_run_on(chars)
    model_path, config_path = bundled_joe_voice()
    speak: Callable[[str, float], int]
    phonemes: dict[str, int] = {}
    if kind == "plain":
        import onnxruntime
        from piper import PiperVoice, SynthesisConfig
        from piper.config import PiperConfig

        options = onnxruntime.SessionOptions()  # as piper_engine._load, without the wrapper
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        session = onnxruntime.InferenceSession(
            str(model_path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        config = PiperConfig.from_dict(json.loads(config_path.read_text(encoding="utf-8")))
        voice = PiperVoice(session=session, config=config)

        def speak(text: str, speed: float) -> int:
            chunks = voice.synthesize(text, SynthesisConfig(length_scale=1.0 / speed))
            return sum(len(chunk.audio_int16_bytes) for chunk in chunks)

        def count(text: str) -> int:
            return sum(len(sentence) for sentence in voice.phonemize(text))

        # What the phonemizer makes of the whole text, and of it a few words at a time.
        phonemes = {"phonemes": count(text), "phonemes_in_pieces": sum(map(count, pieces(text)))}

    else:
        from voxrelay_server.engines.base import SynthesisOptions
        from voxrelay_server.engines.piper_engine import PiperEngine
        from voxrelay_server.memory import tune_allocator

        tune_allocator()  # as `voxrelay serve` does first
        engine = PiperEngine([(model_path, config_path)], workers=1)
        (info,) = engine.voices()

        async def collect(text: str, speed: float) -> int:
            stream = engine.synthesize(info, text, SynthesisOptions(speed=speed))
            return sum([len(audio) async for audio in stream])

        def speak(text: str, speed: float) -> int:
            return asyncio.run(collect(text, speed))

    speak("Warm up, please.", 1.0)
    gc.collect()
    pid = psutil.Process().pid
    before = int(psutil.Process().memory_info().rss)
    reset_peak(pid)
    started = time.perf_counter()
    audio_bytes = speak(text, MIN_SPEED)
    seconds = time.perf_counter() - started
    gc.collect()
    return {
        "before": before,
        "peak": max(_status_bytes(pid, "VmHWM") or 0, before),
        "after": int(psutil.Process().memory_info().rss),
        "audio_s": audio_bytes / 2 / 22050,
        "seconds": seconds,
        **phonemes,
    }


async def direct(kind: str, chars: int) -> Direct:
    """`speak_directly` in a fresh process, stopped if the machine runs low on memory
    while it is the one holding gigabytes."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.memory", "engine", kind, "--chars", str(chars),
        cwd=ROOT, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    watched, stopped, most = psutil.Process(process.pid), None, 0
    output = asyncio.ensure_future(process.communicate())
    while not output.done():
        with contextlib.suppress(psutil.Error):
            rss = int(watched.memory_info().rss)
            most = max(most, rss)
            available = int(psutil.virtual_memory().available)
            if available < LOW_MEMORY_BYTES and rss > 1 << 30:
                stopped = (
                    f"stopped at {rss / MIB:,.0f} MiB: the machine had "
                    f"{available / MIB:,.0f} MiB left"
                )
                process.kill()
        await asyncio.wait({output}, timeout=0.1)
    stdout, _ = output.result()
    label = DIRECT_KINDS[kind]
    if stopped is not None or process.returncode != 0:
        return Direct(label, 0, most, 0, math.nan, math.nan, stopped or "failed")
    figures = json.loads(stdout.decode().strip().splitlines()[-1])
    return Direct(
        label,
        int(figures["before"]),
        int(figures["peak"]),
        int(figures["after"]),
        float(figures["audio_s"]),
        float(figures["seconds"]),
        phonemes=int(figures.get("phonemes", 0)),
        phonemes_in_pieces=int(figures.get("phonemes_in_pieces", 0)),
    )


# The report.


def _mib(value: float) -> str:
    return f"{value / MIB:,.0f}"


def _ratio(value: float) -> str:
    """`value` to two places, or more where that would round a figure over 1 down to 1."""
    digits = 2
    while value > 1 and round(value, digits) <= 1 and digits < 6:
        digits += 1
    return f"{value:.{digits}f}"


def _row(phase: Phase, idle: int, bound: int) -> list[str]:
    growth = phase.peak - idle
    return [
        phase.name,
        phase.load,
        phase.outcomes.describe(),
        _mib(growth),
        _mib(bound),
        _ratio(growth / bound),
        f"{_mib(phase.before)} → {_mib(phase.after)}",
        f"{phase.after / phase.before:.3f}",
    ]


def _direct_row(run: Direct, chars: int) -> list[str]:
    if run.stopped is not None:
        return [
            "engine alone",
            f"{run.label}: {chars} characters of numbers",
            run.stopped,
            f"> {_mib(run.peak)} (RSS)",
            _mib(PIPER_RUN_BYTES),
            "-",
            "-",
            "-",
        ]
    growth = run.peak - run.before
    return [
        "engine alone",
        f"{run.label}: {chars} characters of numbers, {run.audio_s:,.0f} s of audio "
        f"in {run.seconds:.0f} s",
        "-",
        _mib(growth),
        f"{_mib(PIPER_RUN_BYTES)} (one piper run)",
        _ratio(growth / PIPER_RUN_BYTES),
        f"{_mib(run.before)} → {_mib(run.after)}",
        f"{run.after / run.before:.3f}",
    ]


def _plot(measured: Measured, runs: Sequence[Direct], path: Path) -> Path:
    """The server's RSS over time with the phases and the bound; the engines alone."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (timeline, alone) = plt.subplots(
        1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [3, 1]}
    )
    times = [p.elapsed_s for p in measured.points]
    timeline.plot(times, [p.rss / MIB for p in measured.points], "-", label="server RSS")
    timeline.plot(
        times, [p.children / MIB for p in measured.points], "-", alpha=0.6, label="espeak workers"
    )
    timeline.axhline(measured.idle / MIB, color="grey", linestyle=":", label="idle")
    timeline.axhline(
        (measured.idle + measured.bound.total) / MIB,
        color="red",
        linestyle="--",
        label="idle + documented bound",
    )
    for index, phase in enumerate(measured.phases):
        timeline.axvspan(phase.started_s, phase.ended_s, alpha=0.12, color=f"C{index + 2}")
        timeline.annotate(
            phase.name.split(".")[0],
            (phase.started_s + 0.5, 0.03),
            xycoords=("data", "axes fraction"),
            va="bottom",
        )
    timeline.set_xlabel("seconds")
    timeline.set_ylabel("RSS (MiB)")
    timeline.set_ylim(0, (measured.idle + measured.bound.total) / MIB * 1.3)
    timeline.set_title("Server memory, phase by phase")
    timeline.grid(True, alpha=0.3)
    timeline.legend(loc="upper right", ncol=2, fontsize="small")
    done = [run for run in runs if run.stopped is None]
    names = {DIRECT_KINDS["plain"]: "piper alone", DIRECT_KINDS["voxrelay"]: "PiperEngine"}
    alone.bar([names[r.label] for r in done], [(r.peak - r.before) / MIB for r in done])
    alone.axhline(PIPER_RUN_BYTES / MIB, color="red", linestyle="--", label="one piper run")
    alone.set_ylabel("peak growth (MiB)")
    alone.set_title("One text, engine alone")
    alone.legend()
    return save_figure(figure, path)


def section(measured: Measured, runs: Sequence[Direct]) -> Section:
    """The table, goals and notes."""
    plan, bound, idle = measured.plan, measured.bound.total, measured.idle
    phases = measured.phases
    rows: list[Sequence[str]] = [_row(phase, idle, bound) for phase in phases]
    rows += [_direct_row(run, plan.direct_chars) for run in runs]
    expected = len(bursts(plan))
    within = [phase.peak - idle <= bound for phase in phases]
    back = [phase.after <= (1 + AFTER_GOAL) * phase.before for phase in phases]
    complete = len(phases) == expected and measured.crash is None
    worst = max(phases, key=lambda p: p.peak, default=None)
    goals = [
        Goal(
            "peak growth within the documented bound, every phase",
            (
                f"largest {_mib(worst.peak - idle)} of {_mib(bound)} MiB "
                f"({_ratio((worst.peak - idle) / bound)} of the bound, {worst.name}); "
                if worst is not None
                else ""
            )
            + f"{sum(within)} of {expected} phases within"
            + (f"; {measured.crash}" if measured.crash else ""),
            complete and all(within),
        ),
        Goal(
            f"after each burst, RSS within {AFTER_GOAL:.0%} of its level before",
            "after / before: "
            + ", ".join(f"{p.after / p.before:.3f}" for p in phases)
            + f"; {sum(back)} of {expected} phases within",
            complete and all(back),
        ),
    ]
    computed = measured.bound.describe()
    logged = measured.logged_bound
    agree = logged == computed
    notes = [
        f"Documented bound for these settings (`memory_bound`, {WORKERS} piper workers, "
        f"{WORKERS + ESPEAK_SLOTS_PER_WORKER * ESPEAK_WORKERS} synthesis slots): {computed}. "
        f"The server logged: {logged or 'nothing (no line found)'}"
        + (" (the same)." if agree else " (**they differ**)."),
        f"Idle RSS {_mib(idle)} MiB after one warm-up sentence per voice; espeak worker "
        f"processes (outside the bound) {_mib(measured.idle_children)} MiB at idle, at most "
        + ", ".join(f"{_mib(p.children_peak)}" for p in phases)
        + " MiB in the phases.",
        "Peaks are "
        + (
            "the kernel's high-water mark (VmHWM, reset as each phase starts), exact"
            if measured.high_water_mark
            else f"the {SAMPLE_EVERY_S * 1000:.0f} ms samples' (VmHWM could not be reset)"
        )
        + "; a phase runs from its first request until the server has no active session "
        f"and then uses under {QUIET_CPU:.0%} of a core over a second (engine work of "
        "ended sessions done), and its heap has been trimmed (a second after the "
        f"{IDLE_TRIM_DELAY_S:g} s it waits once idle). The server took "
        + ", ".join(
            f"{p.idle_wait_s:.1f} s" if p.idle_wait_s is not None else "never" for p in phases
        )
        + " to have no active session once each phase's clients were done, then "
        + ", ".join(f"{p.quiet_s:.0f} s" if p.quiet_s is not None else "never" for p in phases)
        + " to be quiet; clients read "
        + ", ".join(f"{p.outcomes.audio_bytes / MIB:,.1f}" for p in phases)
        + " MiB of audio.",
        "Against the bound for the sessions each phase held at most (`memory_bound` with "
        "that many for `--max-sessions`; its piper term alone is "
        f"{_mib(WORKERS * PIPER_RUN_BYTES)} MiB): "
        + ", ".join(
            f"{p.name.split('.')[0]}: {_mib(p.peak - idle)} of "
            f"{_mib(plan.bound(p.sessions).total)} MiB for {p.sessions} "
            f"({_ratio((p.peak - idle) / plan.bound(p.sessions).total)})"
            for p in phases
        )
        + ".",
        "RSS after each phase against idle: "
        + ", ".join(f"{p.after / idle:.3f}" for p in phases)
        + ".",
    ]
    done = [run for run in runs if run.stopped is None]
    if len(done) == 2:
        plain, ours = done
        notes.append(
            f"Engine alone, the same {plan.direct_chars} characters at the slowest speed: "
            f"piper's own `synthesize` grows by {_mib(plain.peak - plain.before)} MiB "
            f"and keeps {_mib(plain.after - plain.before)} MiB after; voxrelay's PiperEngine "
            f"grows by {_mib(ours.peak - ours.before)} MiB and keeps "
            f"{_mib(ours.after - ours.before)} MiB: "
            f"{(plain.peak - plain.before) / max(1, ours.peak - ours.before):.0f} times less "
            "at its peak."
        )
    if done:
        most = max(run.audio_s / plan.direct_chars for run in done)
        counted = next((run for run in done if run.phonemes), None)
        dropped = ""
        if counted is not None and counted.phonemes < 0.95 * counted.phonemes_in_pieces:
            dropped = (
                f"; but piper's phonemizer made {counted.phonemes:,} phonemes of the whole "
                f"text against {counted.phonemes_in_pieces:,} of it a few words at a time: "
                "**it drops the rest of a long clause of numbers**, so less is spoken (and "
                "less memory taken) than the text asks for"
            )
        notes.append(
            f"Speech per character of this text: {most:.2f} s at speed 0.25 (the bound "
            "does not depend on it: a segment pauses once its client is behind)" + dropped + "."
        )
    log = measured.log
    notes += [
        f"Server log ({measured.log_path}): {log.lines:,} lines ("
        + ", ".join(f"{level} {n:,}" for level, n in log.levels.most_common())
        + "); session summaries by outcome: "
        + ", ".join(f"{o} {n:,}" for o, n in log.summaries.most_common()),
        *[f"Logged ({n} times): {line}" for line, n in log.problems.most_common(5)],
        f"Exit code after SIGTERM: {measured.exit_code}.",
    ]
    plots = [_plot(measured, runs, PLOTS / "memory.png")] if measured.points else []
    settings = " ".join(plan.arguments(0)[:-6])
    return Section(
        title="Worst-case memory",
        method=(
            f"One `voxrelay serve` process (`{settings}`) takes bursts of adversarial "
            "requests, one phase at a time, all at the slowest speed (0.25) and on text of "
            f"numbers with no sentence end (`{number_run_on(80).strip()}`..., the most "
            "speech per character). psutil reads the server's RSS every "
            f"{SAMPLE_EVERY_S * 1000:.0f} ms, and its VmHWM for the peak; the idle level and "
            "each phase's after level are read once the server has no active session "
            "(`voxrelay_active_sessions`) and is quiet. "
            "Growth is the phase's peak minus the idle level, against "
            "`voxrelay_server.memory.memory_bound` for these settings. Last rows: the same "
            f"{plan.direct_chars}-character text spoken by piper alone and by voxrelay's "
            "engine, each in a fresh process, against the bound's cost of one piper run."
        ),
        header=[
            "phase",
            "load",
            "clients saw",
            "peak above idle (MiB)",
            "bound (MiB)",
            "peak / bound",
            "RSS before → after (MiB)",
            "after / before",
        ],
        rows=rows,
        goals=goals,
        plots=plots,
        notes=notes,
    )


def _default_log() -> Path:
    return Path(tempfile.gettempdir()) / f"voxrelay-memory-{time.strftime('%Y%m%d-%H%M%S')}.log"


async def measure_all(plan: Plan, log_path: Path) -> tuple[Measured, list[Direct]]:
    """The server's phases, then (the server stopped) the engines alone, side by side."""
    measured = await measure(plan, log_path)
    print("memory: the engine alone", file=sys.stderr, flush=True)
    runs = await asyncio.gather(*(direct(kind, plan.direct_chars) for kind in DIRECT_KINDS))
    return measured, list(runs)


async def run(quick: bool) -> Section:
    """The benchmark as a suite section: `QUICK` (under a minute) or `FULL`."""
    return section(*await measure_all(QUICK if quick else FULL, _default_log()))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.memory", description=(__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="a shorter run (under a minute)")
    parser.add_argument(
        "--log", type=Path, default=None, help="file for the server's log (default: in /tmp)"
    )
    commands = parser.add_subparsers(dest="command")
    engine = commands.add_parser("engine", help="speak one text with piper in this process")
    engine.add_argument("kind", choices=sorted(DIRECT_KINDS))
    engine.add_argument("--chars", type=int, default=FULL.direct_chars)
    args = parser.parse_args(argv)
    if args.command == "engine":
        print(json.dumps(speak_directly(args.kind, args.chars)), flush=True)
        return 0
    if args.log is not None:
        args.log.unlink(missing_ok=True)  # the server appends to it
    log_path = args.log or _default_log()
    result = section(*asyncio.run(measure_all(QUICK if args.quick else FULL, log_path)))
    print(result.console())
    for note in result.notes:
        print(f"- {note}")
    for plot in result.plots:
        print(f"plot: {plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
