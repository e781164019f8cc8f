"""`python scripts/convert_llava_lora.py ARGS` = `halluc-bench-convert-lora ARGS` (the code: harness/cli/convert_llava_lora.py)."""
from harness.cli.convert_llava_lora import main

if __name__ == "__main__":
    raise SystemExit(main())
