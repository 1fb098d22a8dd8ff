"""The piper voices an operator brings (`--piper-voices DIR`), over real gRPC.

The voices are the bundled en_US-joe-medium files copied under other names, some with
their config's language or rate changed, so the tests need nothing downloaded.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import voxrelay
from tests.processes import (
    ServeProcess,
    free_port,
    running_serve,
    start_serve,
    user_env,
)
from voxrelay.v1 import speech_pb2, speech_pb2_grpc
from voxrelay_server.config import ServerSettings
from voxrelay_server.engines.piper_engine import PiperEngine, bundled_joe_voice, voice_files
from voxrelay_server.errors import EngineError


def add_voice(
    directory: Path, name: str, *, language: str | None = None, rate: int | None = None
) -> None:
    """The bundled voice as `directory/NAME.onnx(.json)`, its config's language code
    (`de_DE`) and sample rate changed where given."""
    model, config = bundled_joe_voice()
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model, directory / f"{name}.onnx")
    data = json.loads(config.read_text(encoding="utf-8"))
    if language is not None:
        data["language"]["code"] = language
    if rate is not None:
        data["audio"]["sample_rate"] = rate
    (directory / f"{name}.onnx.json").write_text(json.dumps(data), encoding="utf-8")


@pytest.fixture(scope="module")
def voices_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("voices")
    add_voice(directory, "de_DE-anna-medium", language="de_DE")
    add_voice(directory, "en_GB-tom-low", language="en_GB", rate=16000)
    (directory / "README.txt").write_text("not a voice: left alone\n", encoding="utf-8")
    return directory


@pytest.fixture(scope="module")
def served(voices_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """`voxrelay serve` with the voices of `voices_dir`, named by its variable."""
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    env = user_env(VOXRELAY_PIPER_VOICES=str(voices_dir))
    with running_serve(["--engines", "piper,espeak"], log, env) as running:
        yield running


def list_voices(target: str) -> dict[str, speech_pb2.Voice]:
    with grpc.insecure_channel(target) as channel:
        response = speech_pb2_grpc.SpeechStub(channel).ListVoices(
            speech_pb2.ListVoicesRequest(), timeout=10
        )
    return {voice.name: voice for voice in response.voices}


def synthesize(target: str, **config: object) -> list[speech_pb2.StreamResponse]:
    with grpc.insecure_channel(target) as channel:
        stub = speech_pb2_grpc.SpeechStub(channel)
        request = speech_pb2.SynthesizeRequest(
            config=speech_pb2.SessionConfig(**config),  # type: ignore[arg-type]
            text="Hello there. ",
        )
        return list(stub.Synthesize(request, timeout=60))


def test_every_voice_in_the_directory_is_offered_beside_the_bundled_one(
    served: ServeProcess,
) -> None:
    voices = list_voices(served.target)
    assert voices["piper/en_US-joe-medium"].is_default
    anna = voices["piper/de_DE-anna-medium"]
    assert (anna.engine, list(anna.language_codes), anna.native_sample_rate_hz) == (
        "piper",
        ["de-DE"],
        22050,
    )
    tom = voices["piper/en_GB-tom-low"]
    assert (list(tom.language_codes), tom.native_sample_rate_hz) == (["en-GB"], 16000)
    assert not any("README" in name for name in voices)


def test_a_brought_voice_speaks(served: ServeProcess) -> None:
    responses = synthesize(served.target, voice="piper/de_DE-anna-medium")
    audio = [r.audio for r in responses if r.WhichOneof("response") == "audio"]
    assert audio, responses
    assert {chunk.sample_rate_hz for chunk in audio} == {22050}
    assert sum(len(chunk.data) for chunk in audio) > 22050  # over half a second of speech
    assert responses[-1].lifecycle.event == speech_pb2.LIFECYCLE_EVENT_SESSION_ENDED


def test_voice_files_pairs_models_with_configs_and_skips_other_files(voices_dir: Path) -> None:
    found = voice_files(voices_dir)
    assert [(m.name, c.name) for m, c in found] == [
        ("de_DE-anna-medium.onnx", "de_DE-anna-medium.onnx.json"),
        ("en_GB-tom-low.onnx", "en_GB-tom-low.onnx.json"),
    ]


@pytest.mark.parametrize("present", [".onnx", ".onnx.json"])
def test_a_half_present_voice_is_named(tmp_path: Path, present: str) -> None:
    add_voice(tmp_path, "fr_FR-lea-medium")
    missing = ".onnx.json" if present == ".onnx" else ".onnx"
    (tmp_path / f"fr_FR-lea-medium{missing}").unlink()
    with pytest.raises(EngineError) as raised:
        voice_files(tmp_path)
    assert f"fr_FR-lea-medium{present} has no fr_FR-lea-medium{missing}" in raised.value.message


def test_a_missing_or_empty_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(EngineError, match="not a directory"):
        voice_files(tmp_path / "nowhere")
    with pytest.raises(EngineError, match="no piper voice in it"):
        voice_files(tmp_path)


def test_a_broken_model_or_config_is_named(tmp_path: Path) -> None:
    add_voice(tmp_path, "bad-model")
    (tmp_path / "bad-model.onnx").write_bytes(b"not an onnx model")
    with pytest.raises(EngineError, match=r"cannot load piper voice model .*bad-model\.onnx"):
        PiperEngine([(tmp_path / "bad-model.onnx", tmp_path / "bad-model.onnx.json")], workers=1)
    add_voice(tmp_path, "bad-config")
    (tmp_path / "bad-config.onnx.json").write_text('{"audio": {}}', encoding="utf-8")
    with pytest.raises(EngineError, match=r"config .*bad-config\.onnx\.json: KeyError"):
        PiperEngine([(tmp_path / "bad-config.onnx", tmp_path / "bad-config.onnx.json")], workers=1)


def test_a_voice_named_like_the_bundled_one_is_refused(tmp_path: Path) -> None:
    add_voice(tmp_path, "en_US-joe-medium")
    with pytest.raises(EngineError, match="already loaded"):
        PiperEngine([bundled_joe_voice(), *voice_files(tmp_path)], workers=1)


def test_piper_voices_needs_the_piper_engine() -> None:
    with pytest.raises(ValueError, match="needs the piper engine"):
        ServerSettings(engines=("espeak",), piper_voices="/srv/voices")


def test_serve_with_a_broken_voice_stops_at_start_up_naming_the_file(tmp_path: Path) -> None:
    voices = tmp_path / "voices"
    add_voice(voices, "de_DE-anna-medium")
    (voices / "de_DE-anna-medium.onnx").write_bytes(b"\x00" * 64)
    log = tmp_path / "serve.log"
    args = ["--listen", f"127.0.0.1:{free_port()}", "--engines", "piper", "--piper-voices"]
    process = start_serve([*args, str(voices)], log, user_env())
    try:
        code = process.wait(timeout=120)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    output = log.read_text()
    assert code != 0, output
    assert "de_DE-anna-medium.onnx" in output, output
    assert "Traceback" not in output, output


def speak(target: str, **config: object) -> tuple[str, list[speech_pb2.StreamResponse]]:
    """A `Stream` call with `config` and one turn: the voice the server named in its
    initial metadata, and the responses. Raises `grpc.RpcError` for a failed call."""
    requests = [
        speech_pb2.StreamRequest(config=speech_pb2.SessionConfig(**config)),  # type: ignore[arg-type]
        speech_pb2.StreamRequest(text="Guten Tag. "),
        speech_pb2.StreamRequest(turn_done=speech_pb2.TurnDone()),
    ]
    with grpc.insecure_channel(target) as channel:
        call = speech_pb2_grpc.SpeechStub(channel).Stream(iter(requests), timeout=60)
        responses = list(call)
        named = str(dict(call.initial_metadata())["voxrelay-voice"])
        assert responses[0].session_started.voice == named  # the first message says it too
        return named, responses


@pytest.mark.parametrize(
    ("language_code", "voice"),
    [
        ("de", "piper/de_DE-anna-medium"),  # neural before espeak/de
        ("de-AT", "piper/de_DE-anna-medium"),  # no de-AT voice: de
        ("EN_us", "piper/en_US-joe-medium"),  # case and _ do not matter; the default first
        ("en", "piper/en_US-joe-medium"),  # the default voice when it fits
        ("en-GB", "piper/en_GB-tom-low"),  # piper before espeak/en-gb
        ("es", "espeak/es"),  # no piper voice: espeak, the equal tag before es-419
        ("pt-BR", "espeak/pt-br"),
    ],
)
def test_a_session_may_ask_for_a_language_and_is_told_the_voice(
    served: ServeProcess, language_code: str, voice: str
) -> None:
    chosen, responses = speak(served.target, language_code=language_code)
    assert chosen == voice
    audio = [r.audio for r in responses if r.WhichOneof("response") == "audio"]
    assert audio and sum(len(chunk.data) for chunk in audio) > 0
    assert responses[-1].lifecycle.event == speech_pb2.LIFECYCLE_EVENT_SESSION_ENDED


def test_the_voice_is_named_without_a_language_too(served: ServeProcess) -> None:
    assert speak(served.target)[0] == "piper/en_US-joe-medium"
    assert speak(served.target, voice="espeak/de")[0] == "espeak/de"
    # Both set: the voice, which speaks the tag's language.
    assert speak(served.target, voice="piper/en_US-joe-medium", language_code="en-GB")[0] == (
        "piper/en_US-joe-medium"
    )


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"language_code": "xx"}, "no voice speaks language_code 'xx'; this server's languages"),
        ({"language_code": "en GB"}, "is not a BCP-47 language tag"),
        ({"language_code": "de-" + "a" * 70}, "is not a BCP-47 language tag"),
        ({"voice": "espeak/de", "language_code": "fr"}, "speaks de, not language_code 'fr'"),
    ],
)
def test_a_language_no_voice_speaks_is_invalid_argument(
    served: ServeProcess, config: dict[str, str], message: str
) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        speak(served.target, **config)
    error: grpc.Call = raised.value  # type: ignore[assignment]
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in str(error.details())
    if "languages" in message:  # every language listed, brought voices' included
        assert all(tag in str(error.details()) for tag in ("de-DE", "en-GB", "es", "pt-BR"))


def test_synthesize_takes_a_language_too(served: ServeProcess) -> None:
    with grpc.insecure_channel(served.target) as channel:
        call = speech_pb2_grpc.SpeechStub(channel).Synthesize(
            speech_pb2.SynthesizeRequest(
                config=speech_pb2.SessionConfig(language_code="de"), text="Hallo. "
            ),
            timeout=60,
        )
        responses = list(call)
        assert dict(call.initial_metadata())["voxrelay-voice"] == "piper/de_DE-anna-medium"
    assert responses[0].session_started.voice == "piper/de_DE-anna-medium"
    assert responses[-1].lifecycle.event == speech_pb2.LIFECYCLE_EVENT_SESSION_ENDED


def test_the_python_client_sends_a_language(served: ServeProcess) -> None:
    german = voxrelay.synthesize(
        "Guten Tag. ", target=served.target, options=voxrelay.SessionOptions(language_code="de")
    )
    assert german.duration_s > 0.5
    with pytest.raises(voxrelay.VoxrelayError) as raised:
        voxrelay.synthesize(
            "Hello. ", target=served.target, options=voxrelay.SessionOptions(language_code="xx")
        )
    assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "no voice speaks language_code 'xx'" in raised.value.message


def test_a_model_and_config_that_do_not_fit_are_named(tmp_path: Path) -> None:
    add_voice(tmp_path, "mismatch")
    config = tmp_path / "mismatch.onnx.json"
    data = json.loads(config.read_text(encoding="utf-8"))
    data["phoneme_id_map"] = {"^": [1], "$": [2]}  # a config of some other model
    config.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(EngineError, match=r"mismatch\.onnx loaded but cannot speak"):
        PiperEngine([(tmp_path / "mismatch.onnx", config)], workers=1)


names = st.sets(
    st.tuples(
        st.sampled_from(["de_DE-a-low", "en_GB-b-medium", "fr_FR-c-x_low", "x"]),
        st.sampled_from([".onnx", ".onnx.json", ".txt", ".onnx.json.bak"]),
    ),
    max_size=8,
)


@given(names)
@settings(max_examples=60, deadline=None)
def test_voice_files_offers_whole_voices_or_names_the_half(
    files: set[tuple[str, str]],
) -> None:
    with tempfile.TemporaryDirectory() as directory:
        folder = Path(directory)
        for stem, suffix in files:
            (folder / f"{stem}{suffix}").write_bytes(b"")
        models = {stem for stem, suffix in files if suffix == ".onnx"}
        configs = {stem for stem, suffix in files if suffix == ".onnx.json"}
        try:
            found = voice_files(folder)
        except EngineError as error:
            half = models ^ configs
            assert half or not models, error.message
            if half:
                assert f"{sorted(half)[0]}.onnx" in error.message
            else:
                assert "no piper voice in it" in error.message
            return
        assert models == configs and models
        assert [(m.name, c.name) for m, c in found] == [
            (f"{stem}.onnx", f"{stem}.onnx.json") for stem in sorted(models)
        ]
