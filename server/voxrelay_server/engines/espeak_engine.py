"""espeak-ng voices, synthesized in worker processes.

Its many languages become voices named `espeak/<language>`, e.g. `espeak/en-us`.
Each worker process (`espeak_worker`) holds one espeak-ng and speaks one segment
at a time; the engine keeps one more segment queued at each worker, so a worker
goes from one segment to the next without waiting for the server. A worker that
dies fails the segments it held and is started again for the next one.

A segment whose consumer stops taking its audio (its client is behind) does not hold
a worker: once `AHEAD_BYTES` of its audio wait, its worker is stopped at the start of
the last word received, and the text from that word is given to a worker again when
the consumer has taken the audio before it. The rest of a segment cut there starts
as a new utterance would, which a listener hears only in such a long segment.

Word timing comes from espeak-ng's own events: a word starts at its word event's
sample and ends where the next word starts or, before that, where a pause phoneme
(a clause's end) starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import itertools
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from voxrelay_server.engines.base import (
    SpeechEngine,
    SynthesisItem,
    SynthesisOptions,
    VoiceInfo,
)
from voxrelay_server.engines.espeak_library import BUFFER_MS, PAUSE
from voxrelay_server.engines.espeak_worker import (
    AUDIO,
    DONE,
    FAILED,
    FRAME_HEADER,
    READY,
    WORD_START,
    WORDS,
)
from voxrelay_server.engines.words import WordClock, spoken_words
from voxrelay_server.errors import EngineError, ErrorCode

_LOG = logging.getLogger(__name__)
ENGINE_NAME = "espeak"
NORMAL_WORDS_PER_MINUTE = 175
MIN_WORDS_PER_MINUTE = 80
MAX_WORDS_PER_MINUTE = 450
QUEUED_PER_WORKER = 1
"""Segments waiting at each worker behind the one it speaks."""
WORKER_COMMAND: Sequence[str] = (sys.executable, "-m", "voxrelay_server.engines.espeak_worker")
"""How a worker process is started."""
AHEAD_BYTES = 512 * 1024
"""A segment's audio not taken by its consumer (12 s at 22050 Hz) at which its worker is
stopped at a word (`_cut_point`)."""
MAX_UNCUT_AUDIO_S = 90.0
"""Most speech between two places a segment can be cut, at the slowest rate: 77 s
measured, for 400 braille patterns read by name (CJK 67 s, Myanmar 51 s, numbers with
separators 25 s, English 4 s). The look-ahead of a segment not taken is at most
`AHEAD_BYTES` plus this, plus a chunk on its way (`paused_segment_bytes`)."""
NUMBER_TOKEN_CHARS = 32
"""A run of characters with no space that espeak-ng may read as one number is cut
inside only this far into it: a longer one is not a number it reads whole."""
_PIPE_BYTES = 1 << 20
"""Pipe buffers of a worker: a segment's text always fits, and the worker's audio does
not wait while the server's event loop is busy."""


@dataclass(frozen=True)
class _Resume:
    """Where a segment cut at a word goes on: that word's first character in its job's text."""

    character: int


@dataclass(eq=False)
class _Job:
    """Part of a segment given to a worker (all of it, unless it was cut at a word).

    Its audio arrives on `queue`, then None, an error, or `_Resume` after a cut.
    """

    number: int
    text: str
    queue: asyncio.Queue[bytes | EngineError | _Resume | None] = field(
        default_factory=asyncio.Queue
    )
    over: bool = False
    waiting_bytes: int = 0
    """Audio on `queue` not yet taken by the consumer."""
    taken_samples: int = 0
    words: list[tuple[int, int]] = field(default_factory=list)
    """Where each word received so far starts: its first character, its first sample."""
    marks: list[tuple[int, int]] = field(default_factory=list)
    """Its words' starts and its pauses (character `PAUSE`), in order, for word timing."""


class _Worker:
    """One worker process and its jobs; its frames are read on the event loop.

    Reading on the loop (`add_reader`) rather than in a thread of its own: no
    thread hand-off and no GIL wait per chunk, and frames that arrived together
    are handled in one go.
    """

    def __init__(self) -> None:
        self._process: subprocess.Popen[bytes] | None = None
        self._jobs: dict[int, _Job] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        """The loop reading the worker's output; None until a job is submitted."""
        self._buffer = bytearray()
        self._output_closed = False
        """Its output ended: it is gone, even if it is not reaped yet."""
        self.ready: dict[str, Any] = {}

    @property
    def outstanding(self) -> int:
        return len(self._jobs)

    @property
    def pid(self) -> int | None:
        return self._process.pid if self.running and self._process is not None else None

    @property
    def running(self) -> bool:
        process = self._process
        return process is not None and not self._output_closed and process.poll() is None

    def start(self) -> None:
        """Start the process and wait until espeak-ng is loaded in it (blocking)."""
        process = subprocess.Popen(
            WORKER_COMMAND,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert process.stdin is not None and process.stdout is not None
        for pipe in (process.stdin, process.stdout):
            with contextlib.suppress(OSError, AttributeError):  # Linux only; a speed-up
                fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, _PIPE_BYTES)
        ready = _read_ready_frame(process.stdout)
        if ready is None:
            process.kill()
            process.wait()
            process.stdin.close()
            process.stdout.close()
            how = _how_it_ended(process.returncode)
            _LOG.warning("the espeak-ng worker %d did not start: it %s", process.pid, how)
            # Transient as far as a caller knows: the next segment starts another worker.
            raise EngineError(
                ErrorCode.UNAVAILABLE,
                f"the espeak-ng worker did not start (it {how}); retry, and if it keeps "
                "failing, see the server's log",
            )
        self.ready = ready
        self._buffer.clear()
        self._output_closed = False
        self._process = process

    def submit(self, job: _Job, identifier: str, text: str, words_per_minute: int) -> None:
        """Queue `job` at the worker; its frames go to `job` from now on (on this loop)."""
        process = self._process
        if process is None or process.stdout is None or not self.running:
            job.queue.put_nowait(_worker_exited(process))
            return
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self.detach()
            os.set_blocking(process.stdout.fileno(), False)
            loop.add_reader(process.stdout.fileno(), self._on_readable, process)
            self._loop = loop
        self._jobs[job.number] = job
        self._send(
            {
                "op": "speak",
                "job": job.number,
                "voice": identifier,
                "text": text,
                "wpm": words_per_minute,
            }
        )

    def stop(self, job: _Job) -> None:
        """Ask the worker to stop `job`; its audio is dropped from now on."""
        if self._jobs.pop(job.number, None) is not None:
            self._send({"op": "stop", "job": job.number})

    def detach(self) -> None:
        """Stop reading the worker's output on the loop (call it on that loop)."""
        loop, self._loop = self._loop, None
        if loop is not None and not loop.is_closed() and self._process is not None:
            assert self._process.stdout is not None
            loop.remove_reader(self._process.stdout.fileno())

    def close(self) -> None:
        """End the process: it exits when its input closes; killed if it does not.

        Blocking; `detach()` first, on the loop.
        """
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
        assert process.stdout is not None
        process.stdout.close()

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
            pass  # the worker died: reading its output ends and fails its jobs

    def _on_readable(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stdout is not None
        try:
            data = os.read(process.stdout.fileno(), _PIPE_BYTES)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._output_closed = True
            self.abandon()
            return
        buffer = self._buffer
        buffer += data
        offset, size = 0, len(buffer)
        with memoryview(buffer) as view:
            while size - offset >= FRAME_HEADER.size:
                kind, number, length = FRAME_HEADER.unpack_from(view, offset)
                end = offset + FRAME_HEADER.size + length
                if end > size:
                    break
                self._dispatch(kind, number, bytes(view[offset + FRAME_HEADER.size : end]))
                offset = end
        del buffer[:offset]

    def _dispatch(self, kind: bytes, number: int, payload: bytes) -> None:
        job = self._jobs.get(number)
        if job is None:
            return  # stopped: its last frames are dropped
        if kind == AUDIO:
            job.queue.put_nowait(payload)
            job.waiting_bytes += len(payload)
            if job.waiting_bytes >= AHEAD_BYTES:
                self._cut(job)
            return
        if kind == WORDS:
            marks = list(WORD_START.iter_unpack(payload))
            job.marks += marks
            job.words += [mark for mark in marks if mark[0] != PAUSE]
            return
        del self._jobs[number]
        if kind == DONE:
            job.queue.put_nowait(None)
        elif kind == FAILED:
            failure = json.loads(payload)
            job.queue.put_nowait(EngineError(ErrorCode(failure["code"]), failure["message"]))
        else:
            message = f"the espeak-ng worker sent an unknown frame {kind!r}"
            job.queue.put_nowait(EngineError(ErrorCode.INTERNAL, message))

    def _cut(self, job: _Job) -> None:
        """Stop `job` at the last word that starts in the audio its consumer has not
        taken, drop the audio from there, and leave a `_Resume` for the consumer."""
        cut = next(
            (
                (character, sample)
                for character, sample in reversed(job.words)
                if sample >= job.taken_samples and _cut_point(job.text, character)
            ),
            None,
        )
        if cut is None:
            return  # no word starts in it yet
        self.stop(job)
        keep = (cut[1] - job.taken_samples) * 2
        audio = bytearray()
        while not job.queue.empty():
            item = job.queue.get_nowait()
            assert isinstance(item, bytes)  # the job was running: no end mark yet
            audio += item
        if keep:
            job.queue.put_nowait(bytes(audio[:keep]))
        job.queue.put_nowait(_Resume(cut[0]))
        job.waiting_bytes = keep

    def abandon(self) -> None:
        """The worker is gone (its output closed, or it exited): fail the jobs it held."""
        self.detach()
        orphans, self._jobs = list(self._jobs.values()), {}
        if orphans and self._process is not None:
            _LOG.warning(
                "the espeak-ng worker %d %s with %d segments in hand; they fail with "
                "UNAVAILABLE and a new worker starts for the next one",
                self._process.pid,
                _how_it_ended(self._process.poll()),
                len(orphans),
            )
        for job in orphans:
            job.queue.put_nowait(_worker_exited(self._process))


def chunk_bytes(rate_hz: int) -> int:
    """The size of the chunks espeak-ng makes (`BUFFER_MS` of audio)."""
    return rate_hz * BUFFER_MS // 1000 * 2


def paused_segment_bytes(rate_hz: int) -> int:
    """The most audio kept for a segment whose consumer takes none: `AHEAD_BYTES`, then
    audio until a place it can be cut, and a chunk on its way from the worker."""
    return AHEAD_BYTES + int(MAX_UNCUT_AUDIO_S * rate_hz) * 2 + 2 * chunk_bytes(rate_hz)


def _cut_point(text: str, character: int) -> bool:
    """Whether a segment may be cut before `character`, where espeak-ng reported a
    word start, and the rest spoken on its own with the same meaning.

    After a space, yes. Inside a run of characters with no space, espeak-ng reports
    words (braille patterns, CJK characters, a letter after a digit) but also digit
    groups of a number it reads whole ("1,234,567"): there only away from digits, or
    far enough into the run that it is not a number read whole.
    """
    if not 0 < character < len(text) or text[character].isspace():
        return False
    before = text[character - 1]
    if before.isspace() or not (before.isdigit() or text[character].isdigit()):
        return True
    start = character
    while start > 0 and not text[start - 1].isspace():
        start -= 1
    return character - start >= NUMBER_TOKEN_CHARS


def _worker_exited(process: subprocess.Popen[bytes] | None) -> EngineError:
    code = process.poll() if process is not None else None
    return EngineError(
        ErrorCode.UNAVAILABLE,
        f"the espeak-ng worker process ended during synthesis (it {_how_it_ended(code)}); retry",
    )


def _how_it_ended(returncode: int | None) -> str:
    """`exited with code 1`, `was killed by SIGKILL`, or (not reaped yet) `closed its output`."""
    if returncode is None:
        return "closed its output"
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with code {returncode}"


def _read_ready_frame(stream: IO[bytes]) -> dict[str, Any] | None:
    """The worker's first frame, READY, read blocking; None if it ended instead."""
    header = stream.read(FRAME_HEADER.size)
    if len(header) < FRAME_HEADER.size:
        return None
    kind, _, length = FRAME_HEADER.unpack(header)
    payload = stream.read(length)
    if kind != READY or len(payload) < length:
        return None
    ready: dict[str, Any] = json.loads(payload)
    return ready


class EspeakEngine(SpeechEngine):
    """espeak-ng's languages as voices, synthesized in `workers` worker processes."""

    name = ENGINE_NAME
    word_timing = True

    def __init__(self, workers: int = 1) -> None:
        if workers < 1:
            raise ValueError(f"espeak needs at least one worker process, not {workers}")
        self._workers = [_Worker() for _ in range(workers)]
        self._job_numbers = itertools.count(1)
        self._restart_lock = threading.Lock()
        self._live: set[_Job] = set()
        """The job of each segment being spoken."""
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
        self.max_chunk_bytes = chunk_bytes(rate)
        self.paused_segment_bytes = paused_segment_bytes(rate)
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
    def waiting_audio_bytes(self) -> int:
        """Audio received from the workers that the segments' consumers have not taken."""
        return sum(job.waiting_bytes for job in self._live)

    @property
    def worker_pids(self) -> list[int | None]:
        """The process id of each worker; None for one not running."""
        return [worker.pid for worker in self._workers]

    async def synthesize(
        self, voice: VoiceInfo, text: str, options: SynthesisOptions
    ) -> AsyncIterator[bytes]:
        async for item in self._speak(voice, text, options, None):
            assert isinstance(item, bytes)  # no clock: audio only
            yield item

    async def synthesize_words(
        self, voice: VoiceInfo, text: str, options: SynthesisOptions
    ) -> AsyncIterator[SynthesisItem]:
        async for item in self._speak(voice, text, options, WordClock(spoken_words(text))):
            yield item

    async def _speak(
        self, voice: VoiceInfo, text: str, options: SynthesisOptions, clock: WordClock | None
    ) -> AsyncIterator[SynthesisItem]:
        """The audio of `text`; with `clock`, its words' timing too (see `WordClock`)."""
        words_per_minute = round(NORMAL_WORDS_PER_MINUTE * options.speed)
        words_per_minute = max(MIN_WORDS_PER_MINUTE, min(MAX_WORDS_PER_MINUTE, words_per_minute))
        identifier = self._identifiers[voice.name]
        worker, job = await self._submit(identifier, text, words_per_minute)
        base = (0, 0)  # where `job` starts in the segment's text and audio (after cuts)
        marks_read = 0
        try:
            while (item := await job.queue.get()) is not None:
                if isinstance(item, EngineError):
                    raise item
                if isinstance(item, _Resume):  # cut at a word: the rest, anew
                    self._live.discard(job)
                    base = (base[0] + item.character, base[1] + job.taken_samples)
                    marks_read = 0
                    rest = job.text[item.character :]
                    worker, job = await self._submit(identifier, rest, words_per_minute)
                    continue
                job.waiting_bytes -= len(item)
                job.taken_samples += len(item) // 2
                if clock is None:
                    yield item
                    continue
                # The marks in this chunk's audio (not beyond: a cut drops what follows).
                while marks_read < len(job.marks) and job.marks[marks_read][1] < job.taken_samples:
                    _mark(clock, job.marks[marks_read], base)
                    marks_read += 1
                for ready in clock.audio(item):
                    yield ready
            job.over = True
            if clock is not None:
                for mark in job.marks[marks_read:]:
                    _mark(clock, mark, base)
                for ready in clock.finish():
                    yield ready
        finally:
            self._live.discard(job)
            if not job.over:
                worker.stop(job)

    async def _submit(
        self, identifier: str, text: str, words_per_minute: int
    ) -> tuple[_Worker, _Job]:
        """Give `text` to the worker with the fewest jobs (started again if it died)."""
        worker = min(self._workers, key=lambda w: w.outstanding)
        if not worker.running:
            worker.abandon()  # its output may not have reported the end yet
            await asyncio.to_thread(self._restart, worker)
        job = _Job(next(self._job_numbers), text)
        self._live.add(job)
        worker.submit(job, identifier, text, words_per_minute)
        return worker, job

    def _restart(self, worker: _Worker) -> None:
        with self._restart_lock:
            if not worker.running:
                worker.close()
                worker.start()

    async def aclose(self) -> None:
        for worker in self._workers:
            worker.detach()
        await asyncio.gather(*(asyncio.to_thread(w.close) for w in self._workers))


def _mark(clock: WordClock, mark: tuple[int, int], base: tuple[int, int]) -> None:
    """Tell `clock` of a word start or a pause of a job starting at `base` (its first
    character and sample in the segment)."""
    character, sample = mark
    if character == PAUSE:
        clock.end(base[1] + sample)
    elif (index := clock.word_at(base[0] + character)) is not None:
        clock.start(index, base[1] + sample)


def _bcp47(language: str) -> str:
    """`en-us` -> `en-US`; scripts and variants stay as espeak-ng spells them."""
    parts = language.split("-")
    return "-".join([parts[0], *(p.upper() if len(p) == 2 else p for p in parts[1:])])
