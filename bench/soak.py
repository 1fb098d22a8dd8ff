"""Soak: thousands of mixed sessions against one server, and whether anything grows.

One `voxrelay serve` process (tone and espeak engines, `--max-sessions 64`,
2 s start and send timeouts, 5 s idle timeout, 64 KiB of audio buffered per
session) takes thousands of `Stream` sessions, 80 at a time over four shared
connections (more clients than places, so the limit is reached at times: a
client holds at most one place, and with 40 the server never filled up), of
every kind a server meets: normal; cancelled by the client after its first
audio; barge-in; disconnected (its own connection closed mid-stream);
non-reading (reads nothing for three times the send timeout); silent (sends
nothing); bad input (a rotation of eight malformed calls); and run-on text
with no sentence end. Kinds are drawn at random with a fixed seed; 10 % of
the sessions use `espeak/en-us`, the rest the instant `tone/square`.

Every second psutil reads the server's RSS, open file descriptors and threads,
its `/metrics` the active sessions and event-loop tasks, and a health check
whether it still answers. The first 2,000 sessions are a warm-up: once the
server has no active session left after them, a reading is the baseline; the
final reading, taken the same way after the load, must be flat against it (a
third, midway, tells a plateau from steady growth).
Every ending a client can observe is checked against the contract (exactly
one SESSION_ENDED, the last message; an `error` right before it exactly when
the status is not OK, carrying that code); `--max-sessions` refusals are a
documented ending, counted apart. The server's own count of ended calls
(`voxrelay_sessions_total`) must match the calls made, the endings clients
cannot see (cancel, disconnect) included. The server's log (JSON, INFO) is
kept in a file and its warnings and errors summarised.

`python -m bench.soak [--minutes M] [--sessions N]` runs it alone (about
three minutes by default); the suite runs it as a section (`run`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import re
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import psutil  # type: ignore[import-untyped]
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.report import PLOTS, Goal, Section, save_figure
from bench.servers import (
    ServerProcess,
    free_port,
    no_active_sessions,
    scrape_metrics,
    send_requests,
    start_server_process,
    stop_server_process,
)
from voxrelay.v1 import speech_pb2, speech_pb2_grpc

SEND_TIMEOUT_S = 2.0
START_TIMEOUT_S = 2.0
MAX_SESSIONS = 64
SERVER_ARGS = (
    "--engines", "tone,espeak",
    "--default-voice", "tone/square",
    "--max-sessions", str(MAX_SESSIONS),
    "--start-timeout", f"{START_TIMEOUT_S:g}",
    "--send-timeout", f"{SEND_TIMEOUT_S:g}",
    "--idle-timeout", "5",
    "--session-audio-buffer-bytes", "65536",
    "--shutdown-grace", "2",
    "--tone-ms-per-char", "5",
)  # fmt: skip
"""The server's flags; `--metrics-listen` is added with a free port, and `LOG_ARGS`."""
LOG_ARGS = ("--log-level", "info", "--log-format", "json")
"""A JSON line for every session's summary and every warning, kept in a file."""
CONCURRENCY = 80
CHANNELS = 4
"""Connections the sessions share (a disconnected session opens its own)."""
ESPEAK_SHARE = 0.1
TONE, ESPEAK = "tone/square", "espeak/en-us"
SESSION_TIMEOUT_S = 60.0
"""A session not ended by then has no ending: it is abandoned and counted as such."""
IDLE_WAIT_S = 30.0
"""How long the server may take to have no active session once a load is over."""
SETTLE_S = 1.0
"""Pause between no active session and a baseline or final reading."""
SAMPLE_EVERY_S = 1.0
PROGRESS_EVERY_S = 10.0
HEALTH_TIMEOUT_S = 2.0
UNHEALTHY_S = 5.0
"""No SERVING answer to health checks for this long in a row counts as a crash."""
RSS_GROWTH = 0.10
FD_GROWTH = 2
THREAD_GROWTH = 2
TASK_GROWTH = 5
"""Flat: how much the final reading may exceed the post-warm-up baseline."""
OVERSIZED_CHARS = 4 * 1024 * 1024 + 1024
"""One request over gRPC's default 4 MiB receive limit."""
NON_READING_CHARS = {TONE: 64000, ESPEAK: 8000}
"""Text a non-reading session sends, by voice (in chunks of at most 16000, under
--max-buffered-text-chars): about 10 and 20 MiB of audio, more than the 4 MiB or so
a default grpcio client's transport takes in unread, so the send timeout must act."""
NON_READING_PAUSE_S = 3 * SEND_TIMEOUT_S
"""How long a non-reading client reads nothing: the send timeout, plus the time a
busy server takes to fill the client's transport before it starts to count."""

SERVER_FULL = "RESOURCE_EXHAUSTED (server full)"
GRPC_SIZE_LIMIT = "RESOURCE_EXHAUSTED (gRPC size limit)"
CANCELLED_BY_CLIENT = "cancelled by client"
DISCONNECTED = "disconnected by client"
NO_ENDING = "no ending"
CLIENT_ERROR = "client error"

_Call = grpc.aio.StreamStreamCall[Any, speech_pb2.StreamResponse]
_SESSION_ENDED = speech_pb2.LIFECYCLE_EVENT_SESSION_ENDED
_TURN_STARTED = speech_pb2.LIFECYCLE_EVENT_TURN_STARTED
_TURN_ENDED = speech_pb2.LIFECYCLE_EVENT_TURN_ENDED
_STREAM_METHOD = "/voxrelay.v1.Speech/Stream"
_LOCAL_POOL = [("grpc.use_local_subchannel_pool", 1)]
"""A channel option: its own TCP connection, not one shared with other channels."""
_WORDS = (
    "the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "seven",
    "grey", "whales", "sing", "softly", "near", "an", "old", "lighthouse", "and", "every",
    "sailor", "listens", "to", "their", "distant", "music", "before", "turning", "home",
)  # fmt: skip


@dataclass(frozen=True)
class Plan:
    """How much a soak runs: at most `sessions` (warm-up included) and `minutes`."""

    sessions: int
    minutes: float
    warm_up: int = 200
    seed: int = 1


FULL = Plan(sessions=25000, minutes=3.0, warm_up=2000)
"""The warm-up is long enough for the allocator's pools to reach their working size (RSS
levels off within the first 2,000 sessions and stays level over 89,000)."""
QUICK = Plan(sessions=1200, minutes=0.5)


# What a client sees, and whether it is a documented ending.


@dataclass
class Seen:
    """What a client saw of one call: its messages and its status."""

    responses: list[speech_pb2.StreamResponse] = field(default_factory=list)
    code: grpc.StatusCode | None = None
    details: str = ""

    @property
    def audio_bytes(self) -> int:
        return sum(len(r.audio.data) for r in self.responses if r.HasField("audio"))

    def describe(self) -> str:
        """The status and the last messages, for an example in the report."""
        code = self.code.name if self.code is not None else "no status"
        details = f" {self.details[:100]!r}" if self.details else ""
        tail = ", ".join(_brief(r) for r in self.responses[-3:])
        return f"status {code}{details} after {len(self.responses)} messages [... {tail}]"


def _status_name(value: int) -> str:
    return next((s.name for s in grpc.StatusCode if s.value[0] == value), str(value))


def _brief(response: speech_pb2.StreamResponse) -> str:
    kind = response.WhichOneof("response")
    if kind == "lifecycle":
        event = speech_pb2.LifecycleEvent.Name(response.lifecycle.event)
        cancelled = " cancelled" if response.lifecycle.cancelled else ""
        return f"{event.removeprefix('LIFECYCLE_EVENT_')} {response.lifecycle.turn}{cancelled}"
    if kind == "error":
        return f"error {_status_name(response.error.code)}"
    if kind == "session_started":
        return "session_started"
    return f"audio {response.audio.turn}/{response.audio.segment}" if kind else "empty"


def contract_problem(seen: Seen) -> str | None:
    """What, if anything, breaks the contract's ending (and turn order) in `seen`.

    `session_started` first and once when the session opened (always on OK); exactly
    one SESSION_ENDED, the last message; an `error` message right before it
    exactly when the status is not OK, carrying the status's code; turns numbered
    from 1 and open one at a time, audio only inside its turn, none left open on OK.
    """
    responses, code = seen.responses, seen.code
    if code is None:
        return "no status"
    ends = [i for i, r in enumerate(responses) if r.lifecycle.event == _SESSION_ENDED]
    if len(ends) != 1:
        return f"{len(ends)} SESSION_ENDED messages"
    if ends[0] != len(responses) - 1:
        return f"{len(responses) - 1 - ends[0]} message(s) after SESSION_ENDED"
    errors = [i for i, r in enumerate(responses) if r.HasField("error")]
    if code is grpc.StatusCode.OK and errors:
        return "an error message, then status OK"
    if code is not grpc.StatusCode.OK:
        if errors != [len(responses) - 2]:
            return f"status {code.name} with error messages at {errors} of {len(responses)}"
        if responses[-2].error.code != code.value[0]:
            return f"error message {_status_name(responses[-2].error.code)}, status {code.name}"
    started = [i for i, r in enumerate(responses) if r.HasField("session_started")]
    if started not in ([0], []) or (code is grpc.StatusCode.OK and not started):
        return f"session_started at {started} of {len(responses)} messages (once, first)"
    open_turn = last_turn = 0
    for response in responses[:-1]:
        if response.HasField("audio") and response.audio.turn != open_turn:
            return f"audio of turn {response.audio.turn} while turn {open_turn} is open"
        event, turn = response.lifecycle.event, response.lifecycle.turn
        if event == _TURN_STARTED:
            if open_turn or turn != last_turn + 1:
                return f"TURN_STARTED {turn} after turn {last_turn} (open: {open_turn})"
            open_turn = last_turn = turn
        elif event == _TURN_ENDED:
            if turn != open_turn:
                return f"TURN_ENDED {turn} while turn {open_turn} is open"
            open_turn = 0
    if code is grpc.StatusCode.OK and open_turn:
        return f"status OK with turn {open_turn} never ended"
    return None


@dataclass(frozen=True)
class Result:
    """How one session ended, as its client saw it."""

    kind: str
    outcome: str
    """The status code's name, or one of the labels above (SERVER_FULL, ...)."""
    problem: str | None = None
    """Set when the ending is not a documented one: what was wrong."""
    surprise: str | None = None
    """Set when the ending is documented but not the one this kind expects."""
    seen: str = ""
    """What the client saw, in brief, when there is a problem or a surprise."""


Expectation = Callable[[Seen], str | None]
"""What is unexpected about a documented ending, or None."""


def _judge(kind: str, seen: Seen, expect: Expectation) -> Result:
    """The outcome of a call whose ending its client saw, checked against the contract
    and against what its kind expects (a refusal for --max-sessions always fits)."""
    problem = contract_problem(seen)
    code = seen.code
    outcome = code.name if code is not None else "no status"
    error = None
    if not problem and code is not grpc.StatusCode.OK:
        error = seen.responses[-2].error  # the contract puts it there
        if code is grpc.StatusCode.RESOURCE_EXHAUSTED and "concurrent sessions" in error.message:
            outcome = SERVER_FULL
    surprise = None
    if error is not None and error.message and seen.details != error.message:
        surprise = f"status details {seen.details[:100]!r} are not the error message's"
    elif not problem and outcome != SERVER_FULL:
        surprise = expect(seen)
    return Result(kind, outcome, problem, surprise, seen.describe() if problem or surprise else "")


def _expect_ok(seen: Seen) -> str | None:
    if seen.code is grpc.StatusCode.OK and seen.audio_bytes:
        return None
    return "expected OK with audio"


def _expect(code: grpc.StatusCode, fragment: str = "") -> Expectation:
    def check(seen: Seen) -> str | None:
        if seen.code is code and fragment in seen.details:
            return None
        return f"expected {code.name} {fragment!r}"

    return check


def _expect_barge_in(seen: Seen) -> str | None:
    cancelled = any(
        r.lifecycle.event == _TURN_ENDED and r.lifecycle.turn == 1 and r.lifecycle.cancelled
        for r in seen.responses
    )
    if not cancelled and seen.code is grpc.StatusCode.OK:
        return "turn 1 not cancelled (it had ended before the cancel)"
    return _expect_ok(seen)


def _expect_first_audio(seen: Seen) -> str | None:
    return "ended before its first audio"


# What the clients do.


def _sentence(rng: random.Random) -> str:
    text = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(6, 14)))
    return text[0].upper() + text[1:] + rng.choice(".!?") + " "


def _sentences(rng: random.Random, count: int) -> str:
    return "".join(_sentence(rng) for _ in range(count))


def _chunks(rng: random.Random, text: str, count: int) -> list[speech_pb2.StreamRequest]:
    """`text` as `count` text requests cut at random places, as an LLM streams it."""
    cuts = sorted(rng.sample(range(1, len(text)), min(count, len(text)) - 1))
    pieces = zip([0, *cuts], [*cuts, len(text)], strict=True)
    return [_text(text[start:end]) for start, end in pieces]


def _config(voice: str, speed: float = 0.0) -> speech_pb2.StreamRequest:
    return speech_pb2.StreamRequest(config=speech_pb2.SessionConfig(voice=voice, speed=speed))


def _text(text: str) -> speech_pb2.StreamRequest:
    return speech_pb2.StreamRequest(text=text)


_TURN_DONE = speech_pb2.StreamRequest(turn_done=speech_pb2.TurnDone())
_CANCEL = speech_pb2.StreamRequest(cancel=speech_pb2.Cancel())


async def _read(call: _Call, seen: Seen, *, until_audio: bool = False) -> bool:
    """Read into `seen` until the call ends (then its status too) or, with
    `until_audio`, up to the first audio message: True if that came first."""
    try:
        while (response := await call.read()) is not grpc.aio.EOF:
            assert isinstance(response, speech_pb2.StreamResponse)
            seen.responses.append(response)
            if until_audio and response.HasField("audio"):
                return True
    except grpc.aio.AioRpcError:
        pass  # the status is read below
    seen.code = await call.code()
    seen.details = await call.details() or ""
    return False


@dataclass(frozen=True)
class Client:
    """One session's client: its connection, randomness and voice."""

    kind: str
    target: str
    channel: grpc.aio.Channel
    rng: random.Random
    voice: str

    def stream(self) -> _Call:
        return speech_pb2_grpc.SpeechStub(self.channel).Stream()

    def long_turn(self, sentences: int = 6) -> list[speech_pb2.StreamRequest]:
        """A turn, a sentence a request (so a segment each), whose later sentences are
        still being made when the first one's audio arrives: the tone engine takes a
        latency from the text; espeak-ng takes its time anyway."""
        later = "[[latency_ms=300]]" if self.voice == TONE else ""
        first = _text(_sentence(self.rng))
        return [first, *(_text(later + _sentence(self.rng)) for _ in range(sentences - 1))]

    async def speak(self, *requests: Any, expect: Expectation = _expect_ok) -> Result:
        """Send `requests` and half-close, read everything, judge the ending."""
        call, seen = self.stream(), Seen()
        await send_requests(call, *requests, close=True)
        await _read(call, seen)
        return _judge(self.kind, seen, expect)


async def _normal(client: Client) -> Result:
    """One or two turns of one to three sentences in random chunks; half-close."""
    rng = client.rng
    requests = [_config(client.voice)]
    for _ in range(rng.randint(1, 2)):
        requests += _chunks(rng, _sentences(rng, rng.randint(1, 3)), rng.randint(2, 5))
        requests.append(_TURN_DONE)
    return await client.speak(*requests)


async def _cancelled(client: Client) -> Result:
    """A long turn, cancelled by the client (`call.cancel()`) at its first audio."""
    call, seen = client.stream(), Seen()
    await send_requests(call, _config(client.voice), *client.long_turn(), _TURN_DONE)
    if not await _read(call, seen, until_audio=True):
        return _judge(client.kind, seen, _expect_first_audio)
    call.cancel()
    return Result(client.kind, CANCELLED_BY_CLIENT)


async def _barge_in(client: Client) -> Result:
    """A long turn, a `cancel` request at its first audio, then a new turn; half-close."""
    call, seen = client.stream(), Seen()
    await send_requests(call, _config(client.voice), *client.long_turn(), _TURN_DONE)
    if await _read(call, seen, until_audio=True):
        after = _text(_sentences(client.rng, 2))
        await send_requests(call, _CANCEL, after, _TURN_DONE, close=True)
        await _read(call, seen)
    return _judge(client.kind, seen, _expect_barge_in)


async def _disconnected(client: Client) -> Result:
    """A long turn on a connection of its own, closed at the first audio."""
    channel = grpc.aio.insecure_channel(client.target, options=_LOCAL_POOL)
    try:
        call, seen = speech_pb2_grpc.SpeechStub(channel).Stream(), Seen()
        await send_requests(call, _config(client.voice), *client.long_turn(), _TURN_DONE)
        if not await _read(call, seen, until_audio=True):
            return _judge(client.kind, seen, _expect_first_audio)
        await channel.close()  # every call on it cancelled, its connection closed
        return Result(client.kind, DISCONNECTED)
    finally:
        await channel.close()


async def _non_reading(client: Client) -> Result:
    """A long text, then nothing read for `NON_READING_PAUSE_S`; then everything."""
    text, size = "", NON_READING_CHARS[client.voice]
    while len(text) < size:
        text += _sentences(client.rng, 50)
    chunks = [text[i : min(i + 16000, size)] for i in range(0, size, 16000)]
    call, seen = client.stream(), Seen()
    await send_requests(call, _config(client.voice), *map(_text, chunks), _TURN_DONE, close=True)
    await asyncio.sleep(NON_READING_PAUSE_S)
    await _read(call, seen)
    return _judge(client.kind, seen, _expect(grpc.StatusCode.DEADLINE_EXCEEDED, "did not read"))


async def _silent(client: Client) -> Result:
    """A call that sends nothing at all and waits for the server to end it."""
    call, seen = client.stream(), Seen()
    await _read(call, seen)
    expect = _expect(grpc.StatusCode.DEADLINE_EXCEEDED, "no request arrived")
    return _judge(client.kind, seen, expect)


async def _run_on(client: Client) -> Result:
    """2,000+ characters with no sentence end, in five chunks; half-close."""
    rng, words = client.rng, list[str]()
    while sum(len(w) + 2 for w in words) < 2000:
        words.append(rng.choice(_WORDS) + ("," if rng.random() < 0.1 else ""))
    text = " ".join(words)
    return await client.speak(_config(client.voice), *_chunks(rng, text, 5), _TURN_DONE)


_INVALID = grpc.StatusCode.INVALID_ARGUMENT


async def _unknown_voice(client: Client) -> Result:
    requests = (_config("nosuch/voice"), _text(_sentence(client.rng)), _TURN_DONE)
    return await client.speak(*requests, expect=_expect(_INVALID, "nosuch/voice"))


async def _config_after_text(client: Client) -> Result:
    requests = (_text(_sentence(client.rng)), _config(client.voice))
    return await client.speak(*requests, expect=_expect(_INVALID, "config"))


async def _empty_request(client: Client) -> Result:
    requests = (_config(client.voice), speech_pb2.StreamRequest())
    return await client.speak(*requests, expect=_expect(_INVALID, "empty"))


async def _text_too_long(client: Client) -> Result:
    text = _sentences(client.rng, 1500)[:16385]
    requests = (_config(client.voice), _text(text), _TURN_DONE)
    return await client.speak(*requests, expect=_expect(_INVALID, "16384"))


async def _speed_out_of_range(client: Client) -> Result:
    requests = (_config(client.voice, speed=5.0), _text(_sentence(client.rng)))
    return await client.speak(*requests, expect=_expect(_INVALID, "speed"))


async def _control_characters(client: Client) -> Result:
    text = "Nul\x00 bell\x07 escape\x1b[31m delete\x7f tab\t and\x0b more. "
    text += _sentence(client.rng)  # not an error: control characters are spoken as spaces
    return await client.speak(_config(client.voice), _text(text), _TURN_DONE)


async def _invalid_utf8(client: Client) -> Result:
    # StreamRequest field 2 (text), wire type 2 (length-delimited), 2 bytes of bad UTF-8.
    raw: grpc.aio.StreamStreamMultiCallable[bytes, speech_pb2.StreamResponse]
    raw = client.channel.stream_stream(
        _STREAM_METHOD,
        request_serializer=None,
        response_deserializer=speech_pb2.StreamResponse.FromString,
    )
    call, seen = raw(), Seen()
    await send_requests(call, b"\x12\x02\xff\xfe", close=True)
    await _read(call, seen)
    return _judge(client.kind, seen, _expect(_INVALID, "UTF-8"))


async def _oversized(client: Client) -> Result:
    call, seen = client.stream(), Seen()
    await send_requests(call, _text("x" * OVERSIZED_CHARS), close=True)
    await _read(call, seen)
    # gRPC refuses the message before the service sees it: its status, no messages.
    if (
        seen.code is grpc.StatusCode.RESOURCE_EXHAUSTED
        and not seen.responses
        and "larger than max" in seen.details
    ):
        return Result(client.kind, GRPC_SIZE_LIMIT)
    return _judge(client.kind, seen, _expect(grpc.StatusCode.RESOURCE_EXHAUSTED))


Session = Callable[[Client], Awaitable[Result]]
KINDS: dict[str, tuple[float, Session | None]] = {
    "normal": (0.32, _normal),
    "cancelled": (0.10, _cancelled),
    "barge-in": (0.10, _barge_in),
    "disconnected": (0.08, _disconnected),
    "non-reading": (0.05, _non_reading),
    "silent": (0.05, _silent),
    "run-on": (0.10, _run_on),
    "bad input": (0.20, None),  # each time the next of BAD_INPUTS
}
"""Session kinds: their share of the sessions, and what the client does."""
BAD_INPUTS: dict[str, Session] = {
    "bad: unknown voice": _unknown_voice,
    "bad: config after text": _config_after_text,
    "bad: empty request": _empty_request,
    "bad: text over 16384": _text_too_long,
    "bad: speed 5.0": _speed_out_of_range,
    "bad: NUL and control chars": _control_characters,
    "bad: invalid UTF-8": _invalid_utf8,
    "bad: message over 4 MiB": _oversized,
}


@dataclass(frozen=True)
class Planned:
    """One session of the run: its kind, what it does, its voice, its random seed."""

    kind: str
    session: Session
    voice: str
    seed: int


def schedule(count: int, seed: int) -> list[Planned]:
    """`count` sessions of kinds drawn at random (the bad inputs in rotation)."""
    rng = random.Random(seed)
    names = list(KINDS)
    kinds = rng.choices(names, weights=[KINDS[n][0] for n in names], k=count)
    bad = list(BAD_INPUTS.items())
    planned, bad_seen = [], 0
    for kind in kinds:
        voice = ESPEAK if rng.random() < ESPEAK_SHARE else TONE
        session = KINDS[kind][1]
        if session is None:
            kind, session = bad[bad_seen % len(bad)]
            bad_seen += 1
        planned.append(Planned(kind, session, voice, rng.getrandbits(32)))
    return planned


class Load:
    """Runs planned sessions, `CONCURRENCY` at a time, over `CHANNELS` connections."""

    def __init__(self, target: str) -> None:
        self._target = target
        self._channels = [
            grpc.aio.insecure_channel(target, options=_LOCAL_POOL) for _ in range(CHANNELS)
        ]
        self.results: list[Result] = []
        self.calls = 0
        """Calls opened on the Speech service (one per session)."""

    async def run(
        self, planned: Sequence[Planned], deadline: float, stop: Callable[[], bool]
    ) -> None:
        """Run `planned` until all are done, `deadline` (monotonic) passes or `stop()`."""
        pending = iter(planned)

        async def worker() -> None:
            for one in pending:
                if time.monotonic() >= deadline or stop():
                    return
                self.results.append(await self._one(one))

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))

    async def _one(self, planned: Planned) -> Result:
        channel = self._channels[self.calls % CHANNELS]
        self.calls += 1
        rng = random.Random(planned.seed)
        client = Client(planned.kind, self._target, channel, rng, planned.voice)
        try:
            return await asyncio.wait_for(planned.session(client), SESSION_TIMEOUT_S)
        except TimeoutError:
            return Result(planned.kind, NO_ENDING, f"no ending within {SESSION_TIMEOUT_S:g} s")
        except Exception as error:  # the client saw something its code did not foresee
            return Result(planned.kind, CLIENT_ERROR, f"{type(error).__name__}: {error}")

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()


# Watching the server.


@dataclass(frozen=True)
class Sample:
    """One reading of the server process."""

    elapsed_s: float
    done: int
    """Sessions finished by then."""
    rss: int
    fds: int
    threads: int
    children: int
    tasks: float
    """asyncio tasks in the server's event loop (NaN when /metrics did not answer)."""
    active: float
    """`voxrelay_active_sessions` (NaN when /metrics did not answer)."""


class Monitor:
    """Reads the server every `SAMPLE_EVERY_S`, notices an exit or a health check
    unanswered for `UNHEALTHY_S`, and prints progress every `PROGRESS_EVERY_S`."""

    def __init__(self, server: ServerProcess, metrics_port: int, done: Callable[[], int]) -> None:
        self._server = server
        self._process = psutil.Process(server.pid)
        self._url = f"http://127.0.0.1:{metrics_port}/metrics"
        self._done = done
        self._channel = grpc.aio.insecure_channel(server.target)
        self._health = health_pb2_grpc.HealthStub(self._channel)
        self.started = time.monotonic()
        self.samples: list[Sample] = []
        self.crash: str | None = None
        self.health_misses = 0
        self._unhealthy_since: float | None = None

    def crashed(self) -> bool:
        return self.crash is not None

    def scrape(self) -> dict[str, float]:
        """Every sample of the server's /metrics, by name with labels; {} on failure."""
        return scrape_metrics(self._url)

    async def read(self) -> Sample | None:
        """One reading now, kept in `samples`; None (and `crash` set) if the server is gone."""
        metrics = await asyncio.to_thread(self.scrape)
        process = self._process
        try:
            with process.oneshot():
                rss, fds = process.memory_info().rss, process.num_fds()
                threads, children = process.num_threads(), process.children(recursive=True)
        except psutil.Error as error:
            self.crash = f"the server vanished at {self._elapsed():.0f} s ({error!r})"
            return None
        sample = Sample(
            elapsed_s=self._elapsed(),
            done=self._done(),
            rss=int(rss),
            fds=int(fds),
            threads=int(threads),
            children=len(children),
            tasks=metrics.get("voxrelay_event_loop_tasks", math.nan),
            active=metrics.get("voxrelay_active_sessions", math.nan),
        )
        self.samples.append(sample)
        return sample

    async def _healthy(self) -> bool:
        try:
            answer = await self._health.Check(
                health_pb2.HealthCheckRequest(service=""), timeout=HEALTH_TIMEOUT_S
            )
        except grpc.aio.AioRpcError:
            return False
        return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)

    async def check(self) -> None:
        """Set `crash` if the server exited or has not been healthy for `UNHEALTHY_S`."""
        code = self._server.process.poll()
        if code is not None:
            self.crash = f"the server exited with code {code} at {self._elapsed():.0f} s"
            return
        if await self._healthy():
            self._unhealthy_since = None
            return
        self.health_misses += 1
        now = time.monotonic()
        if self._unhealthy_since is None:
            self._unhealthy_since = now
        elif now - self._unhealthy_since >= UNHEALTHY_S:
            self.crash = f"health unanswered for {UNHEALTHY_S:g} s at {self._elapsed():.0f} s"

    def _elapsed(self) -> float:
        return time.monotonic() - self.started

    async def watch(self) -> None:
        """Sample until cancelled or the server crashed."""
        last_progress = 0.0
        while self.crash is None:
            await self.check()
            if self.crash is not None:
                break
            sample = await self.read()
            if sample is None:
                break
            if sample.elapsed_s - last_progress >= PROGRESS_EVERY_S:
                last_progress = sample.elapsed_s
                print(f"soak: {_progress(sample)}", file=sys.stderr, flush=True)
            await asyncio.sleep(SAMPLE_EVERY_S)

    async def settled(self) -> tuple[Sample | None, float | None]:
        """Wait for no active session (up to `IDLE_WAIT_S`), then `SETTLE_S`, then a
        reading: it, and how long the wait took (None when it never came)."""
        waited = await no_active_sessions(self._url, IDLE_WAIT_S, self.crashed)
        await asyncio.sleep(SETTLE_S)
        await self.check()
        if self.crash is not None:
            return None, waited
        return await self.read(), waited

    async def close(self) -> None:
        await self._channel.close()


def _mib(value: float) -> float:
    return value / 1024 / 1024


def _progress(sample: Sample) -> str:
    return (
        f"{sample.elapsed_s:.0f} s, {sample.done} sessions, RSS {_mib(sample.rss):.1f} MiB, "
        f"fds {sample.fds}, threads {sample.threads}, tasks {sample.tasks:.0f}, "
        f"active {sample.active:.0f}"
    )


# The server's log.


@dataclass
class LogSummary:
    """What the server logged: levels, session summaries by outcome, and its warnings
    and errors (session ids masked, so alike lines count together)."""

    lines: int = 0
    levels: Counter[str] = field(default_factory=Counter)
    summaries: Counter[str] = field(default_factory=Counter)
    problems: Counter[str] = field(default_factory=Counter)


def read_log(path: Path) -> LogSummary:
    summary = LogSummary()
    if not path.exists():
        return summary
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        summary.lines += 1
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            summary.levels["not JSON"] += 1
            summary.problems[f"(not JSON) {line[:160]}"] += 1
            continue
        level = str(entry.get("level", "?"))
        summary.levels[level] += 1
        message = str(entry.get("message", ""))
        if message == "session summary":
            summary.summaries[str(entry.get("outcome"))] += 1
        if level in ("WARNING", "ERROR", "CRITICAL"):
            masked = re.sub(r"\b[0-9a-f]{12}\b", "<id>", message)[:200]
            summary.problems[f"{level} {entry.get('logger')}: {masked}"] += 1
    return summary


# The run and its report.


@dataclass
class Soak:
    """Everything a soak measured."""

    plan: Plan
    results: list[Result]
    calls: int
    samples: list[Sample]
    baseline: Sample | None
    """Idle, after the warm-up."""
    midway: Sample | None
    """Idle, half-way through the rest."""
    final: Sample | None
    """Idle, after the load."""
    load_s: float
    final_wait_s: float | None
    crash: str | None
    health_misses: int
    server_endings: dict[str, float]
    """`voxrelay_sessions_total` by status code at the end."""
    exit_code: int | None
    log: LogSummary
    log_path: Path


async def soak(plan: Plan, log_path: Path) -> Soak:
    """Start a server (its log appended to `log_path`), run `plan` against it while
    watching it, stop it."""
    metrics_port = free_port()
    arguments = [*SERVER_ARGS, *LOG_ARGS, "--metrics-listen", f"127.0.0.1:{metrics_port}"]
    server = start_server_process(arguments, log=log_path)
    print(f"soak: server log in {log_path}", file=sys.stderr, flush=True)
    try:
        load = Load(server.target)
        monitor = Monitor(server, metrics_port, lambda: len(load.results))
        watcher = asyncio.create_task(monitor.watch())
        planned = schedule(plan.sessions, plan.seed)
        deadline = monitor.started + plan.minutes * 60
        await load.run(planned[: plan.warm_up], deadline, monitor.crashed)
        baseline, _ = await monitor.settled()
        # Half of the rest (of the sessions or the time), an idle reading, the other half.
        half = plan.warm_up + (plan.sessions - plan.warm_up) // 2
        halfway = time.monotonic() + (deadline - time.monotonic()) / 2
        await load.run(planned[len(load.results) : half], halfway, monitor.crashed)
        midway, _ = await monitor.settled()
        await load.run(planned[len(load.results) :], deadline, monitor.crashed)
        load_s = time.monotonic() - monitor.started
        final, final_wait_s = await monitor.settled()
        watcher.cancel()
        (stopped,) = await asyncio.gather(watcher, return_exceptions=True)
        if not isinstance(stopped, asyncio.CancelledError | None):
            raise stopped  # a bug in the monitor: not a finding about the server
        endings = {
            name.split('"')[1]: value
            for name, value in monitor.scrape().items()
            if name.startswith("voxrelay_sessions_total{")
        }
        await load.close()
        await monitor.close()
    finally:
        stop_server_process(server)
    return Soak(
        plan=plan,
        results=load.results,
        calls=load.calls,
        samples=monitor.samples,
        baseline=baseline,
        midway=midway,
        final=final,
        load_s=load_s,
        final_wait_s=final_wait_s,
        crash=monitor.crash,
        health_misses=monitor.health_misses,
        server_endings=endings,
        exit_code=server.process.returncode,
        log=read_log(log_path),
        log_path=log_path,
    )


def _row(sample: Sample, label: str = "") -> list[str]:
    return [
        f"{sample.elapsed_s:.0f}{f' ({label})' if label else ''}",
        f"{sample.done:,}",
        f"{_mib(sample.rss):.1f}",
        str(sample.fds),
        str(sample.threads),
        f"{sample.tasks:.0f}",
        f"{sample.active:.0f}",
    ]


def _rows(run: Soak) -> list[Sequence[str]]:
    """A reading every ~10 % of the run, with the baseline and the final one marked."""
    samples = run.samples
    if not samples:
        return []
    marked = {id(run.baseline): "baseline", id(run.midway): "midway", id(run.final): "final"}
    span = samples[-1].elapsed_s
    picked: list[Sample] = []
    for tenth in range(11):
        nearest = min(samples, key=lambda s: abs(s.elapsed_s - span * tenth / 10))
        if nearest not in picked:
            picked.append(nearest)
    idle = (run.baseline, run.midway, run.final)
    picked += [s for s in idle if s is not None and s not in picked]
    picked.sort(key=lambda s: s.elapsed_s)
    return [_row(s, marked.get(id(s), "")) for s in picked]


def _growth(base: Sample | None, final: Sample | None) -> tuple[str, bool]:
    """How much `final` grew over `base`, and whether that is flat."""
    if base is None or final is None:
        return "no reading (the server crashed)", False
    rss = final.rss / base.rss - 1
    fds, threads = final.fds - base.fds, final.threads - base.threads
    tasks = final.tasks - base.tasks
    met = (
        rss <= RSS_GROWTH
        and fds <= FD_GROWTH
        and threads <= THREAD_GROWTH
        and tasks <= TASK_GROWTH  # NaN (no /metrics) compares False: not met
    )
    return (
        f"RSS {rss:+.1%} ({_mib(base.rss):.1f} → {_mib(final.rss):.1f} MiB), fds {fds:+d} "
        f"({base.fds} → {final.fds}), threads {threads:+d}, tasks {tasks:+.0f} "
        f"({base.tasks:.0f} → {final.tasks:.0f}), over {final.done - base.done:,} sessions"
    ), met


def _outcomes(results: Sequence[Result]) -> list[str]:
    """One line per kind: how many, and their outcomes."""
    by_kind: dict[str, Counter[str]] = defaultdict(Counter)
    for result in results:
        by_kind[result.kind][result.outcome] += 1
    order = [k for k in (*KINDS, *BAD_INPUTS) if k in by_kind]
    return [
        f"{kind} ({sum(by_kind[kind].values()):,}): "
        + ", ".join(f"{outcome} {n:,}" for outcome, n in by_kind[kind].most_common())
        for kind in order
    ]


def _examples(label: str, found: Sequence[tuple[str, str, str]], limit: int = 5) -> list[str]:
    """The commonest of `found` (kind, what, an example), each once, with its count."""
    counts = Counter((kind, what) for kind, what, _ in found)
    example = {(kind, what): seen for kind, what, seen in reversed(found)}
    return [
        f"{label} ({n} times) {kind}: {what}; for example {example[kind, what]}"
        for (kind, what), n in counts.most_common(limit)
    ]


def _plot(run: Soak, path: Path) -> Path:
    """RSS and event-loop tasks (and active sessions) against sessions done."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [s.done for s in run.samples]
    figure, (memory, tasks) = plt.subplots(1, 2, figsize=(11, 4.2))
    memory.plot(done, [_mib(s.rss) for s in run.samples], ".-", label="server RSS")
    memory.set_ylabel("RSS (MiB)")
    memory.set_ylim(bottom=0)
    memory.set_title("Server memory")
    tasks.plot(done, [s.tasks for s in run.samples], ".-", label="event-loop tasks")
    tasks.plot(done, [s.active for s in run.samples], ".-", alpha=0.6, label="active sessions")
    tasks.axhline(MAX_SESSIONS, color="grey", linestyle=":", label="--max-sessions")
    tasks.set_ylabel("count")
    tasks.set_title("Server tasks and sessions")
    for axes in (memory, tasks):
        if run.baseline is not None:
            axes.axvline(run.baseline.done, color="grey", linestyle="--", label="baseline")
        if run.midway is not None:
            axes.axvline(run.midway.done, color="grey", linestyle="-.", label="midway")
        axes.set_xlabel("sessions done")
        axes.grid(True, alpha=0.3)
        axes.legend()
    return save_figure(figure, path)


def section(run: Soak) -> Section:
    """The soak's table, goals and notes."""
    results = run.results
    problems = [(r.kind, r.problem, r.seen) for r in results if r.problem]
    surprises = [(r.kind, r.surprise, r.seen) for r in results if r.surprise]
    observable = sum(
        r.outcome not in (CANCELLED_BY_CLIENT, DISCONNECTED, GRPC_SIZE_LIMIT) for r in results
    )
    ended = sum(run.server_endings.values())
    growth, flat = _growth(run.baseline, run.final)
    timed = [r for r in results if r.kind in ("silent", "non-reading")]
    timed_out = sum(r.outcome == "DEADLINE_EXCEEDED" for r in timed)
    full = sum(r.outcome == SERVER_FULL for r in timed)
    final_active = run.final.active if run.final is not None else math.nan
    wait = f"{run.final_wait_s:.1f} s" if run.final_wait_s is not None else "never"
    goals = [
        Goal(
            f"RSS, fds, threads, tasks flat: final within {RSS_GROWTH:.0%} (RSS) / "
            f"+{FD_GROWTH} (fds, threads) / +{TASK_GROWTH} (tasks) of the post-warm-up baseline",
            growth,
            flat,
        ),
        Goal(
            "zero crashes",
            run.crash
            or f"none: alive to the end, {run.health_misses} health checks unanswered "
            f"(never {UNHEALTHY_S:g} s in a row)",
            run.crash is None,
        ),
        Goal(
            "zero sessions without a documented ending",
            f"{len(problems)} of {observable:,} endings seen by clients; server counted "
            f"{ended:,.0f} endings for {run.calls:,} calls",
            not problems and ended == run.calls,
        ),
        Goal(
            "every silent/non-reading session ended by the server (no active sessions left)",
            f"{timed_out} of {len(timed)} DEADLINE_EXCEEDED ({full} refused: server full); "
            f"{final_active:.0f} active, {wait} after the load",
            timed_out + full == len(timed) and final_active == 0,
        ),
    ]
    rate = len(results) / run.load_s if run.load_s else 0.0
    espeak_note = f"{ESPEAK_SHARE:.0%} of sessions on {ESPEAK}, the rest on {TONE}"
    second_half, _ = _growth(run.midway, run.final)
    notes = [
        f"From the idle reading midway ({run.midway.done if run.midway else 0:,} sessions done) "
        f"to the final one: {second_half}.",
        f"{len(results):,} sessions in {run.load_s:.0f} s, two idle readings included "
        f"({rate:.0f}/s; {espeak_note}), "
        f"{CONCURRENCY} at a time, seed {run.plan.seed}; per kind and outcome:",
        *_outcomes(results),
        "Server-side endings (`voxrelay_sessions_total`): "
        + ", ".join(f"{code} {n:,.0f}" for code, n in sorted(run.server_endings.items())),
        *_examples("No documented ending", problems),
        *_examples("Documented, but not the expected ending", surprises),
        f"Server log: {run.log.lines:,} lines ("
        + ", ".join(f"{level} {n:,}" for level, n in run.log.levels.most_common())
        + "); session summaries by outcome: "
        + ", ".join(f"{o} {n:,}" for o, n in run.log.summaries.most_common()),
        *[f"Logged ({n} times): {line}" for line, n in run.log.problems.most_common(5)],
        f"Child processes (espeak workers): {run.baseline.children if run.baseline else '?'} "
        f"at the baseline, {run.final.children if run.final else '?'} at the end; "
        f"exit code after SIGTERM: {run.exit_code}.",
    ]
    plots = [_plot(run, PLOTS / "soak.png")] if run.samples else []
    return Section(
        title="Soak: mixed sessions against one server",
        method=(
            f"One `voxrelay serve` process (`{' '.join(SERVER_ARGS)}`) takes "
            f"{run.plan.sessions:,} sessions or {run.plan.minutes:g} minutes of them, whichever "
            f"ends first, {CONCURRENCY} at a time (more clients than places, so the limit "
            "is reached at times): normal, cancelled after the first audio, "
            "barge-in, disconnected mid-stream, non-reading, silent, eight kinds of bad input "
            "in turn, and 2,000-character run-on text. psutil and `/metrics` read the server "
            f"every second; the baseline is read once the server is idle after "
            f"{run.plan.warm_up} warm-up sessions, the midway and final readings likewise "
            "half-way through the rest and after the load. "
            "Every ending a client can see is checked against the contract."
        ),
        header=["elapsed s", "sessions done", "RSS MiB", "fds", "threads", "tasks", "active"],
        rows=_rows(run),
        goals=goals,
        plots=plots,
        notes=notes,
    )


def _default_log() -> Path:
    return Path(tempfile.gettempdir()) / f"voxrelay-soak-{time.strftime('%Y%m%d-%H%M%S')}.log"


async def run(quick: bool) -> Section:
    """The soak as a suite section: `QUICK` (under a minute) or `FULL` (about three)."""
    return section(await soak(QUICK if quick else FULL, _default_log()))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak",
        description=(__doc__ or "").split("\n\n")[0],
    )
    parser.add_argument(
        "--minutes",
        type=float,
        default=FULL.minutes,
        help="time budget of the load, warm-up included; the run stops at this or "
        f"--sessions, whichever comes first (default {FULL.minutes:g})",
    )
    parser.add_argument(
        "--sessions",
        type=int,
        default=FULL.sessions,
        help=f"most sessions to run, warm-up included (default {FULL.sessions})",
    )
    parser.add_argument(
        "--warm-up",
        type=int,
        default=FULL.warm_up,
        help=f"sessions before the baseline reading (default {FULL.warm_up})",
    )
    parser.add_argument("--seed", type=int, default=FULL.seed, help="seed of the session mix")
    parser.add_argument(
        "--log", type=Path, default=None, help="file for the server's log (default: in /tmp)"
    )
    args = parser.parse_args(argv)
    plan = Plan(args.sessions, args.minutes, min(args.warm_up, args.sessions), args.seed)
    if args.log is not None:
        args.log.unlink(missing_ok=True)  # the server appends to it
    soaked = asyncio.run(soak(plan, args.log or _default_log()))
    result = section(soaked)
    print(result.console())
    for note in result.notes:
        print(f"- {note}")
    for plot in result.plots:
        print(f"plot: {plot}")
    print(f"server log: {soaked.log_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
