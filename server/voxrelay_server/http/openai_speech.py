"""The OpenAI-compatible speech API: `POST /v1/audio/speech`, `GET /v1/models` and
`GET /v1/audio/voices`.

A speech request is one whole text spoken as one turn, as `Synthesize` speaks it: the
same admission, limits and session, its audio streamed in the response as it is made
(chunked). The status line waits for the first audio, so a request that fails before
any (a bad field, an unknown voice, the server full or loading, the first segment's
engine failing) gets its own status and an OpenAI-shaped JSON error. A failure after
audio went out cannot change the status any more: the connection is closed without
the chunked body's end, so a client sees an incomplete response rather than a
complete-looking short one (with `stream_format: "sse"`, an `error` event says why).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import enum
import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web

from voxrelay_server.calls import CallEvent, caller_went_away, feed_whole_text
from voxrelay_server.engines.openai_engine import DEFAULT_VOICES as DEFAULT_OPENAI_VOICES
from voxrelay_server.errors import ErrorCode, InvalidInput, SpeechError, TextTooLong
from voxrelay_server.events import AudioOut, SessionFailed
from voxrelay_server.http.connections import dropper
from voxrelay_server.http.errors import (
    RequestError,
    error_response,
    speech_error_body,
    speech_error_response,
)
from voxrelay_server.http.formats import ResponseFormat, response_format
from voxrelay_server.settings import (
    MAX_SAMPLE_RATE_HZ,
    MAX_SPEED,
    MIN_SAMPLE_RATE_HZ,
    MIN_SPEED,
    OPUS_RATES_HZ,
    AudioEncoding,
    SessionRequest,
)

if TYPE_CHECKING:
    from voxrelay_server.dispatcher import SessionDispatcher
    from voxrelay_server.http.listener import HttpContext, HttpRoutes
    from voxrelay_server.service import CallSlot

_LOG = logging.getLogger("voxrelay.http")

MODELS = ("voxrelay", "tts-1", "tts-1-hd", "gpt-4o-mini-tts")
"""Model names `GET /v1/models` lists; a request may name any model: all speak the
same way (the voice decides)."""
OPENAI_VOICES = (*DEFAULT_OPENAI_VOICES, "marin", "cedar")
"""OpenAI's voice names (the openai engine's, and two only its newest model speaks):
each speaks with the voice `--http-voice-map` gives it, else with the server's default
voice."""
SESSION_HEADER = "X-Voxrelay-Session-Id"
VOICE_HEADER = "X-Voxrelay-Voice"
RATE_HEADER = "X-Voxrelay-Sample-Rate"


class StreamFormat(enum.Enum):
    """How the response carries the audio (OpenAI's `stream_format`)."""

    AUDIO = "audio"
    """The audio file's bytes, chunked."""
    SSE = "sse"
    """Server-sent events: `speech.audio.delta` with base64 audio, `speech.audio.done`."""


@dataclass(frozen=True)
class SpeechRequest:
    """A `POST /v1/audio/speech` body, checked."""

    model: str
    text: str
    voice: str
    instructions: str
    format: ResponseFormat
    speed: float
    sample_rate_hz: int
    """0: the format's rate."""
    stream_format: StreamFormat


def add_routes(routes: HttpRoutes) -> None:
    """Add the speech API's routes."""
    context = routes.context

    async def speech(request: web.Request) -> web.StreamResponse:
        return await speak(context, request)

    async def models(request: web.Request) -> web.Response:
        return web.json_response(models_body())

    async def voices(request: web.Request) -> web.Response:
        return web.json_response(voices_body(context, request.query.get("language", "")))

    routes.add("POST", "/v1/audio/speech", speech)
    routes.add("GET", "/v1/models", models)
    routes.add("GET", "/v1/audio/voices", voices)


def models_body() -> dict[str, Any]:
    """`GET /v1/models`: OpenAI's list of models."""
    return {
        "object": "list",
        "data": [
            {"id": name, "object": "model", "created": 0, "owned_by": "voxrelay"} for name in MODELS
        ],
    }


def voices_body(context: HttpContext, language: str = "") -> dict[str, Any]:
    """`GET /v1/audio/voices[?language=TAG]`: every voice the server offers (with
    `language`, a BCP-47 tag, those that speak it, as `ListVoices` filters), and what
    each OpenAI voice name speaks with."""
    service = context.runner.service.get()
    try:
        offered = service.voices(language)
    except SpeechError as error:
        raise RequestError(400, error.message, param="language") from None
    default = service.catalog.default_voice
    mapping = voice_map(context.settings.http_voice_map)
    return {
        "object": "list",
        "data": [
            {
                "id": voice.name,
                "object": "voice",
                "engine": voice.engine,
                "language_codes": list(voice.language_codes),
                "sample_rate_hz": voice.native_sample_rate_hz,
                "default": voice.name == default,
                "word_timestamps": service.catalog.resolve(voice.name)[0].word_timing,
            }
            for voice in offered
        ],
        "openai_voices": {name: mapping.get(name, default) for name in OPENAI_VOICES},
    }


def voice_map(pairs: tuple[str, ...]) -> dict[str, str]:
    """`--http-voice-map`'s NAME=VOICE pairs as a mapping."""
    return {
        name.strip(): voice.strip() for name, _, voice in (pair.partition("=") for pair in pairs)
    }


def voxrelay_voice(name: str, mapping: Mapping[str, str]) -> str:
    """The voxrelay voice a request's `voice` speaks with: the mapped one, the default
    ("") for an OpenAI name not mapped, else the name itself (a voxrelay voice)."""
    if name in mapping:
        return mapping[name]
    if name in OPENAI_VOICES:
        return ""
    return name


async def speak(context: HttpContext, request: web.Request) -> web.StreamResponse:
    """`POST /v1/audio/speech`: the request's text as streamed audio."""
    runner = context.runner
    with runner.calls.tracking():  # a shutdown waits for it like for a gRPC call
        # A place first (429 or 503 at once), then the body: so at most --max-sessions
        # bodies are read at a time.
        try:
            service, slot = runner.admit()
        except SpeechError as error:
            return speech_error_response(error)
        try:
            parsed = parse_speech_request(await _json_body(request, runner.limits.start_timeout_s))
        except TimeoutError:  # a body sent too slowly (or never ended) held the place
            slot.release()
            slow = body_too_slow(runner.limits.start_timeout_s)
            service.report_unstarted(slow)
            # Sent at once; aiohttp then reads and drops what more comes for at most its
            # lingering time (10 s), so the client sees the answer, and closes.
            return error_response(
                408, slow.message, code=slow.code.name.lower(), headers={"Connection": "close"}
            )
        except RequestError as error:
            slot.release()
            service.report_unstarted(InvalidInput(error.message))
            return error.response()
        except web.HTTPException as error:  # the body is too large
            slot.release()
            service.report_unstarted(TextTooLong(error.text or "the body is too large"))
            raise
        except BaseException:  # the client went away while sending
            slot.release()
            service.report_unstarted(caller_went_away())
            raise
        voice = voxrelay_voice(parsed.voice, voice_map(context.settings.http_voice_map))
        session_request = SessionRequest(
            voice=voice,
            encoding=parsed.format.encoding,
            sample_rate_hz=parsed.sample_rate_hz or parsed.format.default_rate_hz,
            speed=parsed.speed,
            instructions=parsed.instructions,
        )
        try:
            session = runner.open_whole_text(session_request, parsed.text, (service, slot))
        except SpeechError as error:
            param = _param_of(error)
            if param == "voice" and error.code is ErrorCode.INVALID_ARGUMENT:
                # The voices an HTTP caller may name include OpenAI's, which the
                # domain's message (about voxrelay's own names) does not know of.
                error = InvalidInput(
                    f"{error.message} (over HTTP: GET /v1/audio/voices); OpenAI's voice "
                    f"names ({', '.join(OPENAI_VOICES)}) are accepted too"
                )
            return speech_error_response(error, param=param)
        feeder = asyncio.create_task(feed_whole_text(parsed.text, session))
        return await _respond(context, request, parsed, session, slot, feeder)


async def _respond(
    context: HttpContext,
    request: web.Request,
    parsed: SpeechRequest,
    session: SessionDispatcher,
    slot: CallSlot,
    feeder: asyncio.Task[None],
) -> web.StreamResponse:
    """Stream the session's audio; the status line goes with the first of it."""
    rate = session.output.sample_rate_hz
    sse = parsed.stream_format is StreamFormat.SSE
    response = web.StreamResponse(
        status=200,
        headers={
            "Content-Type": "text/event-stream" if sse else parsed.format.content_type(rate),
            "Cache-Control": "no-store",
            SESSION_HEADER: session.session_id,
            VOICE_HEADER: session.voice,
            RATE_HEADER: str(rate),
        },
    )
    response.enable_chunked_encoding()
    failure: SpeechError | None = None

    async def start() -> None:
        await response.prepare(request)
        header = parsed.format.header(rate)
        if header:
            await response.write(_sse_audio(header) if sse else header)

    def identity(event: CallEvent) -> CallEvent:
        return event

    try:
        async with contextlib.aclosing(
            context.runner.run(
                session, slot, feeder, identity, abandon=dropper(request.transport, request.path)
            )
        ) as events:
            async for event in events:
                if type(event) is AudioOut:
                    if not response.prepared:
                        await start()
                    await response.write(_sse_audio(event.data) if sse else event.data)
                elif type(event) is SessionFailed:
                    failure = event.error
        if failure is not None and not response.prepared:
            return speech_error_response(failure, param=_param_of(failure))
        if not response.prepared:  # nothing to speak (punctuation only, say): empty audio
            await start()
        if failure is not None:
            _LOG.warning(
                "session %s failed after its audio started (%s): its HTTP response is cut off",
                session.session_id,
                failure.code.name,
            )
        if sse:
            last = (
                {"type": "speech.audio.done", "usage": _NO_USAGE}
                if failure is None
                else {"type": "error", "error": speech_error_body(failure)}
            )
            await response.write(_sse_event(last))
        elif failure is not None:
            if request.transport is not None:
                # No final chunk: the client sees an incomplete body, never a short one.
                request.transport.close()
            return response
        await response.write_eof()
    except ConnectionError:  # the client went away: the session ended with it
        pass
    return response


_NO_USAGE = {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0}
"""voxrelay counts no tokens: the usage of `speech.audio.done` is all zeros."""


def _sse_event(body: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(body, separators=(',', ':'))}\n\n".encode()


def _sse_audio(data: bytes) -> bytes:
    return _sse_event({"type": "speech.audio.delta", "audio": base64.b64encode(data).decode()})


def body_too_slow(timeout_s: float) -> SpeechError:
    """Why a request whose body did not arrive within `timeout_s` is refused (408)."""
    return SpeechError(
        ErrorCode.DEADLINE_EXCEEDED,
        f"the request body did not arrive within {timeout_s:g} s (--start-timeout), and a "
        "request holds a session's place while its body is read: send the whole body at once",
    )


async def _json_body(request: web.Request, timeout_s: float) -> object:
    """The request's JSON body, read within `timeout_s` (0: no limit; else raises
    `TimeoutError`, so a client trickling its body cannot hold a session's place);
    400 when it is not JSON."""
    async with asyncio.timeout(timeout_s or None):
        raw = await request.read()  # 413 beyond MAX_BODY_BYTES, from aiohttp
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RequestError(
            400,
            f"the body is not valid JSON ({error}): send a JSON object with model, input "
            "and voice, and Content-Type: application/json",
        ) from None
    except RecursionError:  # Python's parser recurses per array or object level
        raise RequestError(400, TOO_DEEP) from None


TOO_DEEP = (
    "the body nests arrays or objects too deeply to parse: a speech request is one flat "
    "JSON object (model, input, voice, ...)"
)
"""Why a body nested deeper than Python's JSON parser can go (about 1000 levels) is
refused: 400, never the parser's RecursionError as a 500."""


def parse_speech_request(body: object) -> SpeechRequest:
    """Check a speech request's body; `RequestError` (400) names the field at fault."""
    if not isinstance(body, dict):
        raise RequestError(400, "the body must be a JSON object with model, input and voice")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise RequestError(
            400,
            f"model must be a non-empty string, e.g. tts-1 (any of {', '.join(MODELS)}: all "
            "speak the same way)",
            param="model",
        )
    text = body.get("input")
    if not isinstance(text, str):
        raise RequestError(400, "input must be a string: the text to speak", param="input")
    voice = body.get("voice", "")
    if isinstance(voice, dict):
        voice = voice.get("id", "")
    if not isinstance(voice, str):
        raise RequestError(
            400,
            "voice must be a string: a voxrelay voice (GET /v1/audio/voices lists them) or "
            "an OpenAI voice name such as alloy",
            param="voice",
        )
    instructions = body.get("instructions") or ""
    if not isinstance(instructions, str):
        raise RequestError(400, "instructions must be a string", param="instructions")
    speed = body.get("speed", 1.0)
    if (
        isinstance(speed, bool)
        or not isinstance(speed, int | float)
        or not math.isfinite(speed)
        or not MIN_SPEED <= speed <= MAX_SPEED
    ):
        raise RequestError(
            400, f"speed must be a number from {MIN_SPEED} to {MAX_SPEED}", param="speed"
        )
    rate = body.get("sample_rate", 0)
    if isinstance(rate, bool) or not isinstance(rate, int) or rate < 0:
        raise RequestError(
            400, "sample_rate must be a whole number of Hz (0: the format's)", param="sample_rate"
        )
    audio_format = response_format(body.get("response_format"))
    _check_rate(rate, audio_format)
    stream_format = body.get("stream_format", "audio")
    try:
        streamed = StreamFormat(stream_format)
    except ValueError:
        raise RequestError(
            400,
            f"stream_format {stream_format!r} is unknown: use audio or sse",
            param="stream_format",
        ) from None
    for param, value in (("model", model), ("input", text), ("voice", voice)):
        _check_unicode(param, value)
    _check_unicode("instructions", instructions)
    return SpeechRequest(
        model=model,
        text=text,
        voice=voice,
        instructions=instructions,
        format=audio_format,
        speed=float(speed),
        sample_rate_hz=rate,
        stream_format=streamed,
    )


def _check_rate(rate: int, audio_format: ResponseFormat) -> None:
    """A `sample_rate` the format can be made at, checked here so the message names the
    request's fields (the domain's names gRPC's, and means the voice's rate by 0)."""
    if not rate:
        return
    if audio_format.encoding is AudioEncoding.OGG_OPUS and rate not in OPUS_RATES_HZ:
        allowed = ", ".join(str(r) for r in OPUS_RATES_HZ[:-1])
        raise RequestError(
            400,
            f"sample_rate {rate} is not an Opus rate: with response_format opus use "
            f"{allowed} or {OPUS_RATES_HZ[-1]} Hz, or 0 for the Opus rate at or above the "
            "voice's",
            param="sample_rate",
            code=ErrorCode.INVALID_ARGUMENT.name.lower(),
        )
    if not MIN_SAMPLE_RATE_HZ <= rate <= MAX_SAMPLE_RATE_HZ:
        raise RequestError(
            400,
            f"sample_rate {rate} is out of range: use {MIN_SAMPLE_RATE_HZ} to "
            f"{MAX_SAMPLE_RATE_HZ} Hz, or 0 for the format's rate",
            param="sample_rate",
            code=ErrorCode.INVALID_ARGUMENT.name.lower(),
        )


def _check_unicode(param: str, value: str) -> None:
    """400 for a string with a lone surrogate (JSON can escape one, as `\\ud800`): text
    must be Unicode text, as gRPC's strings must be valid UTF-8."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        raise RequestError(
            400,
            f"{param} has a lone surrogate (\\u{ord(value[error.start]):04x}) at character "
            f"{error.start}: strings must be valid Unicode text",
            param=param,
        ) from None


_PARAMS = (
    ("text", "input"),
    ("unknown voice", "voice"),
    ("voice", "voice"),
    ("speed", "speed"),
    ("audio_format.sample_rate_hz", "sample_rate"),
    ("instructions", "instructions"),
)


def _param_of(error: SpeechError) -> str | None:
    """The request field a domain error is about, from what its message starts with."""
    if error.code not in (ErrorCode.INVALID_ARGUMENT, ErrorCode.FAILED_PRECONDITION):
        return None
    for start, param in _PARAMS:
        if error.message.startswith(start):
            return param
    return None
