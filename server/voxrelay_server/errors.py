"""Errors the speech domain raises, each carrying the status it maps to.

The domain knows nothing about gRPC; `ErrorCode` mirrors the canonical status
codes (google.rpc.Code) by name and number so the transport can map them 1:1.
"""

from __future__ import annotations

import enum


class ErrorCode(enum.IntEnum):
    """Canonical status codes used by voxrelay, numbered as google.rpc.Code."""

    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    INTERNAL = 13
    UNAVAILABLE = 14
    UNAUTHENTICATED = 16


class SpeechError(Exception):
    """A failure with the status code a caller should see and a message for people."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code.name}, {self.message!r})"


class InvalidInput(SpeechError):
    """The caller sent something the contract does not allow."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.INVALID_ARGUMENT, message)


class EngineError(SpeechError):
    """A speech engine failed to synthesize a segment."""


class TextTooLong(InvalidInput):
    """A text over the most one call takes: INVALID_ARGUMENT over gRPC, 413 over HTTP."""
