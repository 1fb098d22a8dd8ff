"""Text cut into pieces espeak-ng speaks whole (the engines' own tests hear the result)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from voxrelay_server.engines.clauses import MAX_CLAUSE_PHONEMES, MAX_RUN_CHARS, whole_pieces


def dense(text: str) -> int:
    """A stand-in measure: every non-space character makes 30 phonemes."""
    return 30 * sum(not c.isspace() for c in text)


@given(st.text(alphabet=st.sampled_from("7 ab,⣿\n"), max_size=600))
def test_the_pieces_are_the_text_in_order_and_each_fits(text: str) -> None:
    pieces = whole_pieces(text, dense)
    assert "".join(pieces) == text
    assert all(piece for piece in pieces) or pieces == [""]
    for piece in pieces:
        assert dense(piece) <= MAX_CLAUSE_PHONEMES or len(piece) == 1
        assert all(len(run) <= MAX_RUN_CHARS for run in piece.split())


def test_a_clause_within_the_list_is_one_piece_and_cuts_fall_between_words() -> None:
    short = "seventy seven, and seven"
    assert whole_pieces(short, dense) == [short]
    words = " ".join(["777777"] * 20)
    pieces = whole_pieces(words, dense)
    assert len(pieces) > 1
    assert all(piece.strip() == piece.rstrip() for piece in pieces)  # no word cut apart
    assert all(set(piece.split()) == {"777777"} for piece in pieces)


def test_a_long_run_with_no_space_is_cut_every_so_many_characters() -> None:
    digits = "1234567890" * 10
    pieces = whole_pieces(f"call {digits} now", lambda text: len(text))
    assert "".join(pieces) == f"call {digits} now"
    assert [len(piece) for piece in pieces] == [5 + MAX_RUN_CHARS, MAX_RUN_CHARS, MAX_RUN_CHARS, 8]
