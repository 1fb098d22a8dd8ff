"""espeak-ng voices, synthesized in worker processes.

Its many languages become voices named `espeak/<language>`, e.g. `espeak/en-us`.
Each worker process (`espeak_worker`) holds one espeak-ng and speaks one segment
at a time; the engine keeps one more segment queued at each worker, so a worker
goes from one segment to the next without waiting for the server. A worker that
dies fails the segments it held and is started again for the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import itertools
import json
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from voxrelay_server.engines.base import SpeechEngine, SynthesisOptions, VoiceInfo
from voxrelay_server.engines.espeak_worker import AUDIO, DONE, FAILED, FRAME_HEADER, READY
from voxrelay_server.errors import EngineError, ErrorCode

ENGINE_NAME = "espeak"
NORMAL_WORDS_PER_MINUTE = 175
MIN_WORDS_PER_MINUTE = 80
MAX_WORDS_PER_MINUTE = 450
QUEUED_PER_WORKER = 1
"""Segments waiting at each worker behind the one it speaks."""
_PIPE_BYTES = 1 << 20
"""Pipe buffers of a worker: a segment's text always fits, and audio never waits on the
server's reader thread."""
_START_TIMEOUT_S = 30.0


@dataclass(eq=False)
class _Job:
    """One segment given to a worker: its audio arrives on `queue`, then None or an error."""

    number: int
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[bytes | EngineError | None] = field(default_factory=asyncio.Queue)
    over: bool = False

    def put(self, item: bytes | EngineError | None) -> None:
        """From the reader thread: hand `item` to the job's consumer on its loop."""
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody is listening
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)


class _Worker:
    """One worker process, its jobs, and the thread that reads its frames."""

    def __init__(self, index: int) -> None:
        self.index = index
        self._process: subprocess.Popen[bytes] | None = None
        self._jobs: dict[int, _Job] = {}
        self._lock = threading.Lock()  # `_jobs` is shared with the reader thread
        self._reading = False
        """The reader thread runs: jobs submitted now will get their frames or an error."""
        self.ready: dict[str, Any] = {}

    @property
    def outstanding(self) -> int:
        return len(self._jobs)

    @property
    def pid(self) -> int | None:
        return self._process.pid if self.running and self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start the process and wait until espeak-ng is loaded in it."""
        process = subprocess.Popen(
            [sys.executable, "-m", "voxrelay_server.engines.espeak_worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert process.stdin is not None and process.stdout is not None
        for pipe in (process.stdin, process.stdout):
            with contextlib.suppress(OSError, AttributeError):  # Linux only; a speed-up
                fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, _PIPE_BYTES)
        kind, _, payload = _read_frame(process.stdout)
        if kind != READY:
            process.kill()
            raise EngineError(
                ErrorCode.FAILED_PRECONDITION,
                f"the espeak-ng worker did not start (exit code {process.wait()}); "
                "its error is in the server's log",
            )
        self.ready = json.loads(payload)
        self._process = process
        self._reading = True
        threading.Thread(
            target=self._read_frames,
            args=(process,),
            name=f"espeak-reader-{self.index}",
            daemon=True,
        ).start()

    def submit(self, job: _Job, identifier: str, text: str, words_per_minute: int) -> None:
        """Queue `job` at the worker; its frames go to `job` from now on."""
        request = {
            "op": "speak",
            "job": job.number,
            "voice": identifier,
            "text": text,
            "wpm": words_per_minute,
        }
        with self._lock:
            reading = self._reading
            if reading:
                self._jobs[job.number] = job
        if not reading:  # the process died after the caller checked: nobody would answer
            job.put(_worker_exited(self._process))
            return
        self._send(request)

    def stop(self, job: _Job) -> None:
        """Ask the worker to stop `job`; its audio is dropped from now on."""
        with self._lock:
            self._jobs.pop(job.number, None)
        self._send({"op": "stop", "job": job.number})

    def close(self) -> None:
        """End the process: it exits when its input closes; killed if it does not."""
        process, self._process = self._process, None
        if process is None:
            return
        with contextlib.suppress(OSError):
            assert process.stdin is not None
            process.stdin.close()
        try:
            process.wait(timeout=2)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def _send(self, request: dict[str, Any]) -> None:
        process = self._process
        if process is None or process.stdin is None:
            return
        try:
            # The pipe holds a megabyte and the worker reads between chunks: this
            # never waits for long.
            process.stdin.write(json.dumps(request).encode() + b"\n")
            process.stdin.flush()
        except OSError:
            pass  # the worker died: the reader thread fails its jobs

    def _read_frames(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stdout is not None
        while True:
            try:
                kind, number, payload = _read_frame(process.stdout)
            except (EOFError, OSError, ValueError):
                break
            with self._lock:
                job = self._jobs.get(number)
                if job is not None and kind in (DONE, FAILED):
                    del self._jobs[number]
            if job is None:
                continue  # stopped: its last frames are dropped
            if kind == AUDIO:
                job.put(payload)
            elif kind == DONE:
                job.put(None)
            elif kind == FAILED:
                failure = json.loads(payload)
                job.put(EngineError(ErrorCode(failure["code"]), failure["message"]))
        process.wait()
        with self._lock:
            self._reading = False
            orphans, self._jobs = list(self._jobs.values()), {}
        for job in orphans:
            job.put(_worker_exited(process))


def _worker_exited(process: subprocess.Popen[bytes] | None) -> EngineError:
    code = process.poll() if process is not None else None
    return EngineError(
        ErrorCode.UNAVAILABLE,
        f"the espeak-ng worker process exited (code {code}) during synthesis",
    )


def _read_frame(stream: IO[bytes]) -> tuple[bytes, int, bytes]:
    header = stream.read(FRAME_HEADER.size)
    if len(header) < FRAME_HEADER.size:
        raise EOFError("the espeak-ng worker closed its output")
    kind, number, length = FRAME_HEADER.unpack(header)
    payload = stream.read(length) if length else b""
    if len(payload) < length:
        raise EOFError("the espeak-ng worker closed its output mid-frame")
    return kind, number, payload


class EspeakEngine(SpeechEngine):
    """espeak-ng's languages as voices, synthesized in `workers` worker processes."""

    name = ENGINE_NAME

    def __init__(self, workers: int = 1) -> None:
        if workers < 1:
            raise ValueError(f"espeak needs at least one worker process, not {workers}")
        self._workers = [_Worker(index) for index in range(workers)]
        self._job_numbers = itertools.count(1)
        self._restart_lock = threading.Lock()
        try:
            for worker in self._workers:
                worker.start()
        except BaseException:
            for worker in self._workers:
                worker.close()
            raise
        self.max_concurrency = workers * (1 + QUEUED_PER_WORKER)
        ready = self._workers[0].ready
        rate = int(ready["sample_rate_hz"])
        languages: dict[str, str] = ready["languages"]
        self._identifiers = {
            f"{ENGINE_NAME}/{language}": identifier for language, identifier in languages.items()
        }
        self._voices = {
            name: VoiceInfo(
                name=name,
                engine=ENGINE_NAME,
                language_codes=(_bcp47(name.partition("/")[2]),),
                native_sample_rate_hz=rate,
            )
            for name in sorted(self._identifiers)
        }

    def voices(self) -> Sequence[VoiceInfo]:
        return list(self._voices.values())

    @property
    def worker_pids(self) -> list[int | None]:
        """The process id of each worker; None for one not running."""
        return [worker.pid for worker in self._workers]

    async def synthesize(
        self, voice: VoiceInfo, text: str, options: SynthesisOptions
    ) -> AsyncIterator[bytes]:
        words_per_minute = round(NORMAL_WORDS_PER_MINUTE * options.speed)
        words_per_minute = max(MIN_WORDS_PER_MINUTE, min(MAX_WORDS_PER_MINUTE, words_per_minute))
        worker = min(self._workers, key=lambda w: w.outstanding)
        if not worker.running:
            await asyncio.to_thread(self._restart, worker)
        job = _Job(next(self._job_numbers), asyncio.get_running_loop())
        worker.submit(job, self._identifiers[voice.name], text, words_per_minute)
        try:
            while (item := await job.queue.get()) is not None:
                if isinstance(item, EngineError):
                    raise item
                yield item
            job.over = True
        finally:
            if not job.over:
                worker.stop(job)

    def _restart(self, worker: _Worker) -> None:
        with self._restart_lock:
            if not worker.running:
                worker.close()
                worker.start()

    async def aclose(self) -> None:
        await asyncio.gather(*(asyncio.to_thread(w.close) for w in self._workers))


def _bcp47(language: str) -> str:
    """`en-us` -> `en-US`; scripts and variants stay as espeak-ng spells them."""
    parts = language.split("-")
    return "-".join([parts[0], *(p.upper() if len(p) == 2 else p for p in parts[1:])])
