"""The voxrelay server: an ordered concurrent text-to-speech dispatcher behind gRPC."""
