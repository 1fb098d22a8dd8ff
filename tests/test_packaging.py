"""The two distributions as a caller installs them.

Both are built with `python -m build` (sdist, then the wheel from it); the client
wheel alone goes into a fresh virtual environment, which must then speak to a
real server (started from this environment) through a session, the Synthesize
rpc, `voxrelay voices` and `voxrelay say`, without any of the server's weight
(piper, onnxruntime, OpenTelemetry) installed; a second one holds the client with
its floors exactly (protobuf 6) and must speak to the server too, and plain pip must
resolve the client with its `pipecat` extra. The committed stubs must be what the
protos make, and the client's floors the versions they were made with.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import soundfile

from tests import stubs
from tests.processes import ServeProcess, user_env
from tests.test_serving import voxrelay_serve

ROOT = Path(__file__).resolve().parent.parent
CLIENT_PYPROJECT = ROOT / "client" / "pyproject.toml"
SERVER_PYPROJECT = ROOT / "pyproject.toml"
SERVER_ONLY = ("piper", "onnxruntime", "opentelemetry", "voxrelay_server", "soxr", "sentencex")
"""Modules a client's environment must not hold: the server's and its heavy dependencies."""
SERVER_ONLY_DISTRIBUTIONS = ("piper-tts", "onnxruntime", "opentelemetry-api", "voxrelay-server")
RUN_TIMEOUT_S = 120.0
PIPECAT_RESOLVE_TIMEOUT_S = 240.0
"""pip fetching the metadata of pipecat-ai and its dependencies (a cold cache)."""

pytestmark = pytest.mark.timeout(300)


def project(pyproject: Path) -> dict[str, object]:
    table: dict[str, object] = tomllib.loads(pyproject.read_text())["project"]
    return table


def floor(requirements: object, name: str) -> str:
    """The `>=` version of `name` among `requirements`."""
    assert isinstance(requirements, list)
    (found,) = [r for r in requirements if re.match(rf"{re.escape(name)}\s*>=", r)]
    return str(found).partition(">=")[2].strip()


def test_the_committed_stubs_are_what_the_protos_make() -> None:
    assert stubs.stale_files() == [], "client/voxrelay/v1/ is stale: run `make proto`"


def test_the_clients_floors_are_the_versions_its_stubs_need() -> None:
    # Generated code refuses to import under an older runtime than its generator's.
    v1 = ROOT / "client" / "voxrelay" / "v1"
    grpc_made = re.search(
        r"GRPC_GENERATED_VERSION = '([\d.]+)'", (v1 / "speech_pb2_grpc.py").read_text()
    )
    proto_made = re.search(r"Protobuf Python Version: ([\d.]+)", (v1 / "speech_pb2.py").read_text())
    assert grpc_made is not None and proto_made is not None
    for pyproject in (CLIENT_PYPROJECT, SERVER_PYPROJECT):
        requirements = project(pyproject)["dependencies"]
        assert floor(requirements, "grpcio") == grpc_made.group(1), pyproject
        assert floor(requirements, "protobuf") == proto_made.group(1), pyproject


def test_the_server_requires_the_client_of_its_own_version() -> None:
    server, client = project(SERVER_PYPROJECT), project(CLIENT_PYPROJECT)
    assert f"voxrelay=={client['version']}" in server["dependencies"]  # type: ignore[operator]
    assert server["version"] == client["version"]


@dataclass(frozen=True)
class Wheels:
    client: Path
    server: Path


def build(source: Path, out: Path) -> Path:
    """`python -m build` (sdist, then the wheel from the sdist); the wheel's path.

    Without build isolation: this environment has the build backend (setuptools),
    so nothing is fetched.
    """
    result = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(source)],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    built = re.search(r"Successfully built \S+ and (\S+\.whl)", result.stdout)
    assert built is not None, result.stdout
    return out / built.group(1)


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Wheels:
    out = tmp_path_factory.mktemp("dist")
    return Wheels(client=build(ROOT / "client", out), server=build(ROOT, out))


def test_the_client_wheel_holds_the_stubs_and_their_types(wheels: Wheels) -> None:
    with zipfile.ZipFile(wheels.client) as wheel:
        names = set(wheel.namelist())
        entry_points = wheel.read("voxrelay-0.1.0.dist-info/entry_points.txt").decode()
    for name in ("speech_pb2.py", "speech_pb2.pyi", "speech_pb2_grpc.py", "speech_pb2_grpc.pyi"):
        assert f"voxrelay/v1/{name}" in names
    assert "voxrelay/py.typed" in names
    assert not any(name.startswith("voxrelay_server/") for name in names)
    assert "voxrelay = voxrelay.cli:main" in entry_points


def test_the_client_wheel_offers_the_livekit_extra(wheels: Wheels) -> None:
    with zipfile.ZipFile(wheels.client) as wheel:
        metadata = wheel.read("voxrelay-0.1.0.dist-info/METADATA").decode()
        names = set(wheel.namelist())
    assert "Provides-Extra: livekit" in metadata
    assert 'Requires-Dist: livekit-agents<2,>=1.8; extra == "livekit"' in metadata
    assert "voxrelay/adapters/livekit.py" in names


def test_the_server_wheel_adds_serve_to_the_clients_command(wheels: Wheels) -> None:
    with zipfile.ZipFile(wheels.server) as wheel:
        names = set(wheel.namelist())
        entry_points = wheel.read("voxrelay_server-0.1.0.dist-info/entry_points.txt").decode()
        metadata = wheel.read("voxrelay_server-0.1.0.dist-info/METADATA").decode()
    assert "voxrelay_server/cli.py" in names and "voxrelay_server/py.typed" in names
    assert "voxrelay_server/http/index.html" in names  # the page the HTTP listener serves
    assert not any(name.startswith("voxrelay/") for name in names)  # the client's
    assert "[voxrelay.commands]\nserve = voxrelay_server.cli:add_serve" in entry_points
    assert "[console_scripts]" not in entry_points  # one `voxrelay` script: the client's
    assert "Requires-Dist: voxrelay==0.1.0" in metadata


@dataclass(frozen=True)
class ClientVenv:
    python: Path
    voxrelay: Path


@pytest.fixture(scope="module")
def client_venv(wheels: Wheels, tmp_path_factory: pytest.TempPathFactory) -> ClientVenv:
    """A fresh virtual environment with the client wheel alone (its dependencies from
    the package index, or pip's cache)."""
    venv = tmp_path_factory.mktemp("client-venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=RUN_TIMEOUT_S)
    python = venv / "bin" / "python"
    result = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--prefer-binary", str(wheels.client)],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return ClientVenv(python, venv / "bin" / "voxrelay")


def run(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(arg) for arg in args],
        cwd=cwd,
        env=user_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )


@pytest.fixture(scope="module")
def floor_venv(wheels: Wheels, tmp_path_factory: pytest.TempPathFactory) -> ClientVenv:
    """A fresh virtual environment with the client wheel and its floors exactly: the
    grpcio and protobuf (a 6.x) of client/pyproject.toml, as a caller whose services are
    still on protobuf 6 has them (from the package index, or pip's cache)."""
    requirements = project(CLIENT_PYPROJECT)["dependencies"]
    venv = tmp_path_factory.mktemp("floor-venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=RUN_TIMEOUT_S)
    python = venv / "bin" / "python"
    pins = [f"{name}=={floor(requirements, name)}" for name in ("grpcio", "protobuf")]
    result = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--prefer-binary", *pins,
         str(wheels.client)],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    return ClientVenv(python, venv / "bin" / "voxrelay")


def test_the_client_floor_is_protobuf_6() -> None:
    # Below 7 on purpose: frameworks capped below it (pipecat-ai) and services still on
    # protobuf 6 install the client beside them with plain pip.
    assert floor(project(CLIENT_PYPROJECT)["dependencies"], "protobuf").startswith("6.")


def test_the_pipecat_extra_resolves_with_plain_pip(
    wheels: Wheels, client_venv: ClientVenv, tmp_path: Path
) -> None:
    # pipecat-ai declares protobuf<7: pip alone (no override) must find one set of
    # versions for it and the client. A dry run resolves everything, installs nothing.
    report = tmp_path / "report.json"
    result = subprocess.run(
        [str(client_venv.python), "-m", "pip", "install", "--dry-run", "--quiet",
         "--prefer-binary", "--ignore-installed", "--report", str(report),
         f"voxrelay[pipecat] @ {wheels.client.as_uri()}"],
        capture_output=True,
        text=True,
        timeout=PIPECAT_RESOLVE_TIMEOUT_S,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    resolved = {
        item["metadata"]["name"].lower(): item["metadata"]["version"]
        for item in json.loads(report.read_text())["install"]
    }
    assert "pipecat-ai" in resolved and "voxrelay" in resolved, resolved
    assert resolved["protobuf"].split(".")[0] == "6", resolved["protobuf"]


def test_the_client_venv_holds_none_of_the_server(client_venv: ClientVenv, tmp_path: Path) -> None:
    probe = "import importlib.util as u, sys; print([m for m in sys.argv[1:] if u.find_spec(m)])"
    found = run(client_venv.python, "-c", probe, *SERVER_ONLY, cwd=tmp_path)
    assert found.returncode == 0, found.stderr
    assert found.stdout.strip() == "[]"
    listed = run(client_venv.python, "-m", "pip", "list", "--format", "freeze", cwd=tmp_path)
    installed = {line.split("==")[0].lower() for line in listed.stdout.splitlines()}
    assert "voxrelay" in installed
    assert installed.isdisjoint(SERVER_ONLY_DISTRIBUTIONS), installed


def test_the_livekit_adapter_without_its_extra_says_how_to_install_it(
    client_venv: ClientVenv, tmp_path: Path
) -> None:
    imported = run(client_venv.python, "-c", "import voxrelay.adapters.livekit", cwd=tmp_path)
    assert imported.returncode == 1
    assert "pip install 'voxrelay[livekit]'" in imported.stderr


def test_serve_without_the_server_says_how_to_install_it(
    client_venv: ClientVenv, tmp_path: Path
) -> None:
    result = run(client_venv.voxrelay, "serve", "--listen", "127.0.0.1:0", cwd=tmp_path)

    assert result.returncode == 2
    assert "pip install voxrelay-server" in result.stderr
    assert "Traceback" not in result.stderr
    helped = run(client_venv.voxrelay, "--help", cwd=tmp_path)
    assert "serve" in helped.stdout and "voxrelay-server" in helped.stdout


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """A server from this environment (tone and piper), shared by the module."""
    with voxrelay_serve(["--engines", "tone,piper"], tmp_path_factory.mktemp("serve")) as running:
        yield running


CALLER = """
import asyncio, sys
import google.protobuf
import grpc
import voxrelay
from voxrelay.v1 import speech_pb2, speech_pb2_grpc

target = sys.argv[1]


async def session() -> list[str]:
    seen = []
    async with voxrelay.AsyncClient(target) as client:
        async with client.session(voice="tone/square") as session:
            await session.send_text("Hello there. ")
            await session.turn_done()
            await session.send_text("A second turn. ")
            await session.close()
            async for event in session:
                name = type(event).__name__
                if not seen or seen[-1] != name:
                    seen.append(name)
    return seen


print("protobuf", google.protobuf.__version__)
print("session", " ".join(asyncio.run(session())))
with grpc.insecure_channel(target) as channel:
    request = speech_pb2.SynthesizeRequest(
        config=speech_pb2.SessionConfig(voice="piper/en_US-joe-medium"), text="Hello there. "
    )
    responses = speech_pb2_grpc.SpeechStub(channel).Synthesize(request)
    kinds = [response.WhichOneof("response") for response in responses]
    print("rpc", kinds[0], kinds.count("audio") > 0, kinds[-1])
audio = voxrelay.synthesize("Hello there. ", target=target)
print("synthesize", audio.sample_rate_hz, round(audio.duration_s, 2))
"""


def test_the_client_alone_speaks_to_a_server(
    client_venv: ClientVenv, server: ServeProcess, tmp_path: Path
) -> None:
    script = tmp_path / "caller.py"
    script.write_text(CALLER)

    result = run(client_venv.python, script, server.target, cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    # Unpinned, pip takes the newest protobuf: the 6.31.1 gencode on a runtime of 7 or later
    # (the floor venv below runs it on 6).
    assert int(lines["protobuf"].split(".")[0]) >= 7, lines["protobuf"]
    turns = "TurnStarted Audio TurnEnded"
    assert lines["session"] == f"SessionStarted {turns} {turns} SessionEnded"
    assert lines["rpc"] == "session_started True lifecycle"
    rate, duration_s = lines["synthesize"].split()
    assert rate == "22050" and 0.3 < float(duration_s) < 5


def test_the_client_at_its_floors_speaks_to_a_server(
    floor_venv: ClientVenv, server: ServeProcess, tmp_path: Path
) -> None:
    # The protobuf 6 runtime with the committed stubs, against a server on its own
    # (this environment's) runtime: a session, the Synthesize rpc and synthesize().
    versions = run(
        floor_venv.python, "-c",
        "import grpc, google.protobuf as p; print(grpc.__version__, p.__version__)",
        cwd=tmp_path,
    )  # fmt: skip
    requirements = project(CLIENT_PYPROJECT)["dependencies"]
    assert versions.stdout.split() == [
        floor(requirements, "grpcio"),
        floor(requirements, "protobuf"),
    ]
    script = tmp_path / "caller.py"
    script.write_text(CALLER)

    result = run(floor_venv.python, script, server.target, cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    turns = "TurnStarted Audio TurnEnded"
    assert lines["session"] == f"SessionStarted {turns} {turns} SessionEnded"
    assert lines["protobuf"] == floor(requirements, "protobuf")
    assert lines["rpc"] == "session_started True lifecycle"
    assert lines["synthesize"].split()[0] == "22050"


def test_the_client_alone_runs_voices_and_say(
    client_venv: ClientVenv, server: ServeProcess, tmp_path: Path
) -> None:
    voices = run(client_venv.voxrelay, "voices", "--server", server.target, cwd=tmp_path)
    said = run(
        client_venv.voxrelay, "say", "Hello there.", "-o", tmp_path / "hi.wav",
        "--server", server.target, cwd=tmp_path,
    )  # fmt: skip

    assert voices.returncode == 0, voices.stderr
    assert [row.split()[0] for row in voices.stdout.splitlines()[1:]] == [
        "piper/en_US-joe-medium",
        "tone/square",
    ]
    assert said.returncode == 0, said.stderr
    info = soundfile.info(str(tmp_path / "hi.wav"))
    assert info.samplerate == 22050 and 0.3 < info.duration < 5


TYPED_CALLER = """
import voxrelay
from voxrelay.v1 import speech_pb2

config = speech_pb2.SessionConfig(voice="piper/en_US-joe-medium")
rate: int = config.audio_format.sample_rate_hz
wrong: str = config.speed
options = voxrelay.SessionOptions(voice=3)
"""


def test_the_installed_client_is_typed(client_venv: ClientVenv, tmp_path: Path) -> None:
    # mypy from this environment, looking up packages in the client's: the .pyi stubs
    # and py.typed must have shipped for it to know the generated messages' fields.
    script = tmp_path / "typed_caller.py"
    script.write_text(TYPED_CALLER)

    result = run(
        sys.executable, "-m", "mypy", "--no-incremental", "--strict",
        "--python-executable", client_venv.python, "--config-file", "/dev/null", script,
        cwd=tmp_path,
    )  # fmt: skip

    errors = [line for line in result.stdout.splitlines() if ": error:" in line]
    assert len(errors) == 2, result.stdout
    assert 'Incompatible types in assignment (expression has type "float"' in errors[0]
    assert 'Argument "voice" to "SessionOptions" has incompatible type "int"' in errors[1]
