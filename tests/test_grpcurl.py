"""The README's grpcurl commands, run as written with the real grpcurl against a real server.

The commands come from the fenced block after the `grpcurl-commands` marker in
README.md; only the address changes, to the test server's port. Each command's
output is checked, and every command of the block must have a check.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.processes import ServeProcess
from tests.test_serving import voxrelay_serve

README = Path(__file__).resolve().parent.parent / "README.md"
MARKER = "<!-- grpcurl-commands:"
README_TARGET = "127.0.0.1:50051"
BIN = Path(sys.executable).parent
DEFAULT_VOICE = "piper/en_US-joe-medium"
PIPER_RATE_HZ = 22050

pytestmark = pytest.mark.timeout(120)


def readme_commands(readme: str) -> list[str]:
    """The shell commands of the block after the marker; `\\` continuations joined."""
    _, marker, rest = readme.partition(MARKER)
    assert marker, f"README.md has no {MARKER!r} block"
    block = re.search(r"```sh\n(.*?)```", rest, re.DOTALL)
    assert block is not None, "no ```sh block after the grpcurl marker"
    commands: list[str] = []
    pending = ""
    for line in block.group(1).splitlines():
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        command = (pending + line).strip()
        pending = ""
        if command and not command.startswith("#"):
            commands.append(command)
    assert not pending, "the block ends in a line continuation"
    return commands


COMMANDS = readme_commands(README.read_text())


def decode_json_stream(output: str) -> list[dict[str, Any]]:
    """grpcurl prints one JSON object per message, one after another."""
    decoder = json.JSONDecoder()
    messages: list[dict[str, Any]] = []
    position = 0
    while True:
        while position < len(output) and output[position].isspace():
            position += 1
        if position == len(output):
            return messages
        message, position = decoder.raw_decode(output, position)
        messages.append(message)


def kinds(messages: list[dict[str, Any]]) -> list[str]:
    """Each response as `audio`, `error` or its lifecycle event, runs of audio squeezed."""
    result: list[str] = []
    for message in messages:
        (kind,) = message.keys()
        name = message["lifecycle"]["event"] if kind == "lifecycle" else kind
        if not (name == "audio" and result and result[-1] == "audio"):
            result.append(name)
    return result


def turn_of(message: dict[str, Any]) -> int:
    body = next(iter(message.values()))
    return int(body.get("turn", "0"))  # uint64 is a JSON string; 0 is omitted


def check_speech(messages: list[dict[str, Any]], turns: int) -> None:
    """`turns` turns, each started, spoken and ended in order, then SESSION_ENDED last."""
    expected: list[str] = ["session_started"]
    for _ in range(turns):
        expected += ["LIFECYCLE_EVENT_TURN_STARTED", "audio", "LIFECYCLE_EVENT_TURN_ENDED"]
    assert kinds(messages) == [*expected, "LIFECYCLE_EVENT_SESSION_ENDED"]
    lifecycle_turns = [turn_of(m) for m in messages if "lifecycle" in m]
    assert lifecycle_turns == [t for turn in range(1, turns + 1) for t in (turn, turn)] + [0]
    for turn in range(1, turns + 1):
        audio = [m["audio"] for m in messages if "audio" in m and turn_of(m) == turn]
        assert {chunk["sample_rate_hz"] for chunk in audio} == {PIPER_RATE_HZ}
        assert {chunk["encoding"] for chunk in audio} == {"AUDIO_ENCODING_PCM_S16LE"}
        samples = sum(len(base64.b64decode(chunk["data"])) // 2 for chunk in audio)
        assert 0.3 * PIPER_RATE_HZ < samples < 10 * PIPER_RATE_HZ, "implausible speech length"


def check_list(output: str) -> None:
    assert output.split() == [
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "voxrelay.v1.Speech",
    ]


def check_describe(output: str) -> None:
    assert "voxrelay.v1.Speech is a service:" in output
    for rpc in (
        "rpc ListVoices ( .voxrelay.v1.ListVoicesRequest ) returns "
        "( .voxrelay.v1.ListVoicesResponse );",
        "rpc Stream ( stream .voxrelay.v1.StreamRequest ) returns "
        "( stream .voxrelay.v1.StreamResponse );",
        "rpc Synthesize ( .voxrelay.v1.SynthesizeRequest ) returns "
        "( stream .voxrelay.v1.StreamResponse );",
    ):
        assert rpc in output


def check_health(output: str) -> None:
    assert decode_json_stream(output) == [{"status": "SERVING"}]


def check_voices(output: str) -> None:
    (response,) = decode_json_stream(output)
    voices = response["voices"]
    assert [voice["name"] for voice in voices] == [DEFAULT_VOICE, "tone/square"]
    assert voices[0]["is_default"] is True
    assert voices[0]["native_sample_rate_hz"] == PIPER_RATE_HZ


def check_synthesize(output: str) -> None:
    check_speech(decode_json_stream(output), turns=1)


def check_stream(output: str) -> None:
    check_speech(decode_json_stream(output), turns=2)


CHECKS: dict[str, Callable[[str], None]] = {
    " list": check_list,
    " describe voxrelay.v1.Speech": check_describe,
    " grpc.health.v1.Health/Check": check_health,
    " voxrelay.v1.Speech/ListVoices": check_voices,
    " voxrelay.v1.Speech/Synthesize": check_synthesize,
    " voxrelay.v1.Speech/Stream": check_stream,
}


def check_for(command: str) -> Callable[[str], None]:
    """The check of a README command, found by what it calls."""
    matches = [check for ending, check in CHECKS.items() if command.endswith(ending)]
    assert len(matches) == 1, f"no single check for README command {command!r}"
    return matches[0]


def test_the_readme_shows_every_rpc_and_discovery() -> None:
    assert all(README_TARGET in command for command in COMMANDS)
    assert sorted(check_for(command).__name__ for command in COMMANDS) == sorted(
        check.__name__ for check in CHECKS.values()
    )
    (stream,) = [command for command in COMMANDS if command.endswith("Speech/Stream")]
    assert " -d @ " in stream


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """`voxrelay serve --engines tone,piper` on a free port, shared by the module."""
    with voxrelay_serve(["--engines", "tone,piper"], tmp_path_factory.mktemp("serve")) as running:
        yield running


@pytest.mark.parametrize(
    "command", COMMANDS, ids=[command.split()[-1].rpartition("/")[2] for command in COMMANDS]
)
def test_readme_grpcurl_command(command: str, server: ServeProcess) -> None:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    assert shutil.which("grpcurl", path=env["PATH"]) == str(BIN / "grpcurl")
    result = subprocess.run(
        ["bash", "-c", f"set -o pipefail; {command.replace(README_TARGET, server.target)}"],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"{command}\n{result.stderr}"
    check_for(command)(result.stdout)
