"""`python scripts/probe_first_token.py ARGS` = `halluc-bench-probe ARGS` (the code: harness/cli/probe_first_token.py)."""
from harness.cli.probe_first_token import main

if __name__ == "__main__":
    raise SystemExit(main())
