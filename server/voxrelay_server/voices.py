"""The voices a server offers, across engines, and how a name resolves to one."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from voxrelay_server.engines.base import SpeechEngine, VoiceInfo
from voxrelay_server.errors import ErrorCode, InvalidInput, SpeechError

ENGINE_PREFERENCE = ("piper", "openai", "espeak", "tone")
"""The order a language's voices are preferred in: neural voices (piper here, then a
remote OpenAI-compatible endpoint) before espeak-ng's formant voices; `tone` last."""
MAX_LANGUAGE_CODE_CHARS = 64
_LANGUAGE_TAG = re.compile(r"[A-Za-z]{1,8}(?:[-_][A-Za-z0-9]{1,8})*")


def normalized_tag(tag: str) -> str:
    """`en_us` -> `en-us`: lower case, hyphens, for comparing tags (BCP-47 tags are
    case-insensitive)."""
    return tag.strip().replace("_", "-").lower()


def primary_language(tag: str) -> str:
    """`en-GB` -> `en`."""
    return normalized_tag(tag).partition("-")[0]


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

    def voices(self) -> list[VoiceInfo]:
        """Every voice, the default first, the rest by name."""
        default = self._by_name[self.default_voice][1]
        rest = sorted(
            (info for _, info in self._by_name.values() if info.name != self.default_voice),
            key=lambda info: info.name,
        )
        return [default, *rest]

    def resolve(self, name: str, language_code: str = "") -> tuple[SpeechEngine, VoiceInfo]:
        """The engine and voice for `name`, or for `language_code` when `name` is
        empty (`for_language`); both empty means the default voice. With both, `name`
        is used and must speak `language_code`'s language (its primary subtag)."""
        if language_code:
            _check_tag(language_code)
            if not name:
                return self.for_language(language_code)
            engine, voice = self.resolve(name)
            wanted = primary_language(language_code)
            if all(primary_language(code) != wanted for code in voice.language_codes):
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
            f"unknown voice {name!r}: {self._hint(name)}; ListVoices (`voxrelay voices`) "
            "lists them all"
        )

    def for_language(self, language_code: str) -> tuple[SpeechEngine, VoiceInfo]:
        """The preferred voice for a BCP-47 tag, as RFC 4647 "lookup" finds it.

        The tag is tried whole, then with its last subtag removed, and so on (`de-AT`,
        then `de`); at the first that some voice's tag equals or extends (`de` fits
        `de-DE`), the best of those voices is chosen: the server's default voice if it
        is one, else by `ENGINE_PREFERENCE` (neural first), then a tag equal to the one
        tried, then the shortest tag, then by name. Tags compare case-insensitively,
        `_` as `-`. Raises `InvalidInput` listing the server's languages when none fits.
        """
        _check_tag(language_code)
        subtags = normalized_tag(language_code).split("-")
        for length in range(len(subtags), 0, -1):
            tried = "-".join(subtags[:length])
            candidates = [
                (engine, info, min(codes, key=len))
                for engine, info in self._by_name.values()
                if (
                    codes := [
                        code
                        for code in map(normalized_tag, info.language_codes)
                        if code == tried or code.startswith(tried + "-")
                    ]
                )
            ]
            if candidates:
                engine, info, _ = min(
                    candidates,
                    key=lambda found: (
                        found[1].name != self.default_voice,
                        _engine_rank(found[0].name),
                        found[2] != tried,
                        len(found[2]),
                        found[1].name,
                    ),
                )
                return engine, info
        languages = sorted(
            {code for _, info in self._by_name.values() for code in info.language_codes} - {"und"},
            key=str.lower,
        )
        raise InvalidInput(
            f"no voice speaks language_code {language_code!r}; this server's languages "
            f"are: {', '.join(languages)}"
        )

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


def _check_tag(language_code: str) -> None:
    """INVALID_ARGUMENT unless `language_code` looks like a BCP-47 tag."""
    if len(language_code) > MAX_LANGUAGE_CODE_CHARS or not _LANGUAGE_TAG.fullmatch(language_code):
        raise InvalidInput(
            f"language_code {language_code[:MAX_LANGUAGE_CODE_CHARS]!r} is not a BCP-47 "
            "language tag: use letters and digits in subtags joined by '-', such as "
            "'de', 'en-GB' or 'pt-BR'"
        )
