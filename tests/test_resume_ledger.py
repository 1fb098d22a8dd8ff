"""The resume bookkeeping as pure functions: a model server speaks what each call is
sent and is cut anywhere, any number of times; what the caller gets, repeated samples
skipped, is what one uncut call gives."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from voxrelay.replicas import (
    FORGET_CHARS,
    MAX_WHOLE_MARKS,
    Recovery,
    RetryPolicy,
    SessionLedger,
    TurnState,
    recovery_for,
    split_chunks,
)


@dataclass(frozen=True)
class Out:
    """One message of a model call: kind "start", "audio" or "end"."""

    kind: str
    turn: int
    segment: int = 0
    offset: int = 0
    samples: tuple[int, ...] = ()
    text_offset: int = 0
    text_length: int = 0


def model_call(requests: list[tuple[str, str]], chunk: int) -> list[Out]:
    """What a server says for `requests`: turns begun by text, ended by turn_done, cut
    into sentences (a segment starts at a non-space and ends at a full stop), each
    segment's audio its characters' codes twice over, in pieces of `chunk` samples."""
    turns: list[str] = []
    open_turn = False
    for kind, text in requests:
        if kind == "text":
            if not open_turn:
                turns.append("")
                open_turn = True
            turns[-1] += text
        else:
            open_turn = False
    out: list[Out] = []
    for number, text in enumerate(turns, 1):
        out.append(Out("start", number))
        offset = 0
        for segment, match in enumerate(re.finditer(r"[^.\s][^.]*\.?", text), 1):
            spoken = match.group().rstrip()
            audio = [code for char in spoken for code in (ord(char), ord(char))]
            for start in range(0, len(audio), chunk):
                piece = tuple(audio[start : start + chunk])
                out.append(Out("audio", number, segment, offset, piece, match.start(), len(spoken)))
                offset += len(piece)
        out.append(Out("end", number))
    return out


@dataclass
class Heard:
    """The caller's view, renumbered by the ledger."""

    started: list[int]
    ended: list[tuple[int, str]]
    audio: dict[int, list[int]]
    places: dict[int, list[tuple[int, int, int]]]
    """(segment, text offset, offset) of each audio piece."""


def hear(ledger: SessionLedger, outs: list[Out], heard: Heard) -> None:
    for out in outs:
        if out.kind == "start":
            number = ledger.turn_started(out.turn)
            if number is not None:
                heard.started.append(number)
        elif out.kind == "audio":
            place = ledger.audio(
                out.turn,
                out.segment,
                out.offset,
                len(out.samples),
                out.text_offset,
                out.text_length,
            )
            kept = out.samples[place.repeated_samples :]
            audio = heard.audio.setdefault(place.turn, [])
            if kept:  # it joins where the audio kept so far ends
                assert place.offset_samples + place.repeated_samples == len(audio)
            else:  # wholly repeated
                assert place.offset_samples + len(out.samples) <= len(audio)
            audio.extend(kept)
            heard.places.setdefault(place.turn, []).append(
                (place.segment, place.text_offset, place.offset_samples)
            )
        else:
            number, spoken, _ = ledger.turn_ended(out.turn, False, 0)
            heard.ended.append((number, spoken))


sentence = st.lists(st.sampled_from(["we", "go", "hello", "resume", "x"]), min_size=1, max_size=4)
turn_text = st.lists(sentence, min_size=1, max_size=4).map(
    lambda sentences: "".join(" ".join(words).capitalize() + ". " for words in sentences)
)


COMPACTING = {"forget_chars": 1, "head_chars": 1000, "max_whole_marks": 2}
"""A ledger that lets go of heard text at every segment (the defaults wait for 64 Ki
characters): what it sends again and says must not change."""


@pytest.mark.parametrize("options", [{}, COMPACTING], ids=["default", "compacting"])
@settings(max_examples=200, deadline=None)
@given(
    texts=st.lists(turn_text, min_size=1, max_size=3),
    chunk=st.integers(1, 12),
    cuts=st.lists(st.floats(0, 1), max_size=4),
    seed=st.integers(0, 2**16),
)
def test_resumed_sessions_hear_what_one_call_says(
    options: dict[str, int], texts: list[str], chunk: int, cuts: list[float], seed: int
) -> None:
    rng = random.Random(seed)
    ledger = SessionLedger(**options)
    sent: list[tuple[str, str]] = []
    for text in texts:
        # The caller's chunks, cut anywhere.
        points = sorted(rng.sample(range(1, len(text)), min(3, len(text) - 1)))
        for start, end in zip([0, *points], [*points, len(text)], strict=True):
            ledger.add_text(text[start:end])
            sent.append(("text", text[start:end]))
        ledger.turn_done()
        sent.append(("turn_done", ""))
    reference = Heard([], [], {}, {})
    uncut = SessionLedger()
    for kind, text in sent:
        uncut.add_text(text) if kind == "text" else uncut.turn_done()
    hear(uncut, model_call(sent, chunk), reference)

    heard = Heard([], [], {}, {})
    requests = sent
    for cut in cuts:
        outs = model_call(requests, chunk)
        hear(ledger, outs[: int(cut * len(outs))], heard)
        plan = ledger.plan_resume()
        assert plan.finished == ()
        requests = list(plan.requests)
        # Everything re-sent is text of turns not ended, from a segment's start.
        assert sum(len(t) for k, t in requests if k == "text") <= sum(map(len, texts))
    hear(ledger, model_call(requests, chunk), heard)

    assert heard.started == reference.started == list(range(1, len(texts) + 1))
    assert heard.ended == reference.ended == [(n, t) for n, t in enumerate(texts, 1)]
    assert heard.audio == reference.audio
    for turn, places in heard.places.items():
        assert sorted(set(places)) == sorted(set(reference.places[turn]))
    assert ledger.turns == {}  # nothing kept once every turn ended


@given(
    texts=st.lists(turn_text, min_size=2, max_size=3),
    chunk=st.integers(1, 8),
    cut=st.floats(0, 1),
)
def test_a_resume_repeats_at_most_the_cut_segment(texts: list[str], chunk: int, cut: float) -> None:
    ledger = SessionLedger()
    sent: list[tuple[str, str]] = []
    for text in texts:
        ledger.add_text(text)
        ledger.turn_done()
        sent += [("text", text), ("turn_done", "")]
    outs = model_call(sent, chunk)
    heard = Heard([], [], {}, {})
    hear(ledger, outs[: int(cut * len(outs))], heard)
    plan = ledger.plan_resume()
    again = model_call(list(plan.requests), chunk)
    repeated = [out for out in again if out.kind == "audio" and out.turn == 1 and out.segment == 1]
    repeated_samples = sum(len(out.samples) for out in repeated)
    assert plan.repeated_samples <= repeated_samples  # at most the cut segment
    if plan.turn:
        first = ledger.turns[plan.turn]
        assert first.text()[plan.text_offset :].startswith(
            "".join(t for k, t in plan.requests if k == "text")[: first.length - plan.text_offset]
        )


def test_cancel_maps_to_the_current_call() -> None:
    ledger = SessionLedger()
    ledger.add_text("One sentence here. Two sentences here. ")
    ledger.turn_done()
    ledger.audio(1, 1, 0, 36, 0, 18)
    ledger.audio(1, 2, 36, 10, 19, 19)  # segment 1 whole, segment 2 cut after 10
    plan = ledger.plan_resume()
    assert (plan.turn, plan.segment, plan.offset_samples, plan.repeated_samples) == (1, 2, 36, 10)
    assert plan.requests == (("text", "Two sentences here. "), ("turn_done", ""))
    # The listener stopped 40 samples into the caller's turn: 4 into the new call's.
    assert ledger.cancel(40, 1) == (1, 4)
    assert ledger.turns[1].state is TurnState.CANCELLED
    # Before the new call's audio: not a place the new call has; the ledger says.
    other = SessionLedger()
    other.add_text("One sentence here. Two sentences here. ")
    other.audio(1, 1, 0, 36, 0, 18)
    other.audio(1, 2, 36, 10, 19, 19)
    other.plan_resume()
    assert other.cancel(20, 1) == (0, 0)
    number, spoken, heard = other.turn_ended(1, True, 0)
    assert (number, spoken, heard) == (1, "", 0)  # segment 1 ended at 36, after 20


def test_a_cancelled_turn_not_ended_is_ended_by_the_client() -> None:
    ledger = SessionLedger()
    ledger.add_text("First part is here. Second part is here. ")
    ledger.audio(1, 1, 0, 38, 0, 19)
    ledger.audio(1, 2, 38, 5, 20, 20)
    ledger.cancel(0, 0)
    ledger.add_text("After the cancel. ")
    ledger.turn_done()
    plan = ledger.plan_resume()
    assert [record.number for record in plan.finished] == [1]
    assert plan.finished[0].heard_locally() == 19  # the whole first segment
    assert plan.requests == (("text", "After the cancel. "), ("turn_done", ""))
    assert ledger.turn_started(1) == 2  # the new call's turn 1 is the caller's turn 2


def test_recovery_by_code_and_moment() -> None:
    unavailable, exhausted = grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED
    for code in (unavailable, exhausted):
        assert recovery_for(code, started=False, segment=0, resume=False) is Recovery.RETRY
    for code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNAUTHENTICATED):
        assert recovery_for(code, started=False, segment=0, resume=True) is Recovery.FAIL
    assert recovery_for(unavailable, started=True, segment=0, resume=True) is Recovery.RESUME
    assert recovery_for(unavailable, started=True, segment=0, resume=False) is Recovery.FAIL
    # An engine's failure of one segment, and the text budget, fail anywhere.
    assert recovery_for(unavailable, started=True, segment=2, resume=True) is Recovery.FAIL
    assert recovery_for(exhausted, started=True, segment=0, resume=True) is Recovery.FAIL


@given(st.integers(1, 30), st.integers(0, 2**16))
def test_backoff_is_jittered_and_bounded(attempt: int, seed: int) -> None:
    policy = RetryPolicy()
    wait = policy.backoff_s(attempt, random.Random(seed))
    assert 0 <= wait <= min(policy.max_backoff_s, policy.initial_backoff_s * 2 ** (attempt - 1))


@given(st.text(max_size=40000))
def test_split_chunks_keeps_every_character(text: str) -> None:
    chunks = list(split_chunks(text))
    assert "".join(chunks) == text and all(0 < len(c) <= 16384 for c in chunks)


def test_a_long_text_sent_at_once_is_recorded_once_and_resent_in_pieces() -> None:
    # send_text records the text whole, then writes it in pieces: a resume before any
    # audio sends all of it again, once, in pieces the server takes, then turn_done.
    text = "".join(f"Sentence {n}, \U0001f600. " for n in range(3000))[:40_000]
    ledger = SessionLedger()
    ledger.add_text(text)
    ledger.turn_done()
    plan = ledger.plan_resume()
    pieces = [chunk for kind, chunk in plan.requests if kind == "text"]
    assert [kind for kind, _ in plan.requests] == ["text"] * 3 + ["turn_done"]
    assert "".join(pieces) == text and all(0 < len(p) <= 16384 for p in pieces)


def test_a_turn_that_runs_for_hours_keeps_what_a_resume_needs_not_all_it_was_sent() -> None:
    ledger = SessionLedger(head_chars=1000)
    segment_chars, segment_samples = 400, 400_000
    for segment in range(1, 5001):  # 2,000,000 characters in one turn not ended
        ledger.add_text("x" * (segment_chars - 1) + " ")
        ledger.audio(
            1,
            segment,
            (segment - 1) * segment_samples,
            segment_samples,
            (segment - 1) * segment_chars,
            segment_chars,
        )
    turn = ledger.turns[1]
    assert len(turn.text()) <= FORGET_CHARS + segment_chars
    assert len(turn.whole) <= MAX_WHOLE_MARKS
    plan = ledger.plan_resume()  # the cut segment, the last, from its start
    assert plan.requests == (("text", "x" * (segment_chars - 1) + " "),)
    assert plan.text_offset == 4999 * segment_chars
    # A cancel at the end: spoken_text is the turn's first head_chars characters.
    ledger.cancel(5000 * segment_samples, 1)
    _, spoken, heard = ledger.turn_ended(1, True, 0)
    assert spoken == ("x" * (segment_chars - 1) + " ") * 2 + "x" * 200
    assert heard >= 4998 * segment_chars  # a segment or so early at most, never late
