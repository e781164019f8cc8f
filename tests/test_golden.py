"""CI regression of hallucination scores: tiny-model smoke runs must reproduce the committed goldens.

A change that moves them fails here; if the move is intended, run scripts/update_goldens.py and
commit the new goldens with the reason.
"""
import pytest

from harness.golden import golden_runs, golden_scores, load_goldens


@pytest.mark.parametrize("label", list(golden_runs()))
def test_golden_scores_unchanged(label, tmp_path):
    goldens = load_goldens()
    assert label in goldens, f"no golden for {label}: run scripts/update_goldens.py --only {label} and commit it"
    assert golden_scores(label, tmp_path) == goldens[label]
