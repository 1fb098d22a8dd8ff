"""Choosing a voice by language (`SessionConfig.language_code`), on the voice catalog.

The same rules run over real gRPC in `test_piper_voices.py`; here any tag at all.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from voxrelay_server.engines.base import SpeechEngine, SynthesisOptions, VoiceInfo
from voxrelay_server.errors import InvalidInput
from voxrelay_server.voices import VoiceCatalog, primary_language


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
        ListedEngine("espeak", [("de", "de"), ("en-gb", "en-GB"), ("en-us", "en-US")]),
        ListedEngine("piper", [("en_US-joe-medium", "en-US"), ("de_DE-x", "de-DE")]),
        ListedEngine("tone", [("square", "und")]),
    ],
    "espeak/en-us",
)


@pytest.mark.parametrize(
    ("tag", "voice"),
    [
        ("en", "espeak/en-us"),  # the default voice first when it fits
        ("en-US", "espeak/en-us"),
        ("en-GB", "espeak/en-gb"),
        ("de", "piper/de_DE-x"),  # neural before espeak, though espeak's tag is equal
        ("de-CH", "piper/de_DE-x"),
        ("de-de", "piper/de_DE-x"),
    ],
)
def test_the_preferred_voice_for_a_tag(tag: str, voice: str) -> None:
    assert CATALOG.resolve("", tag)[1].name == voice


def test_an_unknown_language_lists_the_languages_without_und() -> None:
    with pytest.raises(InvalidInput) as raised:
        CATALOG.resolve("", "fr")
    assert raised.value.message.endswith("languages are: de, de-DE, en-GB, en-US")


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
    assert primary_language(chosen.language_codes[0]) == primary_language(tag)
    if voice:
        assert chosen.name == voice
