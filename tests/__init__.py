"""voxrelay test suite."""
