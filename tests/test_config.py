"""Settings: every one a flag and a VOXRELAY_* variable, documented in the README."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest

from voxrelay_server import config

README = Path(__file__).resolve().parent.parent / "README.md"


def test_the_readme_table_is_the_generated_one() -> None:
    text = README.read_text(encoding="utf-8")
    table = text.split("<!-- settings:begin -->\n", 1)[1].split("\n<!-- settings:end -->", 1)[0]
    assert table == config.markdown_table(), "regenerate with config.markdown_table()"


def test_every_setting_has_a_flag_and_a_variable_in_help() -> None:
    parser = argparse.ArgumentParser()
    config.add_arguments(parser, env={})
    help_text = parser.format_help()
    for settings_field in dataclasses.fields(config.ServerSettings):
        assert f"--{config.option_name(settings_field)}" in help_text
        assert config.env_name(settings_field) in help_text


def test_variables_set_defaults_and_flags_win() -> None:
    parser = argparse.ArgumentParser()
    env = {
        "VOXRELAY_IDLE_TIMEOUT": "7.5",
        "VOXRELAY_ENGINES": "tone, espeak",
        "VOXRELAY_LOG_SENSITIVE_TEXT": "yes",
        "VOXRELAY_MAX_SESSIONS": "9",
    }
    config.add_arguments(parser, env=env)
    settings = config.from_arguments(parser.parse_args(["--max-sessions", "3"]))
    assert settings.idle_timeout_s == 7.5
    assert settings.engines == ("tone", "espeak")
    assert settings.log_sensitive_text is True
    assert settings.max_sessions == 3


def test_a_bad_boolean_says_what_is_allowed() -> None:
    with pytest.raises(ValueError, match="use true or false"):
        config.from_env({"VOXRELAY_LOG_SENSITIVE_TEXT": "maybe"})


def test_secrets_stay_out_of_help_and_repr() -> None:
    parser = argparse.ArgumentParser()
    config.add_arguments(parser, env={"VOXRELAY_AUTH_TOKENS": "s3cret-token"})
    assert "s3cret-token" not in parser.format_help()
    settings = config.from_env({"VOXRELAY_AUTH_TOKENS": "s3cret-token"})
    assert "s3cret-token" not in repr(settings)


def test_counts_below_their_minimum_are_refused_with_the_flag_named() -> None:
    with pytest.raises(ValueError, match=r"--espeak-workers \(VOXRELAY_ESPEAK_WORKERS\) must be"):
        config.ServerSettings(espeak_workers=0)
    with pytest.raises(ValueError, match=r"--idle-timeout .* at least 0, not -1"):
        config.from_env({"VOXRELAY_IDLE_TIMEOUT": "-1"})
    assert config.ServerSettings(idle_timeout_s=0).idle_timeout_s == 0


def test_the_default_voice_is_the_first_loaded_engines_standard_voice() -> None:
    assert config.ServerSettings().default_voice == "piper/en_US-joe-medium"
    assert config.ServerSettings(engines=("tone", "espeak")).default_voice == "espeak/en-us"
    assert config.ServerSettings(engines=("tone",)).default_voice == "tone/square"
    settings = config.from_env(
        {"VOXRELAY_ENGINES": "espeak,tone", "VOXRELAY_DEFAULT_VOICE": "tone/square"}
    )
    assert settings.default_voice == "tone/square"


def test_engines_that_cannot_serve_the_default_voice_are_refused_with_a_fix() -> None:
    with pytest.raises(
        ValueError, match=r"'piper/en_US-joe-medium' needs the piper engine.* e\.g\. espeak/en-us"
    ):
        config.ServerSettings(engines=("espeak",), default_voice="piper/en_US-joe-medium")
    with pytest.raises(ValueError, match=r"unknown engine 'banana'"):
        config.ServerSettings(engines=("tone", "banana"))
    with pytest.raises(ValueError, match=r"names no engine"):
        config.from_env({"VOXRELAY_ENGINES": ""})
