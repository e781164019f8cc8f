"""`python scripts/leaderboard.py ARGS` = `halluc-bench-leaderboard ARGS` (the code: harness/cli/leaderboard.py)."""
from harness.cli.leaderboard import main

if __name__ == "__main__":
    raise SystemExit(main())
