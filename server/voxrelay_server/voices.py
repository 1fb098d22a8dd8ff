"""The voices a server offers, across engines, and how a name resolves to one."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

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

    def voices(self) -> list[VoiceInfo]:
        """Every voice, the default first, the rest by name."""
        default = self._by_name[self.default_voice][1]
        rest = sorted(
            (info for _, info in self._by_name.values() if info.name != self.default_voice),
            key=lambda info: info.name,
        )
        return [default, *rest]

    def resolve(self, name: str) -> tuple[SpeechEngine, VoiceInfo]:
        """The engine and voice for `name`; empty means the default voice."""
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

    def _hint(self, name: str) -> str:
        """Voices like `name` that this server offers."""
        engine_name = name.partition("/")[0]
        engine_voices = sorted(v for v in self._by_name if v.startswith(f"{engine_name}/"))
        if engine_voices:
            return f"this server's {engine_name} voices include {', '.join(engine_voices[:6])}"
        engines = ", ".join(sorted({e.name for e in self.engines}))
        return f"voices are named <engine>/<voice> with engine one of: {engines}"
