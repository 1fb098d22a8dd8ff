"""The Python examples of README.md and client/README.md, run as written against real
servers: every ```python block, as a script of its own, in a fresh folder.

Only the addresses change, to the test servers' ports: `127.0.0.1:50051` is a
plaintext server with the piper voice (and `VOXRELAY_SERVER` points there, for the
examples that rely on the default target); `tts.internal:50051` serves TLS and asks
for a bearer token, `tts-mtls.internal:50051` asks for a client certificate (the
files the examples name, `ca.pem`, `client.pem`, `client-key.pem`, are made by
trustme in the folder). Each block must have a check.

A block fenced ```python fragment is a piece of a program (it uses a player or a
session the reader has): it is compiled, and every `voxrelay.NAME` it uses, and every
name it imports from a voxrelay module, must exist.
"""

from __future__ import annotations

import ast
import asyncio
import importlib
import re
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
import soundfile
import trustme

from tests.conftest import StartServer
from voxrelay_server.app import create_server, create_server_parts
from voxrelay_server.config import ServerSettings
from voxrelay_server.engines.piper_engine import PiperEngine
from voxrelay_server.engines.tone import VOICE_NAME as TONE_VOICE
from voxrelay_server.engines.tone import ToneEngine
from voxrelay_server.service import SpeechService
from voxrelay_server.voices import VoiceCatalog

ROOT = Path(__file__).resolve().parent.parent
READMES = [ROOT / "README.md", ROOT / "client" / "README.md"]
PLAIN = "127.0.0.1:50051"
HTTP = "127.0.0.1:8000"
TLS = "tts.internal:50051"
MTLS = "tts-mtls.internal:50051"
TOKEN = "tok-readme-4c1d9e"
PIPER_VOICE = "piper/en_US-joe-medium"
RUN_TIMEOUT_S = 120.0

pytestmark = pytest.mark.timeout(180)


def python_blocks(readme: Path, info: str = "python") -> list[str]:
    """The blocks fenced ```INFO of a markdown file, in order."""
    pattern = rf"^```{info}\n(.*?)^```"
    return re.findall(pattern, readme.read_text(), re.DOTALL | re.MULTILINE)


BLOCKS = [
    (f"{readme.relative_to(ROOT)}#{number}", block)
    for readme in READMES
    for number, block in enumerate(python_blocks(readme), 1)
]


FRAGMENTS = [
    (f"{readme.relative_to(ROOT)}#fragment{number}", block)
    for readme in READMES
    for number, block in enumerate(python_blocks(readme, "python fragment"), 1)
]


@dataclass(frozen=True)
class Ran:
    """What an example printed, and the folder it ran in."""

    stdout: str
    folder: Path


def check_streaming_example(ran: Ran) -> None:
    lines = ran.stdout.splitlines()
    started = (
        r"SessionStarted\(session_id='[0-9a-f]{12}', voice='piper/en_US-joe-medium', "
        r"encoding='pcm', sample_rate_hz=24000, pace_lead_ms=0, text_budget_chars=65536\)"
    )
    assert re.fullmatch(started, lines.pop(0)), ran.stdout
    said = "Hello there, how are you? I hope you are well."
    assert lines[:3] == [
        "TurnStarted(turn=1)",
        f"TurnEnded(turn=1, cancelled=False, spoken_text={said!r}, spoken_length={len(said)})",
        "SessionEnded()",
    ]
    info = soundfile.info(str(ran.folder / "hello.wav"))
    assert (info.samplerate, info.channels) == (24000, 1)
    assert 1.5 < info.duration < 8  # "Hello there, how are you? I hope you are well."
    blocking = re.fullmatch(r"\((\d+),\) (\d+) ([\d.]+)", lines[3])
    assert blocking is not None, lines[3]
    shape, rate, duration_s = blocking.groups()
    assert rate == "22050" and int(shape) == round(float(duration_s) * 22050)
    opus = soundfile.info(str(ran.folder / "hello.opus"))
    assert (opus.format, opus.subtype, opus.samplerate) == ("OGG", "OPUS", 24000)
    assert 0.2 < opus.duration < 3


def check_openai_http_example(ran: Ran) -> None:
    rate, channels, duration_s = ran.stdout.split()
    assert (rate, channels) == ("24000", "1"), ran.stdout
    assert 1.5 < float(duration_s) < 8  # two sentences, by the piper voice
    samples, samplerate = soundfile.read(str(ran.folder / "hello.wav"), dtype="int16")
    assert samplerate == 24000 and abs(len(samples) / 24000 - float(duration_s)) < 0.1


def check_security_example(ran: Ran) -> None:
    duration_s, voices = ran.stdout.splitlines()
    assert 0 < float(duration_s) < 1
    assert voices == f"[{TONE_VOICE!r}]"


def check_client_readme_example(ran: Ran) -> None:
    found = re.fullmatch(r"([\d.]+) s of audio at (\d+) Hz\n", ran.stdout)
    assert found is not None, ran.stdout
    assert 0.3 < float(found.group(1)) < 5 and found.group(2) == "22050"


def check_barge_in_example(ran: Ran) -> None:
    """Cut 3.5 s into a paced reply of about 8 s: the first sentence (about 2.5 s) or,
    on a machine too slow to make it in time, nothing was heard whole; never more."""
    first_sentence = "Sure, I moved your appointment to Friday at ten."
    cancelled, spoken = ran.stdout.rstrip("\n").split(" ", 1)
    assert cancelled == "True", ran.stdout
    assert spoken in (repr(""), repr(first_sentence)), ran.stdout


def check_heard_example(ran: Ran) -> None:
    """It only defines `heard()`, which test_spoken_text runs against the server."""
    assert ran.stdout == ""


def check_blocking_session_example(ran: Ran) -> None:
    started, spoken = ran.stdout.splitlines()
    assert re.fullmatch(r"[0-9a-f]{12} piper/en_US-joe-medium 200", started), ran.stdout
    assert spoken == "Hello there. How are you today? "


def check_replicas_example(ran: Ran) -> None:
    """One server, nothing lost: the session ends without resuming."""
    assert ran.stdout == "ENDED 0 True\n", ran.stdout


def check_livekit_example(ran: Ran) -> None:
    """The LiveKit adapter with the real livekit-agents and piper's word timing."""
    streamed, joined, timed, whole = ran.stdout.splitlines()
    found = re.fullmatch(r"([\d.]+) s at 24000 Hz", streamed)
    assert found is not None and 1.0 < float(found.group(1)) < 5, ran.stdout
    assert joined == "Hello there, how are you today? "
    words = ast.literal_eval(timed)
    pieces = ["Hello", " there", ", how", " are", " you", " today", "? "]
    assert [piece for piece, _ in words] == pieces  # each up to a word's end, then the rest
    starts = [start for _, start in words]
    # The last piece (what follows the last word) starts where the audio ends.
    assert starts == sorted(starts) and starts[-1] <= float(found.group(1)) + 0.01
    assert 0.2 < float(whole.removesuffix(" s")) < 3


CHECKS: dict[str, Callable[[Ran], None]] = {
    "voxrelay.Resumed": check_replicas_example,
    "played_s > 3.5": check_barge_in_example,
    "def heard(": check_heard_example,
    "event.session_id, event.voice": check_blocking_session_example,
    'SoundFile("hello.wav"': check_streaming_example,
    "tts-mtls.internal": check_security_example,
    "s of audio at": check_client_readme_example,
    f'base_url="http://{HTTP}/v1"': check_openai_http_example,
    "USERDATA_TIMED_TRANSCRIPT": check_livekit_example,
}


def check_for(block: str) -> Callable[[Ran], None]:
    found = [check for key, check in CHECKS.items() if key in block]
    assert len(found) == 1, f"no single check for the README block:\n{block}"
    return found[0]


def test_every_python_example_has_a_check() -> None:
    assert len(BLOCKS) == 9 and len(FRAGMENTS) == 3
    assert sorted(check_for(block).__name__ for _, block in BLOCKS) == sorted(
        check.__name__ for check in CHECKS.values()
    )


@dataclass(frozen=True)
class Servers:
    addresses: dict[str, str]
    """README address -> test server address."""
    pki: trustme.CA


@pytest_asyncio.fixture
async def servers(start_server: StartServer, piper_engine: PiperEngine) -> AsyncIterator[Servers]:
    plain = await start_server(extra_engines=[piper_engine], default_voice=PIPER_VOICE)
    # The OpenAI-compatible HTTP listener, on the plain server's service.
    http = create_server_parts(
        ServerSettings(listen="127.0.0.1:0", http_listen="127.0.0.1:0"), plain.service
    )
    await http.start()
    assert http.http is not None
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1")
    started: list[tuple[grpc.aio.Server, SpeechService]] = []
    addresses = {PLAIN: plain.target, HTTP: f"127.0.0.1:{http.http.port}"}
    with (
        ca.cert_pem.tempfile() as ca_file,
        leaf.private_key_pem.tempfile() as key_file,
        leaf.cert_chain_pems[0].tempfile() as cert_file,
    ):
        extras: list[tuple[str, dict[str, Any]]] = [
            (TLS, {"auth_tokens": TOKEN}),  # TLS and a bearer token
            (MTLS, {"tls_client_ca": ca_file}),  # mutual TLS
        ]
        for readme_address, extra in extras:
            service = SpeechService(
                VoiceCatalog([ToneEngine()], TONE_VOICE), default_max_inflight_segments=4
            )
            settings = ServerSettings(
                listen="127.0.0.1:0", tls_cert=cert_file, tls_key=key_file, **extra
            )
            server, port = create_server(service, settings)
            await server.start()
            started.append((server, service))
            addresses[readme_address] = f"127.0.0.1:{port}"
    yield Servers(addresses, ca)
    await http.stop(1.0)
    for server, service in started:
        await server.stop(grace=None)
        await service.aclose()


@pytest.mark.parametrize("block", [block for _, block in BLOCKS], ids=[name for name, _ in BLOCKS])
async def test_readme_python_example(block: str, servers: Servers, tmp_path: Path) -> None:
    servers.pki.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    client = servers.pki.issue_cert("client@readme.test")
    (tmp_path / "client.pem").write_bytes(b"".join(b.bytes() for b in client.cert_chain_pems))
    client.private_key_pem.write_to_path(str(tmp_path / "client-key.pem"))
    script = block
    for readme_address, address in servers.addresses.items():
        script = script.replace(readme_address, address)
    (tmp_path / "example.py").write_text(script)
    env = {
        "PATH": "/usr/bin:/bin",
        "VOXRELAY_SERVER": servers.addresses[PLAIN],
        "VOXRELAY_TOKEN": TOKEN,
    }

    # A subprocess, so this event loop keeps serving the in-process servers meanwhile.
    process = await asyncio.create_subprocess_exec(
        sys.executable, "example.py", cwd=tmp_path, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(process.communicate(), RUN_TIMEOUT_S)

    assert process.returncode == 0, f"{script}\n{stderr.decode()}"
    check_for(block)(Ran(stdout.decode(), tmp_path))


@pytest.mark.parametrize(
    "fragment", [block for _, block in FRAGMENTS], ids=[name for name, _ in FRAGMENTS]
)
def test_readme_python_fragment_compiles_and_names_what_exists(fragment: str) -> None:
    import voxrelay

    tree = compile(
        fragment, "fragment", "exec", flags=ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
    )
    compile(tree, "fragment", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    used = {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "voxrelay"
    }
    # Names imported from voxrelay's modules (`from voxrelay.adapters.pipecat import ...`).
    imported = [
        (node.module, alias.name)
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("voxrelay")
        for alias in node.names
    ]
    assert used or imported, "a fragment that names nothing of voxrelay"
    assert not [name for name in used if not hasattr(voxrelay, name)]
    missing = [
        f"{module}.{name}"
        for module, name in imported
        if not hasattr(importlib.import_module(module or ""), name)
    ]
    assert not missing
