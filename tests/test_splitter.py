"""The sentence splitter: release rules, kept whitespace, nothing dropped."""

from __future__ import annotations

import pytest

from voxrelay_server.splitter import SentenceSplitter


def feed_all(splitter: SentenceSplitter, chunks: list[str]) -> list[str]:
    released = [segment for chunk in chunks if (segment := splitter.feed(chunk))]
    rest = splitter.flush().strip()
    return [*released, rest] if rest else released


def test_whitespace_between_chunks_is_kept() -> None:
    splitter = SentenceSplitter(min_chars=20)
    segments = feed_all(splitter, ["This is the first sentence. ", "He ", "arrived", " late."])
    assert segments == ["This is the first sentence.", "He arrived late."]


def test_whitespace_kept_when_a_release_leaves_a_partial_word_behind() -> None:
    # The reference strips the buffer on release and speaks "Hearrived".
    splitter = SentenceSplitter(min_chars=5)
    assert splitter.feed("Hello there friend. He ") == "Hello there friend."
    assert splitter.buffered == "He "
    assert splitter.feed("arrived.") is None
    assert splitter.flush() == "He arrived."


def test_short_sentences_wait_until_they_reach_the_minimum() -> None:
    splitter = SentenceSplitter(min_chars=20)
    assert splitter.feed("Hi. ") is None
    assert splitter.feed("Yes. ") is None
    assert splitter.feed("Absolutely, sir. And") == "Hi. Yes. Absolutely, sir."
    assert splitter.buffered == "And"


def test_the_last_piece_is_held_back_as_it_may_be_unfinished() -> None:
    splitter = SentenceSplitter(min_chars=5)
    assert splitter.feed("A complete sentence. An unfinished one") == "A complete sentence."
    assert splitter.buffered == "An unfinished one"


@pytest.mark.parametrize("mark", [".", "!", "?"])
def test_each_sentence_mark_ends_a_sentence(mark: str) -> None:
    splitter = SentenceSplitter(min_chars=5)
    assert splitter.feed(f"Well that is it{mark} Next") == f"Well that is it{mark}"


def test_marks_without_following_whitespace_do_not_split() -> None:
    splitter = SentenceSplitter(min_chars=1)
    assert splitter.feed("Version 3.11 is out and example.com works") is None


def test_min_chars_counts_the_released_text() -> None:
    sentence = "Exactly twenty char."
    assert len(sentence) == 20
    assert SentenceSplitter(min_chars=20).feed(sentence + " x") == sentence
    assert SentenceSplitter(min_chars=21).feed(sentence + " x") is None


def test_flush_returns_everything_and_empties_the_buffer() -> None:
    splitter = SentenceSplitter(min_chars=100)
    splitter.feed("One. ")
    splitter.feed("Two")
    assert splitter.flush() == "One. Two"
    assert splitter.buffered == ""


def test_no_text_is_lost_over_many_small_chunks() -> None:
    text = "The quick brown fox jumps. Over the lazy dog! Does it? Yes it does. The end"
    splitter = SentenceSplitter(min_chars=10)
    segments = feed_all(splitter, list(text))  # one character at a time
    assert " ".join(segments) == text
    assert len(segments) > 1


def test_clear_reports_whether_text_was_dropped() -> None:
    splitter = SentenceSplitter(min_chars=20)
    assert splitter.clear() is False
    splitter.feed("pending words")
    assert splitter.clear() is True
    assert splitter.buffered == ""
