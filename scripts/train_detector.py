"""`python scripts/train_detector.py ARGS` = `halluc-bench-train-detector ARGS` (the code: harness/cli/train_detector.py)."""
from harness.cli.train_detector import main

if __name__ == "__main__":
    raise SystemExit(main())
