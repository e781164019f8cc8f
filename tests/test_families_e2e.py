"""End to end per model family, in-process (`harness.pipeline.run_job` on Hydra-composed configs): a smoke run,
strength 0 = baseline for head_guide and vcd, compose runs, DAMRO runs or refuses, batch 1 = batch 4."""
from __future__ import annotations


from conftest import check_family_end_to_end


def test_llava_onevision_end_to_end(tmp_path):
    # images of different sizes (1x3 and 2x2 tiles, shrunk or not) in one batch answer as alone
    check_family_end_to_end(tmp_path, "tiny_llava_onevision",
                            "damro cannot run on model family 'llava_onevision': .*no CLS token")
