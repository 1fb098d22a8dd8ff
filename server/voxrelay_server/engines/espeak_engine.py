"""espeak-ng voices through the shared library shipped by `espeakng-loader`.

espeak-ng keeps global state (the current voice, parameters and the synthesis
callback), so every call runs on one dedicated worker thread and under a lock.
Its many languages become voices named `espeak/<language>`, e.g. `espeak/en-us`.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import espeakng_loader

from voxrelay_server.engines.base import SpeechEngine, SynthesisOptions, VoiceInfo
from voxrelay_server.engines.threaded import Emit, stream_from_thread
from voxrelay_server.errors import EngineError, ErrorCode

ENGINE_NAME = "espeak"
NORMAL_WORDS_PER_MINUTE = 175
MIN_WORDS_PER_MINUTE = 80
MAX_WORDS_PER_MINUTE = 450

# Constants of speak_lib.h.
_AUDIO_OUTPUT_SYNCHRONOUS = 0x02
_POS_CHARACTER = 1
_ESPEAK_CHARS_UTF8 = 1
_ESPEAK_RATE = 1
_EE_OK = 0
# Audio per callback: each one crosses into Python and wakes the event loop, so fewer,
# larger ones synthesize faster (espeak-ng makes 500 ms in about a millisecond).
_BUFFER_MS = 500

_SynthCallback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


class _EspeakVoice(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_char_p),
        ("languages", ctypes.c_char_p),
        ("identifier", ctypes.c_char_p),
        ("gender", ctypes.c_ubyte),
        ("age", ctypes.c_ubyte),
        ("variant", ctypes.c_ubyte),
        ("xx1", ctypes.c_ubyte),
        ("score", ctypes.c_int),
        ("spare", ctypes.c_void_p),
    ]


class _EspeakLibrary:
    """The ctypes binding: one initialised library, used by one thread at a time."""

    def __init__(self) -> None:
        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        lib.espeak_ListVoices.argtypes = [ctypes.c_void_p]
        lib.espeak_ListVoices.restype = ctypes.POINTER(ctypes.POINTER(_EspeakVoice))
        self._data_path = Path(espeakng_loader.get_data_path())
        sample_rate = lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, _BUFFER_MS, str(self._data_path).encode(), 0
        )
        if sample_rate <= 0:
            raise EngineError(ErrorCode.FAILED_PRECONDITION, "espeak-ng failed to initialise")
        self.sample_rate_hz: int = sample_rate
        self._lib = lib
        self._lock = threading.Lock()
        self._emit: Emit | None = None
        self._stop: threading.Event | None = None
        # Kept referenced for the library's lifetime: espeak-ng calls it from C.
        self._callback = _SynthCallback(self._on_audio)
        lib.espeak_SetSynthCallback(self._callback)

    def languages(self) -> dict[str, str]:
        """The language of every installed voice, as espeak-ng names it, to its identifier.

        The identifier (the voice file, e.g. `roa/fr` for `fr-fr`) is what selects the
        voice: `espeak_SetVoiceByName` does not know every language name.
        """
        voices = self._lib.espeak_ListVoices(None)
        found: dict[str, str] = {}
        index = 0
        while voices[index]:
            # `languages` is a list of (priority byte, name, NUL); the first is the main one.
            language = ctypes.string_at(voices[index].contents.languages)[1:].decode()
            identifier = voices[index].contents.identifier.decode()
            if self._has_dictionary(language, identifier):
                found.setdefault(language, identifier)
            index += 1
        return found

    def _has_dictionary(self, language: str, identifier: str) -> bool:
        """Whether the voice's pronunciation dictionary is installed.

        Some packaged voice files name a dictionary the data does not ship; those
        voices would speak near-silence, so they are not offered.
        """
        dictionary = language.split("-")[0]
        voice_file = self._data_path / "lang" / identifier
        if voice_file.is_file():
            for line in voice_file.read_text(encoding="utf-8", errors="replace").splitlines():
                words = line.split()
                if len(words) >= 2 and words[0] == "dictionary":
                    dictionary = words[1]
        return (self._data_path / f"{dictionary}_dict").is_file()

    def synthesize(
        self,
        language: str,
        identifier: str,
        text: str,
        words_per_minute: int,
        emit: Emit,
        stop: threading.Event,
    ) -> None:
        encoded = text.encode("utf-8") + b"\0"
        with self._lock:
            if self._lib.espeak_SetVoiceByName(identifier.encode()) != _EE_OK:
                raise EngineError(ErrorCode.INVALID_ARGUMENT, f"espeak-ng has no voice {language}")
            self._lib.espeak_SetParameter(_ESPEAK_RATE, words_per_minute, 0)
            self._emit, self._stop = emit, stop
            try:
                status = self._lib.espeak_Synth(
                    encoded, len(encoded), 0, _POS_CHARACTER, 0, _ESPEAK_CHARS_UTF8, None, None
                )
            finally:
                self._emit = self._stop = None
        if status != _EE_OK and not stop.is_set():
            raise EngineError(ErrorCode.INTERNAL, f"espeak-ng synthesis failed (status {status})")

    def _on_audio(
        self, samples: ctypes._Pointer[ctypes.c_short], count: int, _events: int | None
    ) -> int:
        if self._stop is not None and self._stop.is_set():
            return 1  # tells espeak-ng to abort this synthesis
        if count > 0 and self._emit is not None:
            self._emit(ctypes.string_at(samples, count * 2))
        return 0


class EspeakEngine(SpeechEngine):
    """espeak-ng's languages as voices, synthesized one at a time on a dedicated thread."""

    name = ENGINE_NAME
    max_concurrency = 1  # one library, one thread

    def __init__(self) -> None:
        self._library = _EspeakLibrary()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="espeak")
        rate = self._library.sample_rate_hz
        self._identifiers = {
            f"{ENGINE_NAME}/{language}": identifier
            for language, identifier in self._library.languages().items()
        }
        self._voices = {
            name: VoiceInfo(
                name=name,
                engine=ENGINE_NAME,
                language_codes=(_bcp47(name.partition("/")[2]),),
                native_sample_rate_hz=rate,
            )
            for name in sorted(self._identifiers)
        }

    def voices(self) -> Sequence[VoiceInfo]:
        return list(self._voices.values())

    def synthesize(
        self, voice: VoiceInfo, text: str, options: SynthesisOptions
    ) -> AsyncIterator[bytes]:
        words_per_minute = round(NORMAL_WORDS_PER_MINUTE * options.speed)
        words_per_minute = max(MIN_WORDS_PER_MINUTE, min(MAX_WORDS_PER_MINUTE, words_per_minute))

        def run(emit: Emit, stop: threading.Event) -> None:
            self._library.synthesize(
                voice.voice_id, self._identifiers[voice.name], text, words_per_minute, emit, stop
            )

        return stream_from_thread(self._executor, run, describe=f"espeak voice {voice.name}")

    async def aclose(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _bcp47(language: str) -> str:
    """`en-us` -> `en-US`; scripts and variants stay as espeak-ng spells them."""
    parts = language.split("-")
    return "-".join([parts[0], *(p.upper() if len(p) == 2 else p for p in parts[1:])])
