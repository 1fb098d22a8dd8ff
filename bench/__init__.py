"""voxrelay benchmarks (`make bench`); figures go to BENCHMARKS.md."""
