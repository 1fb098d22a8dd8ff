"""`POST /v1/audio/speech` and friends, through OpenAI's own client, curl and aiohttp,
against a real server over real sockets, with real voices where the audio matters."""

from __future__ import annotations

import asyncio
import io
import json
import re
import ssl
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import httpx
import numpy as np
import numpy.typing as npt
import openai
import pytest
import soundfile
import trustme
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import config, text
from tests.test_http import HttpServer, StartHttp, start_http, tone_service
from voxrelay.v1 import speech_pb2, speech_pb2_grpc
from voxrelay_server.app import create_server_parts
from voxrelay_server.config import ServerSettings
from voxrelay_server.engines.base import SynthesisOptions, VoiceInfo
from voxrelay_server.engines.espeak_engine import EspeakEngine
from voxrelay_server.engines.piper_engine import PiperEngine
from voxrelay_server.engines.tone import ToneEngine
from voxrelay_server.errors import EngineError, ErrorCode
from voxrelay_server.settings import MAX_WHOLE_TEXT_CHARS

__all__ = ["start_http"]  # the fixture, used here

PIPER = "piper/en_US-joe-medium"
ESPEAK = "espeak/en-us"
TEXT = "Hello there, this is voxrelay speaking. It streams speech as it is made. "


def client(server: HttpServer, api_key: str = "unused", **options: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=f"{server.base_url}/v1", api_key=api_key, max_retries=0, **options
    )


async def speech_bytes(
    server: HttpServer, response_format: str, *, voice: str = "alloy", **extra: Any
) -> tuple[bytes, Mapping[str, str]]:
    """The whole response of the openai client's streaming speech call, read as it comes."""
    async with (
        client(server) as openai_client,
        openai_client.audio.speech.with_streaming_response.create(
            model="tts-1",
            voice=voice,
            input=TEXT,
            response_format=response_format,  # type: ignore[arg-type]  # mulaw is voxrelay's
            **extra,
        ) as response,
    ):
        assert response.status_code == 200
        chunks = [chunk async for chunk in response.iter_bytes()]
        return b"".join(chunks), response.headers


def mulaw_decode(data: bytes) -> npt.NDArray[np.int16]:
    """G.711 mu-law to 16-bit samples (ITU-T G.711's decoder)."""
    codes = ~np.frombuffer(data, dtype=np.uint8).astype(np.int32) & 0xFF
    sign, exponent, mantissa = codes & 0x80, (codes >> 4) & 0x07, codes & 0x0F
    magnitude = ((mantissa << 3) + 0x84) << exponent
    return np.where(sign, 0x84 - magnitude, magnitude - 0x84).astype(np.int16)


def rms(samples: npt.NDArray[Any]) -> float:
    return float(np.sqrt(np.mean(np.square(samples.astype(np.float64)))))


@pytest.fixture
def voices(piper_engine: PiperEngine, espeak_engine: EspeakEngine) -> Sequence[Any]:
    return (piper_engine, espeak_engine)


async def test_every_format_through_the_openai_client_decodes_to_the_same_speech(
    start_http: StartHttp, voices: Sequence[Any]
) -> None:
    server = await start_http(tone_service(voices, default_voice=PIPER))
    wav, headers = await speech_bytes(server, "wav")
    assert headers["content-type"] == "audio/wav"
    assert headers["x-voxrelay-voice"] == PIPER  # alloy is not mapped: the default voice
    samples, rate = soundfile.read(io.BytesIO(wav), dtype="int16")
    assert rate == 24000 == int(headers["x-voxrelay-sample-rate"])
    seconds = len(samples) / rate
    assert 2.0 < seconds < 10.0 and rms(samples) > 500

    pcm, headers = await speech_bytes(server, "pcm")
    assert headers["content-type"].startswith("audio/pcm;rate=24000")
    raw = np.frombuffer(pcm, dtype="<i2")
    assert abs(len(raw) / 24000 - seconds) < 0.25 * seconds and rms(raw) > 500

    opus, headers = await speech_bytes(server, "opus")
    assert opus.startswith(b"OggS") and headers["content-type"].startswith("audio/ogg")
    decoded, opus_rate = soundfile.read(io.BytesIO(opus), dtype="int16")
    assert abs(len(decoded) / opus_rate - seconds) < 0.25 * seconds and rms(decoded) > 500

    mulaw, headers = await speech_bytes(server, "mulaw")
    assert headers["content-type"] == "audio/basic"  # 8 kHz mu-law
    linear = mulaw_decode(mulaw)
    assert abs(len(linear) / 8000 - seconds) < 0.25 * seconds and rms(linear) > 500


async def test_voices_by_voxrelay_name_and_by_mapped_openai_name(
    start_http: StartHttp, voices: Sequence[Any]
) -> None:
    server = await start_http(
        tone_service(voices, default_voice=PIPER),
        http_voice_map=(f"echo={ESPEAK}",),
    )
    _, headers = await speech_bytes(server, "pcm", voice=ESPEAK)
    assert headers["x-voxrelay-voice"] == ESPEAK
    pcm, headers = await speech_bytes(server, "pcm", voice="echo", speed=1.5)
    assert headers["x-voxrelay-voice"] == ESPEAK
    assert rms(np.frombuffer(pcm, dtype="<i2")) > 500
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{server.base_url}/v1/audio/voices") as response,
    ):
        listed = await response.json()
    assert {voice["id"] for voice in listed["data"]} >= {PIPER, ESPEAK}
    assert listed["openai_voices"]["echo"] == ESPEAK
    assert listed["openai_voices"]["alloy"] == PIPER
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{server.base_url}/v1/audio/voices?language=de") as response:
            german = await response.json()
        assert {voice["id"] for voice in german["data"]} == {"espeak/de"}
        async with session.get(f"{server.base_url}/v1/audio/voices?language=%21") as response:
            assert response.status == 400
            assert (await response.json())["error"]["param"] == "language"


async def test_curl_gets_a_playable_wav(
    start_http: StartHttp, voices: Sequence[Any], tmp_path: Path
) -> None:
    server = await start_http(tone_service(voices, default_voice=PIPER), auth_tokens="s3cret")
    out = tmp_path / "speech.wav"
    body = json.dumps({"model": "tts-1", "input": TEXT, "voice": ESPEAK, "response_format": "wav"})
    curl = await asyncio.create_subprocess_exec(
        "curl", "--silent", "--show-error", "--fail-with-body", "--no-buffer",
        "-H", "Authorization: Bearer s3cret", "-H", "Content-Type: application/json",
        "-d", body, "-o", str(out), f"{server.base_url}/v1/audio/speech",
    )  # fmt: skip
    assert await curl.wait() == 0
    samples, rate = soundfile.read(out, dtype="int16")
    assert rate == 24000 and len(samples) > rate and rms(samples) > 500


async def post(
    server: HttpServer, body: object, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any], dict[str, str]]:
    """Status, JSON body and headers of a speech request expected to fail."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{server.base_url}/v1/audio/speech", data=data, headers=headers or {}
        ) as response,
    ):
        return response.status, await response.json(), dict(response.headers)


def speech_body(**fields: object) -> dict[str, object]:
    return {"model": "tts-1", "input": "Hello there. ", "voice": "alloy", **fields}


@pytest.mark.parametrize(
    ("fields", "param", "says"),
    [
        ({"response_format": "mp3"}, "response_format", "is not made by this server"),
        ({"response_format": "ogg"}, "response_format", "is unknown"),
        ({"speed": 5}, "speed", "from 0.25 to 4.0"),
        ({"speed": "fast"}, "speed", "from 0.25 to 4.0"),
        ({"voice": "piper/nobody"}, "voice", "GET /v1/audio/voices"),
        ({"voice": 3}, "voice", "must be a string"),
        ({"model": None}, "model", "model must be"),
        ({"input": None}, "input", "input must be a string"),
        ({"input": ""}, "input", "must not be empty"),
        ({"stream_format": "mp4"}, "stream_format", "unknown"),
        ({"input": "Hi \ud800 there. "}, "input", "lone surrogate"),
        ({"response_format": "opus", "sample_rate": 22050}, "sample_rate", "not an Opus rate"),
    ],
)
async def test_bad_requests_get_400_naming_the_field(
    start_http: StartHttp, fields: dict[str, object], param: str, says: str
) -> None:
    server = await start_http()
    status, body, _ = await post(server, speech_body(**fields))
    assert status == 400
    error = body["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert says in error["message"]


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        (
            {"response_format": "opus", "sample_rate": 22050},
            ["sample_rate 22050 is not an Opus rate", "with response_format opus use 8000"],
        ),
        (
            {"response_format": "wav", "sample_rate": 4000},
            ["sample_rate 4000 is out of range", "8000 to 96000", "0 for the format's rate"],
        ),
        ({"response_format": "pcm", "sample_rate": 200000}, ["sample_rate 200000 is out"]),
        ({"voice": "nobody"}, ["unknown voice 'nobody'", "OpenAI's voice names", "alloy"]),
    ],
)
async def test_messages_name_the_request_s_fields_not_the_proto_s(
    start_http: StartHttp, fields: dict[str, object], says: list[str]
) -> None:
    """What an HTTP caller sent and can change: `sample_rate` and `response_format`, not
    gRPC's `audio_format.sample_rate_hz` and `AUDIO_ENCODING_OGG_OPUS`; the voice names
    OpenAI callers use are named among the accepted ones."""
    server = await start_http()
    status, body, _ = await post(server, speech_body(**fields))
    assert status == 400
    message = body["error"]["message"]
    for words in says:
        assert words in message
    assert "audio_format" not in message and "AUDIO_ENCODING" not in message
    assert "native rate" not in message  # over HTTP 0 is the format's rate, not the voice's


async def test_a_body_that_is_not_json_gets_400(start_http: StartHttp) -> None:
    server = await start_http()
    status, body, _ = await post(server, b"model=tts-1")
    assert status == 400 and "not valid JSON" in body["error"]["message"]


async def test_text_over_the_limit_gets_413_as_does_a_body_too_large(start_http: StartHttp) -> None:
    server = await start_http()
    status, body, _ = await post(server, speech_body(input="a" * (MAX_WHOLE_TEXT_CHARS + 1)))
    assert status == 413
    assert body["error"]["code"] == "text_too_long" and body["error"]["param"] == "input"
    status, body, _ = await post(
        server, b'{"input": "' + b"\\u00e9" * MAX_WHOLE_TEXT_CHARS * 3 + b'"}'
    )
    assert status == 413 and body["error"]["type"] == "invalid_request_error"
    # The limits, so a caller knows how much to send (the text's, which it controls).
    assert re.search(r"over \d{1,3}(,\d{3})+ bytes", body["error"]["message"])
    assert "1,000,000 characters" in body["error"]["message"]


async def test_the_openai_client_raises_its_own_errors(start_http: StartHttp) -> None:
    server = await start_http(auth_tokens="s3cret")
    async with client(server, api_key="wrong") as openai_client:
        with pytest.raises(openai.AuthenticationError) as refused:
            await openai_client.audio.speech.create(model="tts-1", voice="alloy", input="Hi. ")
    assert refused.value.status_code == 401
    async with client(server, api_key="s3cret") as openai_client:
        with pytest.raises(openai.BadRequestError) as bad:
            await openai_client.audio.speech.create(
                model="tts-1", voice="alloy", input="Hi. ", response_format="flac"
            )
        assert bad.value.param == "response_format"
        audio = await openai_client.audio.speech.create(
            model="tts-1", voice="alloy", input="Hi there. ", response_format="wav"
        )
        assert audio.content.startswith(b"RIFF")


async def test_a_session_held_over_grpc_at_max_sessions_1_makes_http_get_429(
    start_http: StartHttp,
) -> None:
    server = await start_http(tone_service(max_sessions=1))
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = speech_pb2_grpc.SpeechStub(channel)
        requests: asyncio.Queue[Any] = asyncio.Queue()
        await requests.put(config())
        await requests.put(text("Held open. "))

        async def request_stream() -> AsyncIterator[Any]:
            while (request := await requests.get()) is not None:
                yield request

        call = stub.Stream(request_stream())
        first = await call.read()  # session_started: the place is held
        assert isinstance(first, speech_pb2.StreamResponse)
        assert first.WhichOneof("response") == "session_started"
        status, body, headers = await post(server, speech_body())
        assert status == 429
        assert body["error"]["type"] == "rate_limit_error"
        assert "--max-sessions" in body["error"]["message"]
        assert headers["Retry-After"] == "1"
        await requests.put(None)
        while await call.read() is not grpc.aio.EOF:
            pass
    # The place is free again: HTTP speaks.
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{server.base_url}/v1/audio/speech", json=speech_body()) as response,
    ):
        assert response.status == 200 and len(await response.read()) > 44


async def test_while_the_voices_load_requests_get_503(start_http: StartHttp) -> None:
    server = await start_http(loading=True)
    status, body, headers = await post(server, speech_body())
    assert status == 503
    assert body["error"]["type"] == "server_error" and "loading" in body["error"]["message"]
    assert headers["Retry-After"] == "1"


class GatedTone(ToneEngine):
    """The tone engine, but a segment with "Last" in it is made only once `gate` is set."""

    def __init__(self) -> None:
        super().__init__(ms_per_char=20.0)
        self.gate = asyncio.Event()
        self.waiting = asyncio.Event()
        """Set once a segment waits at the gate."""
        self.last_made = False

    async def synthesize(
        self, voice: VoiceInfo, text: str, options: SynthesisOptions
    ) -> AsyncIterator[bytes]:
        if "Last" in text:
            self.waiting.set()
            await self.gate.wait()
        async for chunk in super().synthesize(voice, text, options):
            yield chunk
        if "Last" in text:
            self.last_made = True


@pytest.mark.parametrize("response_format", ["wav", "pcm", "opus", "mulaw"])
async def test_audio_streams_before_the_last_segment_is_made(
    start_http: StartHttp, response_format: str
) -> None:
    from voxrelay_server.engines.tone import VOICE_NAME
    from voxrelay_server.service import SpeechService
    from voxrelay_server.voices import VoiceCatalog

    engine = GatedTone()
    server = await start_http(
        SpeechService(VoiceCatalog([engine], VOICE_NAME), default_max_inflight_segments=4)
    )
    body = speech_body(
        input="Hello there, this is the first sentence. Then a second one follows it. "
        "Last of all comes the third. ",
        response_format=response_format,
    )
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{server.base_url}/v1/audio/speech", json=body) as response,
    ):
        # The status line and the first audio arrive while the last segment waits.
        assert response.status == 200
        first = await asyncio.wait_for(response.content.readany(), 30)
        assert first and not engine.last_made and server.service.active_sessions == 1
        engine.gate.set()
        rest = await response.read()
    assert engine.last_made
    assert len(first) < len(first + rest)


async def test_a_client_gone_before_the_first_audio_ends_its_session_at_once(
    start_http: StartHttp,
) -> None:
    from voxrelay_server.engines.tone import VOICE_NAME
    from voxrelay_server.service import SpeechService
    from voxrelay_server.voices import VoiceCatalog

    engine = GatedTone()
    idle = asyncio.Event()
    server = await start_http(
        SpeechService(
            VoiceCatalog([engine], VOICE_NAME), default_max_inflight_segments=4, on_idle=idle.set
        )
    )
    body = speech_body(input="Last words, waiting for a gate that never opens. ")
    async with aiohttp.ClientSession() as session:
        request = asyncio.create_task(session.post(f"{server.base_url}/v1/audio/speech", json=body))
        await asyncio.wait_for(engine.waiting.wait(), 30)
        assert server.service.active_sessions == 1
        request.cancel()  # the connection goes before any audio
        with pytest.raises(asyncio.CancelledError):
            await request
    # The place is given back (the last one: `on_idle`) without the gate ever opening.
    await asyncio.wait_for(idle.wait(), 10)
    assert server.service.active_sessions == 0 and not engine.gate.is_set()


async def test_a_failure_after_audio_went_out_cuts_the_response_off(start_http: StartHttp) -> None:
    server = await start_http()
    body = speech_body(
        input="The first sentence speaks well enough. The second one [[fail]] fails. "
    )
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{server.base_url}/v1/audio/speech", json=body) as response,
    ):
        assert response.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.read()

    # A failure before any audio gets its own status instead.
    class Unreachable(ToneEngine):
        async def synthesize(
            self, voice: VoiceInfo, text: str, options: SynthesisOptions
        ) -> AsyncIterator[bytes]:
            raise EngineError(ErrorCode.UNAVAILABLE, "the upstream service is down")
            yield b""  # an async generator, as engines are

    from voxrelay_server.engines.tone import VOICE_NAME
    from voxrelay_server.service import SpeechService
    from voxrelay_server.voices import VoiceCatalog

    down = await start_http(
        SpeechService(VoiceCatalog([Unreachable()], VOICE_NAME), default_max_inflight_segments=4)
    )
    status, error, _ = await post(down, speech_body())
    assert status == 503 and error["error"]["type"] == "server_error"
    assert "upstream service is down" in error["error"]["message"]


async def test_sse_streams_base64_audio_events_and_a_done_event(start_http: StartHttp) -> None:
    server = await start_http()
    async with (
        client(server) as openai_client,
        openai_client.audio.speech.with_streaming_response.create(
            model="gpt-4o-mini-tts",
            voice="alloy",
            input=TEXT,
            response_format="pcm",
            stream_format="sse",
        ) as response,
    ):
        assert response.headers["content-type"] == "text/event-stream"
        events = [json.loads(line[6:]) async for line in response.iter_lines() if line]
    assert {event["type"] for event in events[:-1]} == {"speech.audio.delta"}
    assert events[-1]["type"] == "speech.audio.done"
    import base64

    pcm = b"".join(base64.b64decode(event["audio"]) for event in events[:-1])
    assert len(pcm) % 2 == 0 and len(pcm) > 24000

    # A failure after audio went out: an error event ends the stream.
    body = speech_body(
        input="The first sentence speaks well enough. The second one [[fail]] fails. ",
        stream_format="sse",
    )
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{server.base_url}/v1/audio/speech", json=body) as response,
    ):
        assert response.status == 200
        lines = (await response.text()).split("\n\n")
    failed = [json.loads(line[6:]) for line in lines if line]
    assert failed[0]["type"] == "speech.audio.delta"
    assert failed[-1]["type"] == "error"
    assert (
        failed[-1]["error"]["type"] == "server_error"
        and "[[fail]]" in failed[-1]["error"]["message"]
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("http-pki")
    ca = trustme.CA()
    files = {name: folder / f"{name}.pem" for name in ("ca", "cert", "key", "ccert", "ckey")}
    ca.cert_pem.write_to_path(str(files["ca"]))
    server_leaf = ca.issue_cert("127.0.0.1", "localhost")
    files["cert"].write_bytes(b"".join(blob.bytes() for blob in server_leaf.cert_chain_pems))
    server_leaf.private_key_pem.write_to_path(str(files["key"]))
    client_leaf = ca.issue_cert("client@voxrelay.test")
    files["ccert"].write_bytes(b"".join(blob.bytes() for blob in client_leaf.cert_chain_pems))
    client_leaf.private_key_pem.write_to_path(str(files["ckey"]))
    return files


async def test_tls_follows_the_grpc_settings(start_http: StartHttp, pki: dict[str, Path]) -> None:
    server = await start_http(tls_cert=str(pki["cert"]), tls_key=str(pki["key"]))
    assert server.base_url.startswith("https://")
    trusting = ssl.create_default_context(cafile=str(pki["ca"]))
    http_client = httpx.AsyncClient(verify=trusting)
    async with client(server, http_client=http_client) as openai_client:
        audio = await openai_client.audio.speech.create(
            model="tts-1", voice="alloy", input="Over TLS. ", response_format="wav"
        )
    assert audio.content.startswith(b"RIFF")
    async with httpx.AsyncClient() as untrusting:  # the system's CAs: not this one
        with pytest.raises(httpx.ConnectError):
            await untrusting.get(f"{server.base_url}/v1/models")
    plain = server.base_url.replace("https://", "http://")
    async with httpx.AsyncClient() as cleartext:
        with pytest.raises(httpx.HTTPError):
            await cleartext.get(f"{plain}/v1/models")


async def test_mtls_needs_a_client_certificate_the_ca_signed(
    start_http: StartHttp, pki: dict[str, Path]
) -> None:
    server = await start_http(
        tls_cert=str(pki["cert"]), tls_key=str(pki["key"]), tls_client_ca=str(pki["ca"])
    )
    anonymous = ssl.create_default_context(cafile=str(pki["ca"]))
    async with httpx.AsyncClient(verify=anonymous) as http_client:
        with pytest.raises(httpx.HTTPError):
            await http_client.get(f"{server.base_url}/v1/models")
    known = ssl.create_default_context(cafile=str(pki["ca"]))
    known.load_cert_chain(str(pki["ccert"]), str(pki["ckey"]))
    async with httpx.AsyncClient(verify=known) as http_client:
        response = await http_client.get(f"{server.base_url}/v1/models")
    assert response.status_code == 200


async def test_cors_is_off_unless_origins_are_configured(start_http: StartHttp) -> None:
    preflight = {
        "Origin": "https://app.example.com",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type",
    }
    closed = await start_http()
    opened = await start_http(http_cors_origins=("https://app.example.com",), auth_tokens="s3cret")
    async with aiohttp.ClientSession() as session:
        async with session.options(
            f"{closed.base_url}/v1/audio/speech", headers=preflight
        ) as response:
            assert "Access-Control-Allow-Origin" not in response.headers
        async with session.options(
            f"{opened.base_url}/v1/audio/speech", headers=preflight
        ) as response:
            assert response.status == 200
            assert response.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
            assert "AUTHORIZATION" in response.headers["Access-Control-Allow-Headers"].upper()
        async with session.post(
            f"{opened.base_url}/v1/audio/speech",
            json=speech_body(),
            headers={"Origin": "https://app.example.com", "Authorization": "Bearer s3cret"},
        ) as response:
            assert response.status == 200
            assert response.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
            assert "X-Voxrelay-Voice" in response.headers["Access-Control-Expose-Headers"]
        async with session.options(
            f"{opened.base_url}/v1/audio/speech",
            headers={**preflight, "Origin": "https://evil.example.com"},
        ) as response:
            assert "Access-Control-Allow-Origin" not in response.headers


async def test_shutdown_lets_a_response_in_flight_finish_and_refuses_new_ones(
    start_http: StartHttp,
) -> None:
    server = await start_http(tone_service(realtime_factor=1.0))
    body = speech_body(input="A reply that takes a second or so to make. ", response_format="pcm")
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{server.base_url}/v1/audio/speech", json=body) as response,
    ):
        assert response.status == 200
        first = await response.content.readany()
        stopping = asyncio.create_task(server.parts.stop(10.0))
        await asyncio.sleep(0.05)  # let the listener close
        with pytest.raises(aiohttp.ClientConnectionError):
            async with aiohttp.ClientSession() as other:
                await other.get(f"{server.base_url}/v1/models")
        rest = await response.read()
    await stopping
    samples = len(first + rest) // 2
    assert samples == pytest.approx(24000 * 0.43, rel=0.1)  # 43 characters of 10 ms


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)
"""Any JSON value."""
SPEECH_BODIES = st.fixed_dictionaries(
    {},
    optional={
        "model": st.sampled_from(["tts-1", "gpt-4o-mini-tts", ""]) | JSON,
        # Any code point, lone surrogates too (JSON escapes them as \\uD800).
        "input": st.text(st.characters(exclude_categories=()), max_size=80) | JSON,
        "voice": st.sampled_from(["alloy", "echo", "tone/square", "piper/x", ""]) | JSON,
        "instructions": st.text(max_size=20) | JSON,
        "response_format": st.sampled_from(["wav", "pcm", "opus", "mulaw", "alaw", "mp3"]) | JSON,
        "speed": st.floats(allow_nan=False) | st.sampled_from([0.25, 1, 4]) | JSON,
        "stream_format": st.sampled_from(["audio", "sse"]) | JSON,
        "sample_rate": st.sampled_from([0, 8000, 16000, 24000, 22050]) | JSON,
    },
)


async def answer_to(body: bytes) -> tuple[int, bytes, str]:
    """Status, body and Content-Type of one speech request to a fresh server."""
    service = tone_service()
    parts = create_server_parts(
        ServerSettings(listen="127.0.0.1:0", http_listen="127.0.0.1:0", engines=("tone",)), service
    )
    await parts.start()
    assert parts.http is not None
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"http://127.0.0.1:{parts.http.port}/v1/audio/speech", data=body
            ) as response,
        ):
            return response.status, await response.read(), response.headers["Content-Type"]
    finally:
        await parts.stop(1.0)
        assert service.active_sessions == 0


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=SPEECH_BODIES.map(lambda fields: json.dumps(fields).encode()) | st.binary(max_size=40))
def test_any_body_gets_audio_or_a_4xx_in_openais_shape(body: bytes) -> None:
    status, answer, content_type = asyncio.run(answer_to(body))
    if status == 200:
        assert not content_type.startswith("application/json")
        return
    assert status in (400, 413), answer
    error = json.loads(answer)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["message"]
