"""voxrelay against the Piper servers a user would run instead, all serving the same voice.

Three servers run side by side in one run, each loaded with the files of
`en_US-joe-medium` that voxrelay bundles:

- **voxrelay**: `voxrelay serve` with its default settings (piper and espeak loaded,
  `--workers` one per core); a client is a `voxrelay.AsyncClient` with one session,
  and a turn is its text and `turn_done` sent together.
- **wyoming-piper** (PyPI `wyoming-piper`), `python -m wyoming_piper` on a TCP port
  with the voice's files linked into a data directory of their own (so it finds them
  and downloads nothing), streaming on (its default): a client is one connection of
  the `wyoming` package's `AsyncTcpClient`, and a turn is its streaming events
  `SynthesizeStart`, `SynthesizeChunk` (the text) and `SynthesizeStop`, sent together;
  the server speaks the text sentence by sentence and ends with `SynthesizeStopped`.
- **piper http_server**: piper's own `python -m piper.http_server -m <model>`; a client
  is one `httpx.AsyncClient`, and a turn is a `POST /synthesize` of `{"text": ...}`,
  answered with a WAV file of the whole text.

A turn's first audio is the time from sending it to its first audio message
(voxrelay, wyoming-piper) or first bytes of the response body (http_server); its end,
to `TurnEnded`, `SynthesizeStopped` or the body's last byte. Audio seconds are
bytes / 2 / 22050 for all three (16-bit mono at the voice's rate; the WAV header is
not audio). The texts are the voice-agent section's assistant replies
(`bench/corpus/replies.json`): one client saying the first sentence of each reply, then
whole replies of three sentences or more, the servers alternating turn by turn; then
4 and 16 clients together, each saying one reply after another for a fixed window
(first audio of every turn started in it, and the audio that arrived in it per wall
second), and 4 and 16 conversations, each sending its next reply once a listener
playing at real time has heard the last (`Listener`: what each listener waits and
the silences it hears, measured the same way for all three servers).

`python -m bench.piper_servers [--quick]` runs it alone; the suite runs it as a section.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import wave
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import httpx
import psutil  # type: ignore[import-untyped]
from wyoming.audio import AudioChunk
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.tts import SynthesizeChunk, SynthesizeStart, SynthesizeStop, SynthesizeStopped

from bench.report import Goal, Section, median, percentile, run_alone
from bench.servers import (
    ServerProcess,
    free_port,
    start_server_process,
    stop_server_process,
)
from bench.voice_agent import load_replies, worst_gap
from voxrelay import AsyncClient, Audio, TurnEnded
from voxrelay_server.engines.piper_engine import bundled_joe_voice
from voxrelay_server.splitter import SentenceSplitter

VOXRELAY, WYOMING, HTTP = "voxrelay", "wyoming-piper", "piper http_server"
SERVERS = (VOXRELAY, WYOMING, HTTP)
VOICE = "en_US-joe-medium"
SAMPLE_RATE = 22050
"""The voice's rate: audio seconds = bytes / 2 / SAMPLE_RATE on every server."""
ORDERS = list(itertools.permutations(SERVERS))
"""The orders the servers take their turns in at one client, one after the other."""
SETTLE_S = 0.2
"""The pause before each turn at one client: onnxruntime's thread pools spin for a
while after a run, so a server's turn right after another's would share the CPU
with the other's spinning threads."""
WARM_UP_TURNS = 2
"""Turns each server says before anything is timed (piper's first inferences are
slow, and wyoming-piper loads its voice at its first request)."""

FIRST_AUDIO_GOAL = 0.95
"""voxrelay's one-sentence first audio p50 at 1 client, at most this x the faster other."""
P90_GOALS = {4: 0.41, 16: 0.30}
"""voxrelay's first-audio p90 at N clients, at most this x the better other."""
CONVERSATION_P90_GOALS = {4: FIRST_AUDIO_GOAL, 16: P90_GOALS[16]}
"""voxrelay's first-audio p90 in N conversations, at most this x the better other: 4
conversations use about a quarter of the engine's throughput, so the one-client goal;
16 use most of it, so the closed loop's."""
THROUGHPUT_GOAL = 1.09
"""voxrelay's audio throughput at 4 and 16 clients, at least this x the better other."""

CONVERSATION_STARTS_S = 4.0
"""Conversations begin evenly spread over this many seconds of their window, as callers
arrive at a contact centre (all at one instant would be a burst no service sees)."""

PARAGRAPH_SENTENCES = 3
"""The fewest sentences of a reply said as a paragraph."""


@dataclass(frozen=True)
class Config:
    """How much each measurement does; quick mode does less."""

    sentence_turns: int
    """One-sentence turns per server at 1 client."""
    paragraph_turns: int
    """Paragraph turns per server at 1 client."""
    window_s: float
    """Wall seconds during which each loaded client keeps starting turns."""
    paced_window_s: float
    """The same for conversations, whose turns come slower."""
    rounds: int
    """Windows per server and client count, the servers in a rotating order."""
    client_counts: tuple[int, ...] = tuple(P90_GOALS)
    """The numbers of clients (and of conversations) loading a server at once."""


FULL = Config(sentence_turns=24, paragraph_turns=15, window_s=12.0, paced_window_s=24.0, rounds=2)
QUICK = Config(
    sentence_turns=3,
    paragraph_turns=2,
    window_s=3.0,
    paced_window_s=4.0,
    rounds=1,
    client_counts=(4,),
)


@dataclass(frozen=True)
class Turn:
    """One text spoken: seconds from sending it to its first audio and to its end."""

    first_audio_s: float
    end_s: float
    audio_bytes: int


@dataclass(frozen=True)
class Heard:
    """One turn as its listener hears it (see `Listener`)."""

    wait_s: float
    """Silence before its first audio, from when the listener needed it: the send, or
    the end of the previous reply's playback if that was later."""
    worst_gap_s: float
    """The longest silence in the middle of the reply."""


class Listener:
    """A listener playing a client's audio at real time, from each reply's first audio.

    Each message's audio plays from when it arrives or when the audio before it ends,
    whichever is later; a reply's wait is counted from when the listener needed it (the
    send, or the end of the previous reply's playback if later). Servers that know
    nothing of playback and one that schedules by it are measured the same way.
    """

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
        self.playing_until = 0.0
        self.needed_at = 0.0
        self.arrivals: list[tuple[float, float]] = []
        """This reply's messages: (arrival, seconds of audio)."""

    def sent(self) -> None:
        """A reply was sent now."""
        self.needed_at = max(self.clock(), self.playing_until)
        self.arrivals = []

    def audio(self, size: int) -> None:
        now, seconds = self.clock(), audio_seconds(size)
        self.arrivals.append((now, seconds))
        self.playing_until = max(now, self.playing_until) + seconds

    def heard(self) -> Heard:
        if not self.arrivals:
            raise RuntimeError("a reply without audio")
        wait = max(0.0, self.arrivals[0][0] - self.needed_at)
        return Heard(wait, worst_gap(self.arrivals)[0])

    async def played(self) -> None:
        """Wait until the listener has heard everything that arrived."""
        await asyncio.sleep(max(0.0, self.playing_until - self.clock()))


OnAudio = Callable[[int], None]
"""Told the audio bytes of each message (or response body) as it arrives."""
Speaker = Callable[[str, OnAudio], Awaitable[Turn]]
"""One client of a server, connected: says a text, returns its timings."""
Connect = Callable[[], AbstractAsyncContextManager[Speaker]]


def audio_seconds(audio_bytes: int) -> float:
    return audio_bytes / 2 / SAMPLE_RATE


class TurnClock:
    """Times one turn from its creation: first audio and end."""

    def __init__(self, on_audio: OnAudio) -> None:
        self.on_audio = on_audio
        self.started = time.perf_counter()
        self.first: float | None = None
        self.audio_bytes = 0

    def audio(self, size: int) -> None:
        if self.first is None:
            self.first = time.perf_counter() - self.started
        self.audio_bytes += size
        self.on_audio(size)

    def turn(self, text: str) -> Turn:
        if self.first is None or not self.audio_bytes:
            raise RuntimeError(f"no audio for {text!r}")
        return Turn(self.first, time.perf_counter() - self.started, self.audio_bytes)


@asynccontextmanager
async def voxrelay_speaker(target: str) -> AsyncIterator[Speaker]:
    """One session on its own channel; each text is a turn (text, then `turn_done`)."""
    async with AsyncClient(target) as client, client.session() as session:
        events = session.events()

        async def say(text: str, on_audio: OnAudio) -> Turn:
            clock = TurnClock(on_audio)
            await session.send_text(text)
            await session.turn_done()
            async for event in events:
                if isinstance(event, Audio):
                    clock.audio(event.samples.nbytes)
                elif isinstance(event, TurnEnded):
                    break
            return clock.turn(text)

        yield say


@asynccontextmanager
async def wyoming_speaker(port: int) -> AsyncIterator[Speaker]:
    """One connection; each text is a stream: `SynthesizeStart`, `SynthesizeChunk`,
    `SynthesizeStop`, answered with audio sentence by sentence, then `SynthesizeStopped`."""
    client = AsyncTcpClient("127.0.0.1", port)
    await client.connect()
    try:

        async def say(text: str, on_audio: OnAudio) -> Turn:
            clock = TurnClock(on_audio)
            for request in (SynthesizeStart(), SynthesizeChunk(text=text), SynthesizeStop()):
                await client.write_event(request.event())
            while True:
                event = await client.read_event()
                if event is None:
                    raise RuntimeError("wyoming-piper closed the connection")
                if AudioChunk.is_type(event.type):
                    clock.audio(len(event.payload or b""))
                elif SynthesizeStopped.is_type(event.type):
                    return clock.turn(text)
                elif Error.is_type(event.type):
                    raise RuntimeError(f"wyoming-piper: {event.data}")

        yield say
    finally:
        await client.disconnect()


def wav_audio_bytes(body: bytes) -> int:
    """Bytes of 16-bit mono audio at the voice's rate in a WAV file (not its header)."""
    with wave.open(io.BytesIO(body), "rb") as wav:
        if (wav.getframerate(), wav.getsampwidth(), wav.getnchannels()) != (SAMPLE_RATE, 2, 1):
            raise RuntimeError(f"unexpected WAV format: {wav.getparams()}")
        return wav.getnframes() * 2


@asynccontextmanager
async def http_speaker(url: str) -> AsyncIterator[Speaker]:
    """One HTTP client (a kept-alive connection); each text is a `POST /synthesize`."""
    async with httpx.AsyncClient(timeout=300) as client:

        async def say(text: str, on_audio: OnAudio) -> Turn:
            started = time.perf_counter()
            first: float | None = None
            body = bytearray()
            async with client.stream("POST", f"{url}/synthesize", json={"text": text}) as answer:
                answer.raise_for_status()
                async for chunk in answer.aiter_raw():
                    if first is None and chunk:
                        first = time.perf_counter() - started
                    body += chunk
            audio = wav_audio_bytes(bytes(body))
            on_audio(audio)  # the audio is usable once the file is whole
            if first is None or not audio:
                raise RuntimeError(f"no audio for {text!r}")
            return Turn(first, time.perf_counter() - started, audio)

        yield say


def start_process(
    arguments: Sequence[str], ready: Callable[[], bool], log: Path, timeout_s: float = 60.0
) -> subprocess.Popen[bytes]:
    """A server as its own process, its output appended to `log`, once `ready()`."""
    with log.open("ab") as output:
        process = subprocess.Popen(arguments, stdout=output, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout_s
    while not ready():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            tail = log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{' '.join(arguments)} did not start:\n{tail}")
        time.sleep(0.2)
    return process


def accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except OSError:
        return False
    return True


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=0.5) as response:
            return bool(response.status == 200)
    except OSError:
        return False


@dataclass
class Running:
    """The three servers, started: how to connect a client to each, and their processes."""

    connect: dict[str, Connect]
    processes: dict[str, ServerProcess]
    data_dir: Path


@asynccontextmanager
async def running_servers() -> AsyncIterator[Running]:
    """Start the three servers (at once) on free loopback ports; stop them at the end."""
    model, config = bundled_joe_voice()
    with tempfile.TemporaryDirectory(prefix="voxrelay-piper-servers-") as temporary:
        data_dir = Path(temporary)
        # wyoming-piper looks for <voice>.onnx and .onnx.json in its data dirs; with
        # both there it downloads nothing (and no --update-voices: its voice list is
        # the one it ships).
        (data_dir / f"{VOICE}.onnx").symlink_to(model)
        (data_dir / f"{VOICE}.onnx.json").symlink_to(config)
        wyoming_port, http_port = free_port(), free_port()
        http_url = f"http://127.0.0.1:{http_port}"
        python = sys.executable
        wyoming = [
            *(python, "-m", "wyoming_piper", "--uri", f"tcp://127.0.0.1:{wyoming_port}"),
            *("--voice", VOICE, "--data-dir", temporary, "--download-dir", temporary),
        ]
        http = [
            *(python, "-m", "piper.http_server", "-m", str(data_dir / f"{VOICE}.onnx")),
            *("--host", "127.0.0.1", "--port", str(http_port), "--data-dir", temporary),
        ]
        started = await asyncio.gather(
            asyncio.to_thread(start_server_process, ["--engines", "piper,espeak"]),
            asyncio.to_thread(
                start_process, wyoming, partial(accepts, wyoming_port), data_dir / "wyoming.log"
            ),
            asyncio.to_thread(
                start_process, http, partial(answers, f"{http_url}/info"), data_dir / "http.log"
            ),
            return_exceptions=True,
        )
        processes: dict[str, ServerProcess] = {}
        for name, target, result in zip(
            SERVERS, ("", f"127.0.0.1:{wyoming_port}", http_url), started, strict=True
        ):
            if isinstance(result, ServerProcess):
                processes[name] = result
            elif isinstance(result, subprocess.Popen):
                processes[name] = ServerProcess(target, result)
        try:
            failures = [r for r in started if isinstance(r, BaseException)]
            if failures:
                raise failures[0]
            yield Running(
                connect={
                    VOXRELAY: partial(voxrelay_speaker, processes[VOXRELAY].target),
                    WYOMING: partial(wyoming_speaker, wyoming_port),
                    HTTP: partial(http_speaker, http_url),
                },
                processes=processes,
                data_dir=data_dir,
            )
        finally:
            await asyncio.gather(
                *(asyncio.to_thread(stop_server_process, p) for p in processes.values())
            )


def check_no_download(data_dir: Path) -> None:
    """Fail if a competitor logged a download: both must serve the local files."""
    for log in data_dir.glob("*.log"):
        text = log.read_text(errors="replace")
        if "Download" in text:
            raise RuntimeError(f"{log.name} shows a download:\n{text[-2000:]}")


def sentence_ends(reply: str) -> list[int]:
    """Where the reply's sentences end, as voxrelay's splitter reads them."""
    return SentenceSplitter(0, len(reply) + 1).sentence_ends(reply)


def paragraphs(count: int) -> list[str]:
    """The first `count` replies of `PARAGRAPH_SENTENCES` sentences or more."""
    long = [r for r in load_replies() if len(sentence_ends(r)) >= PARAGRAPH_SENTENCES - 1]
    return [long[i % len(long)] for i in range(count)]


def sentences(count: int) -> list[str]:
    """The first sentence of each of the first `count` replies."""
    replies = load_replies()
    firsts = []
    for i in range(count):
        reply = replies[i % len(replies)]
        ends = sentence_ends(reply)
        firsts.append(reply[: ends[0]].strip() if ends else reply)
    return firsts


def ignore(_size: int) -> None:
    """An `OnAudio` for turns that only need their own timings."""


async def one_client(
    running: Running, texts: Sequence[str], warm_up: bool = False
) -> dict[str, list[Turn]]:
    """Each server says every text on one client, the servers alternating turn by turn
    in every order in turn (so each follows each other as often), `SETTLE_S` apart;
    after warm-up turns if `warm_up`."""
    turns: dict[str, list[Turn]] = {name: [] for name in SERVERS}
    async with AsyncExitStack() as stack:
        speakers = {
            name: await stack.enter_async_context(running.connect[name]()) for name in SERVERS
        }
        for text in texts[:WARM_UP_TURNS] if warm_up else ():
            for name in SERVERS:
                await speakers[name](text, ignore)
        for index, text in enumerate(texts):
            for name in ORDERS[index % len(ORDERS)]:
                await asyncio.sleep(SETTLE_S)
                turns[name].append(await speakers[name](text, ignore))
    return turns


@dataclass
class Load:
    """N clients on one server, each saying one reply after another."""

    turns: list[Turn] = field(default_factory=list)
    heard: list[Heard] = field(default_factory=list)
    audio_s: float = 0.0
    """Audio that arrived within the windows."""
    window_s: float = 0.0
    server_cpu_s: float = 0.0
    """CPU time of the server process (and its children) within the windows."""

    @property
    def throughput(self) -> float:
        """Seconds of audio per wall second."""
        return self.audio_s / self.window_s

    @property
    def cores(self) -> float:
        return self.server_cpu_s / self.window_s


def cpu_seconds(pid: int) -> float:
    process = psutil.Process(pid)
    total = 0.0
    for each in [process, *process.children(recursive=True)]:
        times = each.cpu_times()
        total += times.user + times.system
    return total


async def loaded(
    connect: Connect, pid: int, clients: int, window_s: float, load: Load, paced: bool
) -> None:
    """`clients` clients start together and each starts turns until the window closes:
    the next as soon as the last has ended or, if `paced`, once its listener has heard
    it (a conversation). Adds to `load` every turn started in the window and the audio
    that arrived within it."""
    arrived = 0
    closes = 0.0
    replies = load_replies()

    async def client(speaker: Speaker, offset: int) -> None:
        nonlocal arrived
        listener = Listener()
        if paced:
            await asyncio.sleep(CONVERSATION_STARTS_S * offset / clients)

        def on_audio(size: int) -> None:
            nonlocal arrived
            listener.audio(size)
            if time.perf_counter() <= closes:
                arrived += size

        for index in range(offset, 1_000_000):
            if time.perf_counter() >= closes:
                return
            listener.sent()
            load.turns.append(await speaker(replies[index % len(replies)], on_audio))
            load.heard.append(listener.heard())
            if paced and time.perf_counter() < closes:
                await listener.played()

    async with AsyncExitStack() as stack:
        speakers = await asyncio.gather(
            *(stack.enter_async_context(connect()) for _ in range(clients))
        )

        async def cpu_at_close() -> float:
            await asyncio.sleep(window_s)
            return cpu_seconds(pid)

        cpu_before = cpu_seconds(pid)
        closes = time.perf_counter() + window_s
        cpu_after = asyncio.create_task(cpu_at_close())
        await asyncio.gather(*(client(s, i) for i, s in enumerate(speakers)))
        load.server_cpu_s += await cpu_after - cpu_before
    load.audio_s += audio_seconds(arrived)
    load.window_s += window_s


async def under_load(
    running: Running, clients: int, config: Config, paced: bool = False
) -> dict[str, Load]:
    loads = {name: Load() for name in SERVERS}
    window_s = config.paced_window_s if paced else config.window_s
    for round_ in range(config.rounds):
        for index in range(len(SERVERS)):
            name = SERVERS[(round_ + index + clients) % len(SERVERS)]
            pid = running.processes[name].pid
            await loaded(running.connect[name], pid, clients, window_s, loads[name], paced)
    return loads


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f}"


def p50_p90(turns: Sequence[Turn], end: bool = False) -> str:
    return spread([t.end_s if end else t.first_audio_s for t in turns])


def spread(values: Sequence[float]) -> str:
    return f"{ms(median(values))} / {ms(percentile(values, 90))}"


def threads(pid: int) -> int:
    return int(psutil.Process(pid).num_threads())


@dataclass
class Results:
    sentence: dict[str, list[Turn]]
    paragraph: dict[str, list[Turn]]
    loads: dict[int, dict[str, Load]]
    conversations: dict[int, dict[str, Load]]
    threads: dict[str, int]


def goals(results: Results) -> list[Goal]:
    others = [WYOMING, HTTP]
    firsts = {
        name: median([t.first_audio_s for t in turns]) for name, turns in results.sentence.items()
    }
    best = min(firsts[o] for o in others)
    ratio = firsts[VOXRELAY] / best
    rows = [
        Goal(
            f"1 client, one sentence: voxrelay's first audio p50 at most {FIRST_AUDIO_GOAL} x "
            "the faster of the others",
            f"{ms(firsts[VOXRELAY])} ms against {ms(best)} ms: {ratio:.2f}",
            ratio <= FIRST_AUDIO_GOAL,
        )
    ]
    for clients, loads in results.loads.items():
        rows.append(p90_goal(f"{clients} clients", loads, P90_GOALS[clients]))
        rows.append(
            p90_goal(
                f"{clients} conversations",
                results.conversations[clients],
                CONVERSATION_P90_GOALS[clients],
            )
        )
        rate = {n: load.throughput for n, load in loads.items()}
        best_rate = max(rate[o] for o in others)
        ratio = rate[VOXRELAY] / best_rate
        rows.append(
            Goal(
                f"{clients} clients: voxrelay's throughput at least {THROUGHPUT_GOAL} x the "
                "better of the others",
                f"{rate[VOXRELAY]:.2f} against {best_rate:.2f} audio s/s: {ratio:.3f}",
                ratio >= THROUGHPUT_GOAL,
            )
        )
    return rows


def p90_goal(load_name: str, loads: dict[str, Load], goal: float) -> Goal:
    """voxrelay's first-audio p90 against the better of the others'."""
    p90 = {n: percentile([t.first_audio_s for t in load.turns], 90) for n, load in loads.items()}
    best = min(p90[o] for o in (WYOMING, HTTP))
    ratio = p90[VOXRELAY] / best
    return Goal(
        f"{load_name}: voxrelay's first-audio p90 at most {goal} x the better of the others",
        f"{ms(p90[VOXRELAY])} ms against {ms(best)} ms: {ratio:.2f}",
        ratio <= goal,
    )


def load_rows(name: str, loads: dict[str, Load], paced: bool) -> list[Sequence[str]]:
    """First audio, what the listener heard, throughput and CPU of one load."""
    rows: list[Sequence[str]] = [
        (f"{name}: first audio", *(p50_p90(loads[n].turns) for n in SERVERS)),
    ]
    if not paced:  # a conversation sends when its listener needs the reply: the same
        rows.append(
            (
                f"{name}: listener's wait for first audio",
                *(spread([h.wait_s for h in loads[n].heard]) for n in SERVERS),
            )
        )
    return [
        *rows,
        (
            f"{name}: longest silence within a reply",
            *(spread([h.worst_gap_s for h in loads[n].heard]) for n in SERVERS),
        ),
        (f"{name}: throughput (audio s/s)", *(f"{loads[n].throughput:.2f}" for n in SERVERS)),
        (
            f"{name}: turns / server CPU (cores)",
            *(f"{len(loads[n].turns)} / {loads[n].cores:.2f}" for n in SERVERS),
        ),
        (
            f"{name}: audio s per server CPU s",
            *(f"{loads[n].audio_s / loads[n].server_cpu_s:.1f}" for n in SERVERS),
        ),
    ]


def section(results: Results, config: Config) -> Section:
    def row(what: str, cells: Callable[[str], str]) -> Sequence[str]:
        return (what, *(cells(name) for name in SERVERS))

    paragraph = f"1 client, paragraph ({PARAGRAPH_SENTENCES}+ sentences)"
    rows = [
        row("1 client, one sentence: first audio", lambda n: p50_p90(results.sentence[n])),
        row("1 client, one sentence: end of turn", lambda n: p50_p90(results.sentence[n], True)),
        row(f"{paragraph}: first audio", lambda n: p50_p90(results.paragraph[n])),
        row(f"{paragraph}: end of turn", lambda n: p50_p90(results.paragraph[n], True)),
    ]
    for clients, loads in results.loads.items():
        rows += load_rows(f"{clients} clients", loads, paced=False)
    for clients, loads in results.conversations.items():
        rows += load_rows(f"{clients} conversations", loads, paced=True)
    cores = os.cpu_count() or 1
    physical = psutil.cpu_count(logical=False) or cores
    single = {
        name: audio_seconds(sum(t.audio_bytes for t in turns)) / sum(t.end_s for t in turns)
        for name, turns in results.sentence.items()
    }
    most = max(results.loads)
    busiest = results.loads[most][VOXRELAY]
    notes = [
        f"voxrelay: `voxrelay serve --engines piper,espeak`, otherwise its defaults: "
        f"`--workers` {cores} (one per core), each piper run on one onnxruntime thread, and "
        "the only segment being spoken on a copy of the voice with a thread per core; a "
        "turn's first segment ends at its first clause of 4 words or more, later ones at "
        "sentence ends, so its first audio comes before the first sentence is whole. "
        f"{results.threads[VOXRELAY]} threads in the process after warm-up.",
        "wyoming-piper: `python -m wyoming_piper --uri tcp://127.0.0.1:PORT --voice "
        f"{VOICE} --data-dir DIR --download-dir DIR` (DIR holds links to the same model and "
        "config; its logs are checked for downloads), streaming on (its default; "
        "`--no-streaming` turns it off): it splits the streamed text into sentences and "
        "sends each one's audio when that sentence is synthesized whole, as "
        "1024-sample chunks. Every synthesis, for every connection, holds one global "
        "lock and runs on the server's event loop: one sentence at a time server-wide. Its "
        "`PiperVoice` uses onnxruntime's default session options: an intra-op pool of one "
        f"thread per physical core ({physical} here). "
        f"{results.threads[WYOMING]} threads in the process after warm-up.",
        "piper http_server: `python -m piper.http_server -m DIR/en_US-joe-medium.onnx "
        "--host 127.0.0.1 --port PORT --data-dir DIR` (piper-tts[http], Flask's "
        "development server, a thread per request): `POST /synthesize` with "
        '`{"text": ...}` answers with a WAV file of the whole text, so its first audio is '
        "its end of turn (no streaming). Concurrent requests run at once on one "
        "onnxruntime session with the default options (an intra-op pool of one thread per "
        f"physical core, {physical} here, shared by them). "
        f"{results.threads[HTTP]} threads in the process after warm-up.",
        "What the figures show: at 1 client, a first sentence with a clause of 4 words "
        "or more before its end (most of an assistant's longer ones) is spoken from its "
        "first clause by voxrelay and whole by the others, so voxrelay's first audio is "
        "that much earlier; a short one ('Got it.') is one piper run on every server, on an "
        f"onnxruntime pool of {physical} threads, the same work. Under load all three are "
        "bound by the same CPU (the server CPU rows); what differs is how soon each gives "
        "a turn its first audio (wyoming-piper one sentence at a time server-wide, "
        "http_server only once the whole reply is synthesized, voxrelay the first clause of "
        "every turn due first), how much audio each makes of the CPU it gets (audio s per "
        "server CPU s; what it gets moves with the other work on the machine) and how fair "
        "its order is (the p90). One-sentence turns at 1 client made audio at "
        + ", ".join(f"{name} {rate:.2f}" for name, rate in single.items())
        + " audio s/s of their turns.",
        f"Under load (*N clients*, a closed loop): the clients of one server start "
        "together, each says one reply after another (the next as soon as the last has "
        "ended) and starts no new turn once the window "
        f"({config.window_s:g} s, {config.rounds} per server and client count, the servers "
        "in a rotating order) has closed; first audio counts every turn started in a "
        "window, throughput the audio that arrived in the windows per window second. "
        "Server CPU: the server process's (and its children's) within the windows.",
        f"*N conversations*: the same, but each client sends its next reply only once a "
        "listener playing at real time from the reply's first audio has heard all of it "
        "(an agent answering a caller who has listened), and the conversations begin "
        f"evenly spread over the first {CONVERSATION_STARTS_S:g} s of the window "
        f"({config.paced_window_s:g} s). Each client's listener plays every audio message "
        "from when it arrives or when the audio before it ends, whichever is later: "
        "*listener's wait* is the silence before a reply's first audio from when the "
        "listener needed it (the send, or the end of the previous reply's playback if "
        "later), *longest silence within a reply* the worst gap heard after the reply "
        "began (http_server's reply arrives whole, so it has none by construction).",
        "In the closed loop each client sends its next reply once the last has arrived, "
        "while a listener would still be playing it for seconds (at "
        f"{most} clients voxrelay's replies arrive at {busiest.throughput / most:.1f}x "
        "real time each). voxrelay schedules by when a listener needs audio: a new turn "
        "of a session whose listener is still playing is due when that audio runs out, "
        "not at once, and a listener close to running dry goes before new turns; so its "
        "first audio timed from the send includes the previous reply's playback, which "
        "the listener's wait does not, and the others, which know nothing of playback, "
        "serve turns in arrival order. The conversations are the case a voice agent "
        "meets; the closed loop is the saturated one. `python -m bench.load_compare "
        "--base REV` runs both loads on voxrelay at another revision and this one, side "
        "by side (the optimisation log's fifth round has the revision before first-clause "
        "segmentation against it).",
        f"Times are ms, p50 / p90. A shared, noisy {cores}-core machine: the benchmark's "
        "clients run beside the servers, and other work runs at the same time.",
    ]
    counts = " and ".join(str(count) for count in config.client_counts)
    return Section(
        title="Piper servers: voxrelay against wyoming-piper and piper's http_server",
        method=(
            "The same voice (`en_US-joe-medium`, the files voxrelay bundles) served by "
            "`voxrelay serve` (gRPC, `voxrelay.AsyncClient`), wyoming-piper (the `wyoming` "
            "package's `AsyncTcpClient`, streaming events) and piper's own "
            "`piper.http_server` (`httpx`, `POST /synthesize`), all running in this run: "
            f"one client, {config.sentence_turns} one-sentence and {config.paragraph_turns} "
            "paragraph turns per server, the servers alternating turn by turn; then "
            f"{counts} clients at once, each saying one reply after another for a window, "
            f"and {counts} conversations (the next reply once the last has been heard). The "
            "texts: the voice-agent section's assistant replies (the first sentence of "
            "each, whole replies of three sentences or more, and every reply under load). "
            "First audio: from sending a turn to its first audio message (or response body "
            "bytes); audio seconds are bytes / 2 / 22050 on all three."
        ),
        header=("measure", *SERVERS),
        rows=rows,
        goals=goals(results),
        notes=notes,
    )


async def run(quick: bool) -> Section:
    config = QUICK if quick else FULL
    async with running_servers() as running:
        check_no_download(running.data_dir)
        sentence = await one_client(running, sentences(config.sentence_turns), warm_up=True)
        check_no_download(running.data_dir)  # wyoming-piper loads its voice on first use
        counts = {name: threads(p.pid) for name, p in running.processes.items()}
        print(
            "   one sentence, first audio p50 (ms): "
            + ", ".join(
                f"{n} {ms(median([t.first_audio_s for t in sentence[n]]))}" for n in SERVERS
            ),
            file=sys.stderr,
            flush=True,
        )
        paragraph = await one_client(running, paragraphs(config.paragraph_turns))
        loads: dict[int, dict[str, Load]] = {}
        conversations: dict[int, dict[str, Load]] = {}
        for clients in config.client_counts:
            loads[clients] = await under_load(running, clients, config)
            conversations[clients] = await under_load(running, clients, config, paced=True)
            print(
                f"   {clients} clients, first audio p90 (ms), closed loop / conversations: "
                + ", ".join(
                    f"{n} {p90_ms(loads[clients][n])} / {p90_ms(conversations[clients][n])}"
                    for n in SERVERS
                ),
                file=sys.stderr,
                flush=True,
            )
    return section(Results(sentence, paragraph, loads, conversations, counts), config)


def p90_ms(load: Load) -> str:
    return ms(percentile([t.first_audio_s for t in load.turns], 90))


def main(argv: Sequence[str] | None = None) -> int:
    return run_alone(
        run,
        argv,
        prog="python -m bench.piper_servers",
        description=__doc__,
        quick_help="fewer turns, shorter windows",
    )


if __name__ == "__main__":
    sys.exit(main())
