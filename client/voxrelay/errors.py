"""The exception the client raises for every failure."""

from __future__ import annotations

from dataclasses import dataclass

import grpc


@dataclass(frozen=True)
class Endpoint:
    """Where a client connects and how, so a failure to connect can say what to change."""

    target: str
    tls: bool = False
    ca_file: str | None = None
    """The CA file trusted for the server's certificate; None: the system's CAs."""
    client_certificate: bool = False

    def __str__(self) -> str:
        return self.target


class VoxrelayError(Exception):
    """A call failed: `code` is its gRPC status, `message` says what to do next.

    `turn` and `segment` name the part of the session it concerns (0 = none).
    """

    def __init__(
        self, code: grpc.StatusCode, message: str, *, turn: int = 0, segment: int = 0
    ) -> None:
        where = f" (turn {turn}, segment {segment})" if turn else ""
        super().__init__(f"{code.name}: {message}{where}")
        self.code = code
        self.message = message
        self.turn = turn
        self.segment = segment

    @classmethod
    def from_rpc_error(
        cls, error: grpc.RpcError, target: str | Endpoint, *, started: bool = False
    ) -> VoxrelayError:
        """Wrap a gRPC error, adding advice where the server could not be reached.

        `started`: the call had its session started, so it reached the server and an
        UNAVAILABLE is the server or the connection lost mid-call, not a wrong address
        or TLS setting.
        """
        return cls.from_status(error.code(), error.details() or "", target, started=started)

    @classmethod
    def from_status(
        cls,
        code: grpc.StatusCode,
        details: str,
        target: str | Endpoint,
        *,
        started: bool = False,
    ) -> VoxrelayError:
        """The error for a call that ended with `code`, with advice on what to do next
        (`started` as `from_rpc_error` takes it)."""
        endpoint = target if isinstance(target, Endpoint) else Endpoint(target)
        if code is grpc.StatusCode.UNAVAILABLE and started:
            # gRPC says "Socket closed" for a replica killed mid-call as for a TLS-only
            # server refusing plaintext: only a call that never reached a session can be
            # the second.
            details = (
                f"the server at {endpoint} was lost during the session ({details}): it "
                "stopped, or the connection to it failed"
            )
        elif code is grpc.StatusCode.UNAVAILABLE:
            details = _connection_failure(details, endpoint) or (
                f"cannot reach a voxrelay server at {endpoint} ({details}); start one with "
                "`voxrelay serve` or point --server / VOXRELAY_SERVER at a running one; "
                "if it uses TLS, pass its CA with --tls-ca / VOXRELAY_TLS_CA"
            )
        elif code is grpc.StatusCode.UNAUTHENTICATED:
            details = (
                f"the server at {endpoint} refused the call ({details}); pass a token it "
                "accepts with --token or VOXRELAY_TOKEN (token= in the Python client)"
            )
        return cls(code, details)


_CA_OPTION = "--tls-ca / VOXRELAY_TLS_CA (tls_ca= in Python)"
_CERT_OPTIONS = (
    "--tls-cert and --tls-key / VOXRELAY_TLS_CERT and VOXRELAY_TLS_KEY (tls_cert= and "
    "tls_key= in Python)"
)


def _connection_failure(details: str, endpoint: Endpoint) -> str | None:
    """What a failed connection's gRPC details mean for TLS, if they say: gRPC reports
    every failed handshake as UNAVAILABLE, like a server that is not running."""
    server = f"the server at {endpoint}"
    if endpoint.tls and "WRONG_VERSION_NUMBER" in details:
        return (
            f"{server} does not speak TLS: the TLS handshake got a plaintext answer. Connect "
            f"without TLS (leave out {_CA_OPTION} and the client certificate options), or "
            "check the address is the server's TLS port"
        )
    if endpoint.tls and "CERTIFICATE_VERIFY_FAILED" in details:
        reason = details.rpartition("CERTIFICATE_VERIFY_FAILED:")[2].removesuffix(": OK").strip()
        trusted = (
            f"the CA in {endpoint.ca_file!r}" if endpoint.ca_file else "the system's trusted CAs"
        )
        return (
            f"{server} presented a certificate that {trusted} does not vouch for ({reason}): "
            f"pass the CA that signed the server's certificate with {_CA_OPTION}"
        )
    if endpoint.tls and "Hostname Verification" in details:
        return (
            f"the certificate of {server} does not name {endpoint.target.rpartition(':')[0]!r}: "
            "connect with a name (or address) its certificate was issued for"
        )
    if "Expected SETTINGS frame" in details:
        # What gRPC says of a server that answers but not in HTTP/2 (an HTTP/1.1 one):
        # most likely voxrelay's own HTTP listener, given where --listen's belongs.
        return (
            f"{endpoint} answers, but not in gRPC: it is probably the server's HTTP "
            "listener (--http-listen, for the OpenAI-compatible API and the page); point "
            "--server / VOXRELAY_SERVER at its gRPC address (--listen, 127.0.0.1:50051 by "
            "default)"
        )
    if "Socket closed" in details:
        if not endpoint.tls:
            return (
                f"{server} closed the connection as it opened: it probably serves TLS only. "
                f"Pass the CA that signed its certificate with {_CA_OPTION}"
            )
        if not endpoint.client_certificate:
            return (
                f"{server} closed the connection during the TLS handshake: it probably "
                f"requires a client certificate (mutual TLS). Pass one with {_CERT_OPTIONS}"
            )
        return (
            f"{server} closed the connection during the TLS handshake: it probably does not "
            "accept the client certificate given, which must be signed by the CA the server "
            "trusts for clients (its --tls-client-ca)"
        )
    return None


_STATUS_BY_NUMBER = {status.value[0]: status for status in grpc.StatusCode}


def status_from_number(number: int) -> grpc.StatusCode:
    """The `grpc.StatusCode` for a google.rpc.Code number."""
    return _STATUS_BY_NUMBER.get(number, grpc.StatusCode.UNKNOWN)
