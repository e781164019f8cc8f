"""`python scripts/judge_pairwise.py ARGS` = `halluc-bench-judge ARGS` (the code: harness/cli/judge.py)."""
from harness.cli.judge import main

if __name__ == "__main__":
    raise SystemExit(main())
