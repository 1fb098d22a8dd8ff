"""`voxrelay` as a real process for the tests: start it, wait until it answers."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from voxrelay.v1 import speech_pb2, speech_pb2_grpc

VOXRELAY = Path(sys.executable).parent / "voxrelay"
READY_TIMEOUT_S = 60.0


@dataclass
class ServeProcess:
    """A running `voxrelay serve` and where to reach it; `restart` runs it again."""

    process: subprocess.Popen[bytes]
    target: str
    log: Path
    args: Sequence[str] = ()
    """Its arguments, `--listen` first."""
    env: Mapping[str, str] = field(default_factory=dict, repr=False)
    starts: int = 1

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout_s: float = 60.0) -> int:
        """Send `sig` and wait for the process to exit; its exit code."""
        self.process.send_signal(sig)
        return self.process.wait(timeout_s)

    def restart(self, *, wait: bool = True) -> None:
        """Start it again (once it has exited) on the same address, its output appended
        to a log of its own (`<log>.<n>`); with `wait`, until it answers."""
        assert self.process.poll() is not None, "restart() needs the process stopped"
        self.starts += 1
        self.log = self.log.with_name(f"{self.log.name}.{self.starts}")
        self.process = start_serve(self.args, self.log, self.env)
        if wait:
            wait_until_answering(self.process, self.target, self.log)


def free_port(hosts: Sequence[str] = ("127.0.0.1",)) -> int:
    """A port nothing listens on right now, on each of the loopback `hosts`."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((hosts[0], 0))
            port: int = probe.getsockname()[1]
        if all(_free(host, port) for host in hosts[1:]):
            return port


def _free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
        return True


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
    host: str = "127.0.0.1",
    port: int = 0,
    wait: bool = True,
) -> Iterator[ServeProcess]:
    """`voxrelay serve --listen HOST:PORT ARGS` (PORT 0: a free one), answering (with
    `wait`; to calls with `metadata`: a token, for a server that wants one), until the
    block ends; then killed (a test that checks the shutdown stops it itself).
    Restarts by `ServeProcess.restart` are killed the same way."""
    target = f"{host}:{port or free_port((host,))}"
    env = user_env() if env is None else env
    full_args = ["--listen", target, *args]
    serve = ServeProcess(start_serve(full_args, log, env), target, log, full_args, env)
    try:
        if wait:
            wait_until_answering(serve.process, target, log, metadata)
        yield serve
    finally:
        serve.process.kill()
        serve.process.wait()


REPLICA_HOSTS = tuple(f"127.0.0.{n}" for n in range(2, 10))
"""Loopback addresses for replicas: Linux answers on all of 127.0.0.0/8 with no setup."""


@contextmanager
def running_replicas(
    count: int, args: Sequence[str], logs: Path, env: Mapping[str, str] | None = None
) -> Iterator[list[ServeProcess]]:
    """`count` `voxrelay serve ARGS` on 127.0.0.2, 127.0.0.3, ... and one port, started
    together and answering, until the block ends (logs in `logs`/replica-N.log), each
    with its metrics on another common port (`active_sessions`). `replicas_target`
    names them all for a client."""
    hosts = REPLICA_HOSTS[:count]
    port = free_port(hosts)
    metrics_port = free_port(hosts)
    with ExitStack() as stack:
        replicas = [
            stack.enter_context(
                running_serve(
                    [*args, "--metrics-listen", f"{host}:{metrics_port}"],
                    logs / f"replica-{n}.log",
                    env,
                    host=host,
                    port=port,
                    wait=False,
                )
            )
            for n, host in enumerate(hosts, 1)
        ]
        for replica in replicas:
            wait_until_answering(replica.process, replica.target, replica.log)
        yield replicas


def active_sessions(replica: ServeProcess) -> int:
    """The replica's `voxrelay_active_sessions` gauge, from its metrics endpoint."""
    args = list(replica.args)
    url = f"http://{args[args.index('--metrics-listen') + 1]}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    match = re.search(r"^voxrelay_active_sessions(?:\{[^}]*\})? ([0-9.e+]+)$", text, re.M)
    assert match, f"no voxrelay_active_sessions in {url}"
    return round(float(match.group(1)))


def replicas_target(replicas: Sequence[ServeProcess]) -> str:
    """The gRPC target naming every replica: `ipv4:127.0.0.2:PORT,127.0.0.3:PORT`."""
    return "ipv4:" + ",".join(replica.target for replica in replicas)
