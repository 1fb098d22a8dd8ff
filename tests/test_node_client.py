"""The Node/TypeScript client (`clients/node`): its example run with `node` against a
real server over a real socket, checking the wire order and the audio it wrote.

Skipped, saying so, where node or npm is missing. The package's dependencies are
installed from the npm registry (`npm ci`) when `node_modules` is missing.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import soundfile
import trustme
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.processes import (
    ServeProcess,
    free_port,
    running_serve,
    start_serve,
    user_env,
)
from tests.toolchains import NO_NODE, NO_NODE_REASON, NODE_PACKAGE, node_dependencies, npm

EXAMPLE = NODE_PACKAGE / "dist" / "examples" / "speak.js"

pytestmark = pytest.mark.skipif(NO_NODE, reason=NO_NODE_REASON)


@pytest.fixture(scope="module")
def built() -> None:
    """The package's dependencies installed and its TypeScript compiled."""
    node_dependencies()
    npm("run", "build")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with running_serve(["--engines", "piper,espeak"], log) as running:
        yield running


def run_example(
    target: str, config: str, out: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["node", str(EXAMPLE), "--target", target, "--config", config, "--out", str(out), *extra],
        capture_output=True,
        text=True,
        timeout=120,
    )


def check_wire_order(lines: list[dict[str, Any]]) -> int:
    """Assert the Stream rpc's order over the example's two turns; the samples sent."""
    samples = 0
    position = 0
    expected_turn = 0
    in_turn = False
    segment = 0
    started = lines[0]["sessionStarted"]  # the first message of every call
    assert len(started["sessionId"]) == 12 and started["encoding"] == "AUDIO_ENCODING_PCM_S16LE"
    assert started["voice"] == lines[-1]["summary"]["voice"], started
    for line in lines[1:-2]:
        if "lifecycle" in line:
            event = line["lifecycle"]["event"]
            turn = int(line["lifecycle"]["turn"])  # uint64 arrives as a JSON string
            if event == "LIFECYCLE_EVENT_TURN_STARTED":
                assert not in_turn and turn == expected_turn + 1, line
                expected_turn, in_turn, position, segment = turn, True, 0, 1
            else:
                assert event == "LIFECYCLE_EVENT_TURN_ENDED" and in_turn, line
                assert turn == expected_turn and position > 0, line
                in_turn = False
        else:
            audio = line["audio"]
            assert in_turn and int(audio["turn"]) == expected_turn, line
            assert audio["segment"] >= segment, line
            assert int(audio["offset_samples"]) == position, line  # no gap, no overlap
            segment = audio["segment"]
            position += audio["bytes"] // 2
            samples += audio["bytes"] // 2
    assert expected_turn == 2 and not in_turn
    assert lines[-2] == {"lifecycle": {"event": "LIFECYCLE_EVENT_SESSION_ENDED"}}
    return samples


def test_the_node_example_speaks_two_turns_in_order(
    built: None, served: ServeProcess, tmp_path: Path
) -> None:
    out = tmp_path / "speak.wav"
    config = {"voice": "piper/en_US-joe-medium", "audio_format": {"sample_rate_hz": 16000}}
    result = run_example(served.target, json.dumps(config), out)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    samples = check_wire_order(lines)
    summary = lines[-1]["summary"]
    # snake_case keys were read (audio_format.sample_rate_hz), not silently dropped.
    assert summary == {
        "voice": "piper/en_US-joe-medium",
        "samples": samples,
        "sample_rate_hz": 16000,
    }
    audio, rate = soundfile.read(out, dtype="float32")
    assert rate == 16000 and len(audio) == samples
    assert samples > 3 * 16000  # four sentences of speech
    assert float(np.sqrt(np.mean(audio**2))) > 0.01  # speech, not silence


def test_the_node_example_asks_for_a_language(
    built: None, served: ServeProcess, tmp_path: Path
) -> None:
    result = run_example(served.target, '{"language_code": "de"}', tmp_path / "de.wav")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1])["summary"]["voice"] == "espeak/de"


def test_the_node_example_reports_the_servers_status(
    built: None, served: ServeProcess, tmp_path: Path
) -> None:
    result = run_example(served.target, '{"languageCode": "xx"}', tmp_path / "xx.wav")
    assert result.returncode == 1
    assert "voxrelay: InvalidArgument: no voice speaks language_code 'xx'" in result.stderr
    result = run_example(served.target, '{"sample_rate": 8000}', tmp_path / "bad.wav")
    assert result.returncode == 2
    assert 'key "sample_rate" is unknown' in result.stderr  # not silently dropped


def test_the_node_client_speaks_tls_with_a_token(built: None, tmp_path: Path) -> None:
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1")
    files = {name: tmp_path / f"{name}.pem" for name in ("ca", "cert", "key")}
    ca.cert_pem.write_to_path(str(files["ca"]))
    files["cert"].write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(files["key"]))
    target = f"127.0.0.1:{free_port()}"
    log = tmp_path / "serve.log"
    args = ["--listen", target, "--engines", "tone", "--default-voice", "tone/square"]
    args += ["--tls-cert", str(files["cert"]), "--tls-key", str(files["key"])]
    process = start_serve(args, log, user_env(VOXRELAY_AUTH_TOKENS="s3cret"))
    try:
        # Health (open without a token) over TLS says when the voices are loaded.
        credentials = grpc.ssl_channel_credentials(files["ca"].read_bytes())
        with grpc.secure_channel(target, credentials) as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(service="voxrelay.v1.Speech"),
                timeout=60,
                wait_for_ready=True,
            )
            assert any(r.status == health_pb2.HealthCheckResponse.SERVING for r in watch)
            watch.cancel()
        out = tmp_path / "tls.wav"
        ca_arg = ("--ca", str(files["ca"]))
        result = run_example(target, "{}", out, *ca_arg, "--token", "s3cret")
        assert result.returncode == 0, result.stderr
        check_wire_order([json.loads(line) for line in result.stdout.splitlines()])
        result = run_example(target, "{}", out, *ca_arg, "--token", "wrong")
        assert result.returncode == 1
        assert "voxrelay: Unauthenticated:" in result.stderr
    finally:
        process.kill()
        process.wait()
