"""halluc-bench entry point: `python run.py model=... intervention=... benchmark=...` (= the `halluc-bench`
command; Hydra, sweeps with -m). The code lives in harness/cli/run.py."""
from harness.cli.run import main

if __name__ == "__main__":
    main()
