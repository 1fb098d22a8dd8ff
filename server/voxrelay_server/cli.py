"""`voxrelay serve`: the server's command, added to the client's `voxrelay` command.

The `voxrelay` command belongs to the light client (`voxrelay.cli`); this
distribution registers `add_serve` under the `voxrelay.commands` entry point
group, so the client finds it when the server is installed and never imports
the server otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

from voxrelay.cli import UsageError


def add_serve(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `serve`, with one flag per server setting, to the `voxrelay` command."""
    from voxrelay_server import config

    serve = commands.add_parser(
        "serve",
        help="run a voxrelay server",
        description="Run a voxrelay server: gRPC on --listen and, with --http-listen, "
        "an HTTP listener (OpenAI-compatible speech API, the Stream rpc as a WebSocket, "
        "and a page that speaks through it). Every flag also reads the VOXRELAY_* "
        "variable named beside it; the flag wins over the variable.",
    )
    config.add_arguments(serve)
    serve.set_defaults(run=serve_command)


def serve_command(args: argparse.Namespace) -> int:
    """Run the server until SIGTERM or SIGINT; bad settings raise `UsageError`."""
    from voxrelay_server import app, config, security
    from voxrelay_server.errors import SpeechError
    from voxrelay_server.serving import ListenError

    try:
        settings = config.from_arguments(args)
    except ValueError as error:
        raise UsageError(str(error)) from None
    app.configure_logging(settings)
    try:
        security.check(settings)
    except (OSError, ValueError) as error:
        raise UsageError(str(error)) from None
    # Not `asyncio.run`: closing the loop waits for every thread it lent out, and an
    # engine's thread may be inside a segment it cannot stop (piper runs one to its end).
    # `serve` has stopped the calls and released what it could within its bound; exit.
    # The deadline bounds the shutdown even if the event loop is held (by an engine's
    # blocking call) or `serve` fails while stopping: its timer thread exits the process.
    runner = asyncio.Runner()
    deadline = app.ExitDeadline()
    try:
        runner.run(app.serve(settings, deadline=deadline))
    except SpeechError as error:  # the voices could not be set up as configured
        raise UsageError(error.message) from None
    except ListenError as error:  # an address in use: say which, without a traceback
        raise UsageError(str(error)) from None
    deadline.disarm()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
