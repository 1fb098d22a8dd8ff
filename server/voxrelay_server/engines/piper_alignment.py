"""Which words of a segment's text each of piper's phonemes speaks.

piper speaks phonemes, not words: its phonemizer (espeak-ng) turns a text into IPA
with spaces between words, but not one space per word of the text: "in the" becomes
one word, "2024" four, "Dr." the word "doctor". So each word of the text is
phonemized on its own too (all in one call, each word its own clause), and the two
phoneme sequences are matched (difflib, on the phonemes without stress and length
marks): each phoneme of the spoken text takes the word of the phoneme it matches.
The model's alignment output (samples per phoneme id, `include_alignments`) then
says where each word starts and ends in the audio.

Two choices, measured against pocketsphinx's forced alignment of the same audio
(`bench/word_timing.py`): a phoneme's samples are those of its ids and of the pad
(blank) before them, which leads into it, and a word break belongs to the word after
it (the model spends it on that word's onset). Taking the pad after each phoneme, as
piper's own `PhonemeAlignment` does, and leaving word breaks to no word put word
starts 60 ms late (median); this way it is about 11 ms.
"""

from __future__ import annotations

import difflib
import itertools
from collections.abc import Callable, Mapping, Sequence

from piper.const import BOS, EOS, PAD

Phonemize = Callable[[str], list[list[str]]]
"""piper's `PiperVoice.phonemize`: a text's phonemes, sentence by sentence."""

_MARKS = frozenset("\u02c8\u02cc\u02d0\u02d1")
"""Stress and length marks: part of the word they stand in, ignored when matching."""
_STRESS = frozenset("\u02c8\u02cc")
"""Primary and secondary stress: they stand before the syllable they mark."""
_WORD_BREAK = " "
_SEPARATOR = "; "
_CLAUSE_END = ";"


def _is_phone(phoneme: str) -> bool:
    """A phoneme that is a sound: not a word break, a mark or punctuation."""
    return phoneme not in _MARKS and any(c.isalpha() for c in phoneme)


def word_phonemes(phonemize: Phonemize, words: Sequence[str]) -> list[list[str]]:
    """The phonemes of each word said on its own: one call for all of them (each its
    own clause), or, when the clauses do not come out one a word, one call each."""
    if not words:
        return []
    spoken = [p for sentence in phonemize(_SEPARATOR.join(words)) for p in sentence]
    groups = [
        list(group)
        for is_end, group in itertools.groupby(spoken, lambda p: p == _CLAUSE_END)
        if not is_end
    ]
    if len(groups) == len(words) and spoken.count(_CLAUSE_END) >= len(words) - 1:
        return groups
    return [[p for sentence in phonemize(word) for p in sentence] for word in words]


def assign_words(
    pieces: Sequence[Sequence[str]], reference: Sequence[Sequence[str]]
) -> list[list[int | None]]:
    """For each phoneme of each piece (the text's phonemes as piper speaks them), the
    index of the word it belongs to, from each word's own phonemes (`reference`); None
    for word breaks and punctuation. Indices never decrease along the pieces."""
    ref: list[str] = []
    ref_word: list[int] = []
    for index, phonemes in enumerate(reference):
        for phoneme in phonemes:
            if _is_phone(phoneme):
                ref.append(phoneme)
                ref_word.append(index)
    spoken = [
        (p, q) for p, piece in enumerate(pieces) for q, ph in enumerate(piece) if _is_phone(ph)
    ]
    ctx = [pieces[p][q] for p, q in spoken]
    labels: list[int | None] = [None] * len(ctx)
    if ref:
        matcher = difflib.SequenceMatcher(None, ref, ctx, autojunk=False)
        for tag, i1, i2, j1, j2 in matcher.get_opcodes():
            for j in range(j1, j2):
                if tag == "equal":
                    labels[j] = ref_word[i1 + j - j1]
                elif tag == "replace":
                    labels[j] = ref_word[i1 + (j - j1) * (i2 - i1) // (j2 - j1)]
                elif tag == "insert":  # spoken, in no word's own phonemes: the word before
                    labels[j] = ref_word[max(i1 - 1, 0)]
    result: list[list[int | None]] = [[None] * len(piece) for piece in pieces]
    highest = 0
    for (p, q), label in zip(spoken, labels, strict=True):
        highest = max(highest, label if label is not None else highest)
        result[p][q] = highest
    for p, piece in enumerate(pieces):
        _mark_with_their_word(piece, result[p])
        _breaks_with_the_word_after(piece, result[p])
    return result


def _breaks_with_the_word_after(piece: Sequence[str], labels: list[int | None]) -> None:
    """A word break takes the word after it: the model spends it on that word's onset."""
    after: int | None = None
    for q in range(len(piece) - 1, -1, -1):
        if labels[q] is not None:
            after = labels[q]
        elif piece[q] == _WORD_BREAK:
            labels[q] = after


def _mark_with_their_word(piece: Sequence[str], labels: list[int | None]) -> None:
    """Stress and length marks take the word of the sound next to them."""
    for q, phoneme in enumerate(piece):
        if phoneme in _MARKS and labels[q] is None:
            after = next((labels[k] for k in range(q + 1, len(piece)) if _is_phone(piece[k])), None)
            before = next((labels[k] for k in range(q - 1, -1, -1) if _is_phone(piece[k])), None)
            near = after if phoneme in _STRESS else before
            labels[q] = near if near is not None else (before if after is None else after)


def phoneme_samples(
    piece: Sequence[str], id_samples: Sequence[int], id_map: Mapping[str, Sequence[int]]
) -> list[int] | None:
    """How many samples each phoneme of `piece` took in its run, from the samples of
    each phoneme id (piper's `include_alignments`), laid out as piper's
    `phonemes_to_ids` does (BOS, pad, then each phoneme's ids and a pad, then EOS): a
    phoneme takes its ids and the pad before them; BOS (`leading_samples`) and the
    last pad and EOS go to no phoneme. None when the ids do not line up."""
    pad = len(id_map.get(PAD, []))
    position = len(id_map.get(BOS, []))
    counts = []
    for phoneme in piece:
        ids = len(id_map[phoneme]) + pad if phoneme in id_map else 0
        counts.append(int(sum(id_samples[position : position + ids])))
        position += ids
    position += pad + len(id_map.get(EOS, []))
    return counts if position == len(id_samples) else None


def leading_samples(id_samples: Sequence[int], id_map: Mapping[str, Sequence[int]]) -> int:
    """Samples of a run before its first phoneme (BOS; the pad after it leads into the
    first phoneme)."""
    return int(sum(id_samples[: len(id_map.get(BOS, []))]))


def word_spans(
    labels: Sequence[int | None], counts: Sequence[int], offset: int
) -> list[tuple[int, int, int]]:
    """(word, first sample, end sample) of each run of a word's phonemes in a piece
    whose first phoneme starts at `offset`, in order."""
    spans: list[tuple[int, int, int]] = []
    position = offset
    for label, count in zip(labels, counts, strict=True):
        if label is not None:
            if spans and spans[-1][0] == label:
                spans[-1] = (label, spans[-1][1], position + count)
            else:
                spans.append((label, position, position + count))
        position += count
    return spans
