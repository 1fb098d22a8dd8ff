"""Sessions spread over replicas: the channel's balancing, retry of refused calls, and
the bookkeeping that resumes a session on another replica when its own is lost.

Everything here but `service_config` is pure bookkeeping, with no gRPC call in it:
`SessionLedger` keeps what the caller sent that the listener has not heard whole, maps
each call's turn, segment, sample and text numbering to the caller's, and says what a
new call must be sent to carry the session on.
"""

from __future__ import annotations

import enum
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field

import grpc

SPEECH_SERVICE = "voxrelay.v1.Speech"
MAX_TEXT_CHUNK_CHARS = 16384
"""The most characters the server takes in one `StreamRequest.text`."""
SPOKEN_TEXT_MAX_CHARS = 100000
"""`TurnEnded.spoken_text` holds at most this many characters, as the server's does."""
FORGET_CHARS = 65536
"""A turn lets go of the text before its first segment not received whole (beyond its
first `SPOKEN_TEXT_MAX_CHARS`, kept for `spoken_text`) once this much has gathered, so
a long turn keeps what a resume sends again, not all it was ever sent."""
MAX_WHOLE_MARKS = 1024
"""The most segment ends a turn keeps for a cancel's `spoken_text` (as the server
keeps): beyond it, every other end of the older half is let go, so a cancel far behind
the audio received may end `spoken_text` a segment or so early, never late."""


def service_config(*, health_check: bool = False) -> str:
    """The channel's service config (JSON for the `grpc.service_config` channel option).

    `round_robin` keeps a connection to every address the target resolves to and sends
    each new call to the next READY one, so sessions spread over replicas (the default,
    `pick_first`, would pin every call to one). With `health_check`, a replica whose
    `grpc.health.v1` status for voxrelay.v1.Speech is not SERVING (loading its voices,
    or draining after SIGTERM) gets no new call; `voxrelay serve` reports it, but a
    server embedded without its health status (`create_server`) would get none, so
    it is off unless asked for. `ListVoices`, which changes nothing, is retried by
    gRPC itself on UNAVAILABLE.
    """
    config: dict[str, object] = {
        "loadBalancingConfig": [{"round_robin": {}}],
        "methodConfig": [
            {
                "name": [{"service": SPEECH_SERVICE, "method": "ListVoices"}],
                "retryPolicy": {
                    "maxAttempts": 4,
                    "initialBackoff": "0.1s",
                    "maxBackoff": "1s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ],
    }
    if health_check:
        config["healthCheckConfig"] = {"serviceName": SPEECH_SERVICE}
    return json.dumps(config)


def channel_options(*, health_check: bool = False) -> tuple[tuple[str, int | str], ...]:
    """The options of every voxrelay client channel (`service_config`'s balancing)."""
    return (
        ("grpc.service_config", service_config(health_check=health_check)),
        # A replica that restarts is used again within a second or two, not after
        # gRPC's default reconnect backoff of up to two minutes.
        ("grpc.initial_reconnect_backoff_ms", 250),
        ("grpc.min_reconnect_backoff_ms", 250),
        ("grpc.max_reconnect_backoff_ms", 2000),
        # A replica lost without a reset (a host or a network gone) is noticed within
        # about 20 s; the server accepts pings every 10 s.
        ("grpc.keepalive_time_ms", 15000),
        ("grpc.keepalive_timeout_ms", 5000),
    )


@dataclass(frozen=True)
class RetryPolicy:
    """How the client retries a call refused before it produced anything, and how long
    it tries to resume a session on another replica.

    Each failure starts a run of attempts that ends when a new call's session starts;
    attempt n waits a random time between 0 and `initial_backoff_s *
    multiplier**(n - 1)` (at most `max_backoff_s`) before it opens its call (full
    jitter: callers refused together do not come back together). The run gives up,
    raising the last call's error, after `max_attempts` calls or `max_elapsed_s`.
    `RetryPolicy(max_attempts=1)` never retries.
    """

    max_attempts: int = 6
    """Calls in one run, the failed one included; at least 1."""
    max_elapsed_s: float = 20.0
    """Seconds from the failure after which no new attempt is made."""
    initial_backoff_s: float = 0.05
    max_backoff_s: float = 2.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if min(self.max_elapsed_s, self.initial_backoff_s, self.max_backoff_s) < 0:
            raise ValueError("retry times must not be negative")
        if self.multiplier < 1:
            raise ValueError("multiplier must be at least 1")

    def backoff_s(self, attempt: int, rng: random.Random | None = None) -> float:
        """How long to wait before retry number `attempt` (1 = the first retry)."""
        ceiling = min(self.max_backoff_s, self.initial_backoff_s * self.multiplier ** (attempt - 1))
        return (rng or random).uniform(0, ceiling)


RETRIED_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})
"""Codes of a call refused before its session started that another replica may accept:
UNAVAILABLE (loading its voices, draining, unreachable) and RESOURCE_EXHAUSTED (at
`--max-sessions`). After `session_started`, RESOURCE_EXHAUSTED means the text budget,
which another replica would refuse the same way."""


class Recovery(enum.Enum):
    """What the client does about a call that failed."""

    RETRY = "retry"
    """Refused before its session started: open the same session on another replica."""
    RESUME = "resume"
    """Lost after its session started: carry the session on on another replica."""
    FAIL = "fail"
    """Raise the error: another replica would fail the same way, or the caller said so."""


def recovery_for(code: grpc.StatusCode, *, started: bool, segment: int, resume: bool) -> Recovery:
    """What to do about a call that ended with `code`.

    `started`: the call's `session_started` arrived; `segment`: the `Error.segment` the
    server named (an engine's failure of one segment, not the replica's); `resume`: the
    caller lets sessions resume.
    """
    if not started:
        return Recovery.RETRY if code in RETRIED_CODES else Recovery.FAIL
    if resume and code is grpc.StatusCode.UNAVAILABLE and segment == 0:
        return Recovery.RESUME
    return Recovery.FAIL


class ConnectionState(enum.Enum):
    """Where a session's connection is; one value, `AsyncSession.state`."""

    IDLE = "idle"
    """Not opened yet."""
    OPENING = "opening"
    """A call is open; its `session_started` has not arrived."""
    STREAMING = "streaming"
    """The current call's session started."""
    RECONNECTING = "reconnecting"
    """The call failed; the session is being opened again (retried or resumed)."""
    ENDED = "ended"
    """`SessionEnded` arrived, or the session was left."""
    FAILED = "failed"
    """The session's error was raised."""


class TurnState(enum.Enum):
    """Where a turn of the caller's stands."""

    OPEN = "open"
    """Text may still be added."""
    DONE = "done"
    """`turn_done()` was sent: the server speaks the rest and ends it."""
    CANCELLED = "cancelled"
    """A `cancel()` dropped it: it is not sent again on a new call."""


@dataclass
class SegmentMark:
    """The latest segment of a turn with audio received, in the caller's numbering."""

    segment: int
    text_offset: int
    text_end: int
    start_sample: int
    """Where its audio starts in the turn."""
    end_sample: int
    """The end of its audio received so far."""


@dataclass
class TurnRecord:
    """One turn of the caller's that has not ended, with everything needed to send it
    again: its text, and where its audio stands."""

    number: int
    """The caller's turn number, from 1 in the order turns were begun."""
    chunks: list[str] = field(default_factory=list)
    length: int = 0
    state: TurnState = TurnState.OPEN
    announced: bool = False
    """Its `TurnStarted` was given to the caller."""
    mark: SegmentMark | None = None
    whole: list[tuple[int, int]] = field(default_factory=list)
    """(end sample, text end) of each segment received whole, in order."""
    delivered: int = 0
    """The end of the audio given to the caller, in samples from the turn's start."""
    cancel_at: int | None = None
    """The played position a cancel named for this turn, in the caller's samples."""
    # How the current call numbers this turn: its turn text starts at `text_base` of
    # the caller's, its samples at `sample_base`, its segments after `segment_base`.
    text_base: int = 0
    sample_base: int = 0
    segment_base: int = 0
    kept_from: int = 0
    """Where the text `chunks` hold starts in the turn: what is before it was heard whole
    (see `forget_before`)."""
    head: str = ""
    """The turn's first characters, up to `SPOKEN_TEXT_MAX_CHARS`, of those before
    `kept_from`: its `spoken_text` once that text is let go."""

    def text(self) -> str:
        """The turn's text as sent from `kept_from` on (all of it until a long turn
        lets its start go), joined."""
        if len(self.chunks) > 1:
            self.chunks = ["".join(self.chunks)]
        return self.chunks[0] if self.chunks else ""

    def text_from(self, offset: int) -> str:
        """The turn's text from character `offset` (at or after `kept_from`) on."""
        return self.text()[offset - self.kept_from :]

    def spoken(self, heard: int, limit: int = SPOKEN_TEXT_MAX_CHARS) -> str:
        """The turn's first `heard` characters, at most `limit` of them."""
        wanted = min(heard, limit)
        if wanted <= len(self.head):
            return self.head[:wanted]
        return self.head + self.text()[: wanted - self.kept_from]

    def forget_before(
        self,
        offset: int,
        *,
        forget_chars: int = FORGET_CHARS,
        head_chars: int = SPOKEN_TEXT_MAX_CHARS,
    ) -> None:
        """Let go of the text before `offset` (the start of the first segment not
        received whole, where any resume starts), keeping the turn's first `head_chars`
        for `spoken_text`; only once `forget_chars` have gathered, so a long turn is
        joined a few times, not once per segment."""
        if offset - self.kept_from < forget_chars:
            return
        text = self.text()
        if len(self.head) < head_chars:  # `head` is all the text before `kept_from`
            self.head += text[: min(offset - self.kept_from, head_chars - len(self.head))]
        self.chunks = [text[offset - self.kept_from :]]
        self.kept_from = offset

    def note_whole(self, end_sample: int, text_end: int, limit: int = MAX_WHOLE_MARKS) -> None:
        """A segment received whole ends at `end_sample` and `text_end`; beyond `limit`
        ends, every other one of the older half is let go."""
        self.whole.append((end_sample, text_end))
        if len(self.whole) > limit:
            half = len(self.whole) // 2
            self.whole[:half] = self.whole[1:half:2]

    def resume_point(self) -> tuple[int, int, int]:
        """(text offset, start sample, segment base): where a new call picks the turn up.

        The first segment not received whole is the latest one with audio (a segment
        is whole once the next one's audio or the turn's end arrives); before any
        audio, the turn's start.
        """
        if self.mark is None:
            return 0, 0, 0
        return self.mark.text_offset, self.mark.start_sample, self.mark.segment - 1

    def heard_locally(self) -> int:
        """Characters heard, for a cancelled turn whose end the server never sent: up
        to the last whole segment that ended by the cancel's position (any whole one
        when it named none)."""
        heard = 0
        for end_sample, text_end in self.whole:
            if self.cancel_at is None or end_sample <= self.cancel_at:
                heard = text_end
        return heard


@dataclass(frozen=True)
class AudioPlace:
    """A piece of audio renumbered for the caller."""

    turn: int
    segment: int
    offset_samples: int
    text_offset: int
    repeated_samples: int
    """Samples at its start that were already given to the caller before a resume."""


@dataclass(frozen=True)
class ResumePlan:
    """What a new call sends after its `config`, and what the caller is told."""

    requests: tuple[tuple[str, str], ...]
    """("text", chunk) and ("turn_done", "") in order."""
    turn: int
    """The caller's turn the new call continues (0: none was under way)."""
    segment: int
    """Its segment whose audio comes again from its start."""
    offset_samples: int
    repeated_samples: int
    text_offset: int
    finished: tuple[TurnRecord, ...]
    """Cancelled turns whose end the server never sent: the client ends them."""


class SessionLedger:
    """The caller's side of a session: its turns not yet ended and how the current
    call numbers them. Pure bookkeeping: the session feeds it what it sends and
    receives, and asks it what to send again on a new call.

    Memory: for each turn not yet ended, its text from its first segment not received
    whole (what a resume sends again: within the server's text budget, which a caller
    keeps, plus at most `forget_chars`), its first `head_chars` for `spoken_text`, and
    at most `max_whole_marks` segment ends; so a turn that runs for hours keeps about as
    much as a short one. The arguments are for tests; the defaults are the bounds.
    """

    def __init__(
        self,
        *,
        forget_chars: int = FORGET_CHARS,
        head_chars: int = SPOKEN_TEXT_MAX_CHARS,
        max_whole_marks: int = MAX_WHOLE_MARKS,
    ) -> None:
        self.forget_chars = forget_chars
        self.head_chars = head_chars
        self.max_whole_marks = max_whole_marks
        self.turns: dict[int, TurnRecord] = {}
        """Turns not yet ended, by the caller's number, in order."""
        self.turn_count = 0
        self.open_turn: TurnRecord | None = None
        self.closed = False
        """The caller is done sending (close())."""
        self.on_call: dict[int, TurnRecord] = {}
        """The current call's turns by its number for them."""
        self.call_turn_count = 0

    # What the caller sends.

    def add_text(self, text: str) -> TurnRecord:
        """Text for the open turn, which it begins when there is none."""
        turn = self.open_turn
        if turn is None:
            self.turn_count += 1
            turn = self.open_turn = TurnRecord(self.turn_count)
            self.turns[turn.number] = turn
            self.call_turn_count += 1
            self.on_call[self.call_turn_count] = turn
        turn.chunks.append(text)
        turn.length += len(text)
        return turn

    def turn_done(self) -> None:
        """The open turn is complete; nothing without text since the last turn."""
        if self.open_turn is not None:
            self.open_turn.state = TurnState.DONE
            self.open_turn = None

    def cancel(self, played_samples: int, turn: int) -> tuple[int, int]:
        """Every turn not ended is cancelled; returns `Cancel`'s (turn, played_samples)
        for the current call. A position before what the call was sent of the named
        turn (or in a turn the call does not have) is kept here and sent as unknown."""
        live = [record for record in self.turns.values() if record.state is not TurnState.CANCELLED]
        named: TurnRecord | None = None
        if turn:
            named = self.turns.get(turn)
        elif played_samples:
            named = live[0] if live else None
        for record in live:
            record.state = TurnState.CANCELLED
        self.open_turn = None
        if named is None or named not in live or not (turn or played_samples):
            return 0, 0
        if named.cancel_at is None:
            named.cancel_at = played_samples
        number = self._call_number(named)
        if number is None or played_samples < named.sample_base:
            return 0, 0
        return number, played_samples - named.sample_base

    def _call_number(self, record: TurnRecord) -> int | None:
        for number, candidate in self.on_call.items():
            if candidate is record:
                return number
        return None

    # What the current call sends.

    def turn_started(self, call_turn: int) -> int | None:
        """The caller's number for the call's TURN_STARTED, or None when the caller
        already had it (a turn sent again)."""
        record = self.on_call.get(call_turn)
        if record is None or record.announced:
            return None
        record.announced = True
        return record.number

    def audio(
        self,
        call_turn: int,
        segment: int,
        offset_samples: int,
        num_samples: int,
        text_offset: int,
        text_length: int,
    ) -> AudioPlace:
        """Renumber a piece of the call's audio for the caller and note it."""
        record = self.on_call.get(call_turn)
        if record is None:  # not a turn this client sent: pass it on as it is
            return AudioPlace(call_turn, segment, offset_samples, text_offset, 0)
        place = AudioPlace(
            record.number,
            record.segment_base + segment,
            record.sample_base + offset_samples,
            record.text_base + text_offset,
            0,
        )
        end = place.offset_samples + num_samples
        repeated = max(0, min(num_samples, record.delivered - place.offset_samples))
        mark = record.mark
        if mark is None or place.segment != mark.segment:
            if mark is not None and place.segment > mark.segment:
                record.note_whole(mark.end_sample, mark.text_end, self.max_whole_marks)
                record.forget_before(
                    place.text_offset, forget_chars=self.forget_chars, head_chars=self.head_chars
                )
            record.mark = SegmentMark(
                place.segment,
                place.text_offset,
                place.text_offset + text_length,
                place.offset_samples,
                end,
            )
        else:
            mark.text_end = place.text_offset + text_length
            mark.end_sample = max(mark.end_sample, end)
        record.delivered = max(record.delivered, end)
        return AudioPlace(
            place.turn, place.segment, place.offset_samples, place.text_offset, repeated
        )

    def words_place(self, call_turn: int, segment: int) -> tuple[int, int, int, int]:
        """(turn, segment, text base, sample base) for the call's word timing."""
        record = self.on_call.get(call_turn)
        if record is None:
            return call_turn, segment, 0, 0
        return record.number, record.segment_base + segment, record.text_base, record.sample_base

    def turn_ended(
        self, call_turn: int, cancelled: bool, spoken_length: int
    ) -> tuple[int, str, int]:
        """The caller's (turn, spoken text, heard characters) for the call's TURN_ENDED;
        the turn's text is let go."""
        record = self.on_call.pop(call_turn, None)
        if record is None:
            return call_turn, "", spoken_length
        self.turns.pop(record.number, None)
        if self.open_turn is record:
            self.open_turn = None
        if not cancelled:
            heard = record.length
        elif spoken_length > 0 and (
            record.cancel_at is None or record.cancel_at >= record.sample_base
        ):
            heard = record.text_base + spoken_length
        else:
            heard = record.heard_locally()
        return record.number, record.spoken(heard, self.head_chars), heard

    # A new call.

    def plan_resume(self) -> ResumePlan:
        """What a new call must be sent to carry the session on, and the new call's
        numbering: cancelled turns are ended here; every other turn not ended is sent
        again from its first segment not received whole (all of it, if it had no
        audio), with its `turn_done` when it was sent."""
        finished = tuple(
            record for record in self.turns.values() if record.state is TurnState.CANCELLED
        )
        for record in finished:
            del self.turns[record.number]
        self.on_call = {}
        self.call_turn_count = 0
        requests: list[tuple[str, str]] = []
        first: TurnRecord | None = None
        for record in self.turns.values():
            text_offset, start, segment_base = record.resume_point()
            record.text_base, record.sample_base, record.segment_base = (
                text_offset,
                start,
                segment_base,
            )
            self.call_turn_count += 1
            self.on_call[self.call_turn_count] = record
            first = first or record
            rest = record.text_from(text_offset)
            requests.extend(("text", piece) for piece in split_chunks(rest))
            if record.state is TurnState.DONE:
                requests.append(("turn_done", ""))
        if first is None or first.mark is None:
            return ResumePlan(tuple(requests), first.number if first else 0, 0, 0, 0, 0, finished)
        mark = first.mark
        return ResumePlan(
            tuple(requests),
            first.number,
            mark.segment,
            mark.start_sample,
            first.delivered - mark.start_sample,
            mark.text_offset,
            finished,
        )


def split_chunks(text: str, limit: int = MAX_TEXT_CHUNK_CHARS) -> Iterator[str]:
    """`text` in chunks the server takes (at most `limit` characters each), in order.

    Characters are code points, as the server counts them: a Python `str` holds
    code points, so a cut never splits one (nor a UTF-8 sequence on the wire).
    An empty `text` yields nothing.
    """
    for start in range(0, len(text), limit):
        yield text[start : start + limit]
