"""CI regression of hallucination scores: tiny-model smoke runs must reproduce the committed goldens.

A change that moves them fails here; if the move is intended, run scripts/update_goldens.py and
commit the new goldens with the reason.
"""
import pytest

from harness.golden import GOLDEN_RUNS, golden_scores, load_goldens


@pytest.mark.parametrize("label", list(GOLDEN_RUNS))
def test_golden_scores_unchanged(label, tmp_path):
    assert golden_scores(label, tmp_path) == load_goldens()[label]
