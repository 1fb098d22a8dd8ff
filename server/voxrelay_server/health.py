"""grpc's health service, able to tell when every open Watch has heard a status.

A server that is draining says NOT_SERVING and then ends its calls; a health
Watch never ends by itself, so it is ended too, and a watcher must have been
sent NOT_SERVING first, or it sees only the connection drop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from grpc_health.v1 import health, health_pb2


# grpc_health ships no type hints for its servicers.
class HealthServicer(health.aio.HealthServicer):  # type: ignore[misc]
    """`grpc_health`'s asyncio servicer, counting what each open Watch has sent."""

    def __init__(self) -> None:
        super().__init__()
        self._sent: dict[object, int | None] = {}
        """Each open Watch (by a key of its own): the last status it sent."""
        self._wrote = asyncio.Event()

    async def Watch(self, request: health_pb2.HealthCheckRequest, context: Any) -> None:
        key = object()
        self._sent[key] = None

        def sent(status: int) -> None:
            self._sent[key] = status
            self._wrote.set()

        try:
            await super().Watch(request, _ReportingContext(context, sent))
        finally:
            del self._sent[key]
            self._wrote.set()

    async def watchers_sent(self, status: int, timeout_s: float) -> bool:
        """Wait until every open Watch has sent `status`; False if `timeout_s` ran out."""
        try:
            async with asyncio.timeout(timeout_s):
                while any(last != status for last in self._sent.values()):
                    self._wrote.clear()
                    await self._wrote.wait()
        except TimeoutError:
            return False
        return True


class _ReportingContext:
    """A Watch's servicer context that reports each status it has written."""

    def __init__(self, context: Any, sent: Callable[[int], None]) -> None:
        self._context = context
        self._sent = sent

    async def write(self, message: health_pb2.HealthCheckResponse) -> None:
        await self._context.write(message)
        self._sent(message.status)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)
