"""The sentence splitter: release rules, kept whitespace, nothing dropped."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from voxrelay_server.splitter import SentenceSplitter

LIMIT = 400


def splitter_of(
    min_chars: int, max_chars: int = LIMIT, first_clause_words: int = 0
) -> SentenceSplitter:
    return SentenceSplitter(min_chars, max_chars, first_clause_words)


def tokens(text: str) -> list[str]:
    """`text` as an LLM streams it: a word at a time, each with its leading space."""
    words = text.split(" ")
    return [words[0], *(" " + word for word in words[1:])]


def released_while_streaming(splitter: SentenceSplitter, text: str) -> list[tuple[str, str]]:
    """(segment, the text streamed when it was released) for each segment of `text`."""
    streamed = ""
    released = []
    for token in tokens(text):
        streamed += token
        released += [(segment, streamed) for segment in splitter.feed(token)]
    rest = splitter.flush().strip()
    return [*released, (rest, streamed)] if rest else released


FIRST_CLAUSES = [
    # (text, first segment): it ends at the first clause mark or sentence end with at
    # least four words before it.
    (
        "Sure thing, I moved your appointment to Friday at ten, and I sent a reminder.",
        "Sure thing, I moved your appointment to Friday at ten,",
    ),
    ("Sure, I can help with that. First, open the settings.", "Sure, I can help with that."),
    ("Yes. The store opens at nine; it closes at six.", "Yes. The store opens at nine;"),
    ("Here is the plan: we leave at noon.", "Here is the plan:"),
    ("Well — to be honest — I am not sure.", "Well — to be honest —"),
    ("The total (with tax) comes to forty dollars.", "The total (with tax)"),
    ("Hi! How are you doing today? I hope well.", "Hi! How are you doing today?"),
]


@pytest.mark.parametrize(("text", "first"), FIRST_CLAUSES)
def test_the_first_segment_of_a_turn_ends_at_its_first_clause_with_enough_words(
    text: str, first: str
) -> None:
    segments = released_while_streaming(splitter_of(20, first_clause_words=4), text)
    segment, streamed = segments[0]
    assert segment == first
    # Released as soon as the whitespace after its last mark arrived (with a token).
    assert streamed.startswith(first) and len(streamed.split()) <= len(first.split()) + 1
    assert " ".join(s for s, _ in segments) == text


def test_later_segments_and_the_sentence_mode_end_at_sentence_ends() -> None:
    text = "Sure thing, I moved your appointment, and your reminder. It is on Friday, at ten."
    first_clause = [
        s for s, _ in released_while_streaming(splitter_of(20, first_clause_words=4), text)
    ]
    # After the first, a segment waits for its sentences to reach 20 characters.
    assert first_clause == [
        "Sure thing, I moved your appointment,",
        "and your reminder. It is on Friday, at ten.",
    ]
    sentences = [s for s, _ in released_while_streaming(splitter_of(20), text)]
    assert sentences == [
        "Sure thing, I moved your appointment, and your reminder.",
        "It is on Friday, at ten.",
    ]


def test_every_turn_starts_with_a_first_clause() -> None:
    splitter = splitter_of(1, first_clause_words=2)
    assert splitter.feed("One two, three four. ") == ["One two,", "three four."]
    assert splitter.flush() == ""
    assert splitter.at_turn_start
    assert splitter.feed("Five six, seven eight. ") == ["Five six,", "seven eight."]


def test_a_stall_at_the_start_of_a_turn_releases_its_complete_words() -> None:
    splitter = splitter_of(20, first_clause_words=4)
    assert splitter.feed("Let me check") == []
    assert splitter.take_words() == "Let me"  # "check" may still be growing
    assert splitter.buffered == " check"
    assert splitter.take_words() is None  # the turn has started: sentences from now on
    assert splitter.feed("ing that for you. ") == ["checking that for you."]
    assert splitter_of(20, first_clause_words=4).take_words() is None  # nothing buffered


def feed_all(splitter: SentenceSplitter, chunks: list[str]) -> list[str]:
    released = [segment for chunk in chunks for segment in splitter.feed(chunk)]
    rest = splitter.flush().strip()
    return [*released, rest] if rest else released


def test_whitespace_between_chunks_is_kept() -> None:
    splitter = splitter_of(20)
    segments = feed_all(splitter, ["This is the first sentence. ", "He ", "arrived", " late."])
    assert segments == ["This is the first sentence.", "He arrived late."]


def test_whitespace_kept_when_a_release_leaves_a_partial_word_behind() -> None:
    # The reference strips the buffer on release and speaks "Hearrived".
    splitter = splitter_of(5)
    assert splitter.feed("Hello there friend. He ") == ["Hello there friend."]
    assert splitter.buffered == "He "
    assert splitter.feed("arrived.") == []
    assert splitter.flush() == "He arrived."


def test_short_sentences_wait_until_they_reach_the_minimum() -> None:
    splitter = splitter_of(20)
    assert splitter.feed("Hi. ") == []
    assert splitter.feed("Yes. ") == []
    assert splitter.feed("Absolutely, sir. And") == ["Hi. Yes. Absolutely, sir."]
    assert splitter.buffered == "And"


def test_the_last_piece_is_held_back_as_it_may_be_unfinished() -> None:
    splitter = splitter_of(5)
    assert splitter.feed("A complete sentence. An unfinished one") == ["A complete sentence."]
    assert splitter.buffered == "An unfinished one"


@pytest.mark.parametrize("mark", [".", "!", "?"])
def test_each_sentence_mark_ends_a_sentence(mark: str) -> None:
    splitter = splitter_of(5)
    assert splitter.feed(f"Well that is it{mark} Next") == [f"Well that is it{mark}"]


def test_marks_without_following_whitespace_do_not_split() -> None:
    splitter = splitter_of(1)
    assert splitter.feed("Version 3.11 is out and example.com works") == []


def test_min_chars_counts_the_released_text() -> None:
    sentence = "Exactly twenty char."
    assert len(sentence) == 20
    assert splitter_of(20).feed(sentence + " x") == [sentence]
    assert splitter_of(21).feed(sentence + " x") == []


def test_flush_returns_everything_and_empties_the_buffer() -> None:
    splitter = splitter_of(100)
    splitter.feed("One. ")
    splitter.feed("Two")
    assert splitter.flush() == "One. Two"
    assert splitter.buffered == ""


def test_no_text_is_lost_over_many_small_chunks() -> None:
    text = "The quick brown fox jumps. Over the lazy dog! Does it? Yes it does. The end"
    splitter = splitter_of(10)
    segments = feed_all(splitter, list(text))  # one character at a time
    assert " ".join(segments) == text
    assert len(segments) > 1


def test_clear_reports_whether_text_was_dropped() -> None:
    splitter = splitter_of(20)
    assert splitter.clear() is False
    splitter.feed("pending words")
    assert splitter.clear() is True
    assert splitter.buffered == ""


def test_a_run_without_sentence_end_is_cut_at_a_clause_within_the_limit() -> None:
    splitter = splitter_of(20, max_chars=40)
    segments = splitter.feed("one two three four five six, seven eight nine ten eleven twelve")
    assert segments == ["one two three four five six,"]
    assert splitter.buffered == "seven eight nine ten eleven twelve"


def test_a_run_without_clause_marks_is_cut_between_words() -> None:
    splitter = splitter_of(20, max_chars=20)
    assert splitter.feed("alpha beta gamma delta epsilon") == ["alpha beta gamma"]
    assert splitter.buffered == "delta epsilon"


def test_a_clause_mark_early_in_the_limit_loses_to_a_later_word_boundary() -> None:
    # Cutting at "a," would leave a one-word segment; the last space is a better cut.
    splitter = splitter_of(1, max_chars=30)
    assert splitter.feed("a, bbbb cccc dddd eeee ffff gggg hhhh") == ["a, bbbb cccc dddd eeee ffff"]


def test_only_a_run_longer_than_the_limit_without_whitespace_is_cut_inside() -> None:
    splitter = splitter_of(1, max_chars=10)
    assert splitter.feed("x" * 25 + " end") == ["x" * 10, "x" * 10]
    assert splitter.flush() == "xxxxx end"


def test_complete_sentences_are_released_at_the_limit_before_the_minimum() -> None:
    # A caller's large min_sentence_chars cannot make a segment over the limit.
    splitter = splitter_of(10000, max_chars=50)
    segments = splitter.feed("Short one. " * 10)
    assert all(len(segment) <= 50 for segment in segments)
    assert segments[0] == "Short one. Short one. Short one. Short one."
    assert " ".join([*segments, splitter.flush().strip()]) == ("Short one. " * 10).strip()


def test_one_huge_chunk_becomes_many_segments_within_the_limit() -> None:
    text = "word " * 3300  # a 16,500-character run-on
    segments = feed_all(splitter_of(20), [text])
    assert max(len(segment) for segment in segments) <= LIMIT
    assert " ".join(segments).split() == text.split()


def _cut_is_clean(original: str, segment: str, end: int, max_chars: int) -> bool:
    """A cut after `segment` (ending at `end` in `original`) falls between words, or
    the segment is a run over the limit without whitespace."""
    return (
        end == len(original)
        or original[end].isspace()
        or (len(segment) == max_chars and not any(c.isspace() for c in segment))
    )


@settings(max_examples=300)
@given(
    chunks=st.lists(
        st.text(alphabet=st.sampled_from("ab .,!?;\n\t—é語"), max_size=60), max_size=30
    ),
    min_chars=st.integers(0, 80),
    max_chars=st.integers(1, 60),
    first_clause_words=st.integers(0, 6),
    stalls=st.sets(st.integers(0, 30)),
)
def test_segments_keep_every_word_in_order_within_the_limit(
    chunks: list[str], min_chars: int, max_chars: int, first_clause_words: int, stalls: set[int]
) -> None:
    splitter = SentenceSplitter(min_chars, max_chars, first_clause_words)
    released = []
    for index, chunk in enumerate(chunks):
        released += splitter.feed(chunk)
        if index in stalls and (words := splitter.take_words()):
            released.append(words)
    assert len(splitter.buffered) <= max_chars
    rest = splitter.flush().strip()
    segments = [*released, rest] if rest else released
    original = "".join(chunks)
    assert all(segment and len(segment) <= max_chars for segment in segments)
    # Nothing dropped, nothing repeated: only whitespace between segments is left out.
    position = 0
    for segment in segments:
        start = original.index(segment, position)
        assert not original[position:start].strip()
        position = start + len(segment)
        assert _cut_is_clean(original, segment, position, max_chars)
    assert not original[position:].strip()
