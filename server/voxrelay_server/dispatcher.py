"""The per-session ordered concurrent dispatcher.

A short pipeline, each stage with one job and explicit state:

    text ──> SentenceSplitter ──> timeline (turn marks and segment jobs, in order)
                                      │
               scheduler: starts up to `max_inflight_segments` jobs, in order
                                      │
    events() <── merger: walks the timeline in order, streaming the head job's
                 audio through a SegmentEncoder as it is produced

Input methods (`send_text`, `turn_done`, `cancel`, `close`) never wait, so a
caller can keep feeding text while earlier turns speak. Nothing here polls: the
merger sleeps on an event or on the head job's queue. The dispatcher knows
nothing about gRPC; it speaks in `voxrelay_server.events`.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from voxrelay_server.audio import SegmentEncoder
from voxrelay_server.errors import EngineError, ErrorCode, InvalidInput, SpeechError
from voxrelay_server.events import (
    AudioOut,
    SegmentFailed,
    SessionEnded,
    SessionEvent,
    TurnEnded,
    TurnStarted,
)
from voxrelay_server.settings import MAX_TEXT_CHUNK_CHARS, OutputFormat
from voxrelay_server.splitter import SentenceSplitter

Synthesize = Callable[[str], AsyncIterator[bytes]]
"""Speaks one segment's text: int16 LE PCM chunks at the voice's native rate."""


@dataclass(eq=False)
class _Turn:
    number: int
    segments: int = 0
    cancelled: bool = False


@dataclass(eq=False)
class _TurnStart:
    turn: _Turn


@dataclass(eq=False)
class _TurnEnd:
    turn: _Turn


@dataclass(eq=False)
class _SessionEnd:
    pass


_END_OF_AUDIO = None


@dataclass(eq=False)
class _SegmentJob:
    """One segment: its text, its synthesis task and the audio it produced so far."""

    turn: _Turn
    number: int
    text: str
    audio: asyncio.Queue[bytes | SpeechError | None] = field(default_factory=asyncio.Queue)
    task: asyncio.Task[None] | None = None
    holds_slot: bool = False
    """Counts against the in-flight limit: started and not yet delivered or dropped."""
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True
        if self.task is not None:
            self.task.cancel()
        self.audio.put_nowait(_END_OF_AUDIO)  # wakes the merger if it waits on this job


_Entry = _TurnStart | _SegmentJob | _TurnEnd | _SessionEnd


class _SegmentFailure(Exception):
    def __init__(self, job: _SegmentJob, error: SpeechError) -> None:
        self.job = job
        self.error = error


class SessionDispatcher:
    """Turns one session's text into one ordered stream of `SessionEvent`s."""

    def __init__(
        self,
        synthesize: Synthesize,
        *,
        native_rate_hz: int,
        output: OutputFormat,
        min_sentence_chars: int,
        max_inflight_segments: int,
    ) -> None:
        self._synthesize = synthesize
        self._native_rate_hz = native_rate_hz
        self._output = output
        self._max_inflight = max_inflight_segments
        self._splitter = SentenceSplitter(min_sentence_chars)
        self._timeline: collections.deque[_Entry] = collections.deque()
        self._timeline_grew = asyncio.Event()
        self._waiting_jobs: collections.deque[_SegmentJob] = collections.deque()
        self._inflight = 0
        self._turn_count = 0
        self._open_turn: _Turn | None = None
        self._delivering: _SegmentJob | None = None
        self._input_closed = False
        self._ended = False
        self._failure: SpeechError | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def output(self) -> OutputFormat:
        """The format of the audio this session emits."""
        return self._output

    @property
    def inflight_segments(self) -> int:
        """Segments started and not yet delivered."""
        return self._inflight

    # Input side: never blocks.

    def send_text(self, text: str) -> None:
        """Add a chunk of text to the current turn, starting one if needed."""
        if not self._accepting_input():
            return
        if not text:
            raise InvalidInput("text must not be empty: send at least one character")
        if len(text) > MAX_TEXT_CHUNK_CHARS:
            raise InvalidInput(
                f"text chunk of {len(text)} characters is over the limit of "
                f"{MAX_TEXT_CHUNK_CHARS}: split it into smaller chunks"
            )
        turn = self._open_turn or self._start_turn()
        segment = self._splitter.feed(text)
        if segment:
            self._release(turn, segment)

    def turn_done(self) -> None:
        """End the current turn: speak what is buffered. No-op without text since the last."""
        if self._accepting_input() and self._open_turn is not None:
            self._end_turn(self._open_turn, speak_rest=True)

    def cancel(self) -> None:
        """Barge-in: drop everything accepted so far that has not been delivered."""
        if not self._accepting_input():
            return
        self._waiting_jobs.clear()  # first, so freed slots start nothing that is dropped
        for job in self._undelivered_jobs():
            job.turn.cancelled = True
            self._drop(job)
        turn = self._open_turn
        if turn is not None:
            if self._splitter.clear():
                turn.cancelled = True
            self._end_turn(turn, speak_rest=False)

    def close(self) -> None:
        """The caller is done sending: finish every accepted turn, then end the session."""
        if not self._accepting_input():
            return
        if self._open_turn is not None:
            self._end_turn(self._open_turn, speak_rest=True)
        self._input_closed = True
        self._append(_SessionEnd())

    def fail(self, error: SpeechError) -> None:
        """Abort the session: `events()` raises `error` as soon as it can."""
        if self._failure is None and not self._ended:
            self._failure = error
            self._drop_everything()
            self._timeline_grew.set()

    async def aclose(self) -> None:
        """Stop every synthesis task of this session and wait until they are gone."""
        self._ended = True
        self._drop_everything()
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # Output side: the merger.

    async def events(self) -> AsyncIterator[SessionEvent]:
        """The session's events in wire order; raises the error given to `fail()`."""
        turn_offset = 0
        while True:
            entry = await self._next_entry()
            if isinstance(entry, _TurnStart):
                turn_offset = 0
                yield TurnStarted(entry.turn.number)
            elif isinstance(entry, _TurnEnd):
                yield TurnEnded(entry.turn.number, cancelled=entry.turn.cancelled)
            elif isinstance(entry, _SessionEnd):
                self._ended = True
                yield SessionEnded()
                return
            else:
                self._delivering = entry
                try:
                    async for audio in self._deliver(entry, turn_offset):
                        turn_offset += len(audio.data) // self._output.encoding.bytes_per_sample
                        yield audio
                except _SegmentFailure as failure:
                    self._ended = True
                    self._drop_everything()
                    yield SegmentFailed(failure.job.turn.number, failure.job.number, failure.error)
                    yield SessionEnded()
                    return
                finally:
                    # Also reached when the consumer stops early: the job must not run on.
                    self._delivering = None
                    self._drop(entry)

    async def _next_entry(self) -> _Entry:
        while True:
            if self._failure is not None:
                raise self._failure
            if self._timeline:
                return self._timeline.popleft()
            self._timeline_grew.clear()
            await self._timeline_grew.wait()

    async def _deliver(self, job: _SegmentJob, turn_offset: int) -> AsyncIterator[AudioOut]:
        encoder = SegmentEncoder(self._native_rate_hz, self._output)
        offset = turn_offset
        while True:
            item = await job.audio.get()
            if job.cancelled or self._failure is not None:
                return
            if isinstance(item, SpeechError):
                raise _SegmentFailure(job, item)
            messages = encoder.finish() if item is _END_OF_AUDIO else encoder.push(item)
            for data in messages:
                yield AudioOut(job.turn.number, job.number, data, offset)
                offset += len(data) // self._output.encoding.bytes_per_sample
            if item is _END_OF_AUDIO:
                return

    # The scheduler.

    def _release(self, turn: _Turn, text: str) -> None:
        turn.segments += 1
        job = _SegmentJob(turn, turn.segments, text)
        self._append(job)
        self._waiting_jobs.append(job)
        self._start_ready_jobs()

    def _start_ready_jobs(self) -> None:
        if self._ended or self._failure is not None:
            return
        while self._waiting_jobs and self._inflight < self._max_inflight:
            job = self._waiting_jobs.popleft()
            name = f"segment {job.turn.number}.{job.number}"
            job.task = asyncio.create_task(self._run(job), name=name)
            job.holds_slot = True
            self._inflight += 1
            self._tasks.add(job.task)
            job.task.add_done_callback(self._tasks.discard)

    async def _run(self, job: _SegmentJob) -> None:
        try:
            async for chunk in self._synthesize(job.text):
                if chunk:
                    job.audio.put_nowait(chunk)
        except SpeechError as error:
            job.audio.put_nowait(error)
            return
        except Exception as error:  # an engine bug must not take the session down silently
            job.audio.put_nowait(EngineError(ErrorCode.INTERNAL, f"engine failed: {error!r}"))
            return
        job.audio.put_nowait(_END_OF_AUDIO)

    def _settle(self, job: _SegmentJob) -> None:
        """The job is delivered or dropped: free its slot for the next one."""
        if job.holds_slot:
            job.holds_slot = False
            self._inflight -= 1
            self._start_ready_jobs()

    def _drop(self, job: _SegmentJob) -> None:
        job.cancel()
        self._settle(job)

    def _drop_everything(self) -> None:
        self._waiting_jobs.clear()
        for job in self._undelivered_jobs():
            self._drop(job)

    # Turns and the timeline.

    def _start_turn(self) -> _Turn:
        self._turn_count += 1
        turn = _Turn(self._turn_count)
        self._open_turn = turn
        self._append(_TurnStart(turn))
        return turn

    def _end_turn(self, turn: _Turn, *, speak_rest: bool) -> None:
        rest = self._splitter.flush().strip() if speak_rest else ""
        if rest:
            self._release(turn, rest)
        self._append(_TurnEnd(turn))
        self._open_turn = None

    def _append(self, entry: _Entry) -> None:
        self._timeline.append(entry)
        self._timeline_grew.set()

    def _undelivered_jobs(self) -> list[_SegmentJob]:
        jobs = [entry for entry in self._timeline if isinstance(entry, _SegmentJob)]
        if self._delivering is not None:
            jobs.insert(0, self._delivering)
        return jobs

    def _accepting_input(self) -> bool:
        return not (self._input_closed or self._ended or self._failure is not None)
