"""The thin gRPC layer: protobuf in, domain calls, protobuf out.

All behaviour lives in `SpeechService` and `SessionDispatcher`; this module only
translates messages and maps `SpeechError` codes onto gRPC status codes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from voxrelay.v1 import speech_pb2, speech_pb2_grpc
from voxrelay_server.calls import (
    CallEvent,
    CallRunner,
    CallStarted,
    apply_first,
    caller_went_away,
    feed_whole_text,
    forward_inputs,
)
from voxrelay_server.dispatcher import SessionDispatcher
from voxrelay_server.errors import ErrorCode, InvalidInput, SpeechError
from voxrelay_server.events import (
    AudioOut,
    SessionEnded,
    SessionEvent,
    SessionFailed,
    TurnEnded,
    TurnStarted,
    WordsOut,
)
from voxrelay_server.service import CallSlot, SpeechService
from voxrelay_server.serving import (
    DRAIN_S,
    CallLimits,
    RequestStream,
    ServiceHolder,
)
from voxrelay_server.settings import (
    AudioEncoding,
    Pace,
    Segmentation,
    SessionRequest,
)

_LOG = logging.getLogger(__name__)

_ENCODINGS_IN = {
    speech_pb2.AUDIO_ENCODING_UNSPECIFIED: AudioEncoding.PCM_S16LE,
    speech_pb2.AUDIO_ENCODING_PCM_S16LE: AudioEncoding.PCM_S16LE,
    speech_pb2.AUDIO_ENCODING_PCM_F32LE: AudioEncoding.PCM_F32LE,
    speech_pb2.AUDIO_ENCODING_MULAW: AudioEncoding.MULAW,
    speech_pb2.AUDIO_ENCODING_ALAW: AudioEncoding.ALAW,
    speech_pb2.AUDIO_ENCODING_OGG_OPUS: AudioEncoding.OGG_OPUS,
}
_SEGMENTATIONS_IN = {
    speech_pb2.SEGMENTATION_UNSPECIFIED: Segmentation.FIRST_CLAUSE,
    speech_pb2.SEGMENTATION_FIRST_CLAUSE: Segmentation.FIRST_CLAUSE,
    speech_pb2.SEGMENTATION_SENTENCES: Segmentation.SENTENCES,
}
_PACES_IN = {
    speech_pb2.PACE_UNSPECIFIED: Pace.AS_MADE,
    speech_pb2.PACE_AS_MADE: Pace.AS_MADE,
    speech_pb2.PACE_REALTIME: Pace.REALTIME,
}
# The wire's name for a session's encoding (the WebSocket stream's too).
ENCODINGS_OUT = {
    AudioEncoding.PCM_S16LE: speech_pb2.AUDIO_ENCODING_PCM_S16LE,
    AudioEncoding.PCM_F32LE: speech_pb2.AUDIO_ENCODING_PCM_F32LE,
    AudioEncoding.MULAW: speech_pb2.AUDIO_ENCODING_MULAW,
    AudioEncoding.ALAW: speech_pb2.AUDIO_ENCODING_ALAW,
    AudioEncoding.OGG_OPUS: speech_pb2.AUDIO_ENCODING_OGG_OPUS,
}
_STATUS_BY_VALUE = {status.value[0]: status for status in grpc.StatusCode}
_DEADLINE_SLACK_S = 0.05
"""A call stopped with less than this left before its deadline ended by the deadline:
the client's timer may fire a little before the server's."""
_VALID_TEXT = "text and other strings must be valid UTF-8 (no lone surrogates)"
VOICE_METADATA_KEY = "voxrelay-voice"
"""Initial metadata of every `Stream` and `Synthesize` call whose session opened: the
name of the voice it speaks with (the one `language_code` chose, or the default)."""


def status_code(error: SpeechError) -> grpc.StatusCode:
    """The gRPC status code for a domain error."""
    return _STATUS_BY_VALUE.get(int(error.code), grpc.StatusCode.UNKNOWN)


def session_request(config: speech_pb2.SessionConfig) -> SessionRequest:
    """The domain's view of a `SessionConfig`."""
    encoding = _ENCODINGS_IN.get(config.audio_format.encoding)
    if encoding is None:
        raise InvalidInput(
            f"audio_format.encoding {config.audio_format.encoding} is unknown: use "
            "AUDIO_ENCODING_PCM_S16LE, AUDIO_ENCODING_PCM_F32LE, AUDIO_ENCODING_MULAW, "
            "AUDIO_ENCODING_ALAW or AUDIO_ENCODING_OGG_OPUS"
        )
    segmentation = _SEGMENTATIONS_IN.get(config.segmentation)
    if segmentation is None:
        raise InvalidInput(
            f"segmentation {config.segmentation} is unknown: use SEGMENTATION_FIRST_CLAUSE or "
            "SEGMENTATION_SENTENCES"
        )
    pace = _PACES_IN.get(config.pace)
    if pace is None:
        raise InvalidInput(f"pace {config.pace} is unknown: use PACE_AS_MADE or PACE_REALTIME")
    return SessionRequest(
        voice=config.voice,
        language_code=config.language_code,
        encoding=encoding,
        sample_rate_hz=config.audio_format.sample_rate_hz,
        speed=config.speed,
        instructions=config.instructions,
        min_sentence_chars=config.min_sentence_chars,
        chunk_ms=config.chunk_ms,
        max_inflight_segments=config.max_inflight_segments,
        segmentation=segmentation,
        first_clause_min_words=config.first_clause_min_words,
        stall_ms=config.stall_ms,
        word_timestamps=config.word_timestamps,
        pace=pace,
    )


def response_for(
    event: SessionEvent, encoding: speech_pb2.AudioEncoding.ValueType, sample_rate_hz: int
) -> speech_pb2.StreamResponse:
    """The `StreamResponse` that carries a session event (audio in `encoding` at that rate)."""
    if isinstance(event, AudioOut):
        # Fields set on the response's own AudioChunk: building a separate AudioChunk
        # and passing it in copies it, which more than doubles the cost per message.
        response = speech_pb2.StreamResponse()
        chunk = response.audio
        chunk.data = event.data
        chunk.turn = event.turn
        chunk.segment = event.segment
        chunk.encoding = encoding
        chunk.sample_rate_hz = sample_rate_hz
        chunk.offset_samples = event.offset_samples
        chunk.text_offset = event.text_offset
        chunk.text_length = event.text_length
        return response
    if isinstance(event, WordsOut):
        response = speech_pb2.StreamResponse()
        timings = response.words
        timings.turn = event.turn
        timings.segment = event.segment
        timings.words.extend(
            speech_pb2.Word(
                text=word.text,
                text_offset=word.text_offset,
                start_samples=word.start_samples,
                end_samples=word.end_samples,
            )
            for word in event.words
        )
        return response
    if isinstance(event, TurnStarted):
        return _lifecycle(speech_pb2.LIFECYCLE_EVENT_TURN_STARTED, event.turn)
    if isinstance(event, TurnEnded):
        response = _lifecycle(
            speech_pb2.LIFECYCLE_EVENT_TURN_ENDED, event.turn, event.cancelled, event.spoken_text
        )
        response.lifecycle.spoken_length = event.spoken_length
        return response
    if isinstance(event, SessionEnded):
        return _lifecycle(speech_pb2.LIFECYCLE_EVENT_SESSION_ENDED, 0)
    return _error_response(event.error, event.turn, event.segment)


def _error_response(
    error: SpeechError, turn: int = 0, segment: int = 0
) -> speech_pb2.StreamResponse:
    return speech_pb2.StreamResponse(
        error=speech_pb2.Error(
            code=int(error.code), message=error.message, turn=turn, segment=segment
        )
    )


def _lifecycle(
    event: speech_pb2.LifecycleEvent.ValueType,
    turn: int,
    cancelled: bool = False,
    spoken_text: str = "",
) -> speech_pb2.StreamResponse:
    return speech_pb2.StreamResponse(
        lifecycle=speech_pb2.Lifecycle(
            event=event, turn=turn, cancelled=cancelled, spoken_text=spoken_text
        )
    )


async def _checked(
    requests: AsyncIterable[speech_pb2.StreamRequest],
) -> AsyncIterator[speech_pb2.StreamRequest]:
    """The call's requests; one gRPC could not parse (not valid protobuf) is bad input."""
    try:
        async for request in requests:
            yield request
    except DecodeError as error:
        raise InvalidInput(f"a request could not be parsed ({error}): {_VALID_TEXT}") from None


def forward_request(request: speech_pb2.StreamRequest, session: SessionDispatcher) -> None:
    """Give the session one `StreamRequest` after the first (the WebSocket stream's too);
    raises INVALID_ARGUMENT for a `config` or an empty request."""
    kind = request.WhichOneof("request")
    if kind == "text":
        session.send_text(request.text)
    elif kind == "turn_done":
        session.turn_done()
    elif kind == "cancel":
        session.cancel(turn=request.cancel.turn, played_samples=request.cancel.played_samples)
    elif kind == "config":
        raise InvalidInput(
            "config is allowed only as the first message of the stream; "
            "open a new stream to change it"
        )
    else:
        raise InvalidInput("empty StreamRequest: set one of config, text, turn_done or cancel")


def _ended_by_client(context: grpc.aio.ServicerContext[Any, Any]) -> SpeechError:
    """Why a call whose handler gRPC stopped ended: its client's deadline, or the client
    went away (it cancelled, disconnected, or sent a message over gRPC's size limit,
    which gRPC refuses before the server sees it)."""
    remaining = context.time_remaining()
    if remaining is not None and remaining < _DEADLINE_SLACK_S:
        return SpeechError(ErrorCode.DEADLINE_EXCEEDED, "the caller's deadline passed")
    return caller_went_away()


def started_response(started: CallStarted) -> speech_pb2.StreamResponse:
    """The `session_started` message of a call."""
    response = speech_pb2.StreamResponse()
    message = response.session_started
    message.session_id = started.session_id
    message.voice = started.voice
    message.encoding = ENCODINGS_OUT[started.encoding]
    message.sample_rate_hz = started.sample_rate_hz
    message.text_budget_chars = started.text_budget_chars
    if started.pace_lead_ms:
        message.pace_lead_ms = started.pace_lead_ms
    return response


class SpeechServicer(speech_pb2_grpc.SpeechServicer):
    """Serves `voxrelay.v1.Speech` on top of a `SpeechService` (or one still loading).

    The call logic every transport shares is the `runner`'s (`voxrelay_server.calls`):
    give another transport of the same server this runner, so its calls count under
    the same limits and drain with these.
    """

    def __init__(
        self,
        service: SpeechService | ServiceHolder | CallRunner,
        limits: CallLimits | None = None,
    ) -> None:
        self.runner = service if isinstance(service, CallRunner) else CallRunner(service, limits)
        self.calls = self.runner.calls
        self._service = self.runner.service

    async def Stream(
        self,
        request_iterator: AsyncIterable[speech_pb2.StreamRequest],
        context: grpc.aio.ServicerContext[speech_pb2.StreamRequest, speech_pb2.StreamResponse],
    ) -> AsyncIterator[speech_pb2.StreamResponse]:
        self.calls.track(context)
        requests = RequestStream(request_iterator)
        service: SpeechService | None = None
        slot: CallSlot | None = None
        session: SessionDispatcher | None = None
        try:
            # Refused at once when loading or full, not after the caller's first message;
            # from here on the call holds a place, as a session does.
            service, slot = self.runner.admit()
            try:
                first = await self.runner.first_input(self._first_request(requests))
            except SpeechError as error:
                service.report_unstarted(error)
                raise
            config = speech_pb2.SessionConfig()
            if first is not None and first.WhichOneof("request") == "config":
                config, first = first.config, None
            session = service.open_session(session_request(config), slot)
        except SpeechError as error:
            for response in _end_with_error(error, context):
                yield response
            await requests.discard(DRAIN_S)
            return
        except (asyncio.CancelledError, GeneratorExit):
            if service is not None:
                service.report_unstarted(_ended_by_client(context))
            raise
        finally:
            if session is None:
                if slot is not None:
                    slot.release()
                requests.close()
        if first is not None:
            apply_first(first, session, forward_request)
        reader = asyncio.create_task(forward_inputs(_checked(requests), session, forward_request))
        try:
            async with contextlib.aclosing(
                self._speak(session, slot, context, reader)
            ) as responses:
                async for response in responses:
                    yield response
        finally:
            requests.close()

    @staticmethod
    def _first_request(
        requests: RequestStream[speech_pb2.StreamRequest],
    ) -> Callable[[float | None], Awaitable[speech_pb2.StreamRequest | None]]:
        async def read(timeout_s: float | None) -> speech_pb2.StreamRequest | None:
            try:
                return await requests.next(timeout_s)
            except DecodeError as error:
                raise InvalidInput(
                    f"a request could not be parsed ({error}): {_VALID_TEXT}"
                ) from None

        return read

    async def Synthesize(  # type: ignore[override]  # writes, rather than yields
        self,
        request: speech_pb2.SynthesizeRequest,
        context: grpc.aio.ServicerContext[speech_pb2.SynthesizeRequest, speech_pb2.StreamResponse],
    ) -> None:
        # Written with `context.write`, not yielded: a response-streaming handler that
        # yields has its messages sent by gRPC, which logs an error when a client
        # cancels while one is waiting to go out (grpcio 1.85); here that ends quietly.
        self.calls.track(context)
        try:
            service, slot = self.runner.admit()
            try:
                config = session_request(request.config)
            except SpeechError as error:  # an enum value this server does not know
                slot.release()
                service.reject(error)
            session = self.runner.open_whole_text(config, request.text, (service, slot))
        except SpeechError as error:
            for response in _end_with_error(error, context):
                await _write(context, response)
            return
        # What a Stream call with the text and turn_done, half-closed, does; the text
        # goes in as synthesis frees room in the session's text budget.
        feeder = asyncio.create_task(feed_whole_text(request.text, session))
        async with contextlib.aclosing(self._speak(session, slot, context, feeder)) as responses:
            async for response in responses:
                await _write(context, response)

    def _speak(
        self,
        session: SessionDispatcher,
        slot: CallSlot,
        context: grpc.aio.ServicerContext[Any, speech_pb2.StreamResponse],
        feeder: asyncio.Task[None],
    ) -> AsyncGenerator[speech_pb2.StreamResponse, None]:
        """`session_started` and the session's events as responses until it ends; then
        stop `feeder` (the task taking the call's input) and the session."""
        encoding = ENCODINGS_OUT[session.output.encoding]  # once, not per message
        sample_rate_hz = session.output.sample_rate_hz

        def convert(event: CallEvent) -> speech_pb2.StreamResponse:
            if type(event) is CallStarted:
                return started_response(event)
            if type(event) is SessionFailed:
                context.set_code(status_code(event.error))
                context.set_details(event.error.message)
            return response_for(event, encoding, sample_rate_hz)  # type: ignore[arg-type]

        async def send_voice() -> None:
            # Before any message: which voice speaks (chosen by language_code, or the default).
            await context.send_initial_metadata(((VOICE_METADATA_KEY, session.voice),))

        return self.runner.run(
            session,
            slot,
            feeder,
            convert,
            before_first=send_voice,
            ended_by_client=lambda: _ended_by_client(context),
        )

    async def ListVoices(
        self,
        request: speech_pb2.ListVoicesRequest,
        context: grpc.aio.ServicerContext[
            speech_pb2.ListVoicesRequest, speech_pb2.ListVoicesResponse
        ],
    ) -> speech_pb2.ListVoicesResponse:
        try:
            service = self._service.get()
            voices = service.voices(request.language_code)
        except SpeechError as error:
            await context.abort(status_code(error), error.message)
        default = service.catalog.default_voice
        return speech_pb2.ListVoicesResponse(
            voices=[
                speech_pb2.Voice(
                    name=voice.name,
                    engine=voice.engine,
                    language_codes=voice.language_codes,
                    native_sample_rate_hz=voice.native_sample_rate_hz,
                    is_default=voice.name == default,
                    word_timestamps=service.catalog.resolve(voice.name)[0].word_timing,
                )
                for voice in voices
            ]
        )


async def _write(
    context: grpc.aio.ServicerContext[Any, speech_pb2.StreamResponse],
    response: speech_pb2.StreamResponse,
) -> None:
    """Send one response; when the call is already over (its client cancelled or went
    away), end the handler as cancelled, as gRPC does once it notices."""
    try:
        await context.write(response)
    except grpc.aio.InternalError:  # the send failed in gRPC's core: the call is gone
        raise asyncio.CancelledError from None


def _end_with_error(
    error: SpeechError, context: grpc.aio.ServicerContext[Any, Any]
) -> list[speech_pb2.StreamResponse]:
    """The last messages of a failed call: the error, SESSION_ENDED; then its status.

    The error also travels as a message because a client that is still writing
    when the call ends may not see the status itself (a known grpcio asyncio bug).
    """
    context.set_code(status_code(error))
    context.set_details(error.message)
    return final_responses(error)


def final_responses(error: SpeechError) -> list[speech_pb2.StreamResponse]:
    """The messages that end a call `error` failed before its session produced
    anything: the error, then SESSION_ENDED (gRPC adds its status; other transports
    their own ending)."""
    return [_error_response(error), _lifecycle(speech_pb2.LIFECYCLE_EVENT_SESSION_ENDED, 0)]
