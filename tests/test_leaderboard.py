"""Leaderboards: one row per (model, intervention, setting), cells from one run only."""
from harness.leaderboard import leaderboard_frame, to_markdown
from harness.results import setting_label


def _row(time, metrics, setting="", bench="mme", interv="none"):
    return {"time": time, "model": "m", "intervention": interv, "intervention_label": interv, "setting": setting,
            "benchmark": bench, "headline": ["perception", "cognition"], "metrics": metrics}


def test_latest_run_wins_whole_and_settings_stay_apart():
    rows = [_row("1", {"perception": 900.0, "cognition": 250.0, "n": 2374}),
            _row("2", {"perception": 411.0, "n": 240}),  # a later run without cognition: no mixing
            _row("3", {"perception": 1.0, "cognition": 2.0, "n": 4}, setting="first 4")]
    t = leaderboard_frame(rows)
    full = t.loc[("m", "none", "")]
    assert full[("mme", "perception")] == 411.0 and full[("mme", "n")] == 240
    assert full.isna()[("mme", "cognition")]  # not the 250 of the older run
    assert t.loc[("m", "none", "first 4")][("mme", "cognition")] == 2.0
    md = to_markdown(t)
    assert "| m | none | first 4 | 1.00 | 2.00 | 4 |" in md


def test_setting_label():
    assert setting_label({"strategy": "greedy", "max_new_tokens": None}, 0, None) == ""
    assert setting_label({"strategy": "sample", "temperature": 1.0, "top_p": 0.9, "max_new_tokens": 64}, 7, 10) == \
        "sample T=1.0 p=0.9 seed=7, max_new_tokens=64, first 10"
    assert setting_label({"strategy": "beam", "num_beams": 3}, 0, None) == "beam 3"
