"""Hydra configs of halluc-bench, shipped as package data (found from a wheel install as pkg://configs)."""
