"""TLS, mutual TLS and bearer tokens, against real servers over real loopback sockets.

Certificates are made at test time by trustme: one CA that signs the server's and a
client's certificate, and an unrelated CA that nobody here trusts.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
import trustme
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

import voxrelay
from tests.processes import VOXRELAY, free_port, start_serve, user_env, wait_until_answering
from voxrelay.v1 import speech_pb2, speech_pb2_grpc
from voxrelay_server import security
from voxrelay_server.app import create_server
from voxrelay_server.config import ServerSettings
from voxrelay_server.engines.tone import VOICE_NAME as TONE_VOICE
from voxrelay_server.engines.tone import ToneEngine
from voxrelay_server.service import SpeechService
from voxrelay_server.voices import VoiceCatalog

pytestmark = pytest.mark.timeout(120)

TOKEN = "tok-3f9c2a7e51d04b8e"
OTHER_TOKEN = "tok-second-a1b2c3"
FILE_TOKEN = "tok-from-file-77d1e0"
WRONG_TOKEN = "tok-wrong-5e5e5e"
CALL_TIMEOUT_S = 10.0
RUN_TIMEOUT_S = 60.0

Metadata = tuple[tuple[str, str], ...]
StartServer = Callable[..., Awaitable[str]]


@dataclass(frozen=True)
class Pki:
    """PEM files: the trusted CA, the server's and a client's certificate, a stranger CA."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path
    stranger_cert: Path
    stranger_key: Path


def _write_leaf(leaf: trustme.LeafCert, cert: Path, key: Path) -> None:
    cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(key))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca, other_ca = trustme.CA(), trustme.CA()
    files = Pki(*(folder / name for name in Pki.__dataclass_fields__))
    ca.cert_pem.write_to_path(str(files.ca))
    other_ca.cert_pem.write_to_path(str(files.other_ca))
    _write_leaf(ca.issue_cert("127.0.0.1", "localhost"), files.server_cert, files.server_key)
    _write_leaf(ca.issue_cert("client@voxrelay.test"), files.client_cert, files.client_key)
    _write_leaf(other_ca.issue_cert("stranger@x.test"), files.stranger_cert, files.stranger_key)
    return files


def tls_settings(pki: Pki, **more: Any) -> dict[str, Any]:
    return {"tls_cert": str(pki.server_cert), "tls_key": str(pki.server_key), **more}


@pytest_asyncio.fixture
async def start() -> AsyncIterator[StartServer]:
    """Start tone-engine servers built by `create_server` with the given settings."""
    running: list[tuple[grpc.aio.Server, SpeechService]] = []

    async def start_with(**settings: Any) -> str:
        catalog = VoiceCatalog([ToneEngine()], TONE_VOICE)
        service = SpeechService(catalog, default_max_inflight_segments=4)
        server, port = create_server(service, ServerSettings(listen="127.0.0.1:0", **settings))
        await server.start()
        running.append((server, service))
        return f"127.0.0.1:{port}"

    yield start_with
    for server, service in running:
        await server.stop(grace=None)
        await service.aclose()


def bearer(token: str) -> Metadata:
    return (("authorization", f"Bearer {token}"),)


def tls_channel(
    target: str, ca: Path, cert: Path | None = None, key: Path | None = None
) -> grpc.aio.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca.read_bytes(),
        private_key=key.read_bytes() if key else None,
        certificate_chain=cert.read_bytes() if cert else None,
    )
    return grpc.aio.secure_channel(target, credentials)


async def list_voices(channel: grpc.aio.Channel, metadata: Metadata = ()) -> list[str]:
    stub = speech_pb2_grpc.SpeechStub(channel)
    response = await stub.ListVoices(
        speech_pb2.ListVoicesRequest(), metadata=metadata, timeout=CALL_TIMEOUT_S
    )
    return [voice.name for voice in response.voices]


async def speak(channel: grpc.aio.Channel, metadata: Metadata = ()) -> list[str]:
    """One turn over the Stream rpc; the kinds of the responses, in order."""
    stub = speech_pb2_grpc.SpeechStub(channel)
    requests = [
        speech_pb2.StreamRequest(config=speech_pb2.SessionConfig(voice=TONE_VOICE)),
        speech_pb2.StreamRequest(text="Hello there."),
        speech_pb2.StreamRequest(turn_done=speech_pb2.TurnDone()),
    ]
    call = stub.Stream(iter(requests), metadata=metadata, timeout=CALL_TIMEOUT_S)
    return [str(response.WhichOneof("response")) async for response in call]


async def failure(call: Awaitable[object]) -> grpc.aio.AioRpcError:
    """The error `call` ends with; fails the test if it succeeds."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


# TLS and mutual TLS


async def test_tls_call_works_with_the_servers_ca(start: StartServer, pki: Pki) -> None:
    target = await start(**tls_settings(pki))

    async with tls_channel(target, pki.ca) as channel:
        assert await list_voices(channel) == [TONE_VOICE]
        kinds = await speak(channel)

    assert kinds[:2] == ["session_started", "lifecycle"] and "audio" in kinds
    assert kinds[-1] == "lifecycle"


async def test_tls_refuses_plaintext_and_untrusting_clients(start: StartServer, pki: Pki) -> None:
    target = await start(**tls_settings(pki))

    async with grpc.aio.insecure_channel(target) as plaintext:
        plain_error = await failure(list_voices(plaintext))
    async with tls_channel(target, pki.other_ca) as wrong_ca:
        wrong_ca_error = await failure(list_voices(wrong_ca))

    assert plain_error.code() is grpc.StatusCode.UNAVAILABLE
    assert wrong_ca_error.code() is grpc.StatusCode.UNAVAILABLE


async def test_mtls_requires_a_client_certificate_the_ca_signed(
    start: StartServer, pki: Pki
) -> None:
    target = await start(**tls_settings(pki, tls_client_ca=str(pki.ca)))

    async with tls_channel(target, pki.ca) as anonymous:
        anonymous_error = await failure(list_voices(anonymous))
    async with tls_channel(target, pki.ca, pki.stranger_cert, pki.stranger_key) as stranger:
        stranger_error = await failure(list_voices(stranger))
    async with tls_channel(target, pki.ca, pki.client_cert, pki.client_key) as client:
        voices = await list_voices(client)
        kinds = await speak(client)

    assert anonymous_error.code() is grpc.StatusCode.UNAVAILABLE
    assert stranger_error.code() is grpc.StatusCode.UNAVAILABLE
    assert voices == [TONE_VOICE]
    assert "audio" in kinds


def test_tls_settings_that_cannot_work_are_refused_with_what_to_fix(
    pki: Pki, tmp_path: Path
) -> None:
    service = SpeechService(
        VoiceCatalog([ToneEngine()], TONE_VOICE), default_max_inflight_segments=4
    )

    def refused(**settings: Any) -> str:
        with pytest.raises((ValueError, OSError)) as caught:
            create_server(service, ServerSettings(listen="127.0.0.1:0", **settings))
        return str(caught.value)

    assert "--tls-key" in refused(tls_cert=str(pki.server_cert))
    assert "--tls-cert" in refused(tls_key=str(pki.server_key))
    assert "--tls-cert" in refused(tls_client_ca=str(pki.ca))
    missing = tmp_path / "missing.pem"
    assert str(missing) in refused(tls_cert=str(missing), tls_key=str(pki.server_key))
    assert "PEM" in refused(tls_cert=str(pki.server_key), tls_key=str(pki.server_key))
    assert str(missing) in refused(auth_tokens_file=str(missing))
    comments_only = tmp_path / "tokens"
    comments_only.write_text("# no tokens yet\n\n")
    assert "holds no token" in refused(auth_tokens_file=str(comments_only))


# Bearer tokens


async def test_calls_without_a_valid_token_are_unauthenticated(start: StartServer) -> None:
    target = await start(auth_tokens=f"{TOKEN},{OTHER_TOKEN}")

    async with grpc.aio.insecure_channel(target) as channel:
        errors = {
            "none": await failure(list_voices(channel)),
            "wrong": await failure(list_voices(channel, bearer(TOKEN + "x"))),
            "not bearer": await failure(
                list_voices(channel, (("authorization", f"Basic {TOKEN}"),))
            ),
            "stream, none": await failure(speak(channel)),
            "stream, wrong": await failure(speak(channel, bearer("nope"))),
        }

    for case, error in errors.items():
        assert error.code() is grpc.StatusCode.UNAUTHENTICATED, case
        assert "authorization: Bearer <token>" in str(error.details()), case
        assert TOKEN not in str(error.details()), case
    assert "requires a bearer token" in str(errors["none"].details())
    assert "not accepted" in str(errors["wrong"].details())


async def test_a_refused_caller_that_keeps_sending_cannot_hold_the_call_open(
    start: StartServer,
) -> None:
    target = await start(auth_tokens=TOKEN)
    loop = asyncio.get_running_loop()

    async with grpc.aio.insecure_channel(target) as channel:
        call = speech_pb2_grpc.SpeechStub(channel).Stream(timeout=CALL_TIMEOUT_S)
        await call.write(speech_pb2.StreamRequest(text="Hello there."))
        started = loop.time()
        # No half-close: the server must end the call on its own.
        code = await call.code()
        waited_s = loop.time() - started

    assert code is grpc.StatusCode.UNAUTHENTICATED
    assert waited_s < security.REFUSAL_DRAIN_S + 2.0


async def test_tokens_from_the_list_and_the_file_are_accepted(
    start: StartServer, tmp_path: Path
) -> None:
    tokens_file = tmp_path / "tokens"
    tokens_file.write_text(f"# voxrelay callers\n\n  {FILE_TOKEN}  \n# {TOKEN}-retired\n")
    target = await start(
        auth_tokens=f" {TOKEN} , {OTHER_TOKEN},", auth_tokens_file=str(tokens_file)
    )

    async with grpc.aio.insecure_channel(target) as channel:
        for token in (TOKEN, OTHER_TOKEN, FILE_TOKEN):
            assert await list_voices(channel, bearer(token)) == [TONE_VOICE]
            kinds = await speak(channel, bearer(token))
            assert kinds[:2] == ["session_started", "lifecycle"] and "audio" in kinds, token
        # The scheme is case-insensitive (RFC 7235); a commented-out token is not a token.
        assert await list_voices(channel, (("authorization", f"bearer {FILE_TOKEN}"),))
        retired = await failure(list_voices(channel, bearer(f"{TOKEN}-retired")))
        assert retired.code() is grpc.StatusCode.UNAUTHENTICATED


async def test_unknown_methods_are_refused_before_revealing_they_do_not_exist(
    start: StartServer,
) -> None:
    target = await start(auth_tokens=TOKEN)

    async with grpc.aio.insecure_channel(target) as channel:
        probe: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
            "/voxrelay.v1.Speech/NoSuchMethod"
        )
        anonymous = await failure(probe(b"", timeout=CALL_TIMEOUT_S))
        authorized = await failure(probe(b"", metadata=bearer(TOKEN), timeout=CALL_TIMEOUT_S))

    assert anonymous.code() is grpc.StatusCode.UNAUTHENTICATED
    assert authorized.code() is grpc.StatusCode.UNIMPLEMENTED


async def test_auth_is_off_when_no_token_is_configured(start: StartServer) -> None:
    target = await start()

    async with grpc.aio.insecure_channel(target) as channel:
        assert await list_voices(channel) == [TONE_VOICE]
        assert "audio" in await speak(channel)
    assert security.server_interceptors(ServerSettings()) == []


async def health_check(channel: grpc.aio.Channel, metadata: Metadata = ()) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    response = await stub.Check(
        health_pb2.HealthCheckRequest(), metadata=metadata, timeout=CALL_TIMEOUT_S
    )
    return int(response.status)


async def reflected_services(channel: grpc.aio.Channel, metadata: Metadata = ()) -> list[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    call = stub.ServerReflectionInfo(iter([request]), metadata=metadata, timeout=CALL_TIMEOUT_S)
    return [s.name async for r in call for s in r.list_services_response.service]


async def test_health_and_reflection_stay_open_unless_asked_to_need_a_token(
    start: StartServer,
) -> None:
    open_target = await start(auth_tokens=TOKEN)
    closed_target = await start(auth_tokens=TOKEN, auth_health_and_reflection=True)

    async with grpc.aio.insecure_channel(open_target) as channel:
        open_status = await health_check(channel)
        open_services = await reflected_services(channel)
    async with grpc.aio.insecure_channel(closed_target) as channel:
        refused = await failure(health_check(channel))
        refused_reflection = await failure(reflected_services(channel))
        v1_reflection: grpc.aio.StreamStreamMultiCallable[bytes, bytes] = channel.stream_stream(
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
        )
        refused_v1 = await failure(v1_reflection(iter([b""]), timeout=CALL_TIMEOUT_S).read())
        with_token = await health_check(channel, bearer(TOKEN))

    assert open_status == health_pb2.HealthCheckResponse.SERVING
    assert "voxrelay.v1.Speech" in open_services
    for error in (refused, refused_reflection, refused_v1):
        assert error.code() is grpc.StatusCode.UNAUTHENTICATED
    assert with_token == health_pb2.HealthCheckResponse.SERVING


async def test_tokens_stay_out_of_logs_and_repr(
    start: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    settings = ServerSettings(auth_tokens=f"{TOKEN},{OTHER_TOKEN}")

    target = await start(auth_tokens=settings.auth_tokens)
    async with grpc.aio.insecure_channel(target) as channel:
        await list_voices(channel, bearer(TOKEN))
        await failure(list_voices(channel, bearer(OTHER_TOKEN + "-typo")))
        await failure(list_voices(channel))

    assert "bearer-token auth on: 2 tokens" in caplog.text
    assert "refused /voxrelay.v1.Speech/ListVoices" in caplog.text
    for token in (TOKEN, OTHER_TOKEN):
        assert token not in caplog.text
        assert token not in repr(settings)
        assert token not in repr(security.server_interceptors(settings))


# The client library and the CLI


async def test_client_library_passes_tls_and_token(start: StartServer, pki: Pki) -> None:
    target = await start(**tls_settings(pki, tls_client_ca=str(pki.ca), auth_tokens=TOKEN))
    tls: dict[str, Any] = {
        "tls_ca": str(pki.ca),
        "tls_cert": str(pki.client_cert),
        "tls_key": str(pki.client_key),
    }

    async with voxrelay.AsyncClient(target, token=TOKEN, **tls) as client:
        voices = await client.voices()
        audio = await client.synthesize("Hello there.")
    # The blocking client runs in a thread: this event loop serves the calls.
    blocking = await asyncio.to_thread(
        voxrelay.synthesize, "Hello there.", target=target, token=TOKEN, **tls
    )
    async with voxrelay.AsyncClient(target, **tls) as client:
        with pytest.raises(voxrelay.VoxrelayError) as caught:
            await client.voices()

    assert [voice.name for voice in voices] == [TONE_VOICE]
    assert audio.duration_s > 0
    assert len(blocking.samples) == len(audio.samples)
    assert caught.value.code is grpc.StatusCode.UNAUTHENTICATED
    assert "--token" in caught.value.message and "VOXRELAY_TOKEN" in caught.value.message


async def test_client_library_sends_the_token_on_plaintext_channels(start: StartServer) -> None:
    target = await start(auth_tokens=TOKEN)

    async with voxrelay.AsyncClient(target, token=TOKEN) as client:
        voices = await client.voices()
        audio = await client.synthesize("Hello there.")
    with (
        voxrelay.Client(target, token=WRONG_TOKEN) as blocking,
        pytest.raises(voxrelay.VoxrelayError) as caught,
    ):
        await asyncio.to_thread(blocking.synthesize, "Hello there.")

    assert [voice.name for voice in voices] == [TONE_VOICE]
    assert audio.duration_s > 0
    assert caught.value.code is grpc.StatusCode.UNAUTHENTICATED
    assert WRONG_TOKEN not in caught.value.message
    assert "--token" in caught.value.message


def test_client_library_rejects_incomplete_tls_options(pki: Pki) -> None:
    with pytest.raises(ValueError, match="tls_key"):
        voxrelay.Client("127.0.0.1:1", tls_ca=str(pki.ca), tls_cert=str(pki.client_cert))
    with pytest.raises(OSError, match=r"nowhere\.pem"):
        voxrelay.Client("127.0.0.1:1", tls_ca="/nowhere.pem")


async def connection_failure(target: str, **tls: Any) -> tuple[str, str]:
    """The messages of the async and the blocking client's failed ListVoices; both
    must be UNAVAILABLE (nothing was said to the server)."""
    messages = []
    async with voxrelay.AsyncClient(target, **tls) as client:
        with pytest.raises(voxrelay.VoxrelayError) as caught:
            await client.voices()
        messages.append(caught.value)

    def blocking() -> voxrelay.VoxrelayError:
        with voxrelay.Client(target, **tls) as client, pytest.raises(voxrelay.VoxrelayError) as e:
            client.voices()
        return e.value

    messages.append(await asyncio.to_thread(blocking))
    assert {error.code for error in messages} == {grpc.StatusCode.UNAVAILABLE}
    assert not any("cannot reach" in error.message for error in messages), messages
    return messages[0].message, messages[1].message


async def test_tls_failures_say_what_to_change(
    start: StartServer, pki: Pki, tmp_path: Path
) -> None:
    tls = await start(**tls_settings(pki))
    mtls = await start(**tls_settings(pki, tls_client_ca=str(pki.ca)))
    plaintext = await start()
    # A certificate for another name, from a CA the client trusts.
    elsewhere_cert, elsewhere_key = tmp_path / "elsewhere.pem", tmp_path / "elsewhere.key"
    ca_of_elsewhere = tmp_path / "elsewhere-ca.pem"
    elsewhere_ca = trustme.CA()
    elsewhere_ca.cert_pem.write_to_path(str(ca_of_elsewhere))
    _write_leaf(elsewhere_ca.issue_cert("elsewhere.test"), elsewhere_cert, elsewhere_key)
    misnamed = await start(tls_cert=str(elsewhere_cert), tls_key=str(elsewhere_key))
    client_cert = {"tls_cert": str(pki.client_cert), "tls_key": str(pki.client_key)}
    stranger = {"tls_cert": str(pki.stranger_cert), "tls_key": str(pki.stranger_key)}

    cases = {
        "plaintext to TLS": await connection_failure(tls),
        "wrong CA": await connection_failure(tls, tls_ca=str(pki.other_ca)),
        "no client certificate": await connection_failure(mtls, tls_ca=str(pki.ca)),
        "stranger certificate": await connection_failure(mtls, tls_ca=str(pki.ca), **stranger),
        "TLS to plaintext": await connection_failure(plaintext, tls_ca=str(pki.ca)),
        "TLS to plaintext, mTLS": await connection_failure(
            plaintext, tls_ca=str(pki.ca), **client_cert
        ),
        "another name": await connection_failure(misnamed, tls_ca=str(ca_of_elsewhere)),
    }

    def expect(case: str, *phrases: str) -> None:
        for message in cases[case]:
            for phrase in phrases:
                assert phrase in message, (case, message)

    expect("plaintext to TLS", f"the server at {tls} ", "serves TLS only", "--tls-ca")
    expect(
        "wrong CA",
        f"the CA in {str(pki.other_ca)!r} does not vouch for",
        "unable to get local issuer certificate",
        "--tls-ca",
    )
    expect("no client certificate", "requires a client certificate", "--tls-cert", "--tls-key")
    expect("stranger certificate", "does not accept the client certificate", "--tls-client-ca")
    for case in ("TLS to plaintext", "TLS to plaintext, mTLS"):
        expect(case, f"the server at {plaintext} does not speak TLS")
    expect("another name", "does not name '127.0.0.1'")


async def test_the_cli_says_what_a_tls_failure_means(start: StartServer, pki: Pki) -> None:
    target = await start(**tls_settings(pki))

    plain = await asyncio.to_thread(voxrelay_cli, "voices", "--server", target)
    wrong_ca = await asyncio.to_thread(
        voxrelay_cli, "voices", "--server", target, VOXRELAY_TLS_CA=str(pki.other_ca)
    )

    for result in (plain, wrong_ca):
        assert result.returncode == 1
        assert "UNAVAILABLE" in result.stderr and "Traceback" not in result.stderr
    assert "serves TLS only" in plain.stderr
    assert "does not vouch for" in wrong_ca.stderr


@contextmanager
def serving(args: Sequence[str], env: dict[str, str], log: Path) -> Iterator[str]:
    """`voxrelay serve ARGS` on a free port until the block ends; yields its address."""
    target = f"127.0.0.1:{free_port()}"
    process = start_serve(["--listen", target, *args], log, env)
    try:
        wait_until_answering(process, target, log, metadata=bearer(TOKEN))
        yield target
    finally:
        process.terminate()
        try:
            process.wait(timeout=RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def voxrelay_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(VOXRELAY), *args],
        env=user_env(**env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )


def test_cli_voices_with_and_without_a_token(tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    args = ["--engines", "tone", "--default-voice", TONE_VOICE, "--log-level", "debug"]
    server_env = user_env(VOXRELAY_AUTH_TOKENS=f"{OTHER_TOKEN},{TOKEN}")

    with serving(args, server_env, log) as target:
        with_flag = voxrelay_cli("voices", "--server", target, "--token", TOKEN)
        with_env = voxrelay_cli("voices", "--server", target, VOXRELAY_TOKEN=TOKEN)
        without = voxrelay_cli("voices", "--server", target)
        wrong = voxrelay_cli("voices", "--server", target, "--token", WRONG_TOKEN)

    assert with_flag.returncode == 0, with_flag.stderr
    assert TONE_VOICE in with_flag.stdout
    assert with_env.returncode == 0, with_env.stderr
    assert TONE_VOICE in with_env.stdout
    for refused in (without, wrong):
        assert refused.returncode == 1
        assert "UNAUTHENTICATED" in refused.stderr
        assert "--token" in refused.stderr and "VOXRELAY_TOKEN" in refused.stderr
        assert WRONG_TOKEN not in refused.stderr
    served_log = log.read_text()
    assert "bearer-token auth on" in served_log
    assert TOKEN not in served_log and OTHER_TOKEN not in served_log


def test_cli_help_names_the_variables_and_never_shows_the_token() -> None:
    for command in ("say", "voices"):
        shown = voxrelay_cli(command, "--help", VOXRELAY_TOKEN=TOKEN)

        assert shown.returncode == 0, shown.stderr
        for variable in ("VOXRELAY_TLS_CA", "VOXRELAY_TLS_CERT", "VOXRELAY_TLS_KEY"):
            assert variable in shown.stdout, command
        assert "VOXRELAY_TOKEN" in shown.stdout
        assert TOKEN not in shown.stdout


def test_serve_stops_at_once_on_unusable_security_settings(pki: Pki, tmp_path: Path) -> None:
    no_key = voxrelay_cli("serve", "--engines", "tone", "--tls-cert", str(pki.server_cert))
    empty = tmp_path / "tokens"
    empty.write_text("# nobody yet\n")
    no_tokens = voxrelay_cli("serve", "--engines", "tone", VOXRELAY_AUTH_TOKENS_FILE=str(empty))

    assert no_key.returncode == 2
    assert "--tls-key" in no_key.stderr and "Traceback" not in no_key.stderr
    assert no_tokens.returncode == 2
    assert "holds no token" in no_tokens.stderr and "Traceback" not in no_tokens.stderr


@pytest.mark.parametrize(
    "value",
    ["Bearer s3cr\u20act", "Bearer \ud800", "Bearer s3cret\udcff", "s3cr\u00e9t"],
)
def test_a_token_of_any_characters_is_refused_not_an_error(value: str) -> None:
    """HTTP headers arrive as UTF-8 with undecodable bytes escaped and a WebSocket's JSON
    may hold lone surrogates: such a credential is refused like any wrong one (it raised
    UnicodeEncodeError, an HTTP 500 and a socket closed without its error)."""
    check = security.TokenCheck(["s3cret"])
    reason = check.refusal([value])
    assert reason is not None and "s3cret" not in reason
    assert check.refusal(["Bearer s3cret"]) is None
