"""Real voices (piper, espeak): throughput direct and through voxrelay, and real-time capacity.

For `piper/en_US-joe-medium` and `espeak/en-us` this section measures, in one run:

- **Throughput**, in seconds of audio produced per wall second with the machine
  used fully. *Direct*: the engine object called in this process, with as many
  synthesis lanes as its worker pool runs at once (`engine.max_concurrency`:
  piper's `workers`, one onnxruntime thread each, default one per core; espeak
  two: one speaking and one queued at its one worker process), each lane
  synthesizing one sentence per `synthesize()` call, as the server's segments do,
  from a shared queue of the same texts. *Through voxrelay*: a `voxrelay serve`
  process on loopback; the same texts, one session each, all opened at once from
  this process, their audio read as fast as it arrives. The two alternate, each
  going first in turn, and each voxrelay run is paired with the direct run beside it.
  A run's throughput is its steady rate: the slope of the audio received against
  time between 10 % and 90 % of the run's audio, so opening hundreds of sessions at
  once (a burst a server sees rarely) and the run's last segments do not count.
- **First audio and real-time factor** of one text on an idle server: direct is
  one `synthesize()` call on the whole text; through voxrelay is one session
  sending it in one message (the server splits it and runs its sentences in parallel).
- **Real-time sessions**: N listeners start together; each streams a
  multi-sentence text sentence by sentence (as an LLM would), starts a playback
  clock at its first audio plus a fixed jitter buffer, and from then on needs
  sample n by `first audio + buffer + n / rate`. An underrun is an audio message
  arriving after the moment its first sample must play. Each trial is paired with
  the direct throughput measured just before and just after it: what that
  throughput allows (throughput / 1.0 real time, less a margin) is the trial's
  yardstick, so a machine that speeds up or slows down between the phases of a
  run moves both sides. Three trials at the goal's share of what is allowed
  decide the goal (it is met if most pass); then trials grow, or bisect down,
  to the largest share without a single underrun.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import psutil  # type: ignore[import-untyped]

from bench.report import PLOTS, Goal, Section, at_least, median, percentile, save_figure, spread
from bench.servers import ServerProcess, start_server_process, stop_server_process
from voxrelay import Audio
from voxrelay.client import AsyncSession, SessionOptions
from voxrelay.v1 import speech_pb2_grpc
from voxrelay_server.engines.base import SpeechEngine, SynthesisOptions, VoiceInfo
from voxrelay_server.engines.espeak_engine import EspeakEngine
from voxrelay_server.engines.piper_engine import PiperEngine, bundled_joe_voice

PIPER = "piper/en_US-joe-medium"
ESPEAK = "espeak/en-us"
VOICES = (PIPER, ESPEAK)

SENTENCES = (
    "The morning train left the station a little late.",
    "We walked along the river until the sun went down.",
    "Please remember to water the plants before you go.",
    "The library closes early on the first Friday of May.",
    "She found an old map folded inside the kitchen drawer.",
    "Our team will review the results again next Tuesday.",
    "A cold wind blew across the hills all through the night.",
    "He asked for a table by the window and a pot of tea.",
)
"""Sentences of similar length (about 2.8 s of speech each), so no session's next
sentence is due much sooner than another's."""
SHORT_SENTENCES = (
    "The train left a little late.",
    "We walked along the quiet river.",
    "Please water the plants today.",
    "The library closes early today.",
    "She found a map in the drawer.",
    "Our team meets again on Tuesday.",
    "A cold wind blew over the hills.",
    "He asked for a pot of green tea.",
)
"""Quick mode's sentences: about 1.7 s of speech each."""

JITTER_BUFFER_S = 0.100
"""Playback starts this long after a session's first audio arrives."""
SEND_GAP_S = 0.050
"""Pause between the sentences a listener sends, like an LLM streaming its answer."""
CAPACITY_MARGIN = 0.10
"""Real-time sessions the throughput allows: floor(throughput x (1 - margin))."""
SESSIONS_GOAL = 0.9
THROUGHPUT_GOAL = 0.9
SHARE_GROWTH = 1.25
"""While trials pass, the next asks for this many times the share of the last."""
MAX_SHARE = 2.0
"""No trial asks for more than this many times what the direct throughput allows."""
CHANNELS = 4
"""Client connections the sessions are spread over (separate TCP connections)."""
LATE_START_FACTOR = 1.5
"""A real-time listener starts late if its first audio comes after this many times what
the engine, at the direct throughput measured before the trial, needs to make every
session's first sentence: serving the sessions in the order they opened takes about that,
and the rest is room for opening them all at once."""
STEADY_FROM, STEADY_TO = 0.1, 0.9
"""A run's throughput counts the audio between these shares of it: the start (opening
all the sessions at once) and the end (the last segments, with lanes running dry) are
not the rate a loaded server sustains, and would make the figure depend on run length."""


@dataclass(frozen=True)
class Config:
    """How much work each measurement does; quick mode does less."""

    sentences: tuple[str, ...]
    """What listeners say, a few sentences each."""
    repeats: int
    """Throughput, first audio and real-time factor repeats per voice and path."""
    throughput_work_s: float
    """Wall seconds of direct synthesis a throughput measurement aims for."""
    session_sentences: int
    """Sentences each real-time listener sends."""
    max_trials: int
    """Real-time session counts tried per voice, at most."""
    resolution: float
    """The search stops once the failing share is within this fraction of the passing one."""
    first_share: float
    """The first trials' sessions, as a share of what the direct throughput allows."""
    first_repeats: int
    """Trials at `first_share`: the share passes if most of them do (a trial is one
    draw of a machine whose speed moves from one second to the next)."""


FULL = Config(
    SENTENCES,
    repeats=10,
    throughput_work_s=2.0,
    session_sentences=3,
    max_trials=6,
    resolution=0.05,
    first_share=SESSIONS_GOAL,
    first_repeats=3,
)
QUICK = Config(
    SHORT_SENTENCES,
    repeats=1,
    throughput_work_s=0.6,
    session_sentences=2,
    max_trials=2,
    resolution=1.0,
    first_share=SESSIONS_GOAL / 2,
    first_repeats=1,
)


@dataclass
class Single:
    """One text spoken alone: time to first audio and the whole."""

    first_audio_s: float
    total_s: float
    audio_s: float

    @property
    def rtf(self) -> float:
        """Wall time / audio duration (below 1 is faster than real time)."""
        return self.total_s / self.audio_s


@dataclass(frozen=True)
class Cpu:
    """Cores busy over an interval: the server process, this process, everything else."""

    server: float = 0.0
    client: float = 0.0
    other: float = 0.0
    """Other processes on the machine (a shared machine: they slow both paths)."""


class CpuMeter:
    """Measures `Cpu` between its creation and `stop()`."""

    def __init__(self, server: ServerProcess | None) -> None:
        self._server = psutil.Process(server.pid) if server is not None else None
        self._client = psutil.Process()
        self._start = self._sample()

    def _sample(self) -> tuple[float, float, float, float]:
        machine = psutil.cpu_times()
        busy = float(sum(machine)) - float(machine.idle) - float(getattr(machine, "iowait", 0.0))
        # Each side with its worker processes (espeak's); the server is itself a child
        # of this (the client) process, so it is taken out of the client's tree.
        server = tree_cpu_seconds(self._server) if self._server is not None else 0.0
        return time.perf_counter(), busy, server, tree_cpu_seconds(self._client) - server

    def stop(self) -> Cpu:
        """Cores used since the meter was created."""
        end = self._sample()
        wall, busy, server, client = (b - a for a, b in zip(self._start, end, strict=True))
        return Cpu(server / wall, client / wall, max(0.0, busy - server - client) / wall)


def cpu_seconds(process: psutil.Process) -> float:
    """User + system CPU time of `process` so far."""
    times = process.cpu_times()
    return float(times.user + times.system)


def tree_cpu_seconds(process: psutil.Process) -> float:
    """CPU time of `process` and its live descendants so far."""
    total = cpu_seconds(process)
    for child in process.children(recursive=True):
        with suppress(psutil.NoSuchProcess):
            total += cpu_seconds(child)
    return total


class Arrivals:
    """When each piece of a run's audio arrived, for the run's steady rate."""

    def __init__(self) -> None:
        self._times: list[float] = []
        self._audio_s: list[float] = []

    def add(self, audio_s: float, when: float | None = None) -> None:
        """`audio_s` seconds of audio arrived at `when` (`time.perf_counter()`; default now)."""
        self._times.append(time.perf_counter() if when is None else when)
        self._audio_s.append(audio_s)

    @property
    def audio_s(self) -> float:
        """All the audio that arrived."""
        return sum(self._audio_s)

    def steady_rate(self, low: float = STEADY_FROM, high: float = STEADY_TO) -> float:
        """Audio s per s while the run was between `low` and `high` of its audio.

        The slope of the least-squares line through (arrival time, audio received so
        far) over those arrivals: an engine that delivers a sentence at a time (piper)
        makes a staircase, and a line through all of its steps is not moved by where
        the first and last step fall as two points would be. 0.0 with under two points.
        """
        total = self.audio_s
        times: list[float] = []
        received: list[float] = []
        for when, so_far in zip(self._times, itertools.accumulate(self._audio_s), strict=True):
            if low * total <= so_far <= high * total:
                times.append(when)
                received.append(so_far)
        try:
            return statistics.linear_regression(times, received).slope
        except statistics.StatisticsError:  # under two points, or all at one time
            return 0.0


@dataclass
class Throughput:
    """Audio produced over a run, and the CPU busy meanwhile."""

    audio_s: float
    wall_s: float
    steady_rate: float
    """Seconds of audio per wall second between 10 % and 90 % of the run's audio."""
    cpu: Cpu = field(default_factory=Cpu)
    first_audio_s: float = 0.0
    """Through voxrelay: from the start to the first audio of any session (the time
    it takes to open the sessions and start the first synthesis)."""

    @property
    def rate(self) -> float:
        """The throughput: the steady rate, without the run's start and end."""
        return self.steady_rate

    @property
    def run_rate(self) -> float:
        """Seconds of audio per wall second over the whole run, start and end included."""
        return self.audio_s / self.wall_s


@dataclass
class Listener:
    """What one real-time listener saw."""

    first_audio_s: float | None = None
    """From the session's start to its first audio."""
    audio_s: float = 0.0
    worst_slack_s: float = math.inf
    """Smallest (deadline - arrival) over its audio messages after the first (whose slack
    is the jitter buffer by definition); below 0 is an underrun."""
    underruns: int = 0
    error: str = ""


@dataclass
class Trial:
    """N real-time listeners at once."""

    sessions: int
    listeners: list[Listener]
    wall_s: float
    stopped_early: bool
    """Stopped at the first underrun: listeners hold what they had received by then."""
    cpu: Cpu = field(default_factory=Cpu)
    beside: list[Throughput] = field(default_factory=list)
    """The direct throughput measured just before and just after the trial."""
    asked_share: float = 0.0
    """The share of allowed sessions asked for (of what the measurement before allowed)."""
    start_allowance_s: float = math.inf
    """A listener whose first audio comes later than this after its start started late."""

    @property
    def late_starts(self) -> int:
        """Listeners whose first audio came later than `start_allowance_s`."""
        return sum(1 for first in self.first_audio if first > self.start_allowance_s)

    @property
    def allowed(self) -> int:
        """Real-time sessions the direct throughput beside the trial allows."""
        return allowed_by(median([t.rate for t in self.beside]))

    @property
    def share(self) -> float:
        """Sessions as a share of what was allowed beside the trial."""
        return self.sessions / self.allowed

    @property
    def underrun_sessions(self) -> int:
        """Listeners with an underrun or an error (by the time the trial stopped)."""
        return sum(1 for lis in self.listeners if lis.underruns or lis.error)

    @property
    def ok(self) -> bool:
        """No listener had an underrun or an error."""
        return self.underrun_sessions == 0

    @property
    def throughput(self) -> float:
        """Audio delivered to all listeners per wall second of the trial."""
        return sum(lis.audio_s for lis in self.listeners) / self.wall_s

    @property
    def worst_slack_s(self) -> float:
        """The smallest slack of any listener (negative: an underrun)."""
        return min((lis.worst_slack_s for lis in self.listeners), default=math.inf)

    @property
    def first_audio(self) -> list[float]:
        """Each listener's time from its start to its first audio."""
        return [lis.first_audio_s for lis in self.listeners if lis.first_audio_s is not None]


@dataclass
class VoiceResult:
    """Everything measured for one voice."""

    voice: str
    direct: list[Throughput] = field(default_factory=list)
    voxrelay: list[Throughput] = field(default_factory=list)
    direct_single: list[Single] = field(default_factory=list)
    voxrelay_single: list[Single] = field(default_factory=list)
    trials: list[Trial] = field(default_factory=list)
    texts: int = 0
    """Texts per throughput run."""
    sentence_s: float = 0.0
    """The mean audio of one of the sentences the texts are made of."""

    @property
    def direct_rate(self) -> float:
        """Median direct throughput, audio s per s."""
        return median([t.rate for t in self.direct])

    @property
    def voxrelay_rate(self) -> float:
        """Median throughput through voxrelay, audio s per s."""
        return median([t.rate for t in self.voxrelay])

    @property
    def ratios(self) -> list[float]:
        """Voxrelay / direct throughput of each repeat (measured back to back)."""
        return [v.rate / d.rate for d, v in zip(self.direct, self.voxrelay, strict=True)]

    @property
    def allowed_sessions(self) -> int:
        """Real-time sessions the throughput phase's direct throughput allows."""
        return allowed_by(self.direct_rate)

    @property
    def allowed_beside_trials(self) -> int:
        """The median of what the direct throughput beside each trial allowed."""
        return round(median([t.allowed for t in self.trials])) if self.trials else 0

    @property
    def goal_trials(self) -> list[Trial]:
        """The trials asked for the goal's share of what was allowed."""
        return [t for t in self.trials if t.asked_share == SESSIONS_GOAL]

    @property
    def best_trial(self) -> Trial | None:
        """The passing trial with the largest share of what was allowed beside it."""
        return max((t for t in self.trials if t.ok), key=lambda t: t.share, default=None)


def allowed_by(rate: float) -> int:
    """Real-time sessions a throughput of `rate` audio s/s allows, less the margin."""
    return max(1, math.floor(rate * (1 - CAPACITY_MARGIN)))


# The direct path.


def find_voice(engine: SpeechEngine, name: str) -> VoiceInfo:
    """The engine's voice called `name`."""
    return next(v for v in engine.voices() if v.name == name)


async def direct_single(engine: SpeechEngine, voice: VoiceInfo, text: str) -> Single:
    """One `synthesize()` call on the whole text, timed from the call."""
    started = time.perf_counter()
    first: float | None = None
    samples = 0
    async for chunk in engine.synthesize(voice, text, SynthesisOptions()):
        if first is None and chunk:
            first = time.perf_counter() - started
        samples += len(chunk) // 2
    total = time.perf_counter() - started
    return Single(first or total, total, samples / voice.native_sample_rate_hz)


async def direct_throughput(
    engine: SpeechEngine, voice: VoiceInfo, segments: Sequence[str]
) -> Throughput:
    """`engine.max_concurrency` lanes synthesizing `segments`, one call each, from one queue."""
    queue: asyncio.Queue[str] = asyncio.Queue()
    for segment in segments:
        queue.put_nowait(segment)
    arrivals = Arrivals()

    async def lane() -> None:
        while not queue.empty():
            text = queue.get_nowait()
            async for chunk in engine.synthesize(voice, text, SynthesisOptions()):
                arrivals.add(len(chunk) // 2 / voice.native_sample_rate_hz)

    meter = CpuMeter(None)
    started = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(engine.max_concurrency)))
    wall = time.perf_counter() - started
    return Throughput(arrivals.audio_s, wall, arrivals.steady_rate(), meter.stop())


# Through voxrelay.


class Clients:
    """`CHANNELS` separate connections to the server; sessions are spread over them."""

    def __init__(self, target: str) -> None:
        self.target = target
        # A local subchannel pool gives each channel its own TCP connection.
        self._channels = [
            grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
            for _ in range(CHANNELS)
        ]
        self._stubs = [speech_pb2_grpc.SpeechStub(channel) for channel in self._channels]
        self._next = 0

    def session(self, voice: str) -> AsyncSession:
        """A new session of the real client on the next connection."""
        stub = self._stubs[self._next % len(self._stubs)]
        self._next += 1
        return AsyncSession(stub, SessionOptions(voice=voice), self.target)

    async def close(self) -> None:
        """Close every connection."""
        for channel in self._channels:
            await channel.close()


async def voxrelay_single(clients: Clients, voice: str, text: str) -> Single:
    """One session sending the whole text in one message, timed from the send."""
    async with clients.session(voice) as session:
        started = time.perf_counter()
        await session.send_text(text)
        await session.close()
        first: float | None = None
        audio_s = 0.0
        async for event in session:
            if isinstance(event, Audio):
                if first is None:
                    first = time.perf_counter() - started
                audio_s += event.duration_s
    total = time.perf_counter() - started
    return Single(first or total, total, audio_s)


async def listen(
    clients: Clients,
    voice: str,
    sentences: Sequence[str],
    result: Listener,
    *,
    gap_s: float = SEND_GAP_S,
    underrun: asyncio.Event | None = None,
    arrivals: Arrivals | None = None,
) -> None:
    """One listener: stream `sentences`, and play the audio back at real-time pace.

    Fills `result` as audio arrives (so a cancelled listener keeps what it saw).
    Playback starts `JITTER_BUFFER_S` after the first audio; each message must
    arrive before its first sample plays, else it counts as an underrun and
    `underrun` is set. Each audio message is also added to `arrivals`, if given.
    """
    try:
        async with clients.session(voice) as session:
            started = time.perf_counter()

            async def send() -> None:
                for sentence in sentences:
                    await session.send_text(sentence + " ")
                    if gap_s:
                        await asyncio.sleep(gap_s)
                await session.turn_done()
                await session.close()

            sender = asyncio.create_task(send())
            try:
                playback_start = 0.0
                async for event in session:
                    if not isinstance(event, Audio):
                        continue
                    now = time.perf_counter()
                    if result.first_audio_s is None:
                        result.first_audio_s = now - started
                        playback_start = now + JITTER_BUFFER_S
                    else:
                        # The audio received before this message is what plays before it.
                        slack = playback_start + result.audio_s - now
                        result.worst_slack_s = min(result.worst_slack_s, slack)
                        if slack < 0:
                            result.underruns += 1
                            if underrun is not None:
                                underrun.set()
                    result.audio_s += event.duration_s
                    if arrivals is not None:
                        arrivals.add(event.duration_s)
                await sender
            finally:
                sender.cancel()
    except asyncio.CancelledError:
        raise
    except Exception as error:  # a failed listener is reported, never lost
        result.error = f"{type(error).__name__}: {error}"
        if underrun is not None:
            underrun.set()


async def voxrelay_throughput(
    clients: Clients, voice: str, texts: Sequence[Sequence[str]], server: ServerProcess
) -> Throughput:
    """One session per text, all opened at once, audio read as fast as it arrives."""
    meter = CpuMeter(server)
    listeners = [Listener() for _ in texts]
    arrivals = Arrivals()
    started = time.perf_counter()
    await asyncio.gather(
        *(
            listen(clients, voice, sentences, listener, gap_s=0.0, arrivals=arrivals)
            for sentences, listener in zip(texts, listeners, strict=True)
        )
    )
    wall = time.perf_counter() - started
    errors = [listener.error for listener in listeners if listener.error]
    if errors:
        raise RuntimeError(f"{len(errors)} {voice} sessions failed, the first: {errors[0]}")
    first = min(lis.first_audio_s for lis in listeners if lis.first_audio_s is not None)
    return Throughput(arrivals.audio_s, wall, arrivals.steady_rate(), meter.stop(), first)


async def realtime_trial(
    clients: Clients, voice: str, texts: Sequence[Sequence[str]], server: ServerProcess
) -> Trial:
    """One real-time listener per text, starting together; stops at the first underrun."""
    meter = CpuMeter(server)
    underrun = asyncio.Event()
    listeners = [Listener() for _ in texts]
    started = time.perf_counter()
    tasks = [
        asyncio.create_task(listen(clients, voice, sentences, lis, underrun=underrun))
        for sentences, lis in zip(texts, listeners, strict=True)
    ]
    stopper = asyncio.ensure_future(underrun.wait())
    everyone = asyncio.gather(*tasks)
    waited: list[asyncio.Future[Any]] = [everyone, stopper]
    await asyncio.wait(waited, return_when=asyncio.FIRST_COMPLETED)
    wall = time.perf_counter() - started
    stopped_early = not everyone.done()
    stopper.cancel()
    for task in tasks:
        task.cancel()
    with suppress(asyncio.CancelledError):
        await everyone
    return Trial(
        len(texts),
        listeners,
        wall,
        stopped_early,
        meter.stop(),
    )


async def settle(server: ServerProcess, quiet_cores: float = 0.05, most_s: float = 5.0) -> None:
    """Wait until the server (with its workers) is nearly idle, at most `most_s`.

    A trial stopped at an underrun leaves sessions for the server to tear down;
    the direct measurement after it should not compete with that.
    """
    deadline = time.perf_counter() + most_s
    while time.perf_counter() < deadline:
        meter = CpuMeter(server)
        await asyncio.sleep(0.1)
        if meter.stop().server < quiet_cores:
            return


def rotate(items: Sequence[str], by: int) -> list[str]:
    """`items` starting at index `by`, wrapping around."""
    by %= len(items)
    return [*items[by:], *items[:by]]


async def search_sessions(
    trial: Callable[[float], Awaitable[Trial]], config: Config
) -> list[Trial]:
    """The trials of a search for the largest share of allowed sessions without an underrun.

    `trial(share)` runs one with that share of what the direct throughput measured
    just before it allows. The search starts with `config.first_repeats` trials at
    `config.first_share` (it passes if most do), grows by `SHARE_GROWTH` while
    trials pass (up to `MAX_SHARE`), then bisects between the last pass and the
    first failure until they are within `config.resolution`.
    """
    trials: list[Trial] = []

    async def run(share: float) -> Trial:
        result = await trial(share)
        result.asked_share = share
        trials.append(result)
        errors = [listener.error for listener in result.listeners if listener.error]
        print(
            f"   {result.sessions} sessions ({result.share:.2f} of {result.allowed} allowed "
            f"beside it): {'ok' if result.ok else 'UNDERRUN'}, worst slack "
            f"{result.worst_slack_s * 1000:.0f} ms, {result.wall_s:.1f} s, other processes "
            f"{result.cpu.other:.1f} cores"
            + (f", {len(errors)} failed, the first: {errors[0]}" if errors else ""),
            file=sys.stderr,
            flush=True,
        )
        return result

    share = config.first_share
    first = [await run(share) for _ in range(config.first_repeats)]
    good, bad = (share, 0.0) if majority_ok(first) else (0.0, share)
    while len(trials) < config.max_trials:
        if not bad:
            if share >= MAX_SHARE:
                break
            share = min(MAX_SHARE, share * SHARE_GROWTH)
        else:
            if bad - good <= max(good, bad / 2) * config.resolution:
                break
            share = (good + bad) / 2 if good else bad / 2
        if (await run(share)).ok:
            good = max(good, share)
        else:
            bad = share if not bad else min(bad, share)
    return trials


def majority_ok(trials: Sequence[Trial]) -> bool:
    """More than half of `trials` ran without an underrun."""
    return sum(t.ok for t in trials) * 2 > len(trials)


# One voice, end to end.


def texts_for(config: Config, count: int) -> list[list[str]]:
    """`count` texts of `config.session_sentences` sentences each."""
    return [rotate(config.sentences, i)[: config.session_sentences] for i in range(count)]


async def measure_voice(
    name: str, engine: SpeechEngine, clients: Clients, server: ServerProcess, config: Config
) -> VoiceResult:
    """Throughput (direct, voxrelay), single-text timings, then the real-time search."""
    voice = find_voice(engine, name)
    result = VoiceResult(name)
    one_text = " ".join(config.sentences[: config.session_sentences])
    # Warm-up of both paths (piper's first inference is slow), then size the throughput
    # runs: enough texts for `throughput_work_s` of direct synthesis.
    await asyncio.gather(
        voxrelay_single(clients, name, one_text), direct_single(engine, voice, one_text)
    )
    count = 3 * engine.max_concurrency
    while True:
        calibration = await direct_throughput(
            engine, voice, [s for text in texts_for(config, count) for s in text]
        )
        if calibration.wall_s >= 0.2 * config.throughput_work_s:
            break
        count *= 4
    count = max(count, math.ceil(count * config.throughput_work_s / calibration.wall_s))
    result.texts = count
    texts = texts_for(config, count)
    segments = [sentence for text in texts for sentence in text]
    for repeat in range(config.repeats):
        # Interleaved, so both paths see the same machine, and in turns first, so a
        # machine speeding up or slowing down favours neither.
        if repeat % 2:
            result.voxrelay.append(await voxrelay_throughput(clients, name, texts, server))
            result.direct.append(await direct_throughput(engine, voice, segments))
        else:
            result.direct.append(await direct_throughput(engine, voice, segments))
            result.voxrelay.append(await voxrelay_throughput(clients, name, texts, server))
        result.direct_single.append(await direct_single(engine, voice, one_text))
        result.voxrelay_single.append(await voxrelay_single(clients, name, one_text))
    print(
        f"   {name}: {count} texts, direct {result.direct_rate:.1f}, "
        f"voxrelay {result.voxrelay_rate:.1f} audio s/s, other processes "
        f"{median([t.cpu.other for t in result.voxrelay]):.1f} cores",
        file=sys.stderr,
        flush=True,
    )
    # Each trial between two direct measurements of a throughput run's work; the one
    # after a trial is the one before the next.
    before = await direct_throughput(engine, voice, segments)

    result.sentence_s = result.direct[0].audio_s / len(segments)

    async def paired_trial(share: float) -> Trial:
        nonlocal before
        sessions = max(1, round(share * allowed_by(before.rate)))
        trial = await realtime_trial(clients, name, texts_for(config, sessions), server)
        trial.start_allowance_s = LATE_START_FACTOR * sessions * result.sentence_s / before.rate
        await settle(server)
        after = await direct_throughput(engine, voice, segments)
        trial.beside = [before, after]
        before = after
        return trial

    result.trials = await search_sessions(paired_trial, config)
    return result


# Report.


def plot(results: Sequence[VoiceResult], path: Path) -> Path:
    """Per voice: delivered throughput and worst playback slack against session count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, len(results), figsize=(6 * len(results), 7), squeeze=False)
    for column, result in enumerate(results):
        trials = sorted(result.trials, key=lambda t: t.sessions)
        counts = [t.sessions for t in trials]
        top, bottom = axes[0][column], axes[1][column]
        top.set_title(result.voice)
        for trial in trials:
            top.plot(
                trial.sessions,
                trial.throughput,
                "o" if trial.ok else "x",
                color="tab:green" if trial.ok else "tab:red",
                markersize=8,
            )
        top.plot([], [], "o", color="tab:green", label="trial without underrun")
        top.plot([], [], "x", color="tab:red", label="trial with an underrun")
        top.axhline(
            result.direct_rate,
            color="tab:blue",
            linestyle="--",
            label=f"direct throughput {result.direct_rate:.0f}",
        )
        top.axhline(
            result.voxrelay_rate,
            color="tab:orange",
            linestyle="--",
            label=f"voxrelay throughput {result.voxrelay_rate:.0f}",
        )
        allowed = result.allowed_beside_trials
        most = max([*counts, allowed, 1])
        top.plot(
            [0, most * 1.1],
            [0, most * 1.1],
            color="grey",
            linewidth=0.8,
            label="demand: 1 audio s/s per session",
        )
        top.axvline(
            allowed,
            color="black",
            linestyle=":",
            label=f"allowed by direct throughput beside the trials (median): {allowed}",
        )
        top.set_ylabel("audio delivered during the trial\n(audio s per wall s)")
        highest = max(
            [result.direct_rate, result.voxrelay_rate, most] + [t.throughput for t in trials]
        )
        top.set_ylim(0, highest * 1.6)  # room for the legend above the data
        top.legend(fontsize=7, loc="upper left", ncol=2)
        slack = [max(min(t.worst_slack_s, 10.0), -2.0) * 1000 for t in trials]
        bottom.plot(counts, slack, "-", color="grey", linewidth=0.8)
        for trial, value in zip(trials, slack, strict=True):
            bottom.plot(
                trial.sessions,
                value,
                "o" if trial.ok else "x",
                color="tab:green" if trial.ok else "tab:red",
                markersize=8,
            )
            if not trial.ok:
                bottom.annotate(
                    "underrun",
                    (trial.sessions, value),
                    ha="right",
                    textcoords="offset points",
                    xytext=(-6, -3),
                    fontsize=7,
                )
        bottom.axhline(0, color="black", linewidth=0.8)
        bottom.axvline(allowed, color="black", linestyle=":")
        bottom.set_xlabel("concurrent real-time sessions")
        bottom.set_ylabel(
            f"worst slack of audio after the first (ms)\n(jitter buffer "
            f"{JITTER_BUFFER_S * 1000:.0f} ms; < 0 = underrun)"
        )
        for axis in (top, bottom):
            axis.set_xlim(0, most * 1.1)
            axis.grid(alpha=0.3)
    return save_figure(figure, path)


def with_spread(values: Sequence[float], digits: int = 1, scale: float = 1.0) -> str:
    """Median ± spread (half the 10th-90th percentile range)."""
    scaled = [v * scale for v in values]
    text = f"{median(scaled):.{digits}f}"
    return text + (f" ±{spread(scaled):.{digits}f}" if len(scaled) > 1 else "")


def section(results: Sequence[VoiceResult], config: Config) -> Section:
    """The table, goals and notes of this section."""
    rows: list[Sequence[str]] = []
    goals: list[Goal] = []
    notes: list[str] = []
    for result in results:
        ratio = median(result.ratios)
        best_trial = result.best_trial
        if best_trial is None:
            best, allowed, share = 0, result.allowed_beside_trials, 0.0
        else:
            best, allowed, share = best_trial.sessions, best_trial.allowed, best_trial.share
        tried_above = any(not t.ok and t.share > share for t in result.trials)
        best_text = str(best) if tried_above else f">= {best}"
        rows.append(
            (
                result.voice,
                with_spread([t.rate for t in result.direct]),
                with_spread([t.rate for t in result.voxrelay]),
                with_spread(result.ratios, 2),
                with_spread([s.first_audio_s for s in result.direct_single], 0, 1000)
                + " / "
                + with_spread([s.first_audio_s for s in result.voxrelay_single], 0, 1000),
                with_spread([s.rtf for s in result.direct_single], 3)
                + " / "
                + with_spread([s.rtf for s in result.voxrelay_single], 3),
                best_text,
                str(allowed),
                at_least(share, SESSIONS_GOAL),
            )
        )
        goals.append(
            Goal(
                f"{result.voice}: throughput through voxrelay >= {THROUGHPUT_GOAL} x direct",
                f"{result.voxrelay_rate:.1f} / {result.direct_rate:.1f} audio s/s, "
                f"median of paired ratios {at_least(ratio, THROUGHPUT_GOAL)}",
                ratio >= THROUGHPUT_GOAL,
            )
        )
        at_goal = result.goal_trials
        if at_goal:
            measured = (
                f"{sum(t.ok for t in at_goal)} of {len(at_goal)} trials at {SESSIONS_GOAL} x "
                "allowed ran without an underrun ("
                + ", ".join(f"{t.sessions}/{t.allowed}" for t in at_goal)
                + f"); the most without one: {best_text} / {allowed} = "
                + at_least(share, SESSIONS_GOAL)
                + "; listeners starting late in the trials at the goal's share: "
                + ", ".join(str(t.late_starts) for t in at_goal)
            )
            met = majority_ok(at_goal)
        else:  # quick mode starts lower
            measured = f"{best_text} / {allowed} = {at_least(share, SESSIONS_GOAL)}"
            met = share >= SESSIONS_GOAL
        goals.append(
            Goal(
                f"{result.voice}: real-time sessions without underrun >= {SESSIONS_GOAL} x "
                "what the direct throughput (measured beside the trial) allows, in most "
                "trials",
                measured,
                met,
            )
        )
        server_cores = median([t.cpu.server for t in result.voxrelay])
        client_cores = median([t.cpu.client for t in result.voxrelay])
        direct_cores = median([t.cpu.client for t in result.direct])
        other = median([t.cpu.other for t in [*result.direct, *result.voxrelay]])
        trials = ", ".join(
            f"{t.sessions} of {t.allowed} allowed {'ok' if t.ok else 'underrun'} ("
            + (
                f"first audio p95 {percentile(t.first_audio, 95):.1f} s, "
                f"{t.late_starts} late starts, "
                if t.first_audio
                else ""
            )
            + f"other {t.cpu.other:.1f})"
            for t in result.trials
        )
        first_audio = ""
        if best_trial is not None and best_trial.first_audio:
            values = best_trial.first_audio
            first_audio = (
                f"; at {best} sessions first audio p50 {percentile(values, 50) * 1000:.0f} ms,"
                f" p95 {percentile(values, 95) * 1000:.0f} ms, worst slack "
                f"{best_trial.worst_slack_s * 1000:.0f} ms"
            )
        failed = sorted((t for t in result.trials if not t.ok), key=lambda t: t.share)
        if failed:
            cpu = failed[0].cpu
            first_audio += (
                f"; at {failed[0].sessions} sessions (first underrun) CPU: server "
                f"{cpu.server:.2f}, client {cpu.client:.2f}, other processes {cpu.other:.2f} cores"
            )
        by_voxrelay = allowed_by(result.voxrelay_rate)
        first_audio += (
            f"; the throughput phase's figures allow {result.allowed_sessions} (direct) and "
            f"{by_voxrelay} (voxrelay) sessions"
        )
        # Audio per CPU second: a cross-check that other processes' load barely moves.
        direct_eff = median([t.audio_s / (t.cpu.client * t.wall_s) for t in result.direct])
        voxrelay_eff = median(
            [t.audio_s / ((t.cpu.server + t.cpu.client) * t.wall_s) for t in result.voxrelay]
        )
        first_audio += (
            f"; audio s per CPU s: direct {direct_eff:.0f}, through voxrelay (server + client) "
            f"{voxrelay_eff:.0f} (ratio {voxrelay_eff / direct_eff:.2f})"
        )
        ramp = [t.first_audio_s / t.wall_s for t in result.voxrelay]
        whole_ratios = [
            v.run_rate / d.run_rate for d, v in zip(result.direct, result.voxrelay, strict=True)
        ]
        notes.append(
            f"{result.voice}: {result.texts} texts ({result.direct[0].audio_s:.0f} s of audio) "
            "per throughput run; whole-run rates, start and end included: direct "
            f"{median([t.run_rate for t in result.direct]):.1f}, through voxrelay "
            f"{median([t.run_rate for t in result.voxrelay]):.1f} audio s/s, median of paired "
            f"ratios {median(whole_ratios):.2f}; through voxrelay the first audio of a run came "
            f"{median([t.first_audio_s for t in result.voxrelay]) * 1000:.0f} ms after its "
            f"start ({median(ramp):.1%} of the run) where one text alone has its first audio "
            f"{median([t.first_audio_s for t in result.direct_single]) * 1000:.0f} ms after "
            "the call directly: the rest is opening all the sessions at once; "
            f"CPU during it: direct {direct_cores:.2f} cores, "
            f"through voxrelay server {server_cores:.2f} "
            f"+ client {client_cores:.2f} cores, other processes {other:.2f} cores; "
            f"real-time trials, in the order run: {trials}{first_audio}."
        )
    cores = os.cpu_count() or 1
    sentence_s = results[0].sentence_s
    others = [
        cpu.other
        for result in results
        for cpu in [run.cpu for run in [*result.direct, *result.voxrelay]]
        + [trial.cpu for trial in result.trials]
    ]
    notes.insert(
        0,
        f"Other processes on this shared {cores}-core machine used a median "
        f"{median(others):.2f} cores (at most {max(others):.2f}) during these measurements; "
        "CPU-bound figures (piper above all) move with it, so direct and voxrelay runs "
        "alternate (each first in turn) and ratios pair each run with the one beside it.",
    )
    notes += [
        f"Direct throughput: `engine.max_concurrency` lanes (piper: `workers` = {cores}, the "
        "server default of one per core, one onnxruntime thread each; espeak: 2, one speaking "
        "and one queued at its one worker process, as in the server) take sentences from one "
        "queue, one `synthesize()` call per sentence.",
        f"Through voxrelay: a `voxrelay serve --engines piper,espeak` process (default "
        f"`--workers`, `--max-inflight-segments`); the same texts of "
        f"{config.session_sentences} sentences, one session each, all opened at once from "
        f"the benchmark process over {CHANNELS} connections, each sent sentence by "
        "sentence, audio read as fast as it arrives.",
        f"Throughput is a run's steady rate, on both paths: the slope of a least-squares "
        "line through the audio received so far against time, over the arrivals between "
        f"{STEADY_FROM:.0%} and {STEADY_TO:.0%} of the run's audio. Left out: the start "
        "(through voxrelay, opening every session at once) and the end (the last segments, "
        "with lanes running dry), which are not what a loaded server sustains and would "
        "make the figure depend on how long a run is. The whole-run rates are in each "
        "voice's note above.",
        "First audio and real-time factor (direct / voxrelay): one text alone; direct is one "
        "`synthesize()` call on the whole text (piper speaks its sentences one after "
        "another), voxrelay one session sending it in one message (its sentences run in "
        "parallel on the worker pool, so its real-time factor can beat direct's).",
        f"Real-time sessions: all start together, each sends {config.session_sentences} "
        f"sentences (about {sentence_s:.1f} s of speech each), {SEND_GAP_S * 1000:.0f} ms "
        "apart, then ends its turn and half-closes; playback "
        f"starts {JITTER_BUFFER_S * 1000:.0f} ms (the jitter buffer) after the first audio; "
        "an underrun is an audio message arriving after its first sample must play. A trial "
        "stops at its first underrun. Allowed = floor(direct throughput x "
        f"{1 - CAPACITY_MARGIN:.1f}) (each session needs 1.0 audio s/s; "
        f"{CAPACITY_MARGIN:.0%} margin), with the direct throughput measured just before and "
        "just after the trial (the median of the two; a throughput run's work each), "
        "so the trial and its yardstick see the same machine.",
        "A trial counts underruns only: a listener's playback starts at its first audio, "
        "however late that is. The server serves a playing listener whose audio is about "
        "to run out before new turns, so beyond what the engine can keep up with a "
        "trial does not fail: its last listeners start later. A share above 1 is later "
        "starts, not more capacity. So each trial also counts its late starts: listeners "
        f"whose first audio came after {LATE_START_FACTOR:g} x the time the engine, at the "
        "direct throughput measured before the trial, needs to make every session's first "
        "sentence (in the notes above, and beside the goal). The goal, as set, counts "
        "underruns only.",
    ]
    return Section(
        title="Real voices: throughput, first audio and real-time sessions",
        method=(
            f"piper and espeak called directly through their engine objects in the benchmark "
            "process (the ceiling; espeak-ng itself runs in the engine's worker process "
            "either way) against the same work "
            f"through a voxrelay server process on loopback, {config.repeats} interleaved "
            "repeats (median ± spread; throughput is each run's steady rate, between "
            f"{STEADY_FROM:.0%} and {STEADY_TO:.0%} of its audio); then the most concurrent "
            "real-time listeners without a single underrun, as a share of what the direct "
            "throughput measured beside each "
            f"trial allows: {config.first_repeats} trial(s) at {config.first_share:g} of it "
            "(the share passes if most do), then growing "
            f"{SHARE_GROWTH:g}x while trials pass, then bisecting."
        ),
        header=(
            "voice",
            "direct (audio s/s)",
            "voxrelay (audio s/s)",
            "voxrelay / direct",
            "first audio ms (direct / voxrelay)",
            "real-time factor (direct / voxrelay)",
            "real-time sessions",
            "allowed",
            "sessions / allowed",
        ),
        rows=rows,
        goals=goals,
        plots=[plot(results, PLOTS / "real_voice.png")],
        notes=notes,
    )


async def run(quick: bool) -> Section:
    """Measure both voices against one voxrelay server process."""
    config = QUICK if quick else FULL
    # The server process starts (and loads its voices) while this process loads its own.
    starting = asyncio.create_task(
        asyncio.to_thread(
            start_server_process, ["--engines", "piper,espeak", "--max-sessions", "100000"]
        )
    )
    await asyncio.sleep(0)  # let it hand the start to its thread before this loads models
    engines: dict[str, SpeechEngine] = {}
    try:
        engines[PIPER] = PiperEngine([bundled_joe_voice()], workers=os.cpu_count() or 1)
        engines[ESPEAK] = EspeakEngine()
    finally:
        server = await starting
        if len(engines) < len(VOICES):
            await asyncio.to_thread(stop_server_process, server)
    clients = Clients(server.target)
    try:
        results = [
            await measure_voice(name, engines[name], clients, server, config) for name in VOICES
        ]
    finally:
        await clients.close()
        await asyncio.sleep(0.2)  # let the connections go before the server does
        await asyncio.to_thread(stop_server_process, server)
        for engine in engines.values():
            await engine.aclose()
    return section(results, config)
