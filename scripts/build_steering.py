"""`python scripts/build_steering.py ARGS` = `halluc-bench-build-steering ARGS` (the code: harness/cli/build_steering.py)."""
from harness.cli.build_steering import main

if __name__ == "__main__":
    raise SystemExit(main())
