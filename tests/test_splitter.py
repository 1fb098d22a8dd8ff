"""The sentence splitter: release rules, kept whitespace, nothing dropped."""

from __future__ import annotations

import itertools
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from voxrelay_server.splitter import Segment, SentenceSplitter

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
    assert splitter.take_words() is None  # nothing complete: "check" may still be growing
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
    after a mark (a sentence mark of a script written without spaces, a CJK comma),
    or the segment is a run over the limit without whitespace: never inside a word."""
    return (
        end == len(original)
        or original[end].isspace()
        or unicodedata.category(segment[-1]).startswith("P")
        or (len(segment) == max_chars and not any(c.isspace() for c in segment))
    )


@settings(max_examples=300)
@given(
    chunks=st.lists(
        st.text(alphabet=st.sampled_from("ab .,!?;\n\t—é語。，1#-*"), max_size=60), max_size=30
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


def streamed(text: str) -> list[str]:
    """`text` as an LLM streams it: word pieces with their leading space, or a character
    at a time in scripts written without spaces."""
    return tokens(text) if " " in text.strip() else list(text)


READS_REAL_TEXT = [
    # Titles, abbreviations, initials.
    ("en", "Dr. Smith will see you at 3 p.m. on Friday. Please arrive early.",
     ["Dr. Smith will see you at 3 p.m. on Friday.", "Please arrive early."]),
    ("en", "Mr. and Mrs. Lee live in the U.S. now. They moved last year.",
     ["Mr. and Mrs. Lee live in the U.S. now.", "They moved last year."]),
    ("en", "We flew to St. Louis with Prof. Jones. It rained.",
     ["We flew to St. Louis with Prof. Jones.", "It rained."]),
    ("en", "J. R. R. Tolkien wrote it. It is long.",
     ["J. R. R. Tolkien wrote it.", "It is long."]),
    ("en", "Bring fruit, e.g. apples, i.e. something fresh. Okay?",
     ["Bring fruit, e.g. apples, i.e. something fresh.", "Okay?"]),
    ("en", "We met at 10 a.m. The meeting ran late.",
     ["We met at 10 a.m.", "The meeting ran late."]),
    ("en", "Apples vs. oranges is an old debate. Both are fine.",
     ["Apples vs. oranges is an old debate.", "Both are fine."]),
    ("de", "Das ist z. B. gut. Am 3. Oktober kam er. Er ging.",
     ["Das ist z. B. gut.", "Am 3. Oktober kam er.", "Er ging."]),
    # Numbers, prices, versions.
    ("en", "The total is $3.50 for 2.5 km. That is cheap.",
     ["The total is $3.50 for 2.5 km.", "That is cheap."]),
    ("en", "Use version 2.0.1 or later. See No. 5 for details.",
     ["Use version 2.0.1 or later.", "See No. 5 for details."]),
    ("en", "I was born in 1999. Then we moved.", ["I was born in 1999.", "Then we moved."]),
    # Ellipses, addresses.
    ("en", "Wait... what happened? Nothing much.", ["Wait... what happened?", "Nothing much."]),
    ("en", "Visit https://example.com/docs/v1.2/index.html today. "
           "Or email help@example.co.uk. Thanks.",
     ["Visit https://example.com/docs/v1.2/index.html today.",
      "Or email help@example.co.uk.", "Thanks."]),
    # Numbered and bulleted lists, headings, quotes, fences.
    ("en", "Here are the steps:\n1. Open the app.\n2. Tap Settings.\n3. Choose Voice.",
     ["Here are the steps:", "1. Open the app.", "2. Tap Settings.", "3. Choose Voice."]),
    ("en", "# Summary\nThe plan works. It costs more.",
     ["# Summary", "The plan works.", "It costs more."]),
    ("en", "> Quoted line here.\nMy reply follows.", ["> Quoted line here.", "My reply follows."]),
    ("en", "```python\nprint(1)\n```\nThat prints one.",
     ["```python\nprint(1)\n```", "That prints one."]),
    # Closing quotes, brackets and emphasis stay with their sentence.
    ("en", 'He said "Stop." Then she left. "Really?" he asked.',
     ['He said "Stop."', "Then she left.", '"Really?" he asked.']),
    ("en", "It works. Mostly **done.** Next we test (quietly.)",
     ["It works.", "Mostly **done.**", "Next we test (quietly.)"]),
    ("en", "She asked: “Is it open?” It was. ‘Fine.’ We left.",
     ["She asked: “Is it open?”", "It was.", "‘Fine.’", "We left."]),
    # Other scripts' sentence marks, with or without a space after them.
    ("zh", "今天天气很好。我们去公园吧！你想去吗？好的。",
     ["今天天气很好。", "我们去公园吧！", "你想去吗？", "好的。"]),
    ("ja", "こんにちは。元気ですか？はい、元気です。",
     ["こんにちは。", "元気ですか？", "はい、元気です。"]),
    ("hi", "मैं घर जा रहा हूँ। तुम कहाँ हो? ठीक है।", ["मैं घर जा रहा हूँ।", "तुम कहाँ हो?", "ठीक है।"]),
    ("ar", "كيف حالك؟ أنا بخير. شكرا لك.", ["كيف حالك؟", "أنا بخير.", "شكرا لك."]),
    ("hy", "Բարեւ։ Ինչպես ես։ Լավ եմ։", ["Բարեւ։", "Ինչպես ես։", "Լավ եմ։"]),
    ("am", "ሰላም ነው። እንዴት ነህ፧ ደህና ነኝ።", ["ሰላም ነው።", "እንዴት ነህ፧", "ደህና ነኝ።"]),
]  # fmt: skip


@pytest.mark.parametrize(("language", "text", "sentences"), READS_REAL_TEXT)
def test_sentences_end_where_a_reader_would_end_them(
    language: str, text: str, sentences: list[str]
) -> None:
    splitter = SentenceSplitter(0, LIMIT, 0, language)
    assert feed_all(splitter, streamed(text)) == sentences


@pytest.mark.parametrize(
    ("streamed_so_far", "released"),
    [
        ("We are ready. ", ["We are ready."]),  # no word after it could continue it
        ("It is done! ", ["It is done!"]),
        ("今天天气很好。", ["今天天气很好。"]),  # no space needed after `。`
        (
            "The library closes on the first Friday of May. ",
            ["The library closes on the first Friday of May."],
        ),
        ("I will call Dr. ", []),  # the next word decides
        ("It starts at 5 p.m. ", []),
        ("Written by J. ", []),
        ("This is chapter number 2. ", ["This is chapter number 2."]),  # a digit is no initial
        ("They live in the U.S. ", []),
        ("Let me think... ", []),
        ("Here is the list:\n1. ", ["Here is the list:"]),
        ("It costs $3.", []),  # "$3." + "50"
        ("Open example.", []),  # "example." + "com"
    ],
)
def test_a_sentence_end_at_the_end_of_the_text_so_far_waits_only_when_it_may_not_be_one(
    streamed_so_far: str, released: list[str]
) -> None:
    assert splitter_of(0).feed(streamed_so_far) == released


@pytest.mark.parametrize(
    ("language", "text", "first"),
    [
        (
            "en",
            "Dr. Smith can see you on Friday, if that works.",
            "Dr. Smith can see you on Friday,",
        ),
        ("en", "It is 5 p.m. in London now, so it is late.", "It is 5 p.m. in London now,"),
        ("zh", "今天天气很好，我们去公园吧。", "今天天气很好，"),  # each character a word
        ("ja", "はい、元気です。ありがとう。", "はい、元気です。"),  # two characters are not enough
    ],
)
def test_a_first_clause_does_not_end_inside_an_abbreviation_and_counts_cjk_characters(
    language: str, text: str, first: str
) -> None:
    splitter = SentenceSplitter(0, LIMIT, 4, language)
    assert feed_all(splitter, streamed(text))[0] == first


_PLACED_ALPHABET = st.sampled_from(
    [
        "a",
        "b",
        "Z",
        " ",
        "  ",
        "\n",
        "\t",
        "\r\n",
        ".",
        ",",
        "!",
        "?",
        ";",
        "—",
        "é",
        "語",
        "。",
        "，",
        "😀",
        "🇫🇷",
        "𝄞",
        "\u200d",
        "Dr.",
        "1.",
        "#",
        "*",
    ]
)


@settings(max_examples=400)
@given(
    pieces=st.lists(_PLACED_ALPHABET, max_size=120),
    cuts=st.lists(st.integers(0, 400), max_size=20),
    min_chars=st.integers(0, 40),
    max_chars=st.integers(1, 50),
    first_clause_words=st.integers(0, 5),
    stalls=st.sets(st.integers(0, 20)),
)
def test_every_segment_is_its_place_in_the_turns_text(
    pieces: list[str],
    cuts: list[int],
    min_chars: int,
    max_chars: int,
    first_clause_words: int,
    stalls: set[int],
) -> None:
    """For any chunking of any text (whitespace, line breaks, CJK, emoji beyond the
    BMP, joiners), each released segment is exactly turn_text[offset:offset + length],
    and segments come in increasing, non-overlapping order."""
    turn_text = "".join(pieces)
    bounds = sorted({0, len(turn_text), *(c for c in cuts if c < len(turn_text))})
    chunks = [turn_text[a:b] for a, b in itertools.pairwise(bounds)]
    splitter = SentenceSplitter(min_chars, max_chars, first_clause_words)
    released: list[Segment] = []
    for index, chunk in enumerate(chunks):
        released += splitter.feed_segments(chunk)
        if index in stalls and (words := splitter.take_segment()) is not None:
            released.append(words)
    if (rest := splitter.flush_segment()) is not None:
        released.append(rest)
    end = 0
    for segment in released:
        assert segment.text and segment.text == segment.text.strip()
        assert turn_text[segment.offset : segment.end] == segment.text
        assert segment.offset >= end
        assert not turn_text[end : segment.offset].strip()  # only whitespace between
        end = segment.end
    assert not turn_text[end:].strip()


def test_positions_start_again_with_each_turn() -> None:
    splitter = splitter_of(0)
    assert splitter.feed_segments("  One two. Three") == [Segment("One two.", 2)]
    assert splitter.flush_segment() == Segment("Three", 11)
    assert splitter.feed_segments("\tFour. ") == [Segment("Four.", 1)]
    assert splitter.take_segment() is None
    assert splitter.flush_segment() is None
    splitter.feed("Five six")
    assert splitter.clear()
    assert splitter.feed_segments("Seven. ") == [Segment("Seven.", 0)]
