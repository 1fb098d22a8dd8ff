"""The thin gRPC layer: protobuf in, domain calls, protobuf out.

All behaviour lives in `SpeechService` and `SessionDispatcher`; this module only
translates messages and maps `SpeechError` codes onto gRPC status codes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator
from typing import Any

import grpc

from voxrelay.v1 import speech_pb2, speech_pb2_grpc
from voxrelay_server.dispatcher import SessionDispatcher
from voxrelay_server.errors import ErrorCode, InvalidInput, SpeechError
from voxrelay_server.events import (
    AudioOut,
    SegmentFailed,
    SessionEnded,
    SessionEvent,
    TurnEnded,
    TurnStarted,
)
from voxrelay_server.service import SpeechService
from voxrelay_server.serving import ActiveCalls, ServiceHolder
from voxrelay_server.settings import (
    AudioEncoding,
    SessionRequest,
    whole_text_chunks,
)

_LOG = logging.getLogger(__name__)

_ENCODINGS_IN = {
    speech_pb2.AUDIO_ENCODING_UNSPECIFIED: AudioEncoding.PCM_S16LE,
    speech_pb2.AUDIO_ENCODING_PCM_S16LE: AudioEncoding.PCM_S16LE,
    speech_pb2.AUDIO_ENCODING_PCM_F32LE: AudioEncoding.PCM_F32LE,
}
_ENCODINGS_OUT = {
    AudioEncoding.PCM_S16LE: speech_pb2.AUDIO_ENCODING_PCM_S16LE,
    AudioEncoding.PCM_F32LE: speech_pb2.AUDIO_ENCODING_PCM_F32LE,
}
_STATUS_BY_VALUE = {status.value[0]: status for status in grpc.StatusCode}


def status_code(error: SpeechError) -> grpc.StatusCode:
    """The gRPC status code for a domain error."""
    return _STATUS_BY_VALUE.get(int(error.code), grpc.StatusCode.UNKNOWN)


def session_request(config: speech_pb2.SessionConfig) -> SessionRequest:
    """The domain's view of a `SessionConfig`."""
    encoding = _ENCODINGS_IN.get(config.audio_format.encoding)
    if encoding is None:
        raise InvalidInput(
            f"audio_format.encoding {config.audio_format.encoding} is unknown: use "
            "AUDIO_ENCODING_PCM_S16LE or AUDIO_ENCODING_PCM_F32LE"
        )
    return SessionRequest(
        voice=config.voice,
        encoding=encoding,
        sample_rate_hz=config.audio_format.sample_rate_hz,
        speed=config.speed,
        instructions=config.instructions,
        min_sentence_chars=config.min_sentence_chars,
        chunk_ms=config.chunk_ms,
        max_inflight_segments=config.max_inflight_segments,
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
        return response
    if isinstance(event, TurnStarted):
        return _lifecycle(speech_pb2.LIFECYCLE_EVENT_TURN_STARTED, event.turn)
    if isinstance(event, TurnEnded):
        return _lifecycle(speech_pb2.LIFECYCLE_EVENT_TURN_ENDED, event.turn, event.cancelled)
    if isinstance(event, SessionEnded):
        return _lifecycle(speech_pb2.LIFECYCLE_EVENT_SESSION_ENDED, 0)
    return speech_pb2.StreamResponse(
        error=speech_pb2.Error(
            code=int(event.error.code),
            message=event.error.message,
            turn=event.turn,
            segment=event.segment,
        )
    )


def _lifecycle(
    event: speech_pb2.LifecycleEvent.ValueType, turn: int, cancelled: bool = False
) -> speech_pb2.StreamResponse:
    return speech_pb2.StreamResponse(
        lifecycle=speech_pb2.Lifecycle(event=event, turn=turn, cancelled=cancelled)
    )


async def _forward_requests(
    requests: AsyncIterator[speech_pb2.StreamRequest], session: SessionDispatcher
) -> None:
    """Feed the rest of the call's requests to the session; half-close closes it."""
    try:
        async for request in requests:
            kind = request.WhichOneof("request")
            if kind == "text":
                session.send_text(request.text)
            elif kind == "turn_done":
                session.turn_done()
            elif kind == "cancel":
                session.cancel()
            elif kind == "config":
                raise InvalidInput(
                    "config is allowed only as the first message of the stream; "
                    "open a new stream to change it"
                )
            else:
                raise InvalidInput(
                    "empty StreamRequest: set one of config, text, turn_done or cancel"
                )
        session.close()
    except SpeechError as error:
        session.fail(error)
    except Exception as error:  # the transport failed under us: the caller is gone
        session.fail(SpeechError(ErrorCode.CANCELLED, f"reading requests failed: {error!r}"))


class SpeechServicer(speech_pb2_grpc.SpeechServicer):
    """Serves `voxrelay.v1.Speech` on top of a `SpeechService` (or one still loading)."""

    def __init__(self, service: SpeechService | ServiceHolder) -> None:
        self._service = service if isinstance(service, ServiceHolder) else ServiceHolder(service)
        self.calls = ActiveCalls()

    async def Stream(
        self,
        request_iterator: AsyncIterable[speech_pb2.StreamRequest],
        context: grpc.aio.ServicerContext[speech_pb2.StreamRequest, speech_pb2.StreamResponse],
    ) -> AsyncIterator[speech_pb2.StreamResponse]:
        self.calls.track(context)
        try:
            # Refused at once when loading or full, not after the caller's first message.
            service = self._service.get()
            service.check_capacity()
            requests = aiter(request_iterator)
            first = await self.calls.unless_aborted(_first_request(requests))
            config = speech_pb2.SessionConfig()
            if first is not None and first.WhichOneof("request") == "config":
                config, first = first.config, None
            session = service.open_session(session_request(config))
        except SpeechError as error:
            for response in _end_with_error(error, context):
                yield response
            return
        pending = [first] if first is not None else []
        reader = asyncio.create_task(_forward_requests(_chain(pending, requests), session))
        async with contextlib.aclosing(self._speak(session, context, reader)) as responses:
            async for response in responses:
                yield response

    async def Synthesize(
        self,
        request: speech_pb2.SynthesizeRequest,
        context: grpc.aio.ServicerContext[speech_pb2.SynthesizeRequest, speech_pb2.StreamResponse],
    ) -> AsyncIterator[speech_pb2.StreamResponse]:
        self.calls.track(context)
        try:
            service = self._service.get()
            session = service.open_session(session_request(request.config))
        except SpeechError as error:
            for response in _end_with_error(error, context):
                yield response
            return
        # What a Stream call with the text and turn_done, half-closed, does; the text
        # goes in as synthesis frees room in the session's text budget.
        feeder = asyncio.create_task(_feed_whole_text(request.text, session))
        async with contextlib.aclosing(self._speak(session, context, feeder)) as responses:
            async for response in responses:
                yield response

    async def _speak(
        self,
        session: SessionDispatcher,
        context: grpc.aio.ServicerContext[Any, speech_pb2.StreamResponse],
        reader: asyncio.Task[None] | None = None,
    ) -> AsyncGenerator[speech_pb2.StreamResponse, None]:
        """The session's events as responses until it ends; then stop `reader` and the session."""
        self.calls.fail_if_aborted(session)
        encoding = _ENCODINGS_OUT[session.output.encoding]  # once, not per message
        sample_rate_hz = session.output.sample_rate_hz
        try:
            async for event in session.events():
                yield response_for(event, encoding, sample_rate_hz)
                if type(event) is SegmentFailed:
                    _LOG.warning(
                        "turn %d segment %d failed: %s", event.turn, event.segment, event.error
                    )
                    context.set_code(status_code(event.error))
                    context.set_details(event.error.message)
        except SpeechError as error:
            for response in _end_with_error(error, context):
                yield response
        finally:
            if reader is not None:
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)
            await session.aclose()

    async def ListVoices(
        self,
        request: speech_pb2.ListVoicesRequest,
        context: grpc.aio.ServicerContext[
            speech_pb2.ListVoicesRequest, speech_pb2.ListVoicesResponse
        ],
    ) -> speech_pb2.ListVoicesResponse:
        try:
            service = self._service.get()
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
                )
                for voice in service.voices()
            ]
        )


def _end_with_error(
    error: SpeechError, context: grpc.aio.ServicerContext[Any, Any]
) -> list[speech_pb2.StreamResponse]:
    """The last messages of a failed call: the error, SESSION_ENDED; then its status.

    The error also travels as a message because a client that is still writing
    when the call ends may not see the status itself (a known grpcio asyncio bug).
    """
    context.set_code(status_code(error))
    context.set_details(error.message)
    return [
        speech_pb2.StreamResponse(
            error=speech_pb2.Error(code=int(error.code), message=error.message)
        ),
        _lifecycle(speech_pb2.LIFECYCLE_EVENT_SESSION_ENDED, 0),
    ]


async def _first_request(
    requests: AsyncIterator[speech_pb2.StreamRequest],
) -> speech_pb2.StreamRequest | None:
    return await anext(requests, None)


async def _feed_whole_text(text: str, session: SessionDispatcher) -> None:
    try:
        # Small pieces, so each fits the text budget beside what is already queued.
        for chunk in whole_text_chunks(text, session.text_budget_chars // 4):
            await session.send_text_when_room(chunk)
        session.turn_done()
        session.close()
    except SpeechError as error:
        session.fail(error)


async def _chain(
    first: list[speech_pb2.StreamRequest], rest: AsyncIterator[speech_pb2.StreamRequest]
) -> AsyncIterator[speech_pb2.StreamRequest]:
    for request in first:
        yield request
    async for request in rest:
        yield request
