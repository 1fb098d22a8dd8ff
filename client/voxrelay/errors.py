"""The exception the client raises for every failure."""

from __future__ import annotations

import grpc


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
    def from_rpc_error(cls, error: grpc.RpcError, target: str) -> VoxrelayError:
        """Wrap a gRPC error, adding advice where the server could not be reached."""
        return cls.from_status(error.code(), error.details() or "", target)

    @classmethod
    def from_status(cls, code: grpc.StatusCode, details: str, target: str) -> VoxrelayError:
        """The error for a call that ended with `code`, with advice on what to do next."""
        if code is grpc.StatusCode.UNAVAILABLE:
            details = (
                f"cannot reach a voxrelay server at {target} ({details}); start one with "
                "`voxrelay serve` or point --server / VOXRELAY_SERVER at a running one; "
                "if it uses TLS, pass its CA with --tls-ca / VOXRELAY_TLS_CA"
            )
        elif code is grpc.StatusCode.UNAUTHENTICATED:
            details = (
                f"the server at {target} refused the call ({details}); pass a token it "
                "accepts with --token or VOXRELAY_TOKEN (token= in the Python client)"
            )
        return cls(code, details)


_STATUS_BY_NUMBER = {status.value[0]: status for status in grpc.StatusCode}


def status_from_number(number: int) -> grpc.StatusCode:
    """The `grpc.StatusCode` for a google.rpc.Code number."""
    return _STATUS_BY_NUMBER.get(number, grpc.StatusCode.UNKNOWN)
