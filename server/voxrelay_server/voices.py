"""The voices a server offers, across engines, and how a name resolves to one."""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence

from voxrelay_server import languages
from voxrelay_server.engines.base import SpeechEngine, VoiceInfo
from voxrelay_server.errors import ErrorCode, InvalidInput, SpeechError


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

    def resolve(self, name: str) -> tuple[SpeechEngine, VoiceInfo]:
        """The engine and voice for `name`; empty means the default voice."""
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


_MOST_SUGGESTED = 8


def _listed(names: Sequence[str]) -> str:
    """`a, b or c`, at most `_MOST_SUGGESTED` of them (then how many more)."""
    shown = list(names[:_MOST_SUGGESTED])
    more = len(names) - len(shown)
    if more:
        return f"{', '.join(shown)} or {more} more"
    return shown[0] if len(shown) == 1 else f"{', '.join(shown[:-1])} or {shown[-1]}"
