"""A server's life around its calls: the service while it loads, the calls in flight.

`ServiceHolder` answers UNAVAILABLE until the voices are loaded; `ActiveCalls`
lets a shutdown wait for the calls in flight and end the rest with a clear status;
`RequestStream` reads a call's requests with a timeout that loses none of them;
`SendWatchdog` notices a client that has stopped reading. None of them knows
about speech, only about calls and their lifecycle.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import grpc
from google.protobuf.message import DecodeError

from voxrelay_server.dispatcher import SessionDispatcher
from voxrelay_server.errors import ErrorCode, SpeechError
from voxrelay_server.service import SpeechService

_T = TypeVar("_T")

LOADING_MESSAGE = "the server is still loading its voices; retry shortly"
SHUTTING_DOWN_MESSAGE = "the server is shutting down"
DRAIN_S = 1.0
"""How long a call that ends with an error goes on taking the client's requests (and
dropping them) before its status goes out. grpc's asyncio client reports INTERNAL
instead of the server's status when one of its writes races with that status
(grpc/grpc#36066); a client that sends all it has and then reads (the README's
pattern) has half-closed well within this."""


class ListenError(OSError):
    """A listener (gRPC or HTTP) could not bind its address: in use, or not valid here."""


@dataclass(frozen=True)
class CallLimits:
    """Bounds on a call's dealings with its client, in seconds; 0 = no bound."""

    start_timeout_s: float = 30.0
    """How long a new Stream call may wait before its first message."""
    send_timeout_s: float = 30.0
    """How long one message may wait for the client to read it."""


class ServiceHolder:
    """The `SpeechService` once the server has built it; UNAVAILABLE until then.

    The server listens before it loads its voices, so health checks can say
    NOT_SERVING while the default voice loads; Speech calls meanwhile are told
    to retry instead of waiting on a connection that seems dead.
    """

    def __init__(self, service: SpeechService | None = None) -> None:
        self._service = service

    @property
    def current(self) -> SpeechService | None:
        """The service, or None while it is still loading."""
        return self._service

    def set(self, service: SpeechService) -> None:
        """The service is ready: serve calls with it from now on."""
        self._service = service

    def get(self) -> SpeechService:
        """The service; raises `SpeechError` (UNAVAILABLE) while it is still loading."""
        if self._service is None:
            raise SpeechError(ErrorCode.UNAVAILABLE, LOADING_MESSAGE)
        return self._service


class ActiveCalls:
    """The Speech calls in flight, so a shutdown can wait for them and end the rest.

    Open sessions are ended by `SpeechService.fail_all`; this ends the calls that
    have no session yet (waiting for their first request) and any that opens one
    after the abort.
    """

    def __init__(self) -> None:
        self._count = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._abort_error: SpeechError | None = None
        self._aborted = asyncio.Event()

    def __len__(self) -> int:
        return self._count

    def track(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        """Count a gRPC call until it is over, its status sent.

        Counting until the handler returns would be too early: a server stopped
        right then could cancel the call before its status went out.
        """
        finished = self.begin()
        # types-grpcio declares the callback as a class, not a Protocol: a function is fine.
        context.add_done_callback(lambda _context: finished())  # type: ignore[arg-type]

    def begin(self) -> Callable[[], None]:
        """Count a call (of any transport) until the function returned is called, once
        its last byte is out; calling that again has no effect."""
        self._count += 1
        self._idle.clear()
        done = False

        def finished() -> None:
            nonlocal done
            if not done:
                done = True
                self._count -= 1
                if not self._count:
                    self._idle.set()

        return finished

    @contextlib.contextmanager
    def tracking(self) -> Iterator[None]:
        """Count a call while the block runs (a transport whose handler returns only
        once its response is out, as aiohttp's does)."""
        finished = self.begin()
        try:
            yield
        finally:
            finished()

    def fail_if_aborted(self, session: SessionDispatcher) -> None:
        """End a session opened after `abort` with the abort's error."""
        if self._abort_error is not None:
            session.fail(self._abort_error)

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no call is in flight; False if `timeout_s` passed first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    def abort(self, error: SpeechError) -> None:
        """End calls without a session, and sessions opened from now on, with `error`."""
        self._abort_error = error
        self._aborted.set()

    async def unless_aborted(self, awaitable: Awaitable[_T]) -> _T:
        """Await `awaitable`; raise the `abort` error instead if that comes first.

        For the waits of a call that has no session yet (its first request).
        """
        work = asyncio.ensure_future(awaitable)  # a task even when aborted: awaited, no warning
        aborted = asyncio.ensure_future(self._aborted.wait())
        try:
            done, _ = await asyncio.wait({work, aborted}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            work.cancel()
            raise
        finally:
            aborted.cancel()
        if work in done:
            return work.result()
        work.cancel()
        assert self._abort_error is not None
        raise self._abort_error


class RequestStream(Generic[_T]):
    """A call's requests, read by one task at a time; a read that timed out stays
    pending, so the next read takes its message and none is lost (grpc allows one
    read in flight per call: a cancelled one would make the next fail)."""

    def __init__(self, requests: AsyncIterable[_T]) -> None:
        self._requests = aiter(requests)
        self._pending: asyncio.Future[_T | None] | None = None

    async def next(self, timeout_s: float | None = None) -> _T | None:
        """The next request, or None once the client half-closed; TimeoutError if
        `timeout_s` passed first."""
        if self._pending is None:
            self._pending = asyncio.ensure_future(anext(self._requests, None))
            self._pending.add_done_callback(_retrieve)
        done, _ = await asyncio.wait({self._pending}, timeout=timeout_s)
        if not done:
            raise TimeoutError
        pending, self._pending = self._pending, None
        return pending.result()

    async def __aiter__(self) -> AsyncIterator[_T]:
        while (request := await self.next()) is not None:
            yield request

    async def discard(self, timeout_s: float) -> None:
        """Read and drop requests until the client half-closes, for `timeout_s` at most."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        # A request that cannot even be parsed ends it too: the call is ending anyway.
        with contextlib.suppress(TimeoutError, DecodeError):
            while await self.next(max(0.0, deadline - loop.time())) is not None:
                pass

    def close(self) -> None:
        """Stop a read still pending (the call is over)."""
        if self._pending is not None:
            self._pending.cancel()


class SendWatchdog:
    """Notices a client that has stopped reading: one message handed to gRPC and not
    taken by the client (flow control) for longer than `timeout_s`.

    The sender calls `sending()` before each message and `sent()` once gRPC took it:
    two stores and a clock read. One timer per call, moved on only when it fires.
    """

    __slots__ = ("_loop", "_on_stall", "_since", "_timeout_s", "_timer")

    def __init__(self, timeout_s: float, on_stall: Callable[[], None]) -> None:
        self._timeout_s = timeout_s
        self._on_stall = on_stall
        self._loop = asyncio.get_running_loop()
        self._since: float | None = None
        self._timer: asyncio.TimerHandle | None = None

    def sending(self) -> None:
        """A message is on its way to the client."""
        if not self._timeout_s:
            return
        self._since = self._loop.time()
        if self._timer is None:
            self._timer = self._loop.call_at(self._since + self._timeout_s, self._check)

    def sent(self) -> None:
        """The message went out."""
        self._since = None

    def close(self) -> None:
        """Watch no more."""
        self._since = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check(self) -> None:
        self._timer = None
        if self._since is None:
            return  # nothing waiting: the next message arms a new timer
        due = self._since + self._timeout_s
        if self._loop.time() >= due:
            self._since = None
            self._on_stall()
        else:
            self._timer = self._loop.call_at(due, self._check)


def _retrieve(read: asyncio.Future[Any]) -> None:
    """Mark a read's failure as seen: a read left pending when its call ended fails with
    the call, and nobody is waiting for it any more."""
    if not read.cancelled():
        read.exception()
