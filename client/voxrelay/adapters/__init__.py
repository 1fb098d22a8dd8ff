"""Adapters that let voice-agent frameworks speak through a voxrelay server, each an
optional extra of the `voxrelay` distribution (`pip install 'voxrelay[livekit]'`).
Each module imports its framework; this package imports none."""
