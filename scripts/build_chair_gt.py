"""`python scripts/build_chair_gt.py ARGS` = `halluc-bench-build-chair-gt ARGS` (the code: harness/cli/build_chair_gt.py)."""
from harness.cli.build_chair_gt import main

if __name__ == "__main__":
    raise SystemExit(main())
