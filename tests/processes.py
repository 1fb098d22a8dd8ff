"""`voxrelay` as a real process for the tests: start it, wait until it answers."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc

from voxrelay.v1 import speech_pb2, speech_pb2_grpc

VOXRELAY = Path(sys.executable).parent / "voxrelay"
READY_TIMEOUT_S = 60.0


@dataclass
class ServeProcess:
    """A running `voxrelay serve` and where to reach it."""

    process: subprocess.Popen[bytes]
    target: str
    log: Path


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def user_env(**extra: str) -> dict[str, str]:
    """The test's environment without VOXRELAY_* or OPENAI_* settings, plus `extra`."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("VOXRELAY_", "OPENAI_"))
    }
    env.update(extra)
    return env


def start_serve(args: Sequence[str], log: Path, env: Mapping[str, str]) -> subprocess.Popen[bytes]:
    """`voxrelay serve ARGS`, its output going to `log`."""
    with log.open("wb") as log_file:
        return subprocess.Popen(
            [str(VOXRELAY), "serve", *args],
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )


def wait_until_answering(
    process: subprocess.Popen[bytes],
    target: str,
    log: Path,
    metadata: Sequence[tuple[str, str]] = (),
) -> None:
    """Poll the ListVoices rpc until it answers; fail if the server exits or never answers."""
    options = [
        ("grpc.initial_reconnect_backoff_ms", 50),
        ("grpc.min_reconnect_backoff_ms", 50),
        ("grpc.max_reconnect_backoff_ms", 200),
    ]
    deadline = time.monotonic() + READY_TIMEOUT_S
    with grpc.insecure_channel(target, options=options) as channel:
        stub = speech_pb2_grpc.SpeechStub(channel)
        while True:
            code = process.poll()
            if code is not None:
                raise AssertionError(f"voxrelay serve exited with {code}:\n{log.read_text()}")
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"voxrelay serve did not answer on {target}:\n{log.read_text()}"
                )
            try:
                stub.ListVoices(
                    speech_pb2.ListVoicesRequest(),
                    metadata=tuple(metadata),
                    timeout=0.5,
                    wait_for_ready=True,
                )
            except grpc.RpcError:
                continue
            return


@contextmanager
def running_serve(
    args: Sequence[str],
    log: Path,
    env: Mapping[str, str] | None = None,
    *,
    metadata: Sequence[tuple[str, str]] = (),
) -> Iterator[ServeProcess]:
    """`voxrelay serve --listen 127.0.0.1:<free port> ARGS`, answering (to calls with
    `metadata`: a token, for a server that wants one), until the block ends; then killed
    (a test that checks the shutdown stops it itself)."""
    target = f"127.0.0.1:{free_port()}"
    process = start_serve(["--listen", target, *args], log, user_env() if env is None else env)
    try:
        wait_until_answering(process, target, log, metadata)
        yield ServeProcess(process, target, log)
    finally:
        process.kill()
        process.wait()
