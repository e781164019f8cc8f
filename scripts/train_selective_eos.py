"""`python scripts/train_selective_eos.py ARGS` = `halluc-bench-train-eos ARGS` (the code: harness/cli/train_selective_eos.py)."""
from harness.cli.train_selective_eos import main

if __name__ == "__main__":
    raise SystemExit(main())
