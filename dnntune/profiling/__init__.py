"""Measuring: the in-graph instrumenter, the profiler, statistics, energy meters and
device power models, and the profile format (`profile`: pure, read by the analyzer)."""
