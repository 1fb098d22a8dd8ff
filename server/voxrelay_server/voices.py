"""The voices a server offers, across engines, and how a name resolves to one."""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence

import langcodes

from voxrelay_server import languages
from voxrelay_server.engines.base import SpeechEngine, VoiceInfo
from voxrelay_server.errors import ErrorCode, InvalidInput, SpeechError

ENGINE_PREFERENCE = ("piper", "openai", "espeak", "tone")
"""The order a language's voices are preferred in: neural voices (piper here, then a
remote OpenAI-compatible endpoint) before espeak-ng's formant voices; `tone` last."""
MATCH_DISTANCE = 25
"""Tags closer than this (langcodes' distance, from CLDR's language matching) speak the
same language: a region's difference is under it (`de-AT` to `de-DE` 4, `en-AU` to
`en-GB` 3, `en-GB` to `en-US` 5), another script's (`zh-TW` to `cmn` 54) or another
language's (80 and more) is not. It is langcodes' own "acceptable match" bound."""
MAX_LANGUAGE_CODE_CHARS = 64
_LANGUAGE_TAG = re.compile(r"[A-Za-z]{1,8}(?:-[A-Za-z0-9]{1,8})*")
_NO_LANGUAGE = "und"
"""BCP-47's "undetermined": the synthetic tone voice's tag, matched by no request."""


def language_distance(wanted: str, offered: str) -> int:
    """How far tag `offered` is from `wanted` (0: the same, under `MATCH_DISTANCE`: the
    same language), after `_` is read as `-` (`en_US`)."""
    wanted, offered = wanted.replace("_", "-"), offered.replace("_", "-")
    try:
        return int(langcodes.tag_distance(wanted, offered))
    except ValueError:  # a tag langcodes cannot read (espeak's chr-US-Qaaa-x-west)
        return 0 if wanted.lower() == offered.lower() else MATCH_DISTANCE


class VoiceCatalog:
    """Maps `<engine>/<voice>` names to engines; knows the default voice."""

    def __init__(
        self,
        engines: Sequence[SpeechEngine],
        default_voice: str,
        unconfigured: Mapping[str, str] | None = None,
    ) -> None:
        """`unconfigured` maps engine names that exist but are not set up here to a hint."""
        self.engines = list(engines)
        self._by_name: dict[str, tuple[SpeechEngine, VoiceInfo]] = {
            info.name: (engine, info) for engine in engines for info in engine.voices()
        }
        self._unconfigured = dict(unconfigured or {})
        if default_voice not in self._by_name:
            raise SpeechError(
                ErrorCode.FAILED_PRECONDITION,
                f"the default voice {default_voice!r} is not offered: {self._hint(default_voice)}",
            )
        self.default_voice = default_voice

    def voices(self, language: str = "") -> list[VoiceInfo]:
        """Every voice, the default first, the rest by name; with `language`, only those
        that speak it (`languages.matches`). A `language` that is not shaped like a
        BCP-47 tag raises INVALID_ARGUMENT."""
        if language and not languages.is_language_tag(language):
            raise InvalidInput(
                f"language_code {language!r} is not a BCP-47 language tag: use a language "
                "like 'de', 'en-US' or 'zh' (a prefix matches every voice under it)"
            )
        default = self._by_name[self.default_voice][1]
        rest = sorted(
            (info for _, info in self._by_name.values() if info.name != self.default_voice),
            key=lambda info: info.name,
        )
        return [
            info for info in (default, *rest) if languages.matches(info.language_codes, language)
        ]

    def resolve(self, name: str, language_code: str = "") -> tuple[SpeechEngine, VoiceInfo]:
        """The engine and voice for `name`, or for `language_code` when `name` is
        empty (`for_language`); both empty means the default voice. With both, `name`
        is used and must speak `language_code`'s language."""
        if language_code:
            tag = _checked_tag(language_code)
            if not name:
                return self.for_language(tag)
            engine, voice = self.resolve(name)
            if _closest(tag, voice) >= MATCH_DISTANCE:
                raise InvalidInput(
                    f"voice {voice.name!r} speaks {', '.join(voice.language_codes)}, not "
                    f"language_code {language_code!r}: set one of the two (with only "
                    "language_code the server picks a voice for it)"
                )
            return engine, voice
        found = self._by_name.get(name or self.default_voice)
        if found is not None:
            return found
        engine_name = name.partition("/")[0]
        if engine_name in self._unconfigured:
            raise SpeechError(ErrorCode.FAILED_PRECONDITION, self._unconfigured[engine_name])
        raise InvalidInput(
            f"unknown voice {name!r}: {self._suggest(name) or self._hint(name)}; ListVoices "
            "(`voxrelay voices`) lists them all"
        )

    def for_language(self, language_code: str) -> tuple[SpeechEngine, VoiceInfo]:
        """The preferred voice for a BCP-47 tag.

        The voices that speak its language (a tag within `MATCH_DISTANCE`: CLDR's
        language matching, by langcodes, which knows that `zh` is `cmn` and that `fr`
        means `fr-FR` and `pt` `pt-BR`) are ranked by `ENGINE_PREFERENCE` (neural
        first), then by distance (the closest region), then a tag equal to the one
        asked for, then the server's default voice, then the shortest tag, then by
        name. Raises `InvalidInput` listing the server's languages when none speaks it.
        """
        tag = _checked_tag(language_code)
        candidates = [
            (engine, info, distance)
            for engine, info in self._by_name.values()
            if (distance := _closest(tag, info)) < MATCH_DISTANCE
        ]
        if candidates:
            engine, info, _ = min(
                candidates,
                key=lambda found: (
                    _engine_rank(found[0].name),
                    found[2],
                    all(code.lower() != tag.lower() for code in found[1].language_codes),
                    found[1].name != self.default_voice,
                    min(len(code) for code in found[1].language_codes),
                    found[1].name,
                ),
            )
            return engine, info
        offered = sorted(
            {code for _, info in self._by_name.values() for code in info.language_codes}
            - {_NO_LANGUAGE},
            key=str.lower,
        )
        raise InvalidInput(
            f"no voice speaks language_code {language_code!r}; this server's languages "
            f"are: {', '.join(offered)}"
        )

    def _suggest(self, name: str) -> str:
        """Voices `name` may have meant, or "": those speaking the language its voice
        part names ("espeak/zh" -> espeak-ng's Chinese voices), this engine's first,
        else the names most like it."""
        engine_name, slash, voice_part = name.rpartition("/")
        if not slash:
            engine_name, voice_part = "", name
        language = languages.language_named(voice_part)
        if language:
            speaking = [
                info.name
                for info in self.voices()
                if languages.matches(info.language_codes, language)
            ]
            same_engine = [v for v in speaking if v.startswith(f"{engine_name}/")]
            found = same_engine or speaking
            if found:
                return f"did you mean {_listed(found)} (language {language!r})"
        # Voice parts compared within the engine: the shared `espeak/` is no likeness.
        engine_voices = {
            v.partition("/")[2]: v for v in self._by_name if v.startswith(f"{engine_name}/")
        }
        candidates = engine_voices or {v: v for v in self._by_name}
        wanted = voice_part if engine_voices else name
        close = difflib.get_close_matches(wanted, list(candidates), n=4, cutoff=0.6)
        return f"did you mean {_listed([candidates[c] for c in close])}" if close else ""

    def _hint(self, name: str) -> str:
        """Voices like `name` that this server offers."""
        engine_name = name.partition("/")[0]
        engine_voices = sorted(v for v in self._by_name if v.startswith(f"{engine_name}/"))
        if engine_voices:
            return f"this server's {engine_name} voices include {', '.join(engine_voices[:6])}"
        engines = ", ".join(sorted({e.name for e in self.engines}))
        return f"voices are named <engine>/<voice> with engine one of: {engines}"


def _engine_rank(engine_name: str) -> int:
    if engine_name in ENGINE_PREFERENCE:
        return ENGINE_PREFERENCE.index(engine_name)
    return len(ENGINE_PREFERENCE)


def _closest(tag: str, voice: VoiceInfo) -> int:
    """The distance from `tag` to the closest of `voice`'s tags (`und` matches none)."""
    return min(
        (language_distance(tag, code) for code in voice.language_codes if code != _NO_LANGUAGE),
        default=MATCH_DISTANCE,
    )


def _checked_tag(language_code: str) -> str:
    """`language_code` with `_` read as `-`; INVALID_ARGUMENT unless it has the form
    of a BCP-47 tag. (One langcodes cannot read still matches a voice's equal tag.)"""
    tag = language_code.strip().replace("_", "-")
    if len(tag) > MAX_LANGUAGE_CODE_CHARS or not _LANGUAGE_TAG.fullmatch(tag):
        raise InvalidInput(
            f"language_code {language_code[:MAX_LANGUAGE_CODE_CHARS]!r} is not a BCP-47 "
            "language tag: use letters and digits in subtags joined by '-', such as "
            "'de', 'en-GB' or 'pt-BR'"
        )
    return tag


_MOST_SUGGESTED = 8


def _listed(names: Sequence[str]) -> str:
    """`a, b or c`, at most `_MOST_SUGGESTED` of them (then how many more)."""
    shown = list(names[:_MOST_SUGGESTED])
    more = len(names) - len(shown)
    if more:
        return f"{', '.join(shown)} or {more} more"
    return shown[0] if len(shown) == 1 else f"{', '.join(shown[:-1])} or {shown[-1]}"
