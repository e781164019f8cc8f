"""`python scripts/score_eos_data.py ARGS` = `halluc-bench-score-eos ARGS` (the code: harness/cli/score_eos_data.py)."""
from harness.cli.score_eos_data import main

if __name__ == "__main__":
    raise SystemExit(main())
