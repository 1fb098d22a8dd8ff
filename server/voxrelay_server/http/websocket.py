"""`Speech.Stream` over a WebSocket, at `/v1/stream` on the HTTP listener.

A browser cannot make gRPC calls, so the HTTP listener offers the same stream as a
WebSocket: JSON text messages in (the proto's JSON mapping of `StreamRequest`, plus
`{"end": {}}` for gRPC's half-close and `{"authorization": "Bearer <token>"}` for a
browser, which cannot set headers), JSON text messages out (of `StreamResponse`), each
audio chunk's bytes in a binary message right after its JSON header. A socket is a
call of the same `CallRunner` as gRPC's: the same session, limits, order and errors,
counted under `--max-sessions` and drained at shutdown with the gRPC calls; this module
only translates. The protocol: `protos/voxrelay/v1/websocket.md`.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import grpc
from aiohttp import WSMsgType, hdrs, web
from google.protobuf import json_format

from voxrelay.v1 import speech_pb2
from voxrelay_server.calls import (
    CallEvent,
    CallRunner,
    CallStarted,
    apply_first,
    caller_went_away,
    internal_error,
)
from voxrelay_server.dispatcher import SessionDispatcher, SessionState
from voxrelay_server.errors import ErrorCode, InvalidInput, SpeechError
from voxrelay_server.grpc_service import (
    ENCODINGS_OUT,
    final_responses,
    forward_request,
    response_for,
    session_request,
    started_response,
)
from voxrelay_server.http.auth import Access
from voxrelay_server.http.connections import dropper
from voxrelay_server.security import TokenCheck
from voxrelay_server.service import CallSlot
from voxrelay_server.serving import RequestStream

if TYPE_CHECKING:
    from voxrelay_server.http.listener import HttpContext, HttpRoutes

_LOG = logging.getLogger(__name__)

STREAM_PATH: Final = "/v1/stream"
SUBPROTOCOL: Final = "voxrelay.v1"
"""Selected when the client offers it; a client offering none is served all the same."""
MAX_MESSAGE_BYTES: Final = 1 << 20
"""The largest message a client may send: a 16384-character text chunk is at most 64 KiB
of UTF-8 (96 KiB as JSON escapes); a larger message is closed with 1009 by the WebSocket
layer, as gRPC refuses a message over its 4 MiB limit before voxrelay sees it."""
CLOSE_CODE_BASE: Final = 4000
"""A session that failed closes with 4000 + its gRPC status code (4003 for
INVALID_ARGUMENT); one that ended normally with 1000."""
HOW_TO_AUTHORIZE: Final = (
    'send {"authorization": "Bearer <token>"} as the socket\'s first message (or the '
    "header 'Authorization: Bearer <token>' where the client can set one)"
)


def add_routes(routes: HttpRoutes) -> None:
    """Serve the WebSocket stream. Open to the token middleware: a browser cannot send
    the header, so the socket checks the token itself (header or first message)."""
    routes.add("GET", STREAM_PATH, WebSocketStream(routes.context).handle, access=Access.OPEN)


@dataclass(frozen=True)
class _End:
    """The client's `{"end": {}}`: no more requests (gRPC's half-close)."""


@dataclass(frozen=True)
class _Authorization:
    """The client's `{"authorization": "Bearer <token>"}`."""

    value: str


class _TokenFrom(enum.Enum):
    """Where the socket's token was checked: a leading `authorization` message is
    ignored unless it is the one that carried the token."""

    NOT_NEEDED = "not needed"
    """The server has no tokens."""
    HEADER = "header"
    """The upgrade request's `Authorization` header."""
    FIRST_MESSAGE = "first message"
    """The socket's first message, `{"authorization": ...}` (consumed by the check)."""


_Incoming = speech_pb2.StreamRequest | _End | _Authorization
_Received = _Incoming | SpeechError
"""A client message, or why it is not a request (INVALID_ARGUMENT)."""
_END: Final = _End()
_JSON_OPTIONS: Final[dict[str, Any]] = {
    "preserving_proto_field_name": True,
    "always_print_fields_with_no_presence": True,
}
_STATUS_NAMES: Final = {status.value[0]: str(status.name) for status in grpc.StatusCode}


def parse_message(text: str) -> _Incoming:
    """One client message: a `StreamRequest` in the proto's JSON mapping, or one of the
    WebSocket's own `end` and `authorization` messages. Raises INVALID_ARGUMENT."""
    try:
        value = json.loads(text)
    except ValueError as error:
        raise InvalidInput(f"a message is not JSON ({error}): send one JSON object") from None
    except RecursionError:  # Python's parser recurses per array or object level
        raise InvalidInput(
            "a message nests arrays or objects too deeply to parse: each request is a "
            'shallow JSON object, such as {"text": "Hello. "}'
        ) from None
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
        # protobuf's own words, on one line: its list of fields (camelCase, on a second
        # line) knows nothing of the socket's own messages, so the message names them all.
        reason = " ".join(str(error).split())
        raise InvalidInput(
            f"a message is not a StreamRequest in the proto's JSON mapping ({reason}): "
            "send one of config (first only), text, turn_done or cancel, or this socket's "
            "own end and authorization (see websocket.md)"
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
        body["error"]["status"] = status_name(response.error.code)
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")), data


def status_name(code: int) -> str:
    """The gRPC status code's name, e.g. `INVALID_ARGUMENT` for 3."""
    return _STATUS_NAMES.get(code, "UNKNOWN")


def close_code(code: int) -> int:
    """The WebSocket close code of a session that ended with gRPC status `code`."""
    return 1000 if code == 0 else CLOSE_CODE_BASE + code


class _ClientGone(Exception):
    """The client closed the socket, or it broke: the call is over (gRPC's cancel)."""


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
    """Serves `/v1/stream`: one session per socket, like one `Stream` call."""

    def __init__(self, context: HttpContext) -> None:
        self._runner: CallRunner = context.runner
        self._tokens: TokenCheck | None = context.tokens
        self._origins = context.settings.http_cors_origins
        self._heartbeat_s = context.settings.keepalive_time_s or None

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        """The aiohttp handler: upgrade, then run the session until the socket closes."""
        # Counted as a call from the upgrade on: a shutdown waits for it, then ends it.
        with self._runner.calls.tracking():
            ws = web.WebSocketResponse(
                protocols=(SUBPROTOCOL,),
                max_msg_size=MAX_MESSAGE_BYTES,
                # Pings, so a vanished client frees its session (gRPC's keepalive).
                heartbeat=self._heartbeat_s,
                compress=False,  # audio hardly compresses; deflating costs CPU per message
            )
            await ws.prepare(request)
            requests: RequestStream[_Received] = RequestStream(_incoming(ws))
            try:
                opened = await self._open(ws, requests, request)
                if opened is not None:
                    session, slot, first = opened
                    if first is not None:
                        apply_first(first, session, _apply)
                    reader = asyncio.create_task(_forward(requests, session))
                    speaking = asyncio.Event()
                    # Its own task, so that the client going away (the reader sees it)
                    # can stop it wherever it waits, as gRPC cancels a call's handler.
                    speaker = asyncio.create_task(
                        self._speak(ws, session, slot, reader, request.transport, speaking)
                    )
                    try:
                        await speaker
                    finally:
                        if not speaking.is_set():
                            # Cancelled before its first step (aiohttp cancels the
                            # handler when the client goes): `_speak` never ran, nor
                            # the runner that ends the session, so it is ended here
                            # and its place under --max-sessions given back.
                            await asyncio.shield(
                                self._runner.end(session, reader, caller_went_away())
                            )
            except _ClientGone:
                pass
            finally:
                requests.close()
                if not ws.closed:
                    with contextlib.suppress(ConnectionError):
                        await ws.close()
            return ws

    async def _open(
        self, ws: web.WebSocketResponse, requests: RequestStream[_Received], request: web.Request
    ) -> tuple[SessionDispatcher, CallSlot, _Incoming | None] | None:
        """Check the page's origin and the caller's token, and open its session: the
        session, its place and the first message still to apply; None when the socket
        was refused (its error sent and the socket closed)."""
        slot: CallSlot | None = None
        session: SessionDispatcher | None = None
        try:
            self._check_origin(request)
            token_from = await self._authorize(
                requests, request.headers.getall(hdrs.AUTHORIZATION, [])
            )
            # Refused at once when loading or full; from here on the socket holds a place.
            service, slot = self._runner.admit()
            try:
                first = await self._runner.first_input(self._reader(requests, token_from))
            except (_ClientGone, asyncio.CancelledError):  # aiohttp cancels on a disconnect
                service.report_unstarted(caller_went_away())
                raise
            except SpeechError as error:
                service.report_unstarted(error)
                raise
            config = speech_pb2.SessionConfig()
            rest: _Incoming | None = first
            if isinstance(first, speech_pb2.StreamRequest) and first.HasField("config"):
                config, rest = first.config, None
            session = service.open_session(session_request(config), slot)
        except SpeechError as error:
            if error.code in (ErrorCode.UNAUTHENTICATED, ErrorCode.PERMISSION_DENIED):
                # As the other listeners log refusals: who, and why (never a token).
                why = error.message.partition(":")[0]
                if error.code is ErrorCode.PERMISSION_DENIED:
                    why = f"a page from {request.headers.get(hdrs.ORIGIN)}"
                _LOG.info("refused %s from %s: %s", STREAM_PATH, request.remote, why)
            with contextlib.suppress(ConnectionError):  # unless the client is gone already
                for response in final_responses(error):
                    await ws.send_str(message_for(response)[0])
                await ws.close(code=close_code(error.code), message=_reason(error.code))
            return None
        finally:
            if session is None and slot is not None:
                slot.release()
        return session, slot, rest

    def _check_origin(self, request: web.Request) -> None:
        """Refuse a page of another site (cross-site WebSocket hijacking): a browser sends
        `Origin`, and only this server's own page and `--http-cors-origins` may connect.
        A client that is not a browser sends none."""
        origin = request.headers.get(hdrs.ORIGIN)
        own = f"{request.scheme}://{request.host}"
        if origin is None or origin == own or "*" in self._origins or origin in self._origins:
            return
        raise SpeechError(
            ErrorCode.PERMISSION_DENIED,
            f"a page from {origin} may not open this socket: only this server's own page "
            f"({own}) and the origins of --http-cors-origins may",
        )

    async def _authorize(
        self, requests: RequestStream[_Received], headers: list[str]
    ) -> _TokenFrom:
        """Check the caller's token: the `Authorization` header, else the first message,
        which must then be `{"authorization": "Bearer <token>"}`; where it came from.
        Raises UNAUTHENTICATED. Nothing to check when the server has no tokens."""
        if self._tokens is None:
            return _TokenFrom.NOT_NEEDED
        token_from = _TokenFrom.HEADER
        if not headers:
            token_from = _TokenFrom.FIRST_MESSAGE
            timeout_s = self._runner.limits.start_timeout_s or None
            try:
                first = await self._runner.calls.unless_aborted(requests.next(timeout_s))
            except TimeoutError:
                first = None
            if isinstance(first, _Authorization):
                headers = [first.value]
        refusal = self._tokens.refusal(headers, HOW_TO_AUTHORIZE)
        if refusal is not None:
            raise SpeechError(ErrorCode.UNAUTHENTICATED, refusal)
        return token_from

    def _reader(
        self, requests: RequestStream[_Received], token_from: _TokenFrom
    ) -> Callable[[float | None], Awaitable[_Incoming]]:
        """Reads the session's first message for `CallRunner.first_input`, skipping a
        leading `authorization` message when the token needed none (`token_from`)."""
        # A client may always send it first (websocket.md): without tokens, or with the
        # token already checked in the header, it carries nothing to check.
        skip_authorization = token_from is not _TokenFrom.FIRST_MESSAGE

        async def read(timeout_s: float | None) -> _Incoming:
            while True:
                message = await requests.next(timeout_s)
                if message is None:  # the reading ended: the socket is closed
                    raise _ClientGone
                if isinstance(message, SpeechError):
                    raise message
                if isinstance(message, _Authorization) and skip_authorization:
                    continue
                return message

        return read

    async def _speak(
        self,
        ws: web.WebSocketResponse,
        session: SessionDispatcher,
        slot: CallSlot,
        reader: asyncio.Task[None],
        transport: asyncio.Transport | None,
        speaking: asyncio.Event,
    ) -> None:
        """Send `session_started` and the session's events until it ends, then close the
        socket with its code; the runner then stops the reader and the session.
        `speaking` is set at once: from then on the runner ends the session."""
        speaking.set()
        encoding = ENCODINGS_OUT[session.output.encoding]  # once, not per message
        rate = session.output.sample_rate_hz

        def convert(event: CallEvent) -> speech_pb2.StreamResponse:
            if type(event) is CallStarted:
                return started_response(event)
            return response_for(event, encoding, rate)  # type: ignore[arg-type]

        speaker = asyncio.current_task()
        assert speaker is not None
        closing = False

        def reader_done(task: asyncio.Task[None]) -> None:
            # The client closed the socket (or it broke) while the session was speaking:
            # stop it, as gRPC cancels a call whose client went away.
            if not closing and not task.cancelled() and isinstance(task.exception(), _ClientGone):
                speaker.cancel()

        reader.add_done_callback(reader_done)

        code = 0
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            async with contextlib.aclosing(
                self._runner.run(
                    session, slot, reader, convert, abandon=dropper(transport, STREAM_PATH)
                )
            ) as responses:
                async for response in responses:
                    text, data = message_for(response)
                    await ws.send_str(text)
                    if data is not None:
                        await ws.send_bytes(data)
                    kind = response.WhichOneof("response")
                    if kind == "error":
                        code = response.error.code
                    elif (
                        kind == "lifecycle"
                        and response.lifecycle.event == speech_pb2.LIFECYCLE_EVENT_SESSION_ENDED
                    ):
                        # The last message: close now, and let the runner end the session.
                        closing = True
                        await ws.close(code=close_code(code), message=_reason(code))


def _reason(code: int) -> bytes:
    return status_name(code).encode() if code else b""


def _apply(message: _Received, session: SessionDispatcher) -> None:
    """Give one client message to the session; raises INVALID_ARGUMENT for one that is
    not allowed there."""
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


async def _forward(requests: RequestStream[_Received], session: SessionDispatcher) -> None:
    """Feed the client's messages to the session until the socket closes, then raise
    `_ClientGone`. A message after `end` is refused (INVALID_ARGUMENT); once the session
    has failed, messages are read and dropped while its last messages go out."""
    try:
        async for message in requests:
            if session.state is SessionState.FINISHING:
                session.fail(
                    InvalidInput('nothing may follow {"end": {}}: open a new socket to go on')
                )
            elif session.state is SessionState.OPEN:
                try:
                    _apply(message, session)
                except SpeechError as error:
                    session.fail(error)
    except _ClientGone:
        raise
    except Exception:  # a bug, here or in the dispatcher: logged, the caller told in general
        session.fail(internal_error(session.session_id, "reading messages"))
        return
    raise _ClientGone
