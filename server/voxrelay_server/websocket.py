"""`Speech.Stream` over a WebSocket, and the page that speaks through it.

A browser cannot make gRPC calls, so the HTTP listener offers the same stream as a
WebSocket at `/v1/stream`: JSON text messages in (the proto's JSON mapping of
`StreamRequest`), JSON text messages out (of `StreamResponse`), each audio chunk's
bytes in a binary message right after its JSON header. The session behind it is the
same `SpeechService` session a gRPC call gets, with the same limits, order and errors;
this module only translates. The protocol is documented in
`protos/voxrelay/v1/websocket.md`; `add_routes` puts it, the voice list and the page
(`web/index.html`) on an aiohttp application.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import re
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any, Final

import grpc
from aiohttp import WSMsgType, web
from google.protobuf import json_format

from voxrelay.v1 import speech_pb2
from voxrelay_server.dispatcher import SessionDispatcher, SessionState
from voxrelay_server.errors import ErrorCode, InvalidInput, SpeechError
from voxrelay_server.events import SessionFailed
from voxrelay_server.grpc_service import (
    ENCODINGS_OUT,
    forward_request,
    internal_error,
    response_for,
    session_request,
)
from voxrelay_server.service import CallSlot, SpeechService
from voxrelay_server.serving import CallLimits, RequestStream, SendWatchdog, ServiceHolder

_LOG = logging.getLogger(__name__)

STREAM_PATH: Final = "/v1/stream"
VOICES_PATH: Final = "/v1/voices"
PAGE_PATH: Final = "/"
SUBPROTOCOL: Final = "voxrelay.v1"
"""Selected when the client offers it; a client offering none is served all the same."""
MAX_MESSAGE_BYTES: Final = 1 << 20
"""The largest message a client may send: a 16384-character text chunk is at most 64 KiB
of UTF-8 (98 KiB as JSON escapes); a larger message is closed with 1009 by the WebSocket
layer, as gRPC refuses a message over its 4 MiB limit."""
CLOSE_CODE_BASE: Final = 4000
"""A session that failed closes with 4000 + its gRPC status code (4003 for
INVALID_ARGUMENT); one that ended normally with 1000."""

Authorize = Callable[[str | None], str | None]
"""Checks an `Authorization` value (None: none sent): the reason it is refused, or None
when it is accepted."""


@dataclass(frozen=True)
class _End:
    """The client's `{"end": {}}`: no more requests (gRPC's half-close)."""


@dataclass(frozen=True)
class _Authorization:
    """The client's `{"authorization": "Bearer <token>"}`."""

    value: str


_Incoming = speech_pb2.StreamRequest | _End | _Authorization
_END = _End()
_JSON_OPTIONS: Final[dict[str, Any]] = {
    "preserving_proto_field_name": True,
    "always_print_fields_with_no_presence": True,
}
_HOW_TO_AUTHORIZE = (
    'send {"authorization": "Bearer <token>"} as the first message (or the header '
    "'Authorization: Bearer <token>' where the client can set one)"
)


def parse_message(text: str) -> _Incoming:
    """One client message: a `StreamRequest` in the proto's JSON mapping, or one of the
    WebSocket's own `end` and `authorization` messages. Raises INVALID_ARGUMENT."""
    try:
        value = json.loads(text)
    except ValueError as error:
        raise InvalidInput(f"a message is not JSON ({error}): send one JSON object") from None
    if not isinstance(value, dict):
        raise InvalidInput('a message must be a JSON object, such as {"text": "Hello. "}')
    if "end" in value:
        if value != {"end": {}}:
            raise InvalidInput('the end message is {"end": {}}, with nothing beside it')
        return _END
    if "authorization" in value:
        credential = value["authorization"]
        if len(value) != 1 or not isinstance(credential, str):
            raise InvalidInput(
                'the authorization message is {"authorization": "Bearer <token>"}, with '
                "nothing beside it"
            )
        return _Authorization(credential)
    request = speech_pb2.StreamRequest()
    try:
        json_format.ParseDict(value, request)
    except json_format.ParseError as error:
        raise InvalidInput(
            f"a message is not a StreamRequest in the proto's JSON mapping: {error}"
        ) from None
    except (ValueError, TypeError):  # a string protobuf cannot hold (a lone surrogate)
        raise InvalidInput("strings must be valid Unicode (no lone surrogates)") from None
    return request


def message_for(response: speech_pb2.StreamResponse) -> tuple[str, bytes | None]:
    """The JSON text message of a response and, for audio, the bytes of the binary message
    that follows it (the JSON being the `AudioChunk` without its `data`)."""
    data: bytes | None = None
    if response.WhichOneof("response") == "audio":
        data = response.audio.data
        response.audio.ClearField("data")
    body = json_format.MessageToDict(response, **_JSON_OPTIONS)
    if data is not None:
        del body["audio"]["data"]  # printed empty, as a field without presence
    elif "error" in body:
        # The status's name beside its number: a browser has no table of gRPC codes.
        body["error"]["status"] = _status_name(response.error.code)
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")), data


def _status_name(code: int) -> str:
    for status in grpc.StatusCode:
        if status.value[0] == code:
            return str(status.name)
    return "UNKNOWN"


def _error_messages(error: SpeechError) -> list[speech_pb2.StreamResponse]:
    """A failed call's last messages: the error, then SESSION_ENDED."""
    return [
        speech_pb2.StreamResponse(
            error=speech_pb2.Error(code=int(error.code), message=error.message)
        ),
        speech_pb2.StreamResponse(
            lifecycle=speech_pb2.Lifecycle(event=speech_pb2.LIFECYCLE_EVENT_SESSION_ENDED)
        ),
    ]


def close_code(error: SpeechError | None) -> int:
    """The WebSocket close code of a session that ended with `error` (None: normally)."""
    return 1000 if error is None else CLOSE_CODE_BASE + int(error.code)


class _ClientGone(Exception):
    """The client closed the socket, or it broke: the call is over (gRPC's cancel)."""


_Received = _Incoming | SpeechError
"""A client message, or why it is not a request (INVALID_ARGUMENT)."""


async def _incoming(ws: web.WebSocketResponse) -> AsyncIterator[_Received]:
    """The client's messages, parsed (a bad one as its error, and reading goes on);
    ends with `_ClientGone` when the socket closes."""
    while True:
        message = await ws.receive()
        if message.type is WSMsgType.TEXT:
            try:
                yield parse_message(message.data)
            except SpeechError as error:
                yield error
        elif message.type is WSMsgType.BINARY:
            yield InvalidInput(
                "binary messages carry no requests: send each request as a JSON text message"
            )
        else:  # CLOSE, CLOSING, CLOSED or ERROR: nothing more will come
            raise _ClientGone


class WebSocketStream:
    """Serves `/v1/stream`: one session of `service` per socket, like one `Stream` call."""

    def __init__(
        self,
        service: ServiceHolder,
        limits: CallLimits | None = None,
        *,
        authorize: Authorize | None = None,
        heartbeat_s: float | None = None,
    ) -> None:
        self._service = service
        self._limits = limits or CallLimits()
        self._authorize = authorize
        self._heartbeat_s = heartbeat_s or None
        self._endings: set[asyncio.Task[None]] = set()
        """Sessions being closed after their socket ended (held: a task is weakly kept)."""

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        """The aiohttp handler: upgrade, then run the session until the socket closes."""
        ws = web.WebSocketResponse(
            protocols=(SUBPROTOCOL,),
            max_msg_size=MAX_MESSAGE_BYTES,
            heartbeat=self._heartbeat_s,
            compress=False,  # audio hardly compresses; deflating it costs CPU per message
        )
        await ws.prepare(request)
        requests: RequestStream[_Received] = RequestStream(_incoming(ws))
        try:
            session, slot, first = await self._open(ws, requests, request.headers)
            if session is not None:
                assert slot is not None
                if first is not None:
                    _apply(first, session)
                reader = asyncio.create_task(_forward(requests, session))
                # Its own task, so that the client going away (the reader sees it) can
                # stop it wherever it waits, as gRPC cancels a call's handler.
                speaker = asyncio.create_task(self._speak(ws, session, slot, reader))
                await speaker
        except _ClientGone:
            pass
        finally:
            requests.close()
            if not ws.closed:
                await ws.close()
        return ws

    async def _open(
        self,
        ws: web.WebSocketResponse,
        requests: RequestStream[_Received],
        headers: Mapping[str, str],
    ) -> tuple[SessionDispatcher | None, CallSlot | None, _Incoming | None]:
        """Authorize the caller and open its session: the session, its place and the
        first message still to apply; (None, None, None) when the socket was refused
        (its error sent and the socket closed)."""
        service: SpeechService | None = None
        slot: CallSlot | None = None
        session: SessionDispatcher | None = None
        first: _Incoming | None = None
        try:
            await self._authorized(requests, headers.get("Authorization"))
            # Refused at once when loading or full; from here on the socket holds a place.
            service = self._service.get()
            slot = service.admit()
            try:
                first = await self._next(requests)
            except SpeechError as error:
                service.report_unstarted(error)
                raise
            except _ClientGone:
                service.report_unstarted(SpeechError(ErrorCode.CANCELLED, "the caller went away"))
                raise
            config = speech_pb2.SessionConfig()
            if isinstance(first, speech_pb2.StreamRequest) and first.HasField("config"):
                config, first = first.config, None
            session = service.open_session(session_request(config), slot)
        except SpeechError as error:
            await _send_all(ws, _error_messages(error))
            await ws.close(code=close_code(error), message=_status_name(error.code).encode())
            return None, None, None
        finally:
            if session is None and slot is not None:
                slot.release()
        return session, slot, first

    async def _authorized(
        self, requests: RequestStream[_Received], authorization: str | None
    ) -> None:
        """Check the caller's token: the `Authorization` header, else the first message,
        which must then be `{"authorization": "Bearer <token>"}`. Raises UNAUTHENTICATED."""
        if self._authorize is None:
            return
        if authorization is None:
            try:
                first = await self._next(requests)
            except SpeechError:  # no message in time, or not JSON
                first = None
            if not isinstance(first, _Authorization):
                raise SpeechError(
                    ErrorCode.UNAUTHENTICATED,
                    f"this server requires a bearer token: {_HOW_TO_AUTHORIZE}",
                )
            authorization = first.value
        refusal = self._authorize(authorization)
        if refusal is not None:
            raise SpeechError(ErrorCode.UNAUTHENTICATED, refusal)

    async def _next(self, requests: RequestStream[_Received]) -> _Incoming:
        """The next message, within the start timeout (DEADLINE_EXCEEDED after it); a
        message that is not a request raises its error."""
        timeout_s = self._limits.start_timeout_s
        while True:
            try:
                message = await requests.next(timeout_s or None)
            except TimeoutError:
                raise SpeechError(
                    ErrorCode.DEADLINE_EXCEEDED,
                    f"no message arrived within {timeout_s:g} s of the socket opening, and "
                    "a session's place is held meanwhile: send config or text as soon as it "
                    "opens",
                ) from None
            if message is None:  # the reading ended: the socket is closed
                raise _ClientGone
            if isinstance(message, SpeechError):
                raise message
            if isinstance(message, _Authorization) and self._authorize is None:
                continue  # no token needed: ignored (documented)
            return message

    async def _speak(
        self,
        ws: web.WebSocketResponse,
        session: SessionDispatcher,
        slot: CallSlot,
        reader: asyncio.Task[None],
    ) -> None:
        """Send the session's events until it ends, then close the socket with its code;
        stop the reader and the session."""
        timeout_s = self._limits.send_timeout_s

        def stalled() -> None:
            # The client has not read for a while: end its session, give its place back
            # and close it now; its last messages follow, for when (if ever) it reads.
            _LOG.info("session %s: the client stopped reading", session.session_id)
            session.fail(
                SpeechError(
                    ErrorCode.DEADLINE_EXCEEDED,
                    f"the client did not read for {timeout_s:g} s and its session was ended: "
                    "read the messages as they arrive",
                )
            )
            slot.release()
            self._keep(asyncio.create_task(session.aclose()))

        speaker = asyncio.current_task()
        assert speaker is not None
        closing = False

        def reader_done(task: asyncio.Task[None]) -> None:
            # The client closed the socket (or it broke) while the session was speaking:
            # stop it, as gRPC cancels a call whose client went away.
            if not closing and not task.cancelled() and isinstance(task.exception(), _ClientGone):
                speaker.cancel()

        reader.add_done_callback(reader_done)
        watchdog = SendWatchdog(timeout_s, stalled)
        ended_by: SpeechError | None = None
        failed: SpeechError | None = None
        encoding = ENCODINGS_OUT[session.output.encoding]  # once, not per message
        rate = session.output.sample_rate_hz
        started = speech_pb2.StreamResponse()
        info = started.session_started
        info.session_id = session.session_id
        info.voice = session.voice
        info.encoding = encoding
        info.sample_rate_hz = rate
        info.text_budget_chars = session.text_budget_chars
        if session.pacer is not None:
            info.pace_lead_ms = round(session.pacer.lead_s * 1000)
        try:
            await _send(ws, started, watchdog)
            async for event in session.events():
                await _send(ws, response_for(event, encoding, rate), watchdog)
                if type(event) is SessionFailed:
                    failed = event.error
            closing = True
            reason = _status_name(failed.code).encode() if failed is not None else b""
            await ws.close(code=close_code(failed), message=reason)
        except (asyncio.CancelledError, ConnectionError):
            ended_by = SpeechError(ErrorCode.CANCELLED, "the caller went away")
        except Exception:  # a bug in the dispatcher or here: the caller told in general
            closing = True
            ended_by = internal_error(session.session_id, "speaking")
            with contextlib.suppress(Exception):
                await _send_all(ws, _error_messages(ended_by))
                await ws.close(code=close_code(ended_by), message=b"INTERNAL")
        finally:
            closing = True
            watchdog.close()
            reader.cancel()
            ending = asyncio.create_task(_close_session(session, reader, ended_by))
            self._keep(ending)
            # Shielded: the session is closed and its place given back whatever happens.
            await asyncio.shield(ending)

    def _keep(self, task: asyncio.Task[None]) -> None:
        # A task is only weakly referenced by the loop: hold it until it is done.
        self._endings.add(task)
        task.add_done_callback(self._endings.discard)


async def _close_session(
    session: SessionDispatcher, reader: asyncio.Task[None], ended_by: SpeechError | None
) -> None:
    await asyncio.gather(reader, return_exceptions=True)
    await session.aclose(ended_by)


async def _send(
    ws: web.WebSocketResponse, response: speech_pb2.StreamResponse, watchdog: SendWatchdog
) -> None:
    text, data = message_for(response)
    watchdog.sending()
    await ws.send_str(text)
    if data is not None:
        await ws.send_bytes(data)
    watchdog.sent()


async def _send_all(ws: web.WebSocketResponse, responses: list[speech_pb2.StreamResponse]) -> None:
    for response in responses:
        text, _ = message_for(response)
        await ws.send_str(text)


def _apply(message: _Received, session: SessionDispatcher) -> None:
    """Hand one client message to the session; a bad one fails it."""
    try:
        if isinstance(message, SpeechError):
            raise message
        if isinstance(message, _End):
            session.close()
        elif isinstance(message, _Authorization):
            raise InvalidInput(
                "the authorization message is allowed only as the first message of the socket"
            )
        else:
            forward_request(message, session)
    except SpeechError as error:
        session.fail(error)


async def _forward(requests: RequestStream[_Received], session: SessionDispatcher) -> None:
    """Feed the client's messages to the session until the socket closes (then raise
    `_ClientGone`). A message after `end` is refused (INVALID_ARGUMENT); once the session
    has failed, messages are read and dropped while its last messages go out."""
    try:
        async for message in requests:
            if session.state is SessionState.FINISHING:
                session.fail(
                    InvalidInput('nothing may follow {"end": {}}: open a new socket to go on')
                )
            elif session.state is SessionState.OPEN:
                _apply(message, session)
    except _ClientGone:
        raise
    except Exception:  # a bug, here or in the dispatcher: logged, the caller told in general
        session.fail(internal_error(session.session_id, "reading messages"))
        return
    raise _ClientGone


# The page and the voice list.

_PAGE_RESOURCE = "web/index.html"
_INLINE = re.compile(r"<(script|style)>(.*?)</\1>", re.DOTALL)


@dataclass(frozen=True)
class _Page:
    body: bytes
    headers: dict[str, str]


def _load_page() -> _Page:
    """The page, with a Content-Security-Policy that allows exactly its inline script and
    style (by their hashes), connections to this origin only, and nothing else."""
    html = resources.files("voxrelay_server").joinpath(_PAGE_RESOURCE).read_text("utf-8")
    hashes: dict[str, list[str]] = {"script": [], "style": []}
    for kind, content in _INLINE.findall(html):
        digest = base64.b64encode(hashlib.sha256(content.encode()).digest()).decode()
        hashes[kind].append(f"'sha256-{digest}'")
    policy = "; ".join(
        [
            "default-src 'none'",
            f"script-src {' '.join(hashes['script'])}",
            f"style-src {' '.join(hashes['style'])}",
            "connect-src 'self'",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ]
    )
    return _Page(
        html.encode(),
        {
            "Content-Security-Policy": policy,
            "Cache-Control": "no-store",
            "Referrer-Policy": "no-referrer",
            "X-Content-Type-Options": "nosniff",
        },
    )


def voices_body(service: SpeechService, language_code: str = "") -> dict[str, Any]:
    """`ListVoicesResponse` in the proto's JSON mapping. Raises INVALID_ARGUMENT for a
    malformed `language_code`."""
    default = service.catalog.default_voice
    response = speech_pb2.ListVoicesResponse(
        voices=[
            speech_pb2.Voice(
                name=voice.name,
                engine=voice.engine,
                language_codes=voice.language_codes,
                native_sample_rate_hz=voice.native_sample_rate_hz,
                is_default=voice.name == default,
                word_timestamps=service.catalog.resolve(voice.name)[0].word_timing,
            )
            for voice in service.voices(language_code)
        ]
    )
    return json_format.MessageToDict(response, **_JSON_OPTIONS)


_HTTP_STATUS = {
    ErrorCode.INVALID_ARGUMENT: 400,
    ErrorCode.UNAUTHENTICATED: 401,
    ErrorCode.UNAVAILABLE: 503,
}


def add_routes(
    app: web.Application,
    service: ServiceHolder,
    limits: CallLimits | None = None,
    *,
    authorize: Authorize | None = None,
    heartbeat_s: float | None = None,
) -> WebSocketStream:
    """Serve the WebSocket stream, the voice list and the page on `app`."""
    stream = WebSocketStream(service, limits, authorize=authorize, heartbeat_s=heartbeat_s)
    page = _load_page()

    async def index(_request: web.Request) -> web.Response:
        # The page holds no secret and asks for none: open to all, like a login form.
        return web.Response(
            body=page.body, content_type="text/html", charset="utf-8", headers=page.headers
        )

    async def voices(request: web.Request) -> web.Response:
        try:
            if authorize is not None:
                refusal = authorize(request.headers.get("Authorization"))
                if refusal is not None:
                    raise SpeechError(ErrorCode.UNAUTHENTICATED, refusal)
            body = voices_body(service.get(), request.query.get("language_code", ""))
        except SpeechError as error:
            return web.json_response(
                {
                    "error": {
                        "code": int(error.code),
                        "status": error.code.name,
                        "message": error.message,
                    }
                },
                status=_HTTP_STATUS.get(error.code, 500),
            )
        return web.json_response(body, headers={"Cache-Control": "no-store"})

    app.router.add_get(PAGE_PATH, index)
    app.router.add_get(VOICES_PATH, voices)
    app.router.add_get(STREAM_PATH, stream.handle)
    return stream
