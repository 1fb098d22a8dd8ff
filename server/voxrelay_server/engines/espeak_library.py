"""The ctypes binding of espeak-ng's shared library, as shipped by `espeakng-loader`.

espeak-ng keeps global state (the current voice, parameters and the synthesis
callback), so one `EspeakLibrary` serves one thread. The server runs it in
worker processes (`espeak_worker`), never in its own process.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from pathlib import Path

import espeakng_loader

from voxrelay_server.engines.clauses import whole_pieces
from voxrelay_server.errors import EngineError, ErrorCode

# Constants of speak_lib.h.
_AUDIO_OUTPUT_SYNCHRONOUS = 0x02
_POS_CHARACTER = 1
_ESPEAK_CHARS_UTF8 = 1
_ESPEAK_RATE = 1
_EE_OK = 0
_PHONEMES_IPA = 0x02
_INITIALIZE_PHONEME_EVENTS = 0x0001
"""Phoneme events too: a pause phoneme says where the word before it ended."""
PAUSE = 0xFFFFFFFF
"""The character index `OnWords` gives a pause: the word before it ends at its sample."""
BUFFER_MS = 2000
"""Audio per callback, and so per message to the caller. espeak-ng makes 2 s of
speech in about 2 ms, so larger chunks cost little first-audio time (0.9 ms at
500 ms, 2.2 ms at 2 s) and save much delivery: the server and client CPU per second
of espeak audio fell from 1.22 ms to 0.72 ms (see bench/optimisations.md)."""

OnAudio = Callable[[bytes], bool]
"""Receives each chunk of int16 PCM; returns False to stop the synthesis."""
OnWords = Callable[[list[tuple[int, int]]], None]
"""Receives, before each chunk, the words starting in it: (index of the word's first
character in the text, in code points; index of its first sample in the audio), and
the pauses starting in it, as (`PAUSE`, index of the pause's first sample)."""
_EVENT_LIST_TERMINATED = 0
_EVENT_WORD = 1
_EVENT_PHONEME = 7

_SynthCallback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


class _EspeakEvent(ctypes.Structure):
    """speak_lib.h's espeak_EVENT."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),  # 1-based, in characters of the text
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),  # milliseconds
        ("sample", ctypes.c_int),  # samples since the synthesis started
        ("user_data", ctypes.c_void_p),
        ("id", ctypes.c_char * 8),
    ]


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


class EspeakLibrary:
    """One initialised espeak-ng, used from one thread."""

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
        lib.espeak_TextToPhonemes.argtypes = [
            ctypes.POINTER(ctypes.c_void_p),
            ctypes.c_int,
            ctypes.c_int,
        ]
        lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
        lib.espeak_ListVoices.argtypes = [ctypes.c_void_p]
        lib.espeak_ListVoices.restype = ctypes.POINTER(ctypes.POINTER(_EspeakVoice))
        self._data_path = Path(espeakng_loader.get_data_path())
        sample_rate = lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS,
            BUFFER_MS,
            str(self._data_path).encode(),
            _INITIALIZE_PHONEME_EVENTS,
        )
        if sample_rate <= 0:
            raise EngineError(ErrorCode.FAILED_PRECONDITION, "espeak-ng failed to initialise")
        self.sample_rate_hz: int = sample_rate
        self._lib = lib
        self._on_audio: OnAudio | None = None
        self._on_words: OnWords | None = None
        self._word_base = (0, 0)
        """Where the piece being spoken starts in the text (code points) and in its audio."""
        self._last_word = -1
        self._voice: str | None = None
        self._words_per_minute: int | None = None
        # Kept referenced for the library's lifetime: espeak-ng calls it from C.
        self._callback = _SynthCallback(self._audio_callback)
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
        identifier: str,
        text: str,
        words_per_minute: int,
        on_audio: OnAudio,
        on_words: OnWords | None = None,
    ) -> bool:
        """Speak `text` with the voice file `identifier`, chunk by chunk to `on_audio`,
        and where each word starts to `on_words`.

        Returns False when `on_audio` stopped it. Raises `EngineError` when the
        voice cannot be selected or the synthesis fails.
        """
        if identifier != self._voice:
            # Loading a voice reads its files and dictionary: a tenth of the time of
            # a sentence, so it happens only when the voice changes.
            self._voice = self._words_per_minute = None
            if self._lib.espeak_SetVoiceByName(identifier.encode()) != _EE_OK:
                raise EngineError(
                    ErrorCode.INVALID_ARGUMENT, f"espeak-ng has no voice {identifier}"
                )
            self._voice = identifier
        if words_per_minute != self._words_per_minute:
            self._lib.espeak_SetParameter(_ESPEAK_RATE, words_per_minute, 0)
            self._words_per_minute = words_per_minute
        stopped = False
        samples = 0

        def deliver(pcm: bytes) -> bool:
            nonlocal stopped, samples
            samples += len(pcm) // 2
            stopped = stopped or not on_audio(pcm)
            return not stopped

        # A clause too long for espeak-ng's phoneme list would lose its end: such text
        # is spoken in pieces, one synthesis each.
        characters = 0
        self._last_word = -1
        for piece in whole_pieces(text, self._largest_clause):
            encoded = piece.encode("utf-8") + b"\0"
            self._on_audio, self._on_words = deliver, on_words
            self._word_base = (characters, samples)
            try:
                status = self._lib.espeak_Synth(
                    encoded, len(encoded), 0, _POS_CHARACTER, 0, _ESPEAK_CHARS_UTF8, None, None
                )
            finally:
                self._on_audio = self._on_words = None
            characters += len(piece)
            if stopped:
                return False
            if status != _EE_OK:
                raise EngineError(
                    ErrorCode.INTERNAL, f"espeak-ng synthesis failed (status {status})"
                )
        return True

    def _largest_clause(self, text: str) -> int:
        """The IPA characters of the largest clause of `text` in the current voice."""
        encoded = ctypes.create_string_buffer(text.encode("utf-8"))
        position = ctypes.c_void_p(ctypes.addressof(encoded))
        largest = 0
        while position.value:  # espeak-ng sets it to NULL after the last clause
            phonemes = self._lib.espeak_TextToPhonemes(
                ctypes.byref(position), _ESPEAK_CHARS_UTF8, _PHONEMES_IPA
            )
            largest = max(largest, len((phonemes or b"").decode("utf-8", "replace")))
        return largest

    def _audio_callback(
        self, samples: ctypes._Pointer[ctypes.c_short], count: int, events: int | None
    ) -> int:
        on_audio = self._on_audio
        if on_audio is None:
            return 1  # nobody listens: abort
        if self._on_words is not None and events:
            self._on_words(self._word_starts(events))
        if count > 0 and not on_audio(ctypes.string_at(samples, count * 2)):
            return 1  # tells espeak-ng to abort this synthesis
        return 0

    def _word_starts(self, events: int) -> list[tuple[int, int]]:
        """The words starting in this callback's audio, each once (espeak-ng reports some
        words, braille for one, with an event for each of their parts), and the pauses
        (the phonemes `_` and `_:` that espeak-ng puts at clause ends and between some
        words), in order."""
        event = ctypes.cast(events, ctypes.POINTER(_EspeakEvent))
        characters, samples = self._word_base
        starts = []
        index = 0
        while (kind := event[index].type) != _EVENT_LIST_TERMINATED:
            if kind == _EVENT_WORD:
                character = characters + event[index].text_position - 1
                if character > self._last_word:
                    self._last_word = character
                    starts.append((character, samples + event[index].sample))
            elif kind == _EVENT_PHONEME and event[index].id.startswith(b"_"):
                starts.append((PAUSE, samples + event[index].sample))
            index += 1
        return starts
