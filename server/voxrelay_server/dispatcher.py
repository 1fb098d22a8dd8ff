"""The per-session ordered concurrent dispatcher.

A short pipeline, each stage with one job and explicit state:

    text ──> SentenceSplitter ──> timeline (turn marks and segment jobs, in order)
                                      │
               scheduler: starts up to `max_inflight_segments` jobs, in order;
               each waits for room in the audio buffer and for a server-wide
               synthesis slot (`DeadlineScheduler`, which serves first the
               segment whose audio is due first) before its engine runs, and
               pauses, giving its slot back, while the client is behind
                                      │
    events() <── merger: walks the timeline in order, streaming the head job's
                 audio through a SegmentEncoder as it is produced

With word timing (`word_timestamps`), an engine yields the timing of the words
starting in each of its chunks before the chunk; the merger places them in the turn
(`word_timing.TurnWords`) and sends each right before the first message holding the
word's first sample.

Input methods (`send_text`, `turn_done`, `cancel`, `close`) never wait, so a
caller can keep feeding text while earlier turns speak. Nothing here polls: the
merger sleeps on an event or on the head job's queue. The dispatcher knows
nothing about gRPC; it speaks in `voxrelay_server.events` and reports its
progress to a `SessionObserver`.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field

from voxrelay_server.audio import SegmentEncoder, sample_output
from voxrelay_server.codecs import OggOpusTurn
from voxrelay_server.engines.base import SynthesisItem, WordTiming
from voxrelay_server.errors import EngineError, ErrorCode, InvalidInput, SpeechError
from voxrelay_server.events import (
    AudioOut,
    SessionEnded,
    SessionEvent,
    SessionFailed,
    TurnEnded,
    TurnStarted,
)
from voxrelay_server.observer import SessionObserver
from voxrelay_server.playback import Pacer, PlaybackClock
from voxrelay_server.settings import (
    DEFAULT_MAX_SEGMENT_CHARS,
    MAX_SEGMENT_ENDS,
    MAX_SPOKEN_TEXT_CHARS,
    MAX_TEXT_CHUNK_CHARS,
    AudioEncoding,
    OutputFormat,
)
from voxrelay_server.splitter import Segment, SentenceSplitter
from voxrelay_server.textclean import clean_text
from voxrelay_server.word_timing import TurnWords

_LOG = logging.getLogger(__name__)

Synthesize = Callable[[str], AsyncIterator[SynthesisItem]]
"""Speaks one segment's text: int16 LE PCM chunks at the voice's native rate, and (for
a session with word timing) the timing of the words starting in the chunk after."""
TYPICAL_SECONDS_PER_CHAR = 0.06
"""Speech per character of English text at normal speed (about 16 characters a
second): a session's first estimate, until its own segments show its pace."""
TYPICAL_FIRST_AUDIO_S = 0.25
"""Time from a segment's release to its engine's first audio: a session's first
estimate, until its own segments show theirs."""
DRY_LEAD_FACTOR = 2.0
"""The dry rule speaks waiting words this many first-audio times (plus `DRY_MARGIN_S`)
before the listener would run out of audio: a new segment's first audio then comes in
time even when it takes twice as long as the session's segments have so far. The
first-audio time is the longer of the session's average and its average per character
times the words waiting (an engine that makes a run whole, as piper does, takes longer
to the first audio of a longer text)."""
DRY_MARGIN_S = 0.05
SlotFactory = Callable[[PlaybackClock, float], AbstractAsyncContextManager[None]]
"""A server-wide synthesis slot for a segment of the session with this playback clock
and of about this many seconds of audio, held while the segment's engine runs; it
counts the estimate in the clock when it grants the slot."""


class SessionState(enum.Enum):
    """Where a session is in its life. It only moves down this list (FAILED may be
    skipped, and any state but CLOSED may go straight to CLOSED)."""

    OPEN = "open"
    """Taking text; turns are spoken as they complete."""
    FINISHING = "finishing"
    """The caller sends nothing more (`close()`): every accepted turn is spoken, then
    the session ends."""
    FAILED = "failed"
    """`fail()`, or an engine failed: nothing more is synthesized, and `events()`
    reports the error next."""
    ENDED = "ended"
    """`events()` sent `SessionEnded`: nothing follows."""
    CLOSED = "closed"
    """`aclose()` stopped every task and told the observer how the session ended."""


_RUNNING = (SessionState.OPEN, SessionState.FINISHING)
"""States in which segments are synthesized and delivered."""


@dataclass(frozen=True)
class SessionLimits:
    """Per-session bounds; each one, when hit, has a documented effect."""

    max_buffered_text_chars: int = 65536
    """Text accepted but not yet synthesized; more ends the session (RESOURCE_EXHAUSTED)."""
    max_segment_chars: int = DEFAULT_MAX_SEGMENT_CHARS
    """Longest segment given to an engine; longer runs are cut (see `SentenceSplitter`)."""
    audio_buffer_bytes: int = 1 << 20
    """Undelivered engine audio at which new segments wait, and segments being made
    pause, until the client reads (see `SessionDispatcher._behind`)."""
    idle_timeout_s: float = 0.0
    """No request and nothing to speak for this long ends the session; 0 = never."""


@dataclass(eq=False)
class _Turn:
    number: int
    segments: int = 0
    cancelled: bool = False
    kept_parts: list[str] = field(default_factory=list)
    """The start of the turn's text as sent, at most `MAX_SPOKEN_TEXT_CHARS` of it:
    `spoken_text` is a prefix of it joined (the caller, who sent the text, cuts its
    own copy beyond that with `TurnEnded.spoken_length`)."""
    length: int = 0
    """Characters of the turn's text as sent, kept or not."""
    released_chars: int = 0
    """Characters of its segments' texts (the rest is whitespace between them, or
    still in the splitter)."""
    gap_chars: int = 0
    """Its kept whitespace between segments counted in the session's text budget: while
    the turn waits to go on the wire, text the splitter strips is still held here."""
    on_wire: bool = False
    """Its TurnStarted was sent."""
    sent_samples: int = 0
    """Samples of the turn's audio handed out so far."""
    segment_ends: list[tuple[int, int]] = field(default_factory=list)
    """(sample, text end) where each segment whose audio is complete in the turn's
    stream ends, in order; at most `MAX_SEGMENT_ENDS`, the older ones thinned out
    (`add_segment_end`)."""
    word_ends: list[tuple[int, int]] = field(default_factory=list)
    """(sample, text end) where each word whose timing was sent ends, in order (with
    word timing only), thinned out like `segment_ends` (`add_word_end`)."""
    spoken: int | None = None
    """Set by the first `cancel` that cuts the turn or names it: how many characters of
    its text the listener heard. None: all of it, as it grows."""

    @property
    def kept_chars(self) -> int:
        """Characters of the turn's text kept for `spoken_text`."""
        return min(self.length, MAX_SPOKEN_TEXT_CHARS)

    def keep(self, text: str) -> None:
        """Add a chunk of the turn's text as sent, keeping what `spoken_text` may need."""
        room = MAX_SPOKEN_TEXT_CHARS - self.kept_chars
        if room > 0:
            self.kept_parts.append(text[:room])
        self.length += len(text)

    def add_segment_end(self, sample_end: int, text_end: int) -> None:
        """A segment's audio is complete in the turn's stream up to `sample_end`."""
        self.segment_ends = _with_end(self.segment_ends, sample_end, text_end)

    def add_word_end(self, sample_end: int, text_end: int) -> None:
        """A word whose timing was sent ends at `sample_end` of the turn's stream."""
        self.word_ends = _with_end(self.word_ends, sample_end, text_end)

    def spoken_length(self) -> int:
        """How many characters of the turn's text the listener heard (a prefix)."""
        return self.length if self.spoken is None else self.spoken

    def fix_heard(self, played_samples: int) -> None:
        """A cancel says the listener heard `played_samples` of the turn: it heard the
        segments (and, with word timing, the words) whose audio ends at or before that
        sample. No more of the turn is sent, so only that prefix is kept, and the ends
        are dropped."""
        end = 0
        for ends in (self.segment_ends, self.word_ends):
            for sample_end, text_end in ends:
                if sample_end > played_samples:
                    break
                end = max(end, text_end)
        self.spoken = end
        kept = "".join(self.kept_parts)[:end]
        self.kept_parts = [kept] if kept else []
        self.segment_ends = []
        self.word_ends = []

    def spoken_text(self) -> str:
        """The prefix of the turn's text the listener heard, at most
        `MAX_SPOKEN_TEXT_CHARS` of it."""
        return "".join(self.kept_parts)[: self.spoken_length()]


def _with_end(ends: list[tuple[int, int]], sample_end: int, text_end: int) -> list[tuple[int, int]]:
    """`ends` with (sample_end, text_end) added, at most `MAX_SEGMENT_ENDS` of them.

    A `Stream` turn has no length limit, so neither has its number of segments or
    words: past `MAX_SEGMENT_ENDS` every other end of the older half is dropped. A cut
    far behind the turn's end then lands on an earlier end (a shorter prefix, never
    text that was not heard); the latest half stays exact.
    """
    ends.append((sample_end, text_end))
    if len(ends) > MAX_SEGMENT_ENDS:
        half = len(ends) // 2
        return ends[: half - 1 : 2] + ends[half - 1 :]
    return ends


@dataclass(eq=False)
class _TurnStart:
    turn: _Turn


@dataclass(eq=False)
class _TurnEnd:
    turn: _Turn


@dataclass(eq=False)
class _SessionEnd:
    pass


@dataclass(eq=False)
class _Failure:
    """Not in the timeline: what `_next_entry` returns once the session failed."""

    error: SpeechError


_END_OF_AUDIO = None
_MERGE_BYTES = 16 * 1024
"""Most audio joined into one message when delivery is behind: fewer messages, while a
message handed to gRPC (which buffers it whole) stays small."""


class _SegmentAudio:
    """A segment's audio on its way from its engine task to the merger.

    Chunks (bytes), then one end mark: None, or the engine's error. One producer
    and one consumer, so a deque and a single waiter do what an asyncio.Queue
    does at a fraction of the cost per chunk; the merger may also peek.
    """

    __slots__ = ("_waiter", "items")

    def __init__(self) -> None:
        self.items: collections.deque[SynthesisItem | SpeechError | None] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None

    def put(self, item: SynthesisItem | SpeechError | None) -> None:
        self.items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self) -> None:
        """Return once an item is there."""
        while not self.items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None


@dataclass(eq=False)
class _SegmentJob:
    """One segment: its text, its synthesis task and the audio it produced so far."""

    turn: _Turn
    number: int
    text: str
    offset: int = 0
    """Where `text` starts in the turn's text as sent."""
    words: list[tuple[WordTiming, ...]] = field(default_factory=list)
    """Word timing the merger took from `audio` and has not placed in the turn yet."""
    audio: _SegmentAudio = field(default_factory=_SegmentAudio)
    task: asyncio.Task[None] | None = None
    buffered_bytes: int = 0
    """Its engine audio not yet taken by the merger."""
    made_audio: bool = False
    """Its engine has produced audio (the observer has been told of its first)."""
    paused: bool = False
    """Started, and waiting for the client to read before it goes on."""
    holds_slot: bool = False
    """Counts against the in-flight limit: started and not yet delivered or dropped."""
    ahead_s: float = 0.0
    """Its estimated audio not yet sent, counted in the session's playback clock from
    when it got a synthesis slot until it is delivered or dropped."""
    text_settled: bool = False
    """Its text no longer counts as buffered (synthesized, failed or dropped)."""
    released_at: float = field(default_factory=time.monotonic)
    previous: _SegmentJob | None = None
    """The session's segment released just before it, while this one has not started."""
    sounding: asyncio.Event = field(default_factory=asyncio.Event)
    """Set once its engine has made audio, or it is over without any."""
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True
        self.sounding.set()
        if self.task is not None:
            self.task.cancel()
        self.audio.put(_END_OF_AUDIO)  # wakes the merger if it waits on this job


_Entry = _TurnStart | _SegmentJob | _TurnEnd | _SessionEnd


class _JobDropped(Exception):
    """The head job was cancelled, or the session failed: deliver nothing more of it."""


class _SegmentFailure(Exception):
    def __init__(self, error: SpeechError) -> None:
        self.error = error


def _unlimited_slot(clock: PlaybackClock, estimate_s: float) -> AbstractAsyncContextManager[None]:
    return _NoSlot(clock, estimate_s)


class _NoSlot(AbstractAsyncContextManager[None]):
    def __init__(self, clock: PlaybackClock, estimate_s: float) -> None:
        self._clock = clock
        self._estimate_s = estimate_s

    async def __aenter__(self) -> None:
        self._clock.granted(self._estimate_s)

    async def __aexit__(self, *_: object) -> None:
        return None


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
        first_clause_words: int = 0,
        language: str = "",
        stall_s: float = 0.0,
        limits: SessionLimits | None = None,
        synthesis_slot: SlotFactory | None = None,
        paused_segment_bytes: int = 0,
        stagger_while: Callable[[], bool] | None = None,
        word_timestamps: bool = False,
        observer: SessionObserver | None = None,
        session_id: str = "",
        voice: str = "",
        pacer: Pacer | None = None,
    ) -> None:
        self.session_id = session_id
        """Names the session in logs and in messages to its caller."""
        self.voice = voice
        """The name of the voice the session speaks with, for the transport to report."""
        self.pacer = pacer
        """Paced delivery: each audio message waits until a real-time listener is within
        the pacer's lead of it. None: audio goes out as fast as it is made and read."""
        self._synthesize = synthesize
        self._native_rate_hz = native_rate_hz
        self._output = output
        self._segment_output = sample_output(output)
        """What each segment's encoder makes: `output`, or float samples for Ogg Opus."""
        self._ogg = output.encoding is AudioEncoding.OGG_OPUS
        """Ogg Opus: one stream per turn, encoded from the segments' float samples."""
        self._bytes_per_sample = self._segment_output.encoding.bytes_per_sample
        self._max_inflight = max_inflight_segments
        self._limits = limits or SessionLimits()
        self._synthesis_slot = synthesis_slot or _unlimited_slot
        self._paused_segment_bytes = paused_segment_bytes
        """What the engine may keep for each paused segment, outside this session's buffer."""
        self._stagger_while = stagger_while
        """While this says so (the engine makes nothing else), a segment starts once the
        one released before it has made audio: the engine makes a lone segment's audio
        faster, and the head segment's first audio is what a listener waits for (a next
        one has the head's audio to play to be ready). Under load nothing is made alone,
        and waiting would only make the next segment late."""
        self._last_released: _SegmentJob | None = None
        self._word_timestamps = word_timestamps
        """Send word timing (`WordsOut`) from what `synthesize` yields beside audio."""
        self._paused = 0  # segments paused part-way
        self._playback = PlaybackClock()
        """When this session's audio is due: the scheduler serves the most urgent first."""
        self._spoken_s = 0.0  # audio and text of the segments delivered whole
        self._spoken_chars = 0
        self._observer = observer or SessionObserver()
        self._splitter = SentenceSplitter(
            min_sentence_chars, self._limits.max_segment_chars, first_clause_words, language
        )
        self._stall_s = stall_s
        """The start of a turn stalled this long speaks its complete words; 0 = never."""
        self._stall_timer: asyncio.TimerHandle | None = None
        self._dry_rule = first_clause_words > 0
        """Speak a turn's waiting words before its listener runs out of audio."""
        self._dry_timer: asyncio.TimerHandle | None = None
        self._dry_at = 0.0
        """When the dry timer fires (`time.monotonic()`)."""
        self._first_audio_s = TYPICAL_FIRST_AUDIO_S
        """How long this session's segments took from release to first audio (smoothed)."""
        self._first_audio_s_per_char: float | None = None
        """The same per character of the segment's text; None until a segment has
        made audio."""
        self._timeline: collections.deque[_Entry] = collections.deque()
        self._timeline_grew = asyncio.Event()
        self._waiting_jobs: collections.deque[_SegmentJob] = collections.deque()
        self._inflight = 0
        self._turn_count = 0
        self._open_turn: _Turn | None = None
        self._live_turns: dict[int, _Turn] = {}
        """Turns started and whose `TurnEnded` has not been sent, by number, in order."""
        self._delivering: _SegmentJob | None = None
        self._state = SessionState.OPEN
        self._error: SpeechError | None = None
        """What the session failed with (FAILED, and after it); None while it has not."""
        self._failed_segment = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._queued_text_chars = 0  # in released jobs whose synthesis has not finished
        self._gap_chars = 0
        """Whitespace between segments kept by turns not yet on the wire (`_Turn.gap_chars`)."""
        self._buffered_audio_bytes = 0
        self._audio_waiters: list[asyncio.Future[None]] = []
        self._text_waiters: list[asyncio.Future[None]] = []
        self._last_input = time.monotonic()
        self._last_output = self._last_input
        self._awaiting_input = False
        """The merger waits for input: nothing to speak. Only then can a session be idle."""
        self._idle_timer: asyncio.TimerHandle | None = None

    @property
    def state(self) -> SessionState:
        """Where the session is in its life."""
        return self._state

    @property
    def error(self) -> SpeechError | None:
        """What the session failed with, once it has; None while it has not."""
        return self._error

    @property
    def output(self) -> OutputFormat:
        """The format of the audio this session emits."""
        return self._output

    @property
    def inflight_segments(self) -> int:
        """Segments started and not yet delivered."""
        return self._inflight

    @property
    def buffered_text_chars(self) -> int:
        """Text accepted and not yet synthesized: the splitter's buffer, queued segments
        and the whitespace between segments of turns not yet on the wire."""
        return self._queued_text_chars + len(self._splitter.buffered) + self._gap_chars

    @property
    def kept_text_chars(self) -> int:
        """Characters of its turns' text the session keeps for `TurnEnded.spoken_text`
        (see `memory.kept_turn_text_chars` for their bound)."""
        return sum(len(part) for turn in self._live_turns.values() for part in turn.kept_parts)

    @property
    def text_budget_chars(self) -> int:
        """Most text this session holds waiting to be spoken."""
        return self._limits.max_buffered_text_chars

    @property
    def buffered_audio_bytes(self) -> int:
        """Engine audio produced and not yet delivered."""
        return self._buffered_audio_bytes

    # Input side: never blocks.

    def send_text(self, text: str) -> None:
        """Add a chunk of text to the current turn, starting one if needed."""
        if not self._accepting_input():
            return
        self._last_input = time.monotonic()
        if not text:
            raise InvalidInput("text must not be empty: send at least one character")
        if len(text) > MAX_TEXT_CHUNK_CHARS:
            raise InvalidInput(
                f"text chunk of {len(text)} characters is over the limit of "
                f"{MAX_TEXT_CHUNK_CHARS}: split it into smaller chunks"
            )
        limit = self._limits.max_buffered_text_chars
        if self.buffered_text_chars + len(text) > limit:
            raise SpeechError(
                ErrorCode.RESOURCE_EXHAUSTED,
                f"{self.buffered_text_chars + len(text)} characters would be waiting to be "
                f"spoken, over this server's limit of {limit} per session: send text about "
                "as fast as it is spoken, or end turns so it can be synthesized",
            )
        turn = self._open_turn or self._start_turn()
        turn.keep(text)  # as sent: cleaning keeps every position
        for segment in self._splitter.feed_segments(clean_text(text)):
            self._release(turn, segment)
        self._count_gaps(turn)
        if self._stall_s:
            self._watch_for_stall()
        self._watch_for_dry()

    async def send_text_when_room(self, text: str) -> None:
        """`send_text`, first waiting until the text budget has room for `text`.

        For a caller holding a whole text (the Synthesize rpc): it feeds the text
        as synthesis frees room instead of being refused. When no room can come
        (the text not yet cut into segments fills the budget alone), `send_text`
        raises RESOURCE_EXHAUSTED as usual.
        """
        limit = self._limits.max_buffered_text_chars
        while (
            self._accepting_input()
            and self.buffered_text_chars + len(text) > limit
            and (self._queued_text_chars > 0 or self._gap_chars > 0)
            and len(self._splitter.buffered) + len(text) <= limit
        ):
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._text_waiters.append(waiter)
            await waiter
        self.send_text(text)

    def turn_done(self) -> None:
        """End the current turn: speak what is buffered. No-op without text since the last."""
        self._last_input = time.monotonic()
        if self._accepting_input() and self._open_turn is not None:
            self._end_turn(self._open_turn, speak_rest=True)

    def cancel(self, *, turn: int = 0, played_samples: int = 0) -> None:
        """Barge-in: drop everything accepted so far that has not been delivered.

        `turn` and `played_samples` say where the listener stopped (sample
        `played_samples` of turn `turn`, counted from the turn's start); they change
        only what each turn's `TurnEnded.spoken_text` says was heard:

        - the named turn, if it is being spoken or queued: the segments (and, with word
          timing, the words sent) whose audio ends at or before `played_samples`,
          clamped to the samples sent before this cancel (audio not sent was not
          heard). `turn` 0 with `played_samples` names the first turn not yet ended;
          both 0: the position is unknown;
        - every other turn this cancels: the segments whose audio was all sent
          before it; a named turn that is not being spoken or queued (ended, or not
          yet started) is ignored, and so counted this way.
        """
        self._last_input = time.monotonic()
        if not self._accepting_input():
            return
        live = self._live_turns
        named = live.get(turn) if turn else next(iter(live.values()), None)
        if not turn and not played_samples:
            named = None
        self._waiting_jobs.clear()  # first, so freed slots start nothing that is dropped
        for job in self._undelivered_jobs():
            job.turn.cancelled = True
            self._drop(job)
        # Dropped jobs leave the timeline now, with their text: a client that does not
        # read must not pile up what it cancels.
        self._timeline = collections.deque(
            entry for entry in self._timeline if not isinstance(entry, _SegmentJob)
        )
        open_turn = self._open_turn
        if open_turn is not None:
            if self._splitter.clear():
                open_turn.cancelled = True
            self._end_turn(open_turn, speak_rest=False)
        for affected in live.values():
            if affected.spoken is not None:
                continue  # an earlier cancel fixed what was heard
            if affected is named:
                affected.fix_heard(min(played_samples, affected.sent_samples))
            elif affected.cancelled:
                affected.fix_heard(affected.sent_samples)
            self._count_gaps(affected)

    def close(self) -> None:
        """The caller is done sending: finish every accepted turn, then end the session."""
        if not self._accepting_input():
            return
        if self._open_turn is not None:
            self._end_turn(self._open_turn, speak_rest=True)
        self._state = SessionState.FINISHING
        self._append(_SessionEnd())

    def fail(self, error: SpeechError) -> None:
        """Abort the session: `events()` sends `SessionFailed` and `SessionEnded` next,
        dropping the audio not yet delivered. Ignored once the session has ended or failed."""
        self._fail(error)

    async def aclose(self, error: SpeechError | None = None) -> None:
        """Stop every synthesis task of this session and wait until they are gone.

        A session that has not ended counts as ended by `error`, by default
        CANCELLED: its caller went away.
        """
        if self._state is SessionState.CLOSED:
            return
        if self._state in _RUNNING:
            self._error = error or SpeechError(ErrorCode.CANCELLED, "the caller went away")
        self._state = SessionState.CLOSED
        for timer in (self._idle_timer, self._stall_timer, self._dry_timer):
            if timer is not None:
                timer.cancel()
        self._drop_everything()
        for task in self._tasks:
            task.cancel()
        try:
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
        finally:  # told even if this wait is cancelled: the session is over either way
            self._observer.session_ended(self._error)

    def _end(self) -> None:
        if self._state is not SessionState.CLOSED:
            self._state = SessionState.ENDED

    def _fail(self, error: SpeechError, segment: int = 0) -> None:
        if self._state in _RUNNING:
            self._state = SessionState.FAILED
            self._error = error
            self._failed_segment = segment
            self._drop_everything()
            self._timeline_grew.set()

    # Output side: the merger.

    async def events(self) -> AsyncIterator[SessionEvent]:
        """The session's events in wire order, ending with `SessionEnded`.

        A failure (`fail()`, an engine's error) comes as `SessionFailed`, naming the
        turn in progress on the wire, right before `SessionEnded`.
        """
        turn_offset = 0
        wire_turn = 0  # started on the wire and not yet ended
        ogg: OggOpusTurn | None = None  # the turn's Ogg Opus stream
        ogg_segment = 0  # the segment whose audio last went into it, and its place
        ogg_place = (0, 0)
        ogg_fed = 0  # samples of the turn given to the Ogg encoder
        rate = self._output.sample_rate_hz
        words: TurnWords | None = None  # the turn's word timing not sent yet
        words_done = 0  # with Ogg, the last segment whose audio is all in the encoder
        pacer = self.pacer
        while True:
            entry = await self._next_entry()
            if isinstance(entry, _TurnStart):
                turn_offset = ogg_fed = words_done = 0
                wire_turn = entry.turn.number
                entry.turn.on_wire = True
                self._count_gaps(entry.turn)  # its text is the listener's now, capped
                if self._word_timestamps:
                    words = TurnWords(
                        wire_turn, self._native_rate_hz, rate, entry.turn.add_word_end
                    )
                if self._ogg:
                    ogg = OggOpusTurn(rate, chunk_samples=rate * self._output.chunk_ms // 1000)
                yield TurnStarted(wire_turn)
                self._observer.turn_started(wire_turn)
            elif isinstance(entry, _TurnEnd):
                if ogg is not None:
                    # The end of the turn's stream: the audio still in the encoder and
                    # the end-of-stream page, so the turn's chunks make a whole file.
                    tail = await ogg.close()
                    ogg = None
                    for chunk in tail:
                        if pacer is not None:
                            if not entry.turn.cancelled:  # a cancelled turn's end goes now
                                await pacer.wait()
                            pacer.sent(chunk.samples / rate)
                        if words:
                            for timing in words.due(turn_offset + chunk.samples):
                                yield timing
                        entry.turn.sent_samples = turn_offset + chunk.samples
                        yield AudioOut(wire_turn, ogg_segment, chunk.data, turn_offset, *ogg_place)
                        turn_offset += chunk.samples
                    if tail:
                        samples = sum(chunk.samples for chunk in tail)
                        self._observer.audio_sent(
                            wire_turn, ogg_segment, samples=samples, first=False
                        )
                if words:  # the words of segments all sent, rounded past their end
                    for timing in words.rest(words_done, turn_offset):
                        yield timing
                    words.clear()
                wire_turn = 0
                self._live_turns.pop(entry.turn.number, None)
                spoken_text = entry.turn.spoken_text()
                yield TurnEnded(
                    entry.turn.number,
                    cancelled=entry.turn.cancelled,
                    spoken_text=spoken_text,
                    spoken_beyond=entry.turn.spoken_length() - len(spoken_text),
                )
                self._observer.turn_ended(entry.turn.number, cancelled=entry.turn.cancelled)
            elif isinstance(entry, _SessionEnd):
                self._end()
                yield SessionEnded()
                return
            elif isinstance(entry, _Failure):
                self._end()
                yield SessionFailed(entry.error, wire_turn, self._failed_segment)
                yield SessionEnded()
                return
            else:
                # The head segment: stream its audio as the engine produces it. This
                # loop runs once per audio message, so it is kept flat and lean.
                job = entry
                self._delivering = job
                self._wake_audio_waiters()  # a new head job may go ahead of the budget
                encoder = SegmentEncoder(self._native_rate_hz, self._segment_output)
                turn, segment = job.turn.number, job.number
                speaking = job.turn
                place = (job.offset, len(job.text))
                report = self._observer.audio_sent
                played = self._played
                bytes_per_sample = self._bytes_per_sample
                segment_start = turn_offset
                words_start = turn_offset if ogg is None else ogg_fed
                first = True
                unreported = 0  # samples sent and not yet told to the observer
                ogg_segment, ogg_place = segment, place
                try:
                    while True:
                        pcm = await self._next_audio(job)
                        if job.words:
                            if words is not None:
                                for timings in job.words:
                                    words.add(segment, job.text, job.offset, words_start, timings)
                            job.words.clear()
                        batch = encoder.finish() if pcm is None else encoder.push(pcm)
                        for piece in batch if ogg is None else ogg.slices(batch):
                            if ogg is None:
                                messages: Iterable[tuple[bytes, int]] = (
                                    (piece, len(piece) // bytes_per_sample),
                                )
                            else:
                                ogg_fed += len(piece) // bytes_per_sample
                                messages = [(c.data, c.samples) for c in await ogg.encode(piece)]
                            for data, samples in messages:
                                if pacer is not None:
                                    await pacer.wait()  # interrupted by a cancel
                                    if job.cancelled:
                                        raise _JobDropped  # held back, never sent
                                    pacer.sent(samples / rate)
                                if words:  # the words whose first sample this holds
                                    for timing in words.due(turn_offset + samples):
                                        yield timing
                                # Counted before the yield: once yielded, it was handed out.
                                speaking.sent_samples = turn_offset + samples
                                yield AudioOut(turn, segment, data, turn_offset, *place)
                                turn_offset += samples
                                if first:  # on its own: its time is the segment's first audio
                                    first = False
                                    report(turn, segment, samples=samples, first=True)
                                    played(job, samples / rate)
                                else:
                                    unreported += samples
                                if job.cancelled:  # barge-in or failure while this was sent
                                    raise _JobDropped
                        if unreported:
                            report(turn, segment, samples=unreported, first=False)
                            played(job, unreported / rate)
                            unreported = 0
                        if pcm is None:
                            self._learn_pace(job.text, (turn_offset - segment_start) / rate)
                            # Where its audio ends in the turn: in what was sent, or for
                            # Ogg in what the encoder was given (its pages may follow).
                            audio_end = turn_offset if ogg is None else ogg_fed
                            speaking.add_segment_end(audio_end, sum(place))
                            if words and ogg is None:
                                for timing in words.rest(segment, turn_offset):
                                    yield timing
                            words_done = segment
                            break
                except _JobDropped:
                    # Cancelled, or the session failed: `_next_entry` reports that. Its
                    # words not sent go with its audio (with Ogg, the turn's end sends
                    # what the encoder holds, and the words in it).
                    if words is not None and ogg is None:
                        words.clear()
                except _SegmentFailure as failure:
                    self._fail(failure.error, segment)
                finally:
                    # Also reached when the consumer stops early: the job must not run on.
                    if unreported:
                        report(turn, segment, samples=unreported, first=False)
                        played(job, unreported / rate)
                    self._delivering = None
                    self._drop(job)

    async def _next_entry(self) -> _Entry | _Failure:
        self._last_output = time.monotonic()
        while True:
            if self._state is SessionState.FAILED or (
                self._state is SessionState.CLOSED and self._error is not None
            ):  # closed before it ended: a consumer still reading hears why
                assert self._error is not None
                return _Failure(self._error)
            if self._timeline:
                return self._timeline.popleft()
            self._timeline_grew.clear()
            if self._limits.idle_timeout_s and self._idle_timer is None:
                self._arm_idle_timer(self._limits.idle_timeout_s)
            self._awaiting_input = True
            try:
                await self._timeline_grew.wait()
            finally:
                self._awaiting_input = False

    # The stall rule: words waiting at the start of a turn when the text stops coming.

    def _watch_for_stall(self) -> None:
        """(Re)start the stall timer while the start of a turn waits for more text."""
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None
        if self._splitter.at_turn_start and self._splitter.buffered.strip():
            loop = asyncio.get_running_loop()
            self._stall_timer = loop.call_later(self._stall_s, self._on_stall)

    def _on_stall(self) -> None:
        self._stall_timer = None
        turn = self._open_turn
        if self._accepting_input() and turn is not None and self._splitter.at_turn_start:
            words = self._splitter.take_segment()
            if words is not None:
                self._release(turn, words)

    # The dry rule: words waiting in the middle of a turn when the listener is about to
    # hear everything released so far (the text comes slower than it is spoken there,
    # say a long sentence after a short first clause).

    def _watch_for_dry(self) -> None:
        """Speak the waiting words now if the listener would otherwise run out of audio
        before a new segment's first audio could come, else check again by then."""
        turn = self._open_turn
        if (
            not self._dry_rule
            or turn is None
            or self._splitter.at_turn_start
            or self._queued_text_chars  # released text is still being synthesized
            or not self._accepting_input()
        ):
            return
        now = time.monotonic()
        buffered_s = self._buffered_audio_bytes / 2 / self._native_rate_hz
        slack_s = max(self._playback.runs_out_at - now, 0.0) + buffered_s
        lead_s = DRY_LEAD_FACTOR * self._first_audio_estimate_s() + DRY_MARGIN_S
        if slack_s <= lead_s:
            if (words := self._splitter.take_segment()) is not None:
                self._release(turn, words)
            return
        fire_at = now + slack_s - lead_s
        if self._dry_timer is not None:
            if self._dry_at <= fire_at:
                return  # it fires first, and checks again
            self._dry_timer.cancel()
        self._dry_at = fire_at
        self._dry_timer = asyncio.get_running_loop().call_later(slack_s - lead_s, self._on_dry)

    def _first_audio_estimate_s(self) -> float:
        """How long the words waiting now would take to their first audio if released."""
        per_char = self._first_audio_s_per_char or 0.0
        return max(self._first_audio_s, per_char * len(self._splitter.buffered.strip()))

    def _on_dry(self) -> None:
        self._dry_timer = None
        self._watch_for_dry()

    # The idle timeout: one timer per session, moved on only when it fires, so
    # waiting for input costs no timer (or task) of its own.

    def _arm_idle_timer(self, delay_s: float) -> None:
        self._idle_timer = asyncio.get_running_loop().call_later(delay_s, self._check_idle)

    def _check_idle(self) -> None:
        self._idle_timer = None
        timeout = self._limits.idle_timeout_s
        if self._state is not SessionState.OPEN:
            return
        if not self._awaiting_input:  # speaking (or synthesizing): not idle
            self._arm_idle_timer(timeout)
            return
        idle_for = time.monotonic() - max(self._last_input, self._last_output)
        if idle_for < timeout:
            self._arm_idle_timer(timeout - idle_for)
            return
        self.fail(
            SpeechError(
                ErrorCode.DEADLINE_EXCEEDED,
                f"the session was idle for {timeout:g} s (no request and nothing to "
                "speak) and was closed: open a new stream when there is more to say",
            )
        )

    async def _next_audio(self, job: _SegmentJob) -> bytes | None:
        """The head job's next engine audio, joined with what else waits; None at its end.

        Raises `_SegmentFailure` when its engine failed and `_JobDropped` when it was
        cancelled or the session failed.
        """
        items = job.audio.items
        while True:
            if not items:
                await job.audio.wait()
            item = items.popleft()
            if job.cancelled or self._state not in _RUNNING:
                raise _JobDropped
            if not isinstance(item, tuple):
                break
            job.words.append(item)  # word timing: placed by the merger
        if isinstance(item, SpeechError):
            raise _SegmentFailure(item)
        if item is None:
            return None
        # When delivery is behind, send what has piled up as one message.
        parts = [item]
        size = len(item)
        while size < _MERGE_BYTES and items:
            queued = items[0]
            if isinstance(queued, tuple):
                job.words.append(queued)
                items.popleft()
                continue
            if not isinstance(queued, bytes):
                break  # the end or an error: left for the next call
            items.popleft()
            parts.append(queued)
            size += len(queued)
        pcm = parts[0] if len(parts) == 1 else b"".join(parts)
        self._buffered_audio_bytes -= len(pcm)
        job.buffered_bytes -= len(pcm)
        self._wake_audio_waiters()
        return pcm

    # The scheduler.

    def _release(self, turn: _Turn, segment: Segment) -> None:
        text = segment.text
        turn.segments += 1
        job = _SegmentJob(turn, turn.segments, text, segment.offset)
        turn.released_chars += len(text)
        if self._stagger_while is not None:
            job.previous, self._last_released = self._last_released, job
        self._queued_text_chars += len(text)
        self._append(job)
        self._waiting_jobs.append(job)
        self._observer.segment_released(turn.number, job.number, text)
        self._count_gaps(turn)
        self._start_ready_jobs()

    def _start_ready_jobs(self) -> None:
        if self._state not in _RUNNING:
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
        error: SpeechError | None = None
        started = False
        chunks: AsyncIterator[SynthesisItem] | None = None
        try:
            if (previous := job.previous) is not None:
                job.previous = None
                if self._stagger_while is not None and self._stagger_while():
                    await previous.sounding.wait()
            estimate_s = self._estimated_audio_s(job.text)
            while True:
                await self._wait_for_audio_room(job, started=started)
                # A segment counts its estimate in the playback clock once, when it first
                # gets a slot; a paused one takes a slot again as a segment due when its
                # session's audio runs out, which is far off while the client is behind.
                async with self._synthesis_slot(self._playback, 0.0 if started else estimate_s):
                    if chunks is None:
                        if self._behind(job):
                            # The client fell behind while this waited for a slot: give
                            # the slot (and the estimate it counted) back rather than add
                            # to the audio the client has not read.
                            self._playback.finished(estimate_s)
                            continue
                        started = True
                        job.ahead_s = estimate_s  # counted in the clock by the slot's grant
                        self._observer.segment_started(job.turn.number, job.number)
                        chunks = self._synthesize(job.text)
                    if await self._synthesize_into(job, chunks):
                        break
                # Paused: the client is behind, and the slot went back to the server
                # until it has read enough of this session's audio.
        except asyncio.CancelledError:
            if started:
                self._observer.segment_synthesized(
                    job.turn.number, job.number, error=None, cancelled=True
                )
            raise
        except SpeechError as failure:
            _LOG.warning(
                "engine failed on segment %d.%d of session %s: %s",
                job.turn.number,
                job.number,
                self.session_id,
                failure,
            )
            error = failure
        except Exception:  # an engine bug: logged, and the caller told in general
            _LOG.exception(
                "engine failed on segment %d.%d of session %s",
                job.turn.number,
                job.number,
                self.session_id,
            )
            error = EngineError(
                ErrorCode.INTERNAL,
                f"the engine failed on this segment (session {self.session_id}); it has been "
                "logged: retry, and report it if it persists",
            )
        finally:
            job.sounding.set()
            self._settle_text(job)
            if isinstance(chunks, AsyncGenerator):
                await chunks.aclose()  # a cancelled engine stops now, not when collected
        self._observer.segment_synthesized(
            job.turn.number, job.number, error=error, cancelled=False
        )
        job.audio.put(error if error is not None else _END_OF_AUDIO)

    async def _synthesize_into(
        self, job: _SegmentJob, chunks: AsyncIterator[SynthesisItem]
    ) -> bool:
        """Move the engine's audio into `job` until the engine is done (True) or the
        client is so far behind that the segment must pause (False)."""
        async for chunk in chunks:
            if isinstance(chunk, tuple):  # word timing: no audio of its own
                job.audio.put(chunk)
                continue
            if not chunk:
                continue
            self._buffered_audio_bytes += len(chunk)
            job.buffered_bytes += len(chunk)
            job.audio.put(chunk)
            if not job.made_audio:
                job.made_audio = True
                job.sounding.set()
                latency_s = time.monotonic() - job.released_at
                self._first_audio_s += 0.3 * (latency_s - self._first_audio_s)
                per_char = latency_s / max(len(job.text.strip()), 1)
                if self._first_audio_s_per_char is None:
                    self._first_audio_s_per_char = per_char
                else:
                    self._first_audio_s_per_char += 0.3 * (per_char - self._first_audio_s_per_char)
                self._observer.segment_engine_first_audio(job.turn.number, job.number)
                if job is self._delivering:
                    # The merger waits for exactly this: let it send the first audio
                    # now, not once the engine next pauses (it may not for a while).
                    await asyncio.sleep(0)
            if self._behind(job):
                return False
        return True

    # The playback clock: how urgent this session's next segment is.

    def _estimated_audio_s(self, text: str) -> float:
        """Audio `text` should make, at this session's pace so far (or a typical one)."""
        if self._spoken_chars:
            return len(text) * self._spoken_s / self._spoken_chars
        return len(text) * TYPICAL_SECONDS_PER_CHAR

    def _learn_pace(self, text: str, audio_s: float) -> None:
        self._spoken_s += audio_s
        self._spoken_chars += len(text)

    def _played(self, job: _SegmentJob, audio_s: float) -> None:
        estimated = min(audio_s, job.ahead_s)
        job.ahead_s -= estimated
        self._playback.sent(audio_s, estimated)

    async def _wait_for_audio_room(self, job: _SegmentJob, *, started: bool) -> None:
        """Wait while the client is behind on reading (`_behind`): before a segment
        starts, or while a started one is paused."""
        if not self._behind(job):
            return
        job.paused = started
        self._paused += started
        try:
            while self._behind(job):
                waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                self._audio_waiters.append(waiter)
                await waiter
        finally:
            self._paused -= started
            job.paused = False
            if started:
                self._wake_audio_waiters()  # it no longer counts against the others

    def _behind(self, job: _SegmentJob) -> bool:
        """Whether `job` must wait before it starts, or pause once started, because the
        client is behind on reading.

        The head segment (the only one the merger takes audio from) never waits to
        start, and pauses once its own undelivered audio fills the buffer. Any other
        waits or pauses once the session's does, counting for each paused segment
        what its engine may keep for it. So a session holds about twice its buffer
        plus its paused segments' engine look-ahead, whatever its text, and a paused
        segment holds no synthesis slot.
        """
        limit = self._limits.audio_buffer_bytes
        if job is self._head_job():
            return job.made_audio and job.buffered_bytes >= limit
        paused_others = self._paused - job.paused
        return self._buffered_audio_bytes + paused_others * self._paused_segment_bytes >= limit

    def _wake_audio_waiters(self) -> None:
        waiters, self._audio_waiters = self._audio_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _head_job(self) -> _SegmentJob | None:
        if self._delivering is not None:
            return self._delivering
        return next((e for e in self._timeline if isinstance(e, _SegmentJob)), None)

    def _settle(self, job: _SegmentJob) -> None:
        """The job is delivered or dropped: free its slot for the next one."""
        if job.holds_slot:
            job.holds_slot = False
            self._inflight -= 1
            self._start_ready_jobs()

    def _settle_text(self, job: _SegmentJob) -> None:
        if not job.text_settled:
            job.text_settled = True
            self._queued_text_chars -= len(job.text)
            if not self._queued_text_chars:
                self._watch_for_dry()
            self._wake_text_waiters()

    def _wake_text_waiters(self) -> None:
        waiters, self._text_waiters = self._text_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _count_gaps(self, turn: _Turn) -> None:
        """Count in the text budget the whitespace between segments that `turn` keeps
        while it waits to go on the wire: the splitter strips it, so nothing else
        bounds a queue of turns that send only whitespace. Once on the wire (or fixed
        by a cancel), a turn keeps at most `MAX_SPOKEN_TEXT_CHARS`, and counts none."""
        gaps = 0
        if not turn.on_wire and turn.spoken is None:
            buffered = len(self._splitter.buffered) if turn is self._open_turn else 0
            gaps = max(0, min(turn.length - turn.released_chars - buffered, turn.kept_chars))
        self._gap_chars += gaps - turn.gap_chars
        freed = gaps < turn.gap_chars
        turn.gap_chars = gaps
        if freed:
            self._wake_text_waiters()

    def _drop(self, job: _SegmentJob) -> None:
        if job is self._delivering and self.pacer is not None:
            self.pacer.interrupt()  # the audio it holds back is dropped: go on now
        if job.ahead_s:
            self._playback.finished(job.ahead_s)
            job.ahead_s = 0.0
        if not job.cancelled:
            # Audio it produced but nobody will deliver no longer counts as buffered.
            self._buffered_audio_bytes -= job.buffered_bytes
            job.buffered_bytes = 0
            job.audio.items.clear()
            self._wake_audio_waiters()
        job.cancel()
        self._settle_text(job)
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
        self._live_turns[turn.number] = turn
        self._append(_TurnStart(turn))
        return turn

    def _end_turn(self, turn: _Turn, *, speak_rest: bool) -> None:
        rest = self._splitter.flush_segment() if speak_rest else None
        if rest is not None:
            self._release(turn, rest)
        self._append(_TurnEnd(turn))
        self._open_turn = None
        self._count_gaps(turn)

    def _append(self, entry: _Entry) -> None:
        self._timeline.append(entry)
        self._timeline_grew.set()

    def _undelivered_jobs(self) -> list[_SegmentJob]:
        jobs = [entry for entry in self._timeline if isinstance(entry, _SegmentJob)]
        if self._delivering is not None:
            jobs.insert(0, self._delivering)
        return jobs

    def _accepting_input(self) -> bool:
        return self._state is SessionState.OPEN
