"""`python scripts/diagnose.py ARGS` = `halluc-bench-diagnose ARGS` (the code: harness/cli/diagnose.py)."""
from harness.cli.diagnose import main

if __name__ == "__main__":
    raise SystemExit(main())
