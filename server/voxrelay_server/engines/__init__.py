"""Speech engines behind one small interface (`SpeechEngine`)."""

from voxrelay_server.engines.base import SpeechEngine, SynthesisOptions, VoiceInfo

__all__ = ["SpeechEngine", "SynthesisOptions", "VoiceInfo"]
