"""The Python client: an async session API and sync helpers with the same names.

async with voxrelay.AsyncClient() as client:
    async with client.session(voice="piper/en_US-joe-medium") as session:
        await session.send_text("Hello there. ")
        await session.turn_done()
        await session.close()
        async for event in session:
            ...

audio = voxrelay.Client().synthesize("Hello there.")
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import math
import os
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import grpc
import numpy as np
import numpy.typing as npt

from voxrelay.codecs import OpusPageCounter, alaw_to_linear, decode_ogg_opus, ulaw_to_linear
from voxrelay.errors import Endpoint, VoxrelayError, status_from_number
from voxrelay.events import (
    Audio,
    Event,
    Resumed,
    SessionEnded,
    SessionStarted,
    TurnEnded,
    TurnStarted,
    WireEncoding,
    Word,
    Words,
)
from voxrelay.replicas import (
    RETRIED_CODES,
    ConnectionState,
    Recovery,
    ResumePlan,
    RetryPolicy,
    SessionLedger,
    channel_options,
    recovery_for,
    split_chunks,
)
from voxrelay.v1 import speech_pb2, speech_pb2_grpc

if TYPE_CHECKING:
    from voxrelay.v1.speech_pb2_grpc import SpeechAsyncStub

DEFAULT_TARGET = "127.0.0.1:50051"
SampleType = Literal["int16", "float32"]
Metadata = tuple[tuple[str, str], ...]

_ENCODINGS = {
    "int16": speech_pb2.AUDIO_ENCODING_PCM_S16LE,
    "float32": speech_pb2.AUDIO_ENCODING_PCM_F32LE,
}
Segmentation = Literal["", "first_clause", "sentences"]
_SEGMENTATIONS = {
    "": speech_pb2.SEGMENTATION_UNSPECIFIED,
    "first_clause": speech_pb2.SEGMENTATION_FIRST_CLAUSE,
    "sentences": speech_pb2.SEGMENTATION_SENTENCES,
}
Pace = Literal["", "as_made", "realtime"]
_PACES = {
    "": speech_pb2.PACE_UNSPECIFIED,
    "as_made": speech_pb2.PACE_AS_MADE,
    "realtime": speech_pb2.PACE_REALTIME,
}
_WIRE_ENCODINGS = {
    "mulaw": speech_pb2.AUDIO_ENCODING_MULAW,
    "alaw": speech_pb2.AUDIO_ENCODING_ALAW,
    "opus": speech_pb2.AUDIO_ENCODING_OGG_OPUS,
}
_DTYPES: dict[int, np.dtype[Any]] = {
    speech_pb2.AUDIO_ENCODING_PCM_S16LE: np.dtype("<i2"),
    speech_pb2.AUDIO_ENCODING_PCM_F32LE: np.dtype("<f4"),
}
_NAMES: dict[int, WireEncoding] = {
    speech_pb2.AUDIO_ENCODING_PCM_S16LE: "pcm",
    speech_pb2.AUDIO_ENCODING_PCM_F32LE: "pcm",
    speech_pb2.AUDIO_ENCODING_MULAW: "mulaw",
    speech_pb2.AUDIO_ENCODING_ALAW: "alaw",
    speech_pb2.AUDIO_ENCODING_OGG_OPUS: "opus",
}


def default_target() -> str:
    """`VOXRELAY_SERVER` if set, else 127.0.0.1:50051."""
    return os.environ.get("VOXRELAY_SERVER", DEFAULT_TARGET)


def _read_pem(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise OSError(f"cannot read {what} {path!r}: {error.strerror or error}") from error


@dataclass(frozen=True)
class _Security:
    """How a client connects: channel credentials (None = plaintext) and per-call metadata."""

    credentials: grpc.ChannelCredentials | None
    metadata: Metadata = field(default=(), repr=False)

    def endpoint(self, target: str, tls_ca: str | None, tls_cert: str | None) -> Endpoint:
        """The connection as errors describe it."""
        tls = self.credentials is not None and bool(tls_ca or tls_cert)
        return Endpoint(target, tls=tls, ca_file=tls_ca, client_certificate=bool(tls_cert))


def _security(
    tls_ca: str | None, tls_cert: str | None, tls_key: str | None, token: str | None
) -> _Security:
    """Channel credentials and call metadata for the client's TLS and token options.

    TLS is used when `tls_ca` or a client certificate is given (no `tls_ca`: the
    system's trusted CAs). On TLS channels the token rides on gRPC call credentials,
    which gRPC never sends in clear; on plaintext channels it is per-call metadata.
    """
    if bool(tls_cert) != bool(tls_key):
        raise ValueError(
            "a client certificate needs both tls_cert and tls_key "
            "(--tls-cert/--tls-key, VOXRELAY_TLS_CERT/VOXRELAY_TLS_KEY)"
        )
    if token and (not token.isascii() or not token.isprintable() or " " in token):
        raise ValueError("the token must be printable ASCII without spaces")
    credentials = None
    if tls_ca or tls_cert:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=_read_pem(tls_ca, "the tls_ca file") if tls_ca else None,
            private_key=_read_pem(tls_key, "the tls_key file") if tls_key else None,
            certificate_chain=_read_pem(tls_cert, "the tls_cert file") if tls_cert else None,
        )
    if not token:
        return _Security(credentials)
    if credentials is None:
        return _Security(None, (("authorization", f"Bearer {token}"),))
    call_credentials = grpc.access_token_call_credentials(token)
    return _Security(grpc.composite_channel_credentials(credentials, call_credentials))


@dataclass(frozen=True)
class SessionOptions:
    """A session's configuration; zero values take the server's defaults."""

    voice: str = ""
    """`<engine>/<voice>`; empty for the server's default voice (or `language_code`'s)."""
    language_code: str = ""
    """A BCP-47 tag (`de`, `en-GB`): with `voice` empty, the server picks its preferred
    voice for the language; empty = no preference."""
    dtype: SampleType = "int16"
    """Sample type of the audio arrays (and of the wire encoding, with "pcm")."""
    encoding: WireEncoding = "pcm"
    """How audio travels: "pcm" (in `dtype`), "mulaw" or "alaw" (G.711, decoded into
    `dtype` on arrival; 8000 Hz is their usual rate) or "opus" (Ogg Opus, one stream
    per turn, at 8000, 12000, 16000, 24000 or 48000 Hz; see `Audio`)."""
    sample_rate_hz: int = 0
    """0 = the voice's native rate (for "opus": the lowest Opus rate at or above it);
    anything else is resampled by the server."""
    speed: float = 0.0
    """0.25 to 4.0; 0 = normal speed."""
    instructions: str = ""
    min_sentence_chars: int = 0
    """Splitter minimum; 0 = 20 characters."""
    chunk_ms: int = 0
    """Target duration of one audio message; 0 = as the engine produces it."""
    max_inflight_segments: int = 0
    """How far synthesis may run ahead of playback; 0 = server default."""
    segmentation: Segmentation = ""
    """"first_clause" (the server's default: a turn's first segment ends at its first
    clause, for the earliest audio) or "sentences" (every segment a sentence)."""
    first_clause_min_words: int = 0
    """Words a turn's first segment holds before it may end at a clause; 0 = 4."""
    stall_ms: int = 0
    """A turn's start stalled this long speaks its complete words; 0 = 500 ms."""
    word_timestamps: bool = False
    """Receive `Words` events: where each word is spoken (voices whose
    `VoiceInfo.word_timestamps` is true; other voices send none)."""
    pace: Pace = ""
    """"as_made" (the server's default: audio as fast as it is made) or "realtime"
    (at real-time pace, at most `SessionStarted.pace_lead_ms` ahead of a listener,
    for a bridge that forwards audio as it comes)."""

    def to_proto(self) -> speech_pb2.SessionConfig:
        if self.dtype not in _ENCODINGS:
            raise ValueError(f"dtype must be 'int16' or 'float32', not {self.dtype!r}")
        if self.encoding != "pcm" and self.encoding not in _WIRE_ENCODINGS:
            raise ValueError(
                f"encoding must be 'pcm', 'mulaw', 'alaw' or 'opus', not {self.encoding!r}"
            )
        if self.pace not in _PACES:
            raise ValueError(
                "pace must be 'as_made', 'realtime' or '' (the server's default), "
                f"not {self.pace!r}"
            )
        if self.segmentation not in _SEGMENTATIONS:
            raise ValueError(
                "segmentation must be 'first_clause', 'sentences' or '' (the server's "
                f"default), not {self.segmentation!r}"
            )
        return speech_pb2.SessionConfig(
            voice=self.voice,
            language_code=self.language_code,
            audio_format=speech_pb2.AudioFormat(
                encoding=_WIRE_ENCODINGS.get(self.encoding, _ENCODINGS[self.dtype]),
                sample_rate_hz=self.sample_rate_hz,
            ),
            speed=self.speed,
            instructions=self.instructions,
            min_sentence_chars=self.min_sentence_chars,
            chunk_ms=self.chunk_ms,
            max_inflight_segments=self.max_inflight_segments,
            segmentation=_SEGMENTATIONS[self.segmentation],
            first_clause_min_words=self.first_clause_min_words,
            stall_ms=self.stall_ms,
            word_timestamps=self.word_timestamps,
            pace=_PACES[self.pace],
        )


@dataclass(frozen=True)
class VoiceInfo:
    """A voice the server offers."""

    name: str
    engine: str
    language_codes: tuple[str, ...]
    native_sample_rate_hz: int
    is_default: bool
    word_timestamps: bool = False
    """The voice gives word timing (`SessionOptions.word_timestamps`)."""


@dataclass
class SynthesizedAudio:
    """The whole audio of one text."""

    samples: npt.NDArray[np.int16] | npt.NDArray[np.float32]
    """Decoded mono samples in the options' dtype (for "opus" decoded by libsndfile)."""
    sample_rate_hz: int
    chunks: list[Audio] = field(default_factory=list, repr=False)
    data: bytes = field(default=b"", repr=False)
    """The encoded bytes as sent, joined: for "opus" a complete `.opus` file."""
    words: list[Word] = field(default_factory=list)
    """Every word and where it is spoken in `samples`, with `word_timestamps`."""

    @property
    def duration_s(self) -> float:
        return len(self.samples) / self.sample_rate_hz if self.sample_rate_hz else 0.0


def event_from_response(
    response: speech_pb2.StreamResponse,
    dtype: SampleType = "int16",
    opus: OpusPageCounter | None = None,
) -> Event:
    """Decode one server message; raises `VoxrelayError` for an `error` message.

    G.711 is decoded into `dtype`; `opus` counts the samples of Ogg Opus pages and
    must be the same object for every message of a session (it keeps the pre-skip of
    the turn's stream).
    """
    kind = response.WhichOneof("response")
    if kind == "audio":
        chunk = response.audio
        encoding = _NAMES.get(chunk.encoding)
        rate, offset = chunk.sample_rate_hz, chunk.offset_samples
        if encoding == "pcm":
            samples = np.frombuffer(chunk.data, dtype=_DTYPES[chunk.encoding])
            return Audio(
                samples,
                rate,
                chunk.turn,
                chunk.segment,
                offset,
                chunk.data,
                text_offset=chunk.text_offset,
                text_length=chunk.text_length,
            )
        if encoding == "opus":
            count = (opus or OpusPageCounter()).samples_in(chunk.data, offset, rate)
            empty = np.zeros(0, dtype=_DTYPES[_ENCODINGS[dtype]])
            return Audio(
                empty,
                rate,
                chunk.turn,
                chunk.segment,
                offset,
                chunk.data,
                "opus",
                count,
                text_offset=chunk.text_offset,
                text_length=chunk.text_length,
            )
        if encoding is None:
            raise VoxrelayError(
                grpc.StatusCode.UNIMPLEMENTED,
                f"the server sent audio in encoding {chunk.encoding}, which this client "
                "does not know: update the voxrelay client",
            )
        linear = ulaw_to_linear(chunk.data) if encoding == "mulaw" else alaw_to_linear(chunk.data)
        samples = linear if dtype == "int16" else linear.astype(np.float32) / np.float32(32767)
        return Audio(
            samples,
            rate,
            chunk.turn,
            chunk.segment,
            offset,
            chunk.data,
            encoding,
            text_offset=chunk.text_offset,
            text_length=chunk.text_length,
        )
    if kind == "words":
        timings = response.words
        return Words(
            timings.turn,
            timings.segment,
            tuple(
                Word(word.text, word.text_offset, word.start_samples, word.end_samples)
                for word in timings.words
            ),
        )
    if kind == "session_started":
        started = response.session_started
        return SessionStarted(
            started.session_id,
            started.voice,
            _NAMES.get(started.encoding, "pcm"),
            started.sample_rate_hz,
            started.pace_lead_ms,
            started.text_budget_chars,
        )
    if kind == "lifecycle":
        lifecycle = response.lifecycle
        if lifecycle.event == speech_pb2.LIFECYCLE_EVENT_TURN_STARTED:
            return TurnStarted(lifecycle.turn)
        if lifecycle.event == speech_pb2.LIFECYCLE_EVENT_TURN_ENDED:
            return TurnEnded(
                lifecycle.turn,
                lifecycle.cancelled,
                lifecycle.spoken_text,
                max(lifecycle.spoken_length, len(lifecycle.spoken_text)),
            )
        return SessionEnded()
    error = response.error
    raise VoxrelayError(
        status_from_number(error.code), error.message, turn=error.turn, segment=error.segment
    )


def _voice_info(voice: speech_pb2.Voice) -> VoiceInfo:
    return VoiceInfo(
        voice.name,
        voice.engine,
        tuple(voice.language_codes),
        voice.native_sample_rate_hz,
        voice.is_default,
        voice.word_timestamps,
    )


class _Synthesis:
    """What `synthesize()` does, for the async and the blocking client alike: one
    `Synthesize` request, its responses decoded into events, the audio joined.

    The text goes whole in one request (up to 1,000,000 characters; the server feeds
    it to synthesis as its text budget frees), not as a `Stream` chunk, which holds
    at most 16384 characters. Only the iteration over the call differs between the
    twins.
    """

    def __init__(self, text: str, options: SessionOptions | None, target: Endpoint) -> None:
        self.options = options or SessionOptions()
        self.target = target
        self.request = speech_pb2.SynthesizeRequest(config=self.options.to_proto(), text=text)
        self._opus = OpusPageCounter()
        self._chunks: list[Audio] = []
        self._words: list[Word] = []
        self.started = False
        """The call's `session_started` arrived: it is no longer retried."""

    def take(self, response: speech_pb2.StreamResponse) -> None:
        """One response of the call; an `error` message raises `VoxrelayError`."""
        event = event_from_response(response, self.options.dtype, self._opus)
        if isinstance(event, SessionStarted):
            self.started = True
        elif isinstance(event, Audio):
            self._chunks.append(event)
        elif isinstance(event, Words):
            self._words += event.words

    def failed(self, error: grpc.RpcError) -> VoxrelayError:
        """The error for a call gRPC ended (unreachable server, refused, ...)."""
        return VoxrelayError.from_rpc_error(error, self.target, started=self.started)

    def result(self) -> SynthesizedAudio:
        """The whole audio, once the call has ended well."""
        return _join(self._chunks, self.options, self._words)

    def again(self, error: VoxrelayError, attempts: int, since: float, retry: RetryPolicy) -> bool:
        """The call, refused before its session started, may go to another replica."""
        return (
            not self.started
            and error.code in RETRIED_CODES
            and attempts < retry.max_attempts
            and time.monotonic() - since <= retry.max_elapsed_s
        )


def _join(
    chunks: list[Audio], options: SessionOptions, words: list[Word] | None = None
) -> SynthesizedAudio:
    dtype = np.dtype("<i2") if options.dtype == "int16" else np.dtype("<f4")
    data = b"".join(c.data for c in chunks)
    rate = chunks[0].sample_rate_hz if chunks else 0
    if options.encoding == "opus" and data:
        decoded, rate = decode_ogg_opus(data, options.dtype)
        return SynthesizedAudio(decoded, rate, chunks, data, words or [])
    samples = np.concatenate([c.samples for c in chunks]) if chunks else np.zeros(0, dtype)
    return SynthesizedAudio(samples, rate, chunks, data, words or [])


READ_AHEAD = 8
"""Responses a session reads ahead of its iteration. Reading goes on while the caller
sends, so the server's error is in hand whenever a write fails: gRPC's asyncio client
reports its own INTERNAL for a write that races with the end of the call, and drops
the responses not yet read (grpc/grpc#36066)."""
_CALL_OVER_READ_S = 5.0
"""After a failed write: how long the rest of the call's responses may take to arrive."""

StreamCall = grpc.aio.StreamStreamCall[speech_pb2.StreamRequest, speech_pb2.StreamResponse]


class _Call:
    """One `Stream` call of a session and the responses read ahead of it."""

    def __init__(self, call: StreamCall, read_ahead: float) -> None:
        self.call = call
        self.responses: collections.deque[speech_pb2.StreamResponse] = collections.deque()
        self.read_ahead = read_ahead
        self.read_error: grpc.RpcError | None = None
        """How reading the call ended, if not at its end of stream."""
        self.started = False
        """Its `session_started` was read."""
        self.lost: VoxrelayError | None = None
        """A write found the call over with an error the session recovers from."""
        self.stopped = False
        """The session ended the call (to replace it, or on leaving)."""
        self.changed = asyncio.Event()
        """Set (and replaced) when a response arrives, one is taken, or reading ends."""
        self.opus = OpusPageCounter()
        self.reading = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            while (response := await self.call.read()) is not grpc.aio.EOF:
                assert isinstance(response, speech_pb2.StreamResponse)
                if response.WhichOneof("response") == "session_started":
                    self.started = True
                self.responses.append(response)
                self.notify()
                while len(self.responses) >= self.read_ahead:
                    await self.changed.wait()
        except grpc.RpcError as error:
            self.read_error = error
        finally:
            self.notify()

    async def next_response(self) -> speech_pb2.StreamResponse | None:
        """The next response read; None once the call has no more."""
        while not self.responses:
            if self.reading.done():
                return None
            await self.changed.wait()
        response = self.responses.popleft()
        self.notify()  # room for the reader
        return response

    def notify(self) -> None:
        changed, self.changed = self.changed, asyncio.Event()
        changed.set()

    async def stop(self) -> None:
        """End the call and its reading."""
        self.stopped = True
        if not self.call.done():
            self.call.cancel()
        self.reading.cancel()
        await asyncio.gather(self.reading, return_exceptions=True)


class AsyncSession:
    """One conversation: send text and turn markers, iterate ordered events.

    Use it as an async context manager; leaving the block early cancels the call.
    Iterating yields `Audio`, `TurnStarted`, `TurnEnded` (and `Words` with
    `word_timestamps`) and finally `SessionEnded`; a failure raises
    `VoxrelayError`, with the server's status and message, whether it surfaces
    while iterating or while sending.

    A call refused before its session started (UNAVAILABLE: the replica is loading,
    draining or unreachable; RESOURCE_EXHAUSTED: it is at `--max-sessions`) is
    opened again, on the next replica, as `retry` says; the text already sent goes
    with it. With `resume` (the default), a session whose replica is lost after it
    started (UNAVAILABLE, a reset connection, a killed process) goes on on another
    one: the iteration yields `Resumed`, then the rest of the audio, numbered as
    before (see `Resumed`). Both happen while iterating: a write to a lost call
    returns, the text is kept and sent on the new call.
    """

    def __init__(
        self,
        stub: SpeechAsyncStub,
        options: SessionOptions,
        target: str | Endpoint,
        *,
        metadata: Metadata = (),
        retry: RetryPolicy | None = None,
        resume: bool = True,
    ) -> None:
        self._stub = stub
        self._options = options
        self._target = target
        self._metadata = metadata
        self._retry = retry or RetryPolicy()
        self._resume = resume
        self._config = options.to_proto()
        self._ledger = SessionLedger()
        self._current: _Call | None = None
        self._sending = asyncio.Lock()
        """Held by each write, and while a new call is sent what the old one had."""
        self.state = ConnectionState.IDLE
        """Where the session's connection is (one value for its whole lifecycle)."""
        self._attempts = 0
        """Calls opened since the last one whose session started."""
        self._failed_at = 0.0
        self._plan: ResumePlan | None = None
        """What the last new call was sent, until its session starts."""
        self._reason = ""
        self._same_point = (0, 0, 0)
        """(turn, text offset, resumes) of the latest resume, to give up on a point that
        fails replica after replica."""
        self.started: SessionStarted | None = None
        """The session's first event, once iterating has yielded it: its id (which the
        server's logs name it by), voice, encoding and rate. After a resume it stays
        the first one; `Resumed.session_id` names the new one."""
        self.resumes = 0
        """How many times the session resumed on another replica."""

    async def __aenter__(self) -> AsyncSession:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._current is not None:
            await self._current.stop()
        if self.state is not ConnectionState.FAILED:
            self.state = ConnectionState.ENDED

    async def open(self) -> None:
        """Start the call and send the configuration."""
        self._current = self._new_call()
        self.state = ConnectionState.OPENING
        await self._write(speech_pb2.StreamRequest(config=self._config))

    def _new_call(self) -> _Call:
        return _Call(self._stub.Stream(metadata=self._metadata), READ_AHEAD)

    async def send_text(self, text: str) -> None:
        """Send the next text of the current turn (whitespace is kept), of any length.

        A text over the server's limit for one `StreamRequest.text` (16384
        characters) goes out as consecutive messages of at most that many, cut
        between code points; the turn's text is the same as if it were one. An
        empty text is still sent, so the server refuses it (INVALID_ARGUMENT).
        """
        async with self._sending:
            self._ledger.add_text(text)  # once, whole: a resume sends it again in pieces
            for piece in split_chunks(text) if text else (text,):
                await self._write(speech_pb2.StreamRequest(text=piece), locked=True)

    async def turn_done(self) -> None:
        """Mark the current turn complete."""
        async with self._sending:
            self._ledger.turn_done()
            await self._write(
                speech_pb2.StreamRequest(turn_done=speech_pb2.TurnDone()), locked=True
            )

    async def cancel(self, played_samples: int = 0, turn: int = 0) -> None:
        """Barge-in: drop everything sent so far that has not been delivered.

        `played_samples` and `turn` say where the listener stopped: it played
        `played_samples` samples (at the session's rate, counted from the start of
        the turn, as `Audio.offset_samples` counts them) of turn `turn`. The server
        then reports in that turn's `TurnEnded.spoken_text` the text up to the end
        of the last segment it heard whole. `turn` 0 with `played_samples` means the
        turn being spoken; both 0 (the default) means the position is unknown. A
        turn whose `TurnEnded` was already sent is not changed: for it, use the
        `text_offset`/`text_length` of the `Audio` you played.
        """
        async with self._sending:
            call_turn, played = self._ledger.cancel(played_samples, turn)
            request = speech_pb2.Cancel(turn=call_turn, played_samples=played)
            await self._write(speech_pb2.StreamRequest(cancel=request), locked=True)

    async def close(self) -> None:
        """Send nothing more: the server finishes every turn, then ends the session."""
        async with self._sending:
            self._ledger.closed = True
            call = self._require_call()
            if call.lost is not None or call.stopped:
                return
            try:
                await call.call.done_writing()
            except grpc.RpcError as error:
                await self._write_failed(call, error)

    def __aiter__(self) -> AsyncIterator[Event]:
        return self.events()

    async def events(self) -> AsyncIterator[Event]:
        """The session's events in order, until `SessionEnded`."""
        while True:
            call = self._require_call()
            response = await call.next_response()
            if response is None:
                failure = await self._outcome(call)
                if failure is None:
                    return
                for event in await self._recover(call, failure):
                    yield event
                continue
            kind = response.WhichOneof("response")
            if kind == "error":
                error = response.error
                failure = VoxrelayError(
                    status_from_number(error.code),
                    error.message,
                    turn=error.turn,
                    segment=error.segment,
                )
                for event in await self._recover(call, failure):
                    yield event
                continue
            if kind == "session_started":
                opened = self._session_started(response)
                if opened is not None:
                    yield opened
                continue
            try:
                event = event_from_response(response, self._options.dtype, call.opus)
            except VoxrelayError:
                call.call.cancel()
                self.state = ConnectionState.FAILED
                raise
            renumbered = self._renumber(event)
            if renumbered is not None:
                yield renumbered
            if isinstance(event, SessionEnded):
                self.state = ConnectionState.ENDED
                return

    def _session_started(self, response: speech_pb2.StreamResponse) -> Event | None:
        """The caller's event for a call's `session_started`: the first call's, or a
        `Resumed` for a later one."""
        started = event_from_response(response, self._options.dtype)
        assert isinstance(started, SessionStarted)
        self.state = ConnectionState.STREAMING
        self._attempts = 0
        plan, self._plan = self._plan, None
        if self.started is None:
            self.started = started
            return started
        if plan is None:
            return None
        self.resumes += 1
        return Resumed(
            plan.turn,
            plan.segment,
            plan.offset_samples,
            plan.repeated_samples,
            plan.text_offset,
            started.session_id,
            self._reason,
        )

    def _renumber(self, event: Event) -> Event | None:
        """An event of the current call in the caller's numbering; None for one the
        caller already had (the TURN_STARTED of a turn sent again)."""
        ledger = self._ledger
        if isinstance(event, Audio):
            place = ledger.audio(
                event.turn,
                event.segment,
                event.offset_samples,
                event.num_samples,
                event.text_offset,
                event.text_length,
            )
            return dataclasses.replace(
                event,
                turn=place.turn,
                segment=place.segment,
                offset_samples=place.offset_samples,
                text_offset=place.text_offset,
                repeated_samples=place.repeated_samples,
            )
        if isinstance(event, Words):
            turn, segment, text_base, sample_base = ledger.words_place(event.turn, event.segment)
            words = tuple(
                Word(
                    word.text,
                    word.text_offset + text_base,
                    word.start_samples + sample_base,
                    word.end_samples + sample_base,
                )
                for word in event.words
            )
            return Words(turn, segment, words)
        if isinstance(event, TurnStarted):
            number = ledger.turn_started(event.turn)
            if number is None:
                return None
            return TurnStarted(number)
        if isinstance(event, TurnEnded):
            number, spoken, heard = ledger.turn_ended(
                event.turn, event.cancelled, event.heard_chars
            )
            return TurnEnded(number, event.cancelled, spoken, heard)
        return event

    async def _outcome(self, call: _Call) -> VoxrelayError | None:
        """Why a call's responses ended: None for a call that ended well."""
        if call.read_error is not None:
            return VoxrelayError.from_rpc_error(call.read_error, self._target, started=call.started)
        code = await call.call.code()
        if code is grpc.StatusCode.OK:
            if self.state is not ConnectionState.ENDED:
                # The call ended without SESSION_ENDED: it was lost (a replica that
                # stopped mid-write).
                return VoxrelayError(
                    grpc.StatusCode.UNAVAILABLE, "the call ended before the session did"
                )
            return None
        return VoxrelayError(code, await call.call.details() or "")

    async def _recover(self, call: _Call, failure: VoxrelayError) -> list[Event]:
        """Carry the session on after `call` failed (events the caller gets first), or
        raise its error."""
        recovery = recovery_for(
            failure.code, started=call.started, segment=failure.segment, resume=self._resume
        )
        await call.stop()
        now = time.monotonic()
        if self._attempts == 0:
            self._failed_at = now
        self._attempts += 1
        gave_up = ""
        if recovery is not Recovery.FAIL:
            if self._attempts >= self._retry.max_attempts:
                gave_up = f" (gave up after {self._attempts} calls)"
            elif now - self._failed_at > self._retry.max_elapsed_s:
                gave_up = f" (gave up after {now - self._failed_at:.1f} s)"
            elif recovery is Recovery.RESUME and self._stuck():
                gave_up = " (the session failed at the same place on several replicas)"
        if recovery is Recovery.FAIL or gave_up:
            self.state = ConnectionState.FAILED
            raise VoxrelayError(
                failure.code,
                failure.message + gave_up,
                turn=failure.turn,
                segment=failure.segment,
            )
        self.state = ConnectionState.RECONNECTING
        if recovery is Recovery.RESUME:
            self._reason = f"{failure.code.name}: {failure.message}"
        if self._attempts > 1:
            await asyncio.sleep(self._retry.backoff_s(self._attempts - 1))
        return await self._reopen()

    def _stuck(self) -> bool:
        """The resume point is the one the last resumes had, too many times over."""
        first = next(iter(self._ledger.turns.values()), None)
        point = (first.number, first.resume_point()[0]) if first is not None else (0, 0)
        turn, offset, count = self._same_point
        count = count + 1 if (turn, offset) == point else 1
        self._same_point = (*point, count)
        return count > self._retry.max_attempts

    async def _reopen(self) -> list[Event]:
        """Open a new call and send it the session so far; the caller's events for the
        cancelled turns it ends here."""
        events: list[Event] = []
        async with self._sending:
            plan = self._ledger.plan_resume()
            if self.started is not None:  # a resume, not a retry of a refused first call
                self._plan = plan
            for record in plan.finished:
                if not record.announced:
                    events.append(TurnStarted(record.number))
                heard = record.heard_locally()
                text = record.spoken(heard, self._ledger.head_chars)
                events.append(TurnEnded(record.number, True, text, heard))
            call = self._current = self._new_call()
            self.state = ConnectionState.OPENING
            requests = [speech_pb2.StreamRequest(config=self._config)]
            for kind, text in plan.requests:
                if kind == "text":
                    requests.append(speech_pb2.StreamRequest(text=text))
                else:
                    requests.append(speech_pb2.StreamRequest(turn_done=speech_pb2.TurnDone()))
            for request in requests:
                if not await self._send_on(call, request):
                    return events
            if self._ledger.closed:
                try:
                    await call.call.done_writing()
                except grpc.RpcError as error:
                    await self._write_failed(call, error)
        return events

    async def _write(self, request: speech_pb2.StreamRequest, *, locked: bool = False) -> None:
        if locked:
            await self._send_on(self._require_call(), request)
            return
        async with self._sending:
            await self._send_on(self._require_call(), request)

    async def _send_on(self, call: _Call, request: speech_pb2.StreamRequest) -> bool:
        """Write `request` on `call`; False when the call is lost (the session carries
        on on a new one, which is sent it again), raises when the session fails."""
        if call.lost is not None or call.stopped:
            return False
        try:
            await call.call.write(request)
        except (grpc.RpcError, asyncio.InvalidStateError) as error:
            await self._write_failed(call, error)
            return False
        return True

    async def _write_failed(self, call: _Call, failure: Exception) -> None:
        """A write found `call` over: note it if the session recovers, else raise."""
        error = await self._why_it_ended(call, failure)
        recovery = recovery_for(
            error.code, started=call.started, segment=error.segment, resume=self._resume
        )
        if recovery is Recovery.FAIL:
            raise error
        call.lost = error

    async def _why_it_ended(self, call: _Call, failure: Exception) -> VoxrelayError:
        """The error a failed write stands for: the call is over, and the server's
        `error` message, or else the call's status, says why."""
        if isinstance(failure, asyncio.InvalidStateError) and not call.call.done():
            raise RuntimeError(
                "the session was closed for sending (close() was called): open a new one"
            ) from None
        call.read_ahead = math.inf  # the call is over: what is left of it is finite
        call.notify()
        await asyncio.wait({call.reading}, timeout=_CALL_OVER_READ_S)
        for response in call.responses:
            if response.WhichOneof("response") == "error":
                error = response.error
                return VoxrelayError(
                    status_from_number(error.code),
                    error.message,
                    turn=error.turn,
                    segment=error.segment,
                )
        reason = call.read_error or failure
        if isinstance(reason, grpc.RpcError):
            return VoxrelayError.from_rpc_error(reason, self._target, started=call.started)
        return VoxrelayError(grpc.StatusCode.UNKNOWN, f"the call ended: {reason}")

    def _require_call(self) -> _Call:
        if self._current is None:
            raise RuntimeError("the session is not open: use `async with client.session(...)`")
        return self._current


class AsyncClient:
    """An async connection to a voxrelay server, or to replicas of one; close it or use
    `async with`.

    `target` is any gRPC target: `host:port`, `dns:///voxrelay.internal:50051` (every
    address the name resolves to), `ipv4:127.0.0.2:50051,127.0.0.3:50051`. Calls are
    balanced `round_robin` over the addresses that are READY and whose health is
    SERVING, so each new session goes to the next replica (`replicas.service_config`).
    `retry` bounds how a call refused before its session started is opened again on
    another replica; `resume=False` makes a session whose replica is lost raise its
    error instead of resuming (see `AsyncSession`). `health_check=True` also skips
    replicas whose `grpc.health.v1` status is not SERVING (loading, or draining after
    SIGTERM): right for `voxrelay serve`, which reports it.

    `tls_ca` (a PEM CA file) turns on TLS; `tls_cert` and `tls_key` add a client
    certificate for mutual TLS; `token` is sent as `authorization: Bearer` on every call.
    """

    def __init__(
        self,
        target: str | None = None,
        *,
        tls_ca: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        token: str | None = None,
        retry: RetryPolicy | None = None,
        resume: bool = True,
        health_check: bool = False,
    ) -> None:
        self.target = target or default_target()
        self.retry = retry or RetryPolicy()
        self.resume = resume
        self.health_check = health_check
        security = _security(tls_ca, tls_cert, tls_key, token)
        self._metadata = security.metadata
        self._endpoint = security.endpoint(self.target, tls_ca, tls_cert)
        if security.credentials is None:
            self._channel = grpc.aio.insecure_channel(
                self.target, options=channel_options(health_check=health_check)
            )
        else:
            self._channel = grpc.aio.secure_channel(
                self.target,
                security.credentials,
                options=channel_options(health_check=health_check),
            )
        self._stub = speech_pb2_grpc.SpeechStub(self._channel)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    def session(self, options: SessionOptions | None = None, **fields: object) -> AsyncSession:
        """A new session; pass `SessionOptions` or its fields as keywords."""
        if options is None:
            options = SessionOptions(**fields)  # type: ignore[arg-type]
        return AsyncSession(
            self._stub,
            options,
            self._endpoint,
            metadata=self._metadata,
            retry=self.retry,
            resume=self.resume,
        )

    async def voices(self, language: str = "") -> list[VoiceInfo]:
        """Every voice the server offers, the default first; with `language` (a BCP-47
        tag such as "de" or "en-US", matched as a prefix, case-insensitively), only
        those that speak it."""
        try:
            response = await self._stub.ListVoices(
                speech_pb2.ListVoicesRequest(language_code=language), metadata=self._metadata
            )
        except grpc.RpcError as error:
            raise VoxrelayError.from_rpc_error(error, self._endpoint) from None
        return [_voice_info(voice) for voice in response.voices]

    async def synthesize(
        self, text: str, options: SessionOptions | None = None
    ) -> SynthesizedAudio:
        """The whole audio of `text` (up to 1,000,000 characters), spoken as one turn,
        through the `Synthesize` rpc."""
        since, attempts = time.monotonic(), 0
        while True:
            synthesis = _Synthesis(text, options, self._endpoint)
            try:
                return await self._synthesize_once(synthesis)
            except VoxrelayError as error:
                attempts += 1
                if not synthesis.again(error, attempts, since, self.retry):
                    raise
            if attempts > 1:
                await asyncio.sleep(self.retry.backoff_s(attempts - 1))

    async def _synthesize_once(self, synthesis: _Synthesis) -> SynthesizedAudio:
        call = self._stub.Synthesize(synthesis.request, metadata=self._metadata)
        try:
            async for response in call:
                synthesis.take(response)
        except grpc.RpcError as error:
            raise synthesis.failed(error) from None
        finally:
            call.cancel()  # no effect once the call has ended; stops it when raising
        return synthesis.result()

    async def synthesize_events(
        self, text: str, options: SessionOptions | None = None
    ) -> AsyncGenerator[Event, None]:
        """The events of `text`'s `Synthesize` call as they arrive, in order:
        `SessionStarted`, `TurnStarted`, the turn's `Audio` (and `Words`), `TurnEnded`,
        `SessionEnded`. For a caller that plays audio as it comes rather than waiting
        for `synthesize()`'s whole result. A failure raises `VoxrelayError`; leaving
        the iteration early cancels the call."""
        since, attempts = time.monotonic(), 0
        while True:
            # A call refused before its session started yielded nothing: it is retried
            # on another replica, as `synthesize()` is.
            synthesis = _Synthesis(text, options, self._endpoint)
            opus = OpusPageCounter()
            call = self._stub.Synthesize(synthesis.request, metadata=self._metadata)
            try:
                async for response in call:
                    event = event_from_response(response, synthesis.options.dtype, opus)
                    if isinstance(event, SessionStarted):
                        synthesis.started = True
                    yield event
                return
            except grpc.RpcError as error:
                failure = synthesis.failed(error)
            except VoxrelayError as error:
                failure = error
            finally:
                call.cancel()  # no effect once the call has ended; stops it when leaving early
            attempts += 1
            if not synthesis.again(failure, attempts, since, self.retry):
                raise failure from None
            if attempts > 1:
                await asyncio.sleep(self.retry.backoff_s(attempts - 1))


_T = TypeVar("_T")


class _LoopThread:
    """An event loop on a daemon thread, for the blocking API to run the async one on."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="voxrelay-client", daemon=True
        )
        self._thread.start()

    def run(self, work: Coroutine[Any, Any, _T]) -> _T:
        """Run `work` on the loop and wait for its result (its exception is raised here)."""
        return asyncio.run_coroutine_threadsafe(work, self.loop).result()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


class Session:
    """The blocking twin of `AsyncSession`: the same session, run by the same code on
    a background event loop. Use it as a context manager; iterate it for events.

    with voxrelay.Client() as client, client.session(voice="espeak/en-us") as session:
        session.send_text("Hello there. ")
        session.turn_done()
        for event in session:
            ...
            if user_barged_in:
                session.cancel(played_samples=player.played_samples, turn=player.turn)
    """

    def __init__(self, runner: _LoopThread, session: AsyncSession) -> None:
        self._runner = runner
        self._session = session
        self._events: AsyncIterator[Event] | None = None

    def __enter__(self) -> Session:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._runner.run(self._session.__aexit__(exc_type, exc, traceback))

    @property
    def started(self) -> SessionStarted | None:
        """The session's first event once iterating yielded it (see `AsyncSession`)."""
        return self._session.started

    @property
    def state(self) -> ConnectionState:
        """Where the session's connection is (see `AsyncSession.state`)."""
        return self._session.state

    @property
    def resumes(self) -> int:
        """How many times the session resumed on another replica."""
        return self._session.resumes

    def open(self) -> None:
        """Start the call and send the configuration."""
        self._runner.run(self._session.open())

    def send_text(self, text: str) -> None:
        """Send the next text of the current turn, of any length (see
        `AsyncSession.send_text`)."""
        self._runner.run(self._session.send_text(text))

    def turn_done(self) -> None:
        """Mark the current turn complete."""
        self._runner.run(self._session.turn_done())

    def cancel(self, played_samples: int = 0, turn: int = 0) -> None:
        """Barge-in, saying where the listener stopped; see `AsyncSession.cancel`."""
        self._runner.run(self._session.cancel(played_samples, turn))

    def close(self) -> None:
        """Send nothing more: the server finishes every turn, then ends the session."""
        self._runner.run(self._session.close())

    def __iter__(self) -> Iterator[Event]:
        return self

    def __next__(self) -> Event:
        """The next event, waiting for it; the end of the session stops the iteration."""
        if self._events is None:
            self._events = self._session.events()
        try:
            return self._runner.run(_next_event(self._events))
        except StopAsyncIteration:
            raise StopIteration from None


async def _next_event(events: AsyncIterator[Event]) -> Event:
    return await anext(events)


class Client:
    """The blocking twin of `AsyncClient`, for scripts: `voices()`, `synthesize()` and
    `session()`, a blocking `Session` (run by `AsyncSession` on a background event
    loop, started on first use).

    Takes the same `target`, `tls_ca`, `tls_cert`, `tls_key`, `token`, `retry`,
    `resume` and `health_check` keywords: its sessions are retried and resumed like `AsyncSession`s.
    """

    def __init__(
        self,
        target: str | None = None,
        *,
        tls_ca: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        token: str | None = None,
        retry: RetryPolicy | None = None,
        resume: bool = True,
        health_check: bool = False,
    ) -> None:
        self.target = target or default_target()
        self.retry = retry or RetryPolicy()
        self.resume = resume
        self.health_check = health_check
        security = _security(tls_ca, tls_cert, tls_key, token)
        self._security_options = {
            "tls_ca": tls_ca,
            "tls_cert": tls_cert,
            "tls_key": tls_key,
            "token": token,
        }
        self._metadata = security.metadata
        self._endpoint = security.endpoint(self.target, tls_ca, tls_cert)
        if security.credentials is None:
            self._channel = grpc.insecure_channel(
                self.target, options=channel_options(health_check=health_check)
            )
        else:
            self._channel = grpc.secure_channel(
                self.target,
                security.credentials,
                options=channel_options(health_check=health_check),
            )
        self._stub = speech_pb2_grpc.SpeechStub(self._channel)
        self._runner: _LoopThread | None = None
        self._async_client: AsyncClient | None = None

    def session(self, options: SessionOptions | None = None, **fields: object) -> Session:
        """A new blocking session; pass `SessionOptions` or its fields as keywords."""
        if self._runner is None or self._async_client is None:
            self._runner = _LoopThread()
            self._async_client = self._runner.run(self._new_async_client())
        return Session(self._runner, self._async_client.session(options, **fields))

    async def _new_async_client(self) -> AsyncClient:
        # Made on the runner's loop: an asyncio gRPC channel belongs to its loop.
        return AsyncClient(
            self.target,
            retry=self.retry,
            resume=self.resume,
            health_check=self.health_check,
            **self._security_options,
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()
        if self._runner is not None:
            if self._async_client is not None:
                self._runner.run(self._async_client.close())
            self._runner.stop()
            self._runner = self._async_client = None

    def voices(self, language: str = "") -> list[VoiceInfo]:
        """Every voice the server offers, the default first; with `language`, only those
        that speak it (as `AsyncClient.voices`)."""
        try:
            response = self._stub.ListVoices(
                speech_pb2.ListVoicesRequest(language_code=language), metadata=self._metadata
            )
        except grpc.RpcError as error:
            raise VoxrelayError.from_rpc_error(error, self._endpoint) from None
        return [_voice_info(voice) for voice in response.voices]

    def synthesize(self, text: str, options: SessionOptions | None = None) -> SynthesizedAudio:
        """The whole audio of `text` (up to 1,000,000 characters), spoken as one turn,
        through the `Synthesize` rpc."""
        since, attempts = time.monotonic(), 0
        while True:
            synthesis = _Synthesis(text, options, self._endpoint)
            try:
                return self._synthesize_once(synthesis)
            except VoxrelayError as error:
                attempts += 1
                if not synthesis.again(error, attempts, since, self.retry):
                    raise
            if attempts > 1:
                time.sleep(self.retry.backoff_s(attempts - 1))

    def _synthesize_once(self, synthesis: _Synthesis) -> SynthesizedAudio:
        call = self._stub.Synthesize(synthesis.request, metadata=self._metadata)
        try:
            for response in call:
                synthesis.take(response)
        except grpc.RpcError as error:
            raise synthesis.failed(error) from None
        finally:
            call.cancel()  # no effect once the call has ended; stops it when raising
        return synthesis.result()


def synthesize(
    text: str,
    *,
    target: str | None = None,
    options: SessionOptions | None = None,
    tls_ca: str | None = None,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    token: str | None = None,
) -> SynthesizedAudio:
    """One call, one text, its whole audio: the simplest way to use a voxrelay server.

    The text (up to 1,000,000 characters) goes in one `Synthesize` rpc and is spoken
    as one turn.

    `tls_ca`, `tls_cert`, `tls_key` and `token` are those of `Client`.
    """
    with Client(target, tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key, token=token) as client:
        return client.synthesize(text, options)
