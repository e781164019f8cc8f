"""Command-line entry points: `halluc-bench` (= `python run.py`) and the tools (`halluc-bench-<tool>`)."""
