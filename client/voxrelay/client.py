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
import math
import os
import threading
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
    SessionEnded,
    SessionStarted,
    TurnEnded,
    TurnStarted,
    WireEncoding,
    Word,
    Words,
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

    def take(self, response: speech_pb2.StreamResponse) -> None:
        """One response of the call; an `error` message raises `VoxrelayError`."""
        event = event_from_response(response, self.options.dtype, self._opus)
        if isinstance(event, Audio):
            self._chunks.append(event)
        elif isinstance(event, Words):
            self._words += event.words

    def failed(self, error: grpc.RpcError) -> VoxrelayError:
        """The error for a call gRPC ended (unreachable server, refused, ...)."""
        return VoxrelayError.from_rpc_error(error, self.target)

    def result(self) -> SynthesizedAudio:
        """The whole audio, once the call has ended well."""
        return _join(self._chunks, self.options, self._words)


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


class AsyncSession:
    """One conversation: send text and turn markers, iterate ordered events.

    Use it as an async context manager; leaving the block early cancels the call.
    Iterating yields `Audio`, `TurnStarted`, `TurnEnded` (and `Words` with
    `word_timestamps`) and finally `SessionEnded`; a failure raises
    `VoxrelayError`, with the server's status and message, whether it surfaces
    while iterating or while sending.
    """

    def __init__(
        self,
        stub: SpeechAsyncStub,
        options: SessionOptions,
        target: str | Endpoint,
        *,
        metadata: Metadata = (),
    ) -> None:
        self._stub = stub
        self._options = options
        self._target = target
        self._metadata = metadata
        self._call: StreamCall | None = None
        self._reading: asyncio.Task[None] | None = None
        self._responses: collections.deque[speech_pb2.StreamResponse] = collections.deque()
        self._read_ahead: float = READ_AHEAD
        self._read_error: grpc.RpcError | None = None
        """How reading the call ended, if not at its end of stream."""
        self._changed = asyncio.Event()
        """Set (and replaced) when a response arrives, one is taken, or reading ends."""
        self.started: SessionStarted | None = None
        """The session's first event, once iterating has yielded it: its id (which the
        server's logs name it by), voice, encoding and rate."""

    async def __aenter__(self) -> AsyncSession:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._call is not None and not self._call.done():
            self._call.cancel()
        if self._reading is not None:
            self._reading.cancel()
            await asyncio.gather(self._reading, return_exceptions=True)

    async def open(self) -> None:
        """Start the call and send the configuration."""
        self._call = self._stub.Stream(metadata=self._metadata)
        self._reading = asyncio.create_task(self._read_responses(self._call))
        await self._write(speech_pb2.StreamRequest(config=self._options.to_proto()))

    async def send_text(self, text: str) -> None:
        """Send the next chunk of text of the current turn (whitespace is kept)."""
        await self._write(speech_pb2.StreamRequest(text=text))

    async def turn_done(self) -> None:
        """Mark the current turn complete."""
        await self._write(speech_pb2.StreamRequest(turn_done=speech_pb2.TurnDone()))

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
        request = speech_pb2.Cancel(turn=turn, played_samples=played_samples)
        await self._write(speech_pb2.StreamRequest(cancel=request))

    async def close(self) -> None:
        """Send nothing more: the server finishes every turn, then ends the session."""
        try:
            await self._require_call().done_writing()
        except grpc.RpcError as error:
            raise await self._why_it_ended(error) from None

    def __aiter__(self) -> AsyncIterator[Event]:
        return self.events()

    async def events(self) -> AsyncIterator[Event]:
        """The session's events in order, until `SessionEnded`."""
        call = self._require_call()
        opus = OpusPageCounter()
        while (response := await self._next_response()) is not None:
            try:
                event = event_from_response(response, self._options.dtype, opus)
            except VoxrelayError:
                call.cancel()
                raise
            if isinstance(event, SessionStarted):
                self.started = event
            yield event
            if isinstance(event, SessionEnded):
                break
        if self._read_error is not None:
            raise VoxrelayError.from_rpc_error(self._read_error, self._target)
        code = await call.code()
        if code is not grpc.StatusCode.OK:
            raise VoxrelayError(code, await call.details() or "")

    async def _read_responses(self, call: StreamCall) -> None:
        try:
            while (response := await call.read()) is not grpc.aio.EOF:
                assert isinstance(response, speech_pb2.StreamResponse)
                self._responses.append(response)
                self._notify()
                while len(self._responses) >= self._read_ahead:
                    await self._changed.wait()
        except grpc.RpcError as error:
            self._read_error = error
        finally:
            self._notify()

    async def _next_response(self) -> speech_pb2.StreamResponse | None:
        """The next response read; None once the call has no more."""
        while not self._responses:
            if self._reading is None or self._reading.done():
                return None
            await self._changed.wait()
        response = self._responses.popleft()
        self._notify()  # room for the reader
        return response

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def _write(self, request: speech_pb2.StreamRequest) -> None:
        call = self._require_call()
        try:
            await call.write(request)
        except (grpc.RpcError, asyncio.InvalidStateError) as error:
            raise await self._why_it_ended(error) from None

    async def _why_it_ended(self, failure: Exception) -> VoxrelayError:
        """The error a failed write stands for: the call is over, and the server's
        `error` message, or else the call's status, says why."""
        if isinstance(failure, asyncio.InvalidStateError) and not self._require_call().done():
            raise RuntimeError(
                "the session was closed for sending (close() was called): open a new one"
            ) from None
        self._read_ahead = math.inf  # the call is over: what is left of it is finite
        self._notify()
        if self._reading is not None:
            await asyncio.wait({self._reading}, timeout=_CALL_OVER_READ_S)
        for response in self._responses:
            if response.WhichOneof("response") == "error":
                error = response.error
                return VoxrelayError(
                    status_from_number(error.code),
                    error.message,
                    turn=error.turn,
                    segment=error.segment,
                )
        reason = self._read_error or failure
        if isinstance(reason, grpc.RpcError):
            return VoxrelayError.from_rpc_error(reason, self._target)
        return VoxrelayError(grpc.StatusCode.UNKNOWN, f"the call ended: {reason}")

    def _require_call(self) -> StreamCall:
        if self._call is None:
            raise RuntimeError("the session is not open: use `async with client.session(...)`")
        return self._call


class AsyncClient:
    """An async connection to a voxrelay server; close it or use `async with`.

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
    ) -> None:
        self.target = target or default_target()
        security = _security(tls_ca, tls_cert, tls_key, token)
        self._metadata = security.metadata
        self._endpoint = security.endpoint(self.target, tls_ca, tls_cert)
        if security.credentials is None:
            self._channel = grpc.aio.insecure_channel(self.target)
        else:
            self._channel = grpc.aio.secure_channel(self.target, security.credentials)
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
        return AsyncSession(self._stub, options, self._endpoint, metadata=self._metadata)

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
        synthesis = _Synthesis(text, options, self._endpoint)
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
        synthesis = _Synthesis(text, options, self._endpoint)
        opus = OpusPageCounter()
        call = self._stub.Synthesize(synthesis.request, metadata=self._metadata)
        try:
            async for response in call:
                yield event_from_response(response, synthesis.options.dtype, opus)
        except grpc.RpcError as error:
            raise synthesis.failed(error) from None
        finally:
            call.cancel()  # no effect once the call has ended; stops it when leaving early


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

    def open(self) -> None:
        """Start the call and send the configuration."""
        self._runner.run(self._session.open())

    def send_text(self, text: str) -> None:
        """Send the next chunk of text of the current turn (whitespace is kept)."""
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

    Takes the same `tls_ca`, `tls_cert`, `tls_key` and `token` keywords.
    """

    def __init__(
        self,
        target: str | None = None,
        *,
        tls_ca: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        token: str | None = None,
    ) -> None:
        self.target = target or default_target()
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
            self._channel = grpc.insecure_channel(self.target)
        else:
            self._channel = grpc.secure_channel(self.target, security.credentials)
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
        return AsyncClient(self.target, **self._security_options)

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
        synthesis = _Synthesis(text, options, self._endpoint)
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
