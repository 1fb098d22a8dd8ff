"""`python -m voxrelay_server.healthcheck [TARGET]`: exit 0 when the server says SERVING.

For container health checks that cannot speak gRPC themselves (Docker's HEALTHCHECK;
Kubernetes has `grpc:` probes): one grpc.health.v1 `Check` of `voxrelay.v1.Speech`
on TARGET, by default this host at the port of `VOXRELAY_LISTEN`. It prints the
status; exit 1 for NOT_SERVING (loading its voices, or stopping), an unknown
service or no answer. Plaintext only, as Kubernetes' own gRPC probes.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from voxrelay_server.config import ServerSettings

SPEECH_SERVICE = "voxrelay.v1.Speech"
DEFAULT_TIMEOUT_S = 2.0


def local_target(listen: str) -> str:
    """Where a check on this host reaches a server listening on `listen`: a wildcard
    host (`0.0.0.0`, `[::]`, empty) is asked on loopback, any other host as it is."""
    host, _, port = listen.rpartition(":")
    if host in ("", "0.0.0.0", "[::]", "::"):
        host = "127.0.0.1"
    return f"{host}:{port}"


def default_target(env: Mapping[str, str] = os.environ) -> str:
    """The target for this host's server: `VOXRELAY_LISTEN`, else the default listen."""
    return local_target(env.get("VOXRELAY_LISTEN") or ServerSettings.listen)


def check(target: str, service: str = SPEECH_SERVICE, timeout_s: float = DEFAULT_TIMEOUT_S) -> str:
    """The serving status `target` reports for `service`, by name (e.g. `SERVING`);
    `UNREACHABLE` or `SERVICE_UNKNOWN` when it cannot say."""
    with grpc.insecure_channel(target) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout_s
            )
        except grpc.RpcError as error:
            code = error.code()
            return "SERVICE_UNKNOWN" if code == grpc.StatusCode.NOT_FOUND else "UNREACHABLE"
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))


def main(argv: Sequence[str] | None = None) -> int:
    """Check once; 0 when SERVING, else 1."""
    parser = argparse.ArgumentParser(
        prog="python -m voxrelay_server.healthcheck",
        description="Exit 0 when a voxrelay server reports SERVING on grpc.health.v1.",
    )
    parser.add_argument(
        "target", nargs="?", default=None, help="host:port (default: from VOXRELAY_LISTEN)"
    )
    parser.add_argument("--service", default=SPEECH_SERVICE, help="%(default)s; '' = the server")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds")
    args = parser.parse_args(argv)
    target = args.target or default_target()
    status = check(target, args.service, args.timeout)
    print(f"{target} {args.service or '(server)'}: {status}")
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    sys.exit(main())
