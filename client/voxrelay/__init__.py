"""voxrelay: a Python client for the voxrelay streaming speech service."""
