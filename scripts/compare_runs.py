"""`python scripts/compare_runs.py ARGS` = `halluc-bench-compare ARGS` (the code: harness/cli/compare.py)."""
from harness.cli.compare import main

if __name__ == "__main__":
    raise SystemExit(main())
