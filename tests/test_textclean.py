"""Characters that carry no speech become a space, whatever engine speaks the text:
control characters, and the markdown marks LLMs write."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from voxrelay_server.textclean import clean_text, without_markup


def test_text_without_control_characters_is_the_very_same_object() -> None:
    text = "Hello there, 世界! Emoji 👋🏽 and joiners \u200d stay.\n\tTabs too."
    assert clean_text(text) is text


def test_nul_and_other_controls_become_spaces() -> None:
    assert clean_text("Hello\x00world\x07 and\x1b[0m\x7f\x85 more") == (
        "Hello world  and [0m   more"
    )


def test_lone_surrogates_become_spaces() -> None:
    assert clean_text("a\ud800b\udfffc") == "a b c"


@given(st.text(alphabet=st.characters(codec=None)))
def test_only_control_characters_and_surrogates_change(text: str) -> None:
    cleaned = clean_text(text)
    assert len(cleaned) == len(text)
    for before, after in zip(text, cleaned, strict=True):
        unspeakable = unicodedata.category(before) in ("Cc", "Cs") and before not in "\t\n\r"
        assert after == (" " if unspeakable else before)


@pytest.mark.parametrize(
    ("markdown", "spoken"),
    [
        ("**Note.** It costs *more* than _that_.", "  Note.   It costs  more  than  that ."),
        ("# Summary\n## Details", "  Summary\n   Details"),
        ("- Red\n* Green\n+ Blue\n\u2022 Pink", "  Red\n  Green\n  Blue\n  Pink"),
        ("  - nested item", "    nested item"),
        ("> quoted\n>> nested", "  quoted\n   nested"),
        ("```python\nprint(1)\n```", "         \nprint(1)\n   "),
        ("Run `pip install` now", "Run  pip install  now"),
        ("See [the docs](https://x.y/z) and ![a chart](c.png)",
         "See  the docs                 and   a chart        "),
        ("| a | b |\n|---|:-:|\n| 1 | 2 |", "  a   b  \n         \n  1   2  "),
        ("Above\n---\nBelow\n* * *", "Above\n   \nBelow\n     "),
        ("~~gone~~ here, __bold__ there", "  gone   here,   bold   there"),
        # What is not markup stays: a reader says these.
        ("snake_case, 2*3 and 5 * 3 = 15", "snake_case, 2*3 and 5 * 3 = 15"),
        ("1. First\n2. Second", "1. First\n2. Second"),
        ("A - B, well-known, C++ and C#", "A - B, well-known, C++ and C#"),
        ("Prices: $3.50 > $2 | maybe", "Prices: $3.50 > $2 | maybe"),
    ],
)  # fmt: skip
def test_markdown_marks_become_spaces_and_words_stay_in_place(markdown: str, spoken: str) -> None:
    assert without_markup(markdown) == spoken


def test_text_without_markup_is_the_very_same_object() -> None:
    text = "Sure thing, I moved your appointment to Friday at ten."
    assert without_markup(text) is text


@given(st.text(alphabet=st.sampled_from("ab 1\n\t*_~`#>|-+[]()!:.\u2022")))
def test_markup_removal_only_blanks_marks(text: str) -> None:
    spoken = without_markup(text)
    assert len(spoken) == len(text)  # a position in the spoken text is one in the text
    for before, after in zip(text, spoken, strict=True):
        assert after in (before, " ")
        assert before.isalnum() <= (after == before)  # letters and digits always stay
