"""`python scripts/reproduce.py ARGS` = `halluc-bench-reproduce ARGS` (the code: harness/cli/reproduce.py)."""
from harness.cli.reproduce import main

if __name__ == "__main__":
    raise SystemExit(main())
