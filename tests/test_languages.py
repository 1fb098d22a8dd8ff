"""Voices by language: the matching rule, ListVoices' filter, and what an unknown
voice's error suggests, against real servers with espeak-ng's and piper's voices."""

from __future__ import annotations

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

import voxrelay
from tests.conftest import StartServer, collect, config, text, turn_done
from voxrelay.v1 import speech_pb2, speech_pb2_grpc
from voxrelay_server import languages
from voxrelay_server.engines.espeak_engine import EspeakEngine
from voxrelay_server.engines.piper_engine import PiperEngine

PIPER_VOICE = "piper/en_US-joe-medium"
CHINESE = ["espeak/cmn", "espeak/cmn-latn-pinyin", "espeak/hak", "espeak/yue"]

primary = st.text("abcdefghijklmnopqrstuvwxyz", min_size=2, max_size=3)
subtag = st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=8)
tags = st.builds(lambda p, rest: [p, *rest], primary, st.lists(subtag, max_size=4))


def spelled(subtags: list[str], data: st.DataObject) -> str:
    """`subtags` joined by `-` or `_`, in any mix of cases, as callers write tags."""
    separators = data.draw(st.lists(st.sampled_from("-_"), min_size=len(subtags)))
    cased = [data.draw(st.sampled_from([s, s.upper(), s.title()])) for s in subtags]
    return cased[0] + "".join(sep + s for sep, s in zip(separators, cased[1:], strict=False))


@given(tags, st.data())
def test_every_prefix_at_a_subtag_boundary_matches_in_any_spelling(
    subtags: list[str], data: st.DataObject
) -> None:
    voice_tag = "-".join(subtags)
    for end in range(1, len(subtags) + 1):
        query = spelled(subtags[:end], data)
        assert languages.is_language_tag(query)
        assert languages.matches([voice_tag], query), (voice_tag, query)


@given(tags.filter(lambda t: len(t) > 1 and len(t[1]) > 1), st.data())
def test_a_query_that_cuts_a_subtag_does_not_match(subtags: list[str], data: st.DataObject) -> None:
    cut = data.draw(st.integers(1, len(subtags[1]) - 1))
    query = f"{subtags[0]}-{subtags[1][:cut]}"
    assert not languages.matches(["-".join(subtags)], query)


def test_a_macrolanguage_matches_the_languages_it_covers() -> None:
    assert languages.matches(["cmn"], "zh") and languages.matches(["yue"], "ZH")
    assert languages.matches(["cmn-latn-pinyin"], "zh")
    assert languages.matches(["arb"], "ar")
    assert not languages.matches(["zh-CN"], "yue")  # only from the macrolanguage down
    assert not languages.matches(["de"], "zh-TW")
    assert languages.language_named("German") == "de"
    assert languages.language_named("chinese") == "zh"
    assert languages.language_named("no such language") is None


@pytest.fixture
async def voices_server(
    start_server: StartServer, piper_engine: PiperEngine, espeak_engine: EspeakEngine
) -> str:
    server = await start_server(
        extra_engines=[piper_engine, espeak_engine], default_voice=PIPER_VOICE
    )
    return server.target


async def list_voices(target: str, language: str) -> list[str]:
    async with grpc.aio.insecure_channel(target) as channel:
        response = await speech_pb2_grpc.SpeechStub(channel).ListVoices(
            speech_pb2.ListVoicesRequest(language_code=language)
        )
    return [voice.name for voice in response.voices]


async def test_list_voices_filters_by_language(voices_server: str) -> None:
    everything = await list_voices(voices_server, "")

    assert await list_voices(voices_server, "de") == ["espeak/de"]
    english_us = await list_voices(voices_server, "EN_us")
    assert english_us == [PIPER_VOICE, "espeak/en-us", "espeak/en-us-nyc"]  # default first
    english = await list_voices(voices_server, "en")
    assert english[0] == PIPER_VOICE and "espeak/en-gb-scotland" in english
    assert "espeak/eo" not in english and "espeak/en-029" in english
    assert await list_voices(voices_server, "zh") == CHINESE
    assert await list_voices(voices_server, "xx") == []
    assert len(everything) > 100 and everything[0] == PIPER_VOICE
    # Every voice is found by its own language, and only voices that speak it.
    async with voxrelay.AsyncClient(voices_server) as client:
        for voice in await client.voices("pt"):
            assert any(code.lower().startswith("pt") for code in voice.language_codes)


async def test_a_language_code_that_is_not_a_tag_is_invalid_argument(voices_server: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await list_voices(voices_server, "not a tag!")

    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "'not a tag!' is not a BCP-47 language tag" in str(caught.value.details())


@pytest.mark.parametrize(
    ("voice", "suggested"),
    [
        ("espeak/zh", f"did you mean {', '.join(CHINESE[:3])} or {CHINESE[3]} (language 'zh')"),
        ("espeak/german", "did you mean espeak/de (language 'de')"),
        ("piper/en_US-joe-medum", f"did you mean {PIPER_VOICE}"),
        ("de", "did you mean espeak/de (language 'de')"),
    ],
)
async def test_an_unknown_voice_suggests_close_matches(
    voices_server: str, voice: str, suggested: str
) -> None:
    async with grpc.aio.insecure_channel(voices_server) as channel:
        stub = speech_pb2_grpc.SpeechStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await collect(stub, [config(voice=voice), text("Hello. "), turn_done()])

    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    message = str(caught.value.details())
    assert message.startswith(f"unknown voice {voice!r}: {suggested}"), message
    assert "ListVoices" in message


async def test_an_unknown_voice_with_nothing_like_it_names_the_engines_voices(
    voices_server: str,
) -> None:
    async with voxrelay.AsyncClient(voices_server) as client:
        with pytest.raises(voxrelay.VoxrelayError) as caught:
            await client.synthesize("Hello. ", voxrelay.SessionOptions(voice="espeak/qqqqqqqq"))
    assert "this server's espeak voices include espeak/" in caught.value.message
