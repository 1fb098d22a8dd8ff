"""Choosing a voice by language (`SessionConfig.language_code`), on the voice catalog.

The same rules run over real gRPC in `test_piper_voices.py`; here any tag at all.
(`test_languages.py` is ListVoices' language filter and unknown-voice suggestions.)
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from voxrelay_server.engines.base import SpeechEngine, SynthesisOptions, VoiceInfo
from voxrelay_server.errors import InvalidInput
from voxrelay_server.voices import MATCH_DISTANCE, VoiceCatalog, language_distance


class ListedEngine(SpeechEngine):
    """An engine that only lists voices: `(voice id, language tag)` pairs."""

    def __init__(self, name: str, voices: Sequence[tuple[str, str]]) -> None:
        self.name = name
        self._voices = [VoiceInfo(f"{name}/{v}", name, (tag,), 22050) for v, tag in voices]

    def voices(self) -> Sequence[VoiceInfo]:
        return self._voices

    async def synthesize(
        self, voice: VoiceInfo, text: str, options: SynthesisOptions
    ) -> AsyncIterator[bytes]:
        raise NotImplementedError
        yield b""


CATALOG = VoiceCatalog(
    [
        ListedEngine(
            "espeak",
            [
                *[("de", "de"), ("en-gb", "en-GB"), ("en-us", "en-US"), ("cmn", "cmn")],
                *[("fr-be", "fr-BE"), ("fr-fr", "fr-FR"), ("pt", "pt"), ("pt-br", "pt-BR")],
            ],
        ),
        ListedEngine("piper", [("en_US-joe-medium", "en-US"), ("de_DE-x", "de-DE")]),
        ListedEngine("tone", [("square", "und")]),
    ],
    "espeak/en-us",
)


@pytest.mark.parametrize(
    ("tag", "voice"),
    [
        ("en", "piper/en_US-joe-medium"),  # neural first, before the default voice
        ("en-US", "piper/en_US-joe-medium"),
        ("en-GB", "piper/en_US-joe-medium"),  # the same language: neural before a region
        ("de", "piper/de_DE-x"),  # neural before espeak, though espeak's tag is equal
        ("de-CH", "piper/de_DE-x"),
        ("de_de", "piper/de_DE-x"),
        ("fr", "espeak/fr-fr"),  # fr means fr-FR: the closest region
        ("fr_fr", "espeak/fr-fr"),
        ("fr-BE", "espeak/fr-be"),
        ("pt-BR", "espeak/pt-br"),  # pt also means pt-BR: the equal tag first
        ("zh", "espeak/cmn"),  # Mandarin is zh
    ],
)
def test_the_preferred_voice_for_a_tag(tag: str, voice: str) -> None:
    assert CATALOG.resolve("", tag)[1].name == voice


def test_with_only_espeak_the_default_voice_comes_before_an_equal_one() -> None:
    catalog = VoiceCatalog(
        [ListedEngine("espeak", [("en-us", "en-US"), ("en-us-nyc", "en-US")])], "espeak/en-us-nyc"
    )
    assert catalog.resolve("", "en")[1].name == "espeak/en-us-nyc"


def test_an_unknown_language_lists_the_languages_without_und() -> None:
    with pytest.raises(InvalidInput) as raised:
        CATALOG.resolve("", "nl")
    assert raised.value.message.endswith(
        "languages are: cmn, de, de-DE, en-GB, en-US, fr-BE, fr-FR, pt, pt-BR"
    )


tags = st.from_regex(r"[A-Za-z]{1,8}([-_][A-Za-z0-9]{1,8}){0,3}", fullmatch=True)


@given(st.one_of(tags, st.text(max_size=80)), st.sampled_from(["", "piper/en_US-joe-medium"]))
def test_any_tag_gets_a_voice_of_its_language_or_invalid_argument(tag: str, voice: str) -> None:
    try:
        _, chosen = CATALOG.resolve(voice, tag)
    except InvalidInput as error:
        assert "language_code" in error.message
        return
    if not tag:
        assert chosen.name == (voice or CATALOG.default_voice)
        return
    assert min(language_distance(tag, code) for code in chosen.language_codes) < MATCH_DISTANCE
    if voice:
        assert chosen.name == voice


def test_a_voice_tag_langcodes_cannot_read_matches_only_itself() -> None:
    catalog = VoiceCatalog(
        [ListedEngine("espeak", [("chr", "chr-US-Qaaa-x-west"), ("de", "de")])], "espeak/de"
    )
    assert catalog.resolve("", "de")[1].name == "espeak/de"
    assert catalog.resolve("", "chr-US-Qaaa-x-west")[1].name == "espeak/chr"
