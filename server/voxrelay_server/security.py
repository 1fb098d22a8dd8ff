"""Transport security and caller authentication: TLS, mutual TLS and bearer tokens.

`server_credentials()` turns the `--tls-*` settings into gRPC server credentials;
`server_interceptors()` returns the interceptors that check `authorization: Bearer`
metadata against the tokens of `--auth-tokens` and `--auth-tokens-file`. Both read
their files once, at start-up, and fail with a message that says what to fix.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import ipaddress
import logging
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, NoReturn

import grpc

from voxrelay_server.config import ServerSettings

_LOG = logging.getLogger(__name__)

#: Methods that stay reachable without a token unless `auth_health_and_reflection`:
#: load balancers probe health, and discovery tools list services before any call.
OPEN_METHOD_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)

#: How long a refused call may go on sending before it gets UNAUTHENTICATED.
REFUSAL_DRAIN_S = 1.0

_HOW_TO_SEND = "send one of the server's tokens as metadata 'authorization: Bearer <token>'"


def _read_file(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise OSError(
            f"cannot read {what} {path!r} ({error.strerror or error}): "
            "check the path and that the server's user may read it"
        ) from error


def _read_pem(path: str, what: str, marker: bytes) -> bytes:
    data = _read_file(path, what)
    # gRPC would only fail at bind or handshake time, with a message naming no file.
    if b"-----BEGIN " not in data or marker not in data:
        raise ValueError(
            f"{what} {path!r} is not a PEM file with a {marker.decode()} block: "
            "give the PEM-encoded file (the one starting with '-----BEGIN')"
        )
    return data


def tls_files(settings: ServerSettings) -> tuple[bytes, bytes, bytes | None] | None:
    """(certificate chain, private key, client CA or None), or None when TLS is off."""
    cert, key, client_ca = settings.tls_cert, settings.tls_key, settings.tls_client_ca
    if not cert and not key:
        if client_ca:
            raise ValueError(
                "--tls-client-ca (VOXRELAY_TLS_CLIENT_CA) needs TLS: also set --tls-cert and "
                "--tls-key (VOXRELAY_TLS_CERT, VOXRELAY_TLS_KEY)"
            )
        return None
    if not key:
        raise ValueError(
            "--tls-cert (VOXRELAY_TLS_CERT) is set but --tls-key (VOXRELAY_TLS_KEY) is not: "
            "TLS needs both the certificate chain and its private key"
        )
    if not cert:
        raise ValueError(
            "--tls-key (VOXRELAY_TLS_KEY) is set but --tls-cert (VOXRELAY_TLS_CERT) is not: "
            "TLS needs both the certificate chain and its private key"
        )
    return (
        _read_pem(cert, "--tls-cert file", b"CERTIFICATE"),
        _read_pem(key, "--tls-key file", b"PRIVATE KEY"),
        _read_pem(client_ca, "--tls-client-ca file", b"CERTIFICATE") if client_ca else None,
    )


def server_credentials(settings: ServerSettings) -> grpc.ServerCredentials | None:
    """TLS credentials for the listening port, or None when TLS is off.

    TLS is on when `tls_cert` and `tls_key` are set; `tls_client_ca` additionally
    requires every client to present a certificate that CA signed (mutual TLS).
    Raises `ValueError` for an incomplete or inconsistent configuration and
    `OSError` for a file that cannot be read.
    """
    files = tls_files(settings)
    if files is None:
        return None
    chain, private_key, roots = files
    _LOG.info(
        "TLS on (certificate %s)%s",
        settings.tls_cert,
        f"; clients must present a certificate signed by {settings.tls_client_ca}" if roots else "",
    )
    return grpc.ssl_server_credentials(
        [(private_key, chain)], root_certificates=roots, require_client_auth=roots is not None
    )


def check(settings: ServerSettings) -> None:
    """Raise `ValueError` or `OSError` now if the security settings cannot work.

    Lets `voxrelay serve` report a misconfiguration before it loads any voice.
    """
    tls_files(settings)
    load_tokens(settings)


def _check_token(token: str, where: str) -> str:
    # A header value must be visible ASCII; never quote the token in the message.
    if not token.isascii() or not token.isprintable() or any(c.isspace() for c in token):
        raise ValueError(
            f"the token at {where} has spaces or non-ASCII characters: tokens must be "
            "printable ASCII without spaces"
        )
    return token


def load_tokens(settings: ServerSettings) -> tuple[str, ...]:
    """Every accepted token: `auth_tokens` (comma-separated), then `auth_tokens_file`.

    The file holds one token per line; blank lines and lines starting with `#` are
    skipped. A file that holds no token is an error, so a mistake cannot silently
    turn authentication off.
    """
    tokens = [
        _check_token(part.strip(), f"position {index} of --auth-tokens (VOXRELAY_AUTH_TOKENS)")
        for index, part in enumerate(settings.auth_tokens.split(","), start=1)
        if part.strip()
    ]
    if settings.auth_tokens_file:
        path = settings.auth_tokens_file
        text = _read_file(path, "--auth-tokens-file").decode("utf-8", errors="replace")
        from_file = [
            _check_token(line.strip(), f"line {number} of {path}")
            for number, line in enumerate(text.splitlines(), start=1)
            if line.strip() and not line.strip().startswith("#")
        ]
        if not from_file:
            raise ValueError(
                f"--auth-tokens-file {path!r} holds no token: put one token per line "
                "(blank lines and lines starting with # are ignored)"
            )
        tokens.extend(from_file)
    return tuple(tokens)


def _digest(token: bytes) -> bytes:
    # Comparing fixed-length digests keeps even a token's length out of the timing.
    return hashlib.sha256(token).digest()


class TokenCheck:
    """Checks `Bearer <token>` credentials against the accepted tokens, for any transport.

    Only SHA-256 digests of the tokens are kept, every one is compared every time, and
    no token is ever put into a message.
    """

    def __init__(self, tokens: Iterable[str]) -> None:
        self._digests = tuple(_digest(token.encode("ascii")) for token in tokens)
        if not self._digests:
            raise ValueError("a token check needs at least one token")

    def __len__(self) -> int:
        return len(self._digests)

    def refusal(self, values: Iterable[str | bytes], how_to_send: str = _HOW_TO_SEND) -> str | None:
        """Why these `authorization` values do not authorize a call, or None when one
        of them is `Bearer` with an accepted token; `how_to_send` ends each reason."""
        values = list(values)
        if not values:
            return f"this server requires a bearer token: {how_to_send}"
        credentials = [c for c in map(_bearer_credential, values) if c is not None]
        if not credentials:
            return f"the authorization is not 'Bearer <token>': {how_to_send}"
        return (
            None
            if self.accepts(*credentials)
            else (f"the bearer token was not accepted: {how_to_send}")
        )

    def accepts(self, *credentials: str | bytes) -> bool:
        """Whether any of these bare tokens (no `Bearer`) is accepted."""
        accepted = False
        for credential in credentials:
            presented = _digest(_as_bytes(credential))
            # No short-circuit: every configured token is compared every time.
            for expected in self._digests:
                accepted |= hmac.compare_digest(presented, expected)
        return accepted


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Ends every call without an accepted `authorization: Bearer` token with UNAUTHENTICATED.

    Methods under `open_prefixes` pass without a token. Only SHA-256 digests of the
    tokens are kept, and tokens are never logged or put into a status message.
    """

    def __init__(self, tokens: Iterable[str], *, open_prefixes: tuple[str, ...] = ()) -> None:
        try:
            self._check = TokenCheck(tokens)
        except ValueError:
            raise ValueError("BearerTokenInterceptor needs at least one token") from None
        self._open_prefixes = open_prefixes

    def __repr__(self) -> str:
        return (
            f"BearerTokenInterceptor({len(self._check)} tokens, "
            f"open_prefixes={self._open_prefixes!r})"
        )

    def _refusal(self, metadata: Iterable[tuple[str, str | bytes]]) -> str | None:
        """Why the call's metadata is not authorized, or None when it is."""
        return self._check.refusal(value for key, value in metadata if key == "authorization")

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        """Pass authorized and open calls on; answer the rest with UNAUTHENTICATED."""
        method = handler_call_details.method
        if method.startswith(self._open_prefixes):
            return await continuation(handler_call_details)
        reason = self._refusal(handler_call_details.invocation_metadata or ())
        if reason is None:
            return await continuation(handler_call_details)
        return _refusing_handler(method, reason)


def _as_bytes(value: str | bytes) -> bytes:
    """`value` as bytes, whatever characters it holds: HTTP headers arrive decoded as
    UTF-8 with undecodable bytes escaped, and a WebSocket's JSON may carry lone
    surrogates. A character beyond ASCII can never match a token (tokens are ASCII), so
    it needs only to encode without raising."""
    return value.encode("utf-8", "surrogatepass") if isinstance(value, str) else value


def _bearer_credential(value: str | bytes) -> bytes | None:
    """The credential of a `Bearer <credential>` value (scheme case-insensitive), else None."""
    raw = _as_bytes(value)
    scheme, _, credential = raw.strip().partition(b" ")
    credential = credential.strip()
    return credential if scheme.lower() == b"bearer" and credential else None


async def _discard(requests: AsyncIterable[bytes]) -> None:
    async for _ in requests:
        pass


def _refusing_handler(method: str, reason: str) -> grpc.RpcMethodHandler[Any, Any]:
    # A stream-stream handler without a deserializer serves every call shape on the
    # wire, so unknown methods are refused too instead of revealing they do not exist.
    async def refuse(
        requests: AsyncIterable[bytes], context: grpc.aio.ServicerContext[Any, Any]
    ) -> NoReturn:
        _LOG.info("refused %s from %s: %s", method, context.peer(), reason.partition(":")[0])
        # grpc's asyncio client reports INTERNAL instead of the server's status when one
        # of its writes races with that status (grpc/grpc#36066), so let the client
        # finish sending first: its messages are discarded undecoded until it
        # half-closes, for REFUSAL_DRAIN_S at most.
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(_discard(requests), REFUSAL_DRAIN_S)
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, reason)

    return grpc.stream_stream_rpc_method_handler(refuse)


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def server_interceptors(settings: ServerSettings) -> list[grpc.aio.ServerInterceptor]:
    """The security interceptors `settings` ask for: none when no token is configured."""
    tokens = load_tokens(settings)
    if not tokens:
        return []
    open_prefixes = () if settings.auth_health_and_reflection else OPEN_METHOD_PREFIXES
    _LOG.info(
        "bearer-token auth on: %d tokens accepted; health and reflection %s",
        len(tokens),
        "need a token too" if settings.auth_health_and_reflection else "stay open",
    )
    host = settings.listen.rpartition(":")[0].strip("[]")
    if not settings.tls_cert and not is_loopback(host):
        _LOG.warning(
            "bearer tokens reach %s in clear text: set --tls-cert and --tls-key to encrypt them",
            settings.listen,
        )
    return [BearerTokenInterceptor(tokens, open_prefixes=open_prefixes)]
