"""`python scripts/extract_var.py ARGS` = `halluc-bench-extract-var ARGS` (the code: harness/cli/extract_var.py)."""
from harness.cli.extract_var import main

if __name__ == "__main__":
    raise SystemExit(main())
