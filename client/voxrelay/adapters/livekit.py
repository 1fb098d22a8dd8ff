"""LiveKit Agents speaking through a voxrelay server: a `tts.TTS` plugin.

Install with `pip install 'voxrelay[livekit]'` and pass it wherever LiveKit takes a TTS:

    from livekit.agents import AgentSession
    from voxrelay.adapters.livekit import TTS

    session = AgentSession(tts=TTS(target="127.0.0.1:50051", voice="piper/en_US-joe-medium"))

How LiveKit's calls map onto voxrelay's:

- `stream()` opens one `Stream` call for the `SynthesizeStream`'s life: `push_text()`
  sends text chunks as they come (voxrelay cuts sentences itself), `flush()` is
  `turn_done` and ends LiveKit's segment (one voxrelay turn, one LiveKit segment), and
  `end_input()` half-closes once every turn is spoken.
- `synthesize()` is one `Synthesize` call for a whole text, its audio streamed back.
- Interruption: LiveKit closes a stream (`aclose()`) when the user barges in. The
  adapter then sends `cancel`, so the server stops synthesis and ends the turn as
  cancelled, and passes on no audio after it.
- Aligned transcripts (`TTSCapabilities.aligned_transcript`): with `word_timestamps`
  (the default) the session asks for word timing, and each word arrives as a
  `TimedString` with its start and end in seconds from the segment's start. The
  strings of one segment joined are its text as pushed. A voice without word timing
  (`VoiceInfo.word_timestamps` false) sends none, and LiveKit falls back to the text.
- Failures raise LiveKit's `APIError` types carrying the server's message:
  `APIConnectionError` when the server cannot be reached (UNAVAILABLE),
  `APITimeoutError` for DEADLINE_EXCEEDED, else `APIStatusError` with the HTTP status
  that corresponds to the gRPC code (INVALID_ARGUMENT 400, UNAUTHENTICATED 401,
  RESOURCE_EXHAUSTED 429, ...) and the code's name in `body`.

Audio is 16-bit mono PCM at `sample_rate` (24000 Hz by default; the server resamples
voices of another native rate).
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Literal

import grpc

try:
    from livekit.agents import (
        APIConnectionError,
        APIConnectOptions,
        APIError,
        APIStatusError,
        APITimeoutError,
        tts,
        utils,
    )
    from livekit.agents.types import DEFAULT_API_CONNECT_OPTIONS, NOT_GIVEN, NotGivenOr
    from livekit.agents.voice.io import TimedString
except ImportError as missing:  # the client installed without its extra
    raise ImportError(
        f"voxrelay.adapters.livekit needs LiveKit Agents ({missing}): "
        "pip install 'voxrelay[livekit]'"
    ) from missing

from voxrelay.client import AsyncClient, AsyncSession, SessionOptions, _security
from voxrelay.errors import VoxrelayError
from voxrelay.events import (
    Audio,
    Event,
    SessionEnded,
    SessionStarted,
    TurnEnded,
    TurnStarted,
    Word,
    Words,
)

__all__ = ["TTS", "ChunkedStream", "SynthesizeStream", "api_error"]

DEFAULT_SAMPLE_RATE = 24000
"""LiveKit's usual TTS rate; voxrelay resamples each voice to it."""
CANCEL_WAIT_S = 2.0
"""How long an interrupted stream waits for the server to end the cancelled session
before it drops the call: the cancel is sent either way."""

_HTTP_STATUS = {
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
"""gRPC codes as HTTP statuses (Google's mapping), which LiveKit's retry rules read:
4xx is not retried, except 408, 429 and 499."""


def api_error(error: VoxrelayError, request_id: str | None = None) -> APIError:
    """The LiveKit error for a failed voxrelay call, with the server's message."""
    if error.code is grpc.StatusCode.UNAVAILABLE:
        return APIConnectionError(error.message)
    if error.code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return APITimeoutError(error.message)
    body = {"grpc_status": error.code.name, "turn": error.turn, "segment": error.segment}
    return APIStatusError(
        error.message,
        status_code=_HTTP_STATUS.get(error.code, 500),
        request_id=request_id,
        body=body,
    )


@dataclass
class _Options:
    """What a session asks for; copied into each stream when it is made."""

    voice: str
    language: str
    speed: float
    sample_rate: int
    word_timestamps: bool

    def session(self) -> SessionOptions:
        return SessionOptions(
            voice=self.voice,
            language_code=self.language,
            speed=self.speed,
            sample_rate_hz=self.sample_rate,
            word_timestamps=self.word_timestamps,
        )


class TTS(tts.TTS[Literal["metrics_collected", "error"]]):
    """Text-to-speech by a voxrelay server, streaming (`stream()`) and whole (`synthesize()`).

    `target` is the server's `host:port` (None: `VOXRELAY_SERVER`, else
    127.0.0.1:50051); `tls_ca`, `tls_cert`, `tls_key` and `token` are those of
    `voxrelay.AsyncClient`. `voice` is `<engine>/<voice>` (empty: the server's default,
    or its voice for `language`, a BCP-47 tag); `speed` 0.25 to 4.0 (0: normal);
    `sample_rate` the rate of the audio frames, in hertz; `word_timestamps` asks for
    word timing, for LiveKit's aligned transcripts. Bad values are refused by the
    server when a stream starts, as `APIStatusError` 400.
    """

    def __init__(
        self,
        *,
        target: str | None = None,
        voice: str = "",
        language: str = "",
        speed: float = 0.0,
        sample_rate: int = DEFAULT_SAMPLE_RATE,
        word_timestamps: bool = True,
        tls_ca: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        token: str | None = None,
    ) -> None:
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be a positive number of hertz, not {sample_rate}")
        super().__init__(
            capabilities=tts.TTSCapabilities(streaming=True, aligned_transcript=word_timestamps),
            sample_rate=sample_rate,
            num_channels=1,
        )
        self._opts = _Options(voice, language, speed, sample_rate, word_timestamps)
        self._target = target
        self._tls = (tls_ca, tls_cert, tls_key)
        self._token = token
        # Checked now, so a bad certificate path or token fails here and not mid-call.
        _security(tls_ca, tls_cert, tls_key, token)
        self._client: AsyncClient | None = None
        self._streams: weakref.WeakSet[SynthesizeStream] = weakref.WeakSet()

    @property
    def model(self) -> str:
        return self._opts.voice or "default"

    @property
    def provider(self) -> str:
        return "voxrelay"

    def update_options(
        self,
        *,
        voice: NotGivenOr[str] = NOT_GIVEN,
        language: NotGivenOr[str] = NOT_GIVEN,
        speed: NotGivenOr[float] = NOT_GIVEN,
    ) -> None:
        """Change the voice, language or speed of the streams made from now on."""
        if utils.is_given(voice):
            self._opts.voice = voice
        if utils.is_given(language):
            self._opts.language = language
        if utils.is_given(speed):
            self._opts.speed = speed

    def client(self) -> AsyncClient:
        """The connection every stream of this TTS shares, opened on first use (on the
        running event loop, which gRPC's asyncio channel belongs to)."""
        if self._client is None:
            tls_ca, tls_cert, tls_key = self._tls
            self._client = AsyncClient(
                self._target, tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key, token=self._token
            )
        return self._client

    def synthesize(
        self, text: str, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS
    ) -> ChunkedStream:
        return ChunkedStream(tts=self, input_text=text, conn_options=conn_options)

    def stream(
        self, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS
    ) -> SynthesizeStream:
        stream = SynthesizeStream(tts=self, conn_options=conn_options)
        self._streams.add(stream)
        return stream

    async def __aenter__(self) -> TTS:
        return self

    async def aclose(self) -> None:
        for stream in list(self._streams):
            await stream.aclose()
        self._streams.clear()
        if self._client is not None:
            await self._client.close()
            self._client = None


@dataclass
class _TurnText:
    """One turn's text as sent, cut into LiveKit's timed transcript as words arrive."""

    text: str = ""
    cut: int = 0
    """Where the next timed piece starts in `text`: 0 until a word of the turn is timed."""
    end_s: float = 0.0
    """The end of the turn's audio so far, seconds."""

    def piece(self, word: Word, sample_rate: int) -> TimedString:
        """The text since the last piece up to the end of `word`, with its timing."""
        start = min(self.cut, word.text_offset)
        self.cut = max(self.cut, word.text_end)
        return TimedString(
            self.text[start : self.cut],
            start_time=word.start_samples / sample_rate,
            end_time=word.end_samples / sample_rate,
        )

    def rest(self) -> TimedString | None:
        """What follows the last word (its punctuation, trailing space), at the turn's end:
        so the pieces joined are the turn's text. None when nothing was timed."""
        if self.cut == 0 or self.cut >= len(self.text):
            return None
        piece = TimedString(self.text[self.cut :], start_time=self.end_s, end_time=self.end_s)
        self.cut = len(self.text)
        return piece


@dataclass
class _Receiver:
    """Puts a session's events into LiveKit's emitter: one LiveKit segment per turn."""

    emitter: tts.AudioEmitter
    sample_rate: int
    turns: dict[int, _TurnText]
    call: Literal["stream", "synthesize"]
    """`stream` starts and ends a LiveKit segment per turn; `synthesize` has one segment,
    which LiveKit starts and ends itself."""
    session_id: str = ""
    current: _TurnText = field(default_factory=_TurnText)

    def take(self, event: Event) -> bool:
        """Handle one event; False once the session has ended."""
        if isinstance(event, SessionStarted):
            self.session_id = event.session_id
            if event.sample_rate_hz != self.sample_rate:
                raise APIError(
                    f"voxrelay sends {event.sample_rate_hz} Hz, not the {self.sample_rate} Hz "
                    "asked for",
                    retryable=False,
                )
        elif isinstance(event, TurnStarted):
            self.current = self.turns.setdefault(event.turn, _TurnText())
            if self.call == "stream":
                self.emitter.start_segment(segment_id=f"{self.session_id}-{event.turn}")
        elif isinstance(event, Audio):
            # After a resume on another replica, the cut segment's start comes again.
            self.emitter.push(event.unrepeated().data)
            self.current.end_s = (event.offset_samples + event.num_samples) / self.sample_rate
        elif isinstance(event, Words):
            pieces = [self.current.piece(word, self.sample_rate) for word in event.words]
            self.emitter.push_timed_transcript(pieces)
        elif isinstance(event, TurnEnded):
            if (rest := self.current.rest()) is not None:
                self.emitter.push_timed_transcript(rest)
            if self.call == "stream":
                self.emitter.end_segment()
        elif isinstance(event, SessionEnded):
            return False
        return True


class ChunkedStream(tts.ChunkedStream):
    """A whole text spoken by one `Synthesize` call, its audio passed on as it comes."""

    def __init__(self, *, tts: TTS, input_text: str, conn_options: APIConnectOptions) -> None:
        super().__init__(tts=tts, input_text=input_text, conn_options=conn_options)
        self._tts: TTS = tts
        self._opts = replace(tts._opts)

    async def _run(self, output_emitter: tts.AudioEmitter) -> None:
        request_id = utils.shortuuid()
        output_emitter.initialize(
            request_id=request_id,
            sample_rate=self._opts.sample_rate,
            num_channels=1,
            mime_type="audio/pcm",
        )
        receiver = _Receiver(
            output_emitter, self._opts.sample_rate, {1: _TurnText(self._input_text)}, "synthesize"
        )
        events = self._tts.client().synthesize_events(self._input_text, self._opts.session())
        try:
            async for event in events:
                if not receiver.take(event):
                    break
        except VoxrelayError as error:
            raise api_error(error, receiver.session_id or request_id) from None
        finally:
            await events.aclose()


class SynthesizeStream(tts.SynthesizeStream):
    """One voxrelay `Stream` call: pushed text in, each flush a turn, audio out."""

    def __init__(self, *, tts: TTS, conn_options: APIConnectOptions) -> None:
        super().__init__(tts=tts, conn_options=conn_options)
        self._tts: TTS = tts
        self._opts = replace(tts._opts)

    async def _run(self, output_emitter: tts.AudioEmitter) -> None:
        request_id = utils.shortuuid()
        output_emitter.initialize(
            request_id=request_id,
            sample_rate=self._opts.sample_rate,
            num_channels=1,
            mime_type="audio/pcm",
            stream=True,
        )
        turns: dict[int, _TurnText] = {}
        receiver = _Receiver(output_emitter, self._opts.sample_rate, turns, "stream")
        session = self._tts.client().session(self._opts.session())
        tasks: list[asyncio.Task[None]] = []
        try:
            await session.open()
            tasks += [
                asyncio.create_task(self._send(session, turns)),
                asyncio.create_task(self._receive(session, receiver)),
            ]
            await asyncio.gather(*tasks)
        except asyncio.CancelledError:
            # Interrupted, at any point from the call's opening on (a user may barge in
            # before the first audio): the server hears `cancel`.
            await utils.aio.cancel_and_wait(*tasks)
            await _cancel(session)
            raise
        except VoxrelayError as error:
            raise api_error(error, receiver.session_id or request_id) from None
        finally:
            await utils.aio.cancel_and_wait(*tasks)
            await session.__aexit__(None, None, None)  # ends the call if still open

    async def _send(self, session: AsyncSession, turns: dict[int, _TurnText]) -> None:
        """LiveKit's input in order: text chunks, a `turn_done` at each flush that ends
        a turn with text (LiveKit flushes again at `end_input`), then half-close."""
        turn = 1
        async for data in self._input_ch:
            if isinstance(data, self._FlushSentinel):
                if turn in turns:
                    await session.turn_done()
                    turn += 1
                continue
            turns.setdefault(turn, _TurnText()).text += data
            if data:  # an empty push is nothing to send (the server refuses an empty text)
                self._mark_started()
                await session.send_text(data)  # of any length: sent in pieces
        if turn in turns:  # input closed without a flush (a retry's replay may end so)
            await session.turn_done()
        await session.close()

    async def _receive(self, session: AsyncSession, receiver: _Receiver) -> None:
        async for event in session:
            if not receiver.take(event):
                break


async def _cancel(session: AsyncSession) -> None:
    """Barge-in on an interrupted stream: `cancel` drops what is not yet delivered, the
    half-close lets the server end the session; what it still sends is not passed on.
    Bounded by `CANCEL_WAIT_S`: the call is dropped after it in any case."""

    async def cancel_and_drain() -> None:
        await session.cancel()
        await session.close()
        events: AsyncIterator[Event] = session.events()
        async for event in events:
            if isinstance(event, SessionEnded):
                break

    with contextlib.suppress(VoxrelayError, RuntimeError, TimeoutError):
        await asyncio.wait_for(cancel_and_drain(), CANCEL_WAIT_S)
