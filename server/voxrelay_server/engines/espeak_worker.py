"""The espeak-ng worker process: `python -m voxrelay_server.engines.espeak_worker`.

espeak-ng hands its audio to a Python callback. Run inside the server, every
callback would wait for the GIL while the event loop holds it, and synthesis
would slow down as traffic grows; in its own process it runs at full speed
beside the server. The server talks to a worker over its stdin and stdout:

server -> worker, one JSON object per line:
    {"op": "speak", "job": N, "voice": "<voice file>", "text": "...", "wpm": 175}
    {"op": "stop", "job": N}
worker -> server, frames of kind (1 byte), job (uint32), payload length (uint32),
payload:
    R  (job 0, once, first) ready: JSON {"sample_rate_hz": ..., "languages": {...}}
    W  words of job N starting in its next audio frame: pairs of uint32 (index of the
       word's first character in the job's text, in code points; index of its first
       sample in the job's audio), and its pauses, as pairs (0xFFFFFFFF, first sample)
    A  audio of job N: int16 little-endian PCM
    D  job N is over: finished, or stopped
    E  job N failed: JSON {"code": <ErrorCode number>, "message": "..."}

Jobs run one at a time, in the order they arrive; the server may send the next
one while the current one runs, so the worker never waits between segments.
The worker checks for new lines between audio chunks, so a stop takes effect
within one chunk. It exits when its stdin closes (the server stopped or died).
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import select
import signal
import struct
import sys
from typing import Any, BinaryIO

from voxrelay_server.engines.espeak_library import EspeakLibrary
from voxrelay_server.errors import EngineError

FRAME_HEADER = struct.Struct("<cII")
"""kind, job, payload length."""
READY, WORDS, AUDIO, DONE, FAILED = b"R", b"W", b"A", b"D", b"E"
WORD_START = struct.Struct("<II")
"""One word in a WORDS frame: its first character, its first sample."""


class _Requests:
    """The server's requests, read without blocking between audio chunks."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._buffer = b""
        self.pending: collections.deque[dict[str, Any]] = collections.deque()
        self.stopped: set[int] = set()
        self.closed = False
        self.running: int | None = None

    def poll(self, timeout_s: float | None = 0.0) -> None:
        """Take in the complete lines that arrived (waiting up to `timeout_s`)."""
        while not self.closed:
            readable, _, _ = select.select([self._fd], [], [], timeout_s)
            if not readable:
                return
            data = os.read(self._fd, 1 << 16)
            if not data:
                self.closed = True
                return
            self._buffer += data
            *lines, self._buffer = self._buffer.split(b"\n")
            for line in lines:
                if line.strip():
                    self._take(json.loads(line))
            timeout_s = 0.0  # after a wait, only what is already there

    def _take(self, request: dict[str, Any]) -> None:
        if request["op"] == "speak":
            self.pending.append(request)
        elif request["op"] == "stop":
            job = int(request["job"])
            if job == self.running:
                self.stopped.add(job)
            else:  # not started yet: drop it; already over: nothing to do
                for waiting in self.pending:
                    if waiting["job"] == job:
                        waiting["stopped"] = True


class _Frames:
    def __init__(self, out: BinaryIO) -> None:
        self._out = out

    def send(self, kind: bytes, job: int, payload: bytes = b"") -> None:
        self._out.write(FRAME_HEADER.pack(kind, job, len(payload)))
        self._out.write(payload)
        self._out.flush()


def serve(requests_fd: int, out: BinaryIO) -> None:
    """Answer requests from `requests_fd` with frames on `out` until the input closes."""
    library = EspeakLibrary()
    frames = _Frames(out)
    ready = {"sample_rate_hz": library.sample_rate_hz, "languages": library.languages()}
    frames.send(READY, 0, json.dumps(ready).encode())
    requests = _Requests(requests_fd)
    while True:
        while not requests.pending and not requests.closed:
            requests.poll(timeout_s=None)
        if not requests.pending:
            return  # the server is gone
        request = requests.pending.popleft()
        job = int(request["job"])
        if request.get("stopped"):
            frames.send(DONE, job)
            continue
        requests.running = job

        def on_audio(pcm: bytes, job: int = job) -> bool:
            requests.poll()
            if job in requests.stopped or requests.closed:
                return False
            frames.send(AUDIO, job, pcm)
            return True

        def on_words(starts: list[tuple[int, int]], job: int = job) -> None:
            if starts and job not in requests.stopped:
                frames.send(WORDS, job, b"".join(WORD_START.pack(*start) for start in starts))

        try:
            library.synthesize(
                request["voice"], request["text"], int(request["wpm"]), on_audio, on_words
            )
        except EngineError as error:
            failure = {"code": int(error.code), "message": error.message}
            frames.send(FAILED, job, json.dumps(failure).encode())
        else:
            frames.send(DONE, job)
        finally:
            requests.running = None
            requests.stopped.discard(job)


def main() -> None:
    # Ctrl-C reaches the whole process group: the server shuts down gracefully and
    # still needs this worker meanwhile; it ends the worker by closing its input.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Frames go to the real stdout; anything the C library prints goes to stderr.
    out = os.fdopen(os.dup(sys.stdout.fileno()), "wb", buffering=1 << 16)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    with contextlib.suppress(BrokenPipeError):  # the server went away mid-frame
        serve(sys.stdin.fileno(), out)


if __name__ == "__main__":
    main()
