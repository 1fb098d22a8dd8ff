"""Per-session bookkeeping shared by the metrics, tracing and logging observers.

The dispatcher reports raw steps (`SessionObserver`); every observer here needs
the same derived facts: when a segment's text arrived and when its first audio
left, how its synthesis ended, when a segment or turn is over for good.
`TimelineObserver` derives them once and calls `on_*` hooks that subclasses
override, so the three observers cannot disagree on what a segment's outcome or
time to first audio is.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

from voxrelay_server.errors import SpeechError
from voxrelay_server.observer import SessionObserver
from voxrelay_server.playback import PlaybackClock
from voxrelay_server.settings import SessionSettings


class SegmentOutcome(enum.Enum):
    """How a segment's synthesis ended."""

    OK = "ok"
    """The engine produced all of its audio."""
    ERROR = "error"
    """The engine failed on it."""
    CANCELLED = "cancelled"
    """Stopped or never run: barge-in, a client that went away, or another failure."""


@dataclass(eq=False)
class SegmentRecord:
    """What is known about one segment. Times are `time.monotonic()` seconds."""

    turn: int
    segment: int
    text_chars: int
    released_at: float
    started_at: float | None = None
    engine_first_audio_at: float | None = None
    first_audio_at: float | None = None
    """When its first audio message was handed to gRPC."""
    playback_gap_s: float | None = None
    """How long a listener playing its turn at real-time pace from the turn's first
    audio had nothing left to play when this segment's first audio went out (0: it
    was in time); None for the turn's first segment."""
    samples_sent: int = 0
    outcome: SegmentOutcome | None = None
    error: SpeechError | None = None
    delivery_over: bool = False
    """All of its audio was sent, or it was dropped: no more audio will follow."""
    finished: bool = False

    @property
    def time_to_first_audio_s(self) -> float | None:
        """From the text completing the segment to its first audio message."""
        if self.first_audio_at is None:
            return None
        return self.first_audio_at - self.released_at

    @property
    def engine_latency_s(self) -> float | None:
        """From the engine getting a synthesis slot to its first audio."""
        if self.started_at is None or self.engine_first_audio_at is None:
            return None
        return self.engine_first_audio_at - self.started_at


@dataclass(eq=False)
class TurnRecord:
    """What is known about one turn."""

    turn: int
    opened_at: float
    segments: list[SegmentRecord] = field(default_factory=list)
    text_chars: int = 0
    samples_sent: int = 0
    first_audio_at: float | None = None
    playback: PlaybackClock = field(default_factory=PlaybackClock)
    """A listener's playback of the turn's audio, at real-time pace from when it is sent."""
    cancelled: bool = False
    completed: bool = False
    """TURN_ENDED was sent; False for a turn cut short by the end of its session."""
    finished: bool = False


class TimelineObserver(SessionObserver):
    """A `SessionObserver` that keeps per-segment and per-turn records.

    Subclasses override the `on_*` hooks, never the `SessionObserver` methods.
    Guarantees to the hooks: `on_turn_opened` before anything else of that turn;
    `on_segment_finished` exactly once per released segment, when its synthesis
    is over (or will never run) and no more of its audio will be sent;
    `on_turn_finished` exactly once per turn, after its segments finished
    (except segments whose cancelled synthesis is still unwinding); at session
    end, every segment and turn finishes before `on_session_ended`.
    """

    def __init__(self, session_id: str, settings: SessionSettings) -> None:
        self.session_id = session_id
        self.settings = settings
        self.started_at = time.monotonic()
        self.turn_count = 0
        self.segment_count = 0
        self.samples_sent = 0
        self.first_segment: SegmentRecord | None = None
        # Only unfinished turns and segments are kept, so a session that runs for
        # hours holds no more than its look-ahead.
        self._turns: dict[int, TurnRecord] = {}
        self._segments: dict[tuple[int, int], SegmentRecord] = {}
        self._delivering: SegmentRecord | None = None

    @property
    def audio_seconds(self) -> float:
        """Audio sent to the caller so far, in seconds of the session's output."""
        return self.samples_sent / self.settings.output.sample_rate_hz

    @property
    def engine(self) -> str:
        """The engine part of the session's voice (`tone` of `tone/square`)."""
        return self.settings.voice.partition("/")[0]

    # Hooks for subclasses.

    def on_turn_opened(self, turn: TurnRecord) -> None:
        """The turn's first text or TURN_STARTED was seen."""

    def on_segment_released(self, segment: SegmentRecord, text: str) -> None:
        """The segment's text is complete and queued for synthesis."""

    def on_segment_started(self, segment: SegmentRecord) -> None:
        """The segment got a synthesis slot."""

    def on_engine_first_audio(self, segment: SegmentRecord) -> None:
        """The engine produced the segment's first audio."""

    def on_first_audio(self, segment: SegmentRecord, *, first_of_turn: bool) -> None:
        """The segment's first audio message was sent; `first_of_turn` if the turn's first."""

    def on_audio_sent(self, segment: SegmentRecord, samples: int) -> None:
        """An audio message of `samples` samples was sent."""

    def on_segment_finished(self, segment: SegmentRecord) -> None:
        """The segment is over; `segment.outcome` is set."""

    def on_turn_finished(self, turn: TurnRecord) -> None:
        """The turn is over: TURN_ENDED was sent (`completed`) or the session ended."""

    def on_session_ended(self, error: SpeechError | None) -> None:
        """The session is over; every segment and turn has finished."""

    # SessionObserver: derive the records, then call the hooks.

    def turn_started(self, turn: int) -> None:
        self._turn(turn)

    def segment_released(self, turn: int, segment: int, text: str) -> None:
        turn_record = self._turn(turn)
        record = SegmentRecord(turn, segment, len(text), time.monotonic())
        self._segments[(turn, segment)] = record
        self.segment_count += 1
        if self.first_segment is None:
            self.first_segment = record
        turn_record.segments.append(record)
        turn_record.text_chars += len(text)
        self.on_segment_released(record, text)

    def segment_started(self, turn: int, segment: int) -> None:
        record = self._segments.get((turn, segment))
        if record is not None:
            record.started_at = time.monotonic()
            self.on_segment_started(record)

    def segment_engine_first_audio(self, turn: int, segment: int) -> None:
        record = self._segments.get((turn, segment))
        if record is not None:
            record.engine_first_audio_at = time.monotonic()
            self.on_engine_first_audio(record)

    def segment_synthesized(
        self, turn: int, segment: int, *, error: SpeechError | None, cancelled: bool
    ) -> None:
        record = self._segments.get((turn, segment))
        if record is None or record.outcome is not None:
            return
        if error is not None:
            record.outcome, record.error = SegmentOutcome.ERROR, error
        elif cancelled:
            record.outcome = SegmentOutcome.CANCELLED
        else:
            record.outcome = SegmentOutcome.OK
        self._finish_if_over(record)

    def audio_sent(self, turn: int, segment: int, *, samples: int, first: bool) -> None:
        record = self._segments.get((turn, segment))
        if record is None:
            return
        # Delivery is strictly ordered: audio of this segment means the one
        # delivered before it is done.
        if self._delivering is not None and self._delivering is not record:
            self._delivering.delivery_over = True
            self._finish_if_over(self._delivering)
        self._delivering = record
        turn_record = self._turn(turn)
        # `first` is not relied on: the first message of a segment is the one
        # that finds no earlier audio recorded for it.
        if record.first_audio_at is None:
            now = time.monotonic()
            record.first_audio_at = now
            first_of_turn = turn_record.first_audio_at is None
            if first_of_turn:
                turn_record.first_audio_at = now
            else:
                record.playback_gap_s = max(0.0, now - turn_record.playback.runs_out_at)
            self.on_first_audio(record, first_of_turn=first_of_turn)
        turn_record.playback.sent(samples / self.settings.output.sample_rate_hz)
        record.samples_sent += samples
        turn_record.samples_sent += samples
        self.samples_sent += samples
        self.on_audio_sent(record, samples)

    def turn_ended(self, turn: int, *, cancelled: bool) -> None:
        turn_record = self._turn(turn)
        turn_record.cancelled = cancelled
        turn_record.completed = True
        if self._delivering is not None and self._delivering.turn == turn:
            self._delivering = None
        for record in turn_record.segments:
            record.delivery_over = True
            if record.outcome is None and record.started_at is None:
                # Dropped before it got a synthesis slot: it will never run.
                record.outcome = SegmentOutcome.CANCELLED
            self._finish_if_over(record)
        self._finish_turn(turn_record)

    def session_ended(self, error: SpeechError | None) -> None:
        # The dispatcher has stopped every synthesis task by now: whatever is
        # still open was cut short.
        self._delivering = None
        for record in list(self._segments.values()):
            record.delivery_over = True
            if record.outcome is None:
                record.outcome = SegmentOutcome.CANCELLED
            self._finish_if_over(record)
        for turn_record in list(self._turns.values()):
            turn_record.cancelled = True
            self._finish_turn(turn_record)
        self.on_session_ended(error)

    def _turn(self, turn: int) -> TurnRecord:
        record = self._turns.get(turn)
        if record is None:
            record = TurnRecord(turn, time.monotonic())
            self._turns[turn] = record
            self.turn_count += 1
            self.on_turn_opened(record)
        return record

    def _finish_if_over(self, record: SegmentRecord) -> None:
        if record.finished or record.outcome is None or not record.delivery_over:
            return
        record.finished = True
        del self._segments[(record.turn, record.segment)]
        self.on_segment_finished(record)

    def _finish_turn(self, record: TurnRecord) -> None:
        if not record.finished:
            record.finished = True
            del self._turns[record.turn]
            self.on_turn_finished(record)
