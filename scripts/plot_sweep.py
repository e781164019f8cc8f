"""`python scripts/plot_sweep.py ARGS` = `halluc-bench-plot-sweep ARGS` (the code: harness/cli/plot_sweep.py)."""
from harness.cli.plot_sweep import main

if __name__ == "__main__":
    raise SystemExit(main())
