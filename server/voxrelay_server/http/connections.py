"""What the HTTP listener does to a client's connection itself."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

_LOG = logging.getLogger("voxrelay.http")


def dropper(transport: asyncio.Transport | None, path: str) -> Callable[[], None]:
    """Drops the connection of a client that stopped reading for good (what
    `CallRunner.run` calls as `abandon`): HTTP clients see a cut-off body, WebSocket
    clients close code 1006. An abort, as a close would wait to flush what the client
    will not read."""

    def drop() -> None:
        if transport is not None:
            _LOG.info("%s: the client has not read for two send timeouts: closed", path)
            transport.abort()

    return drop
