"""Characters that carry no speech become a space, whatever engine speaks the text."""

from __future__ import annotations

import unicodedata

from hypothesis import given
from hypothesis import strategies as st

from voxrelay_server.textclean import clean_text


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
