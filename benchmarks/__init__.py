"""Benchmarks: each module defines its items and its scorer, registered by name."""
