"""HallusionBench: items, verbatim judge prompts, and metrics from judge / rule labels against hand-computed values."""
from __future__ import annotations

import hashlib
import json
import re

import pytest

from benchmarks.base import AnswerMismatchError, DATA_DIR
from benchmarks.hallusionbench import HallusionBench, parse_correctness, read_yes_no
from fake_judge import KEY, KEY_ENV, FakeServer, chat_reply, prompt_text

SETS = {("VS", "chart", "0"), ("VD", "illusion", "1"), ("VD", "figure", "0")}
# Designed judge labels of the 16 questions of three sets (see the hand computation below).
LABELS = {
    "VS_chart_0_0_0": "unclear", "VS_chart_0_0_1": "correct", "VS_chart_0_0_2": "incorrect",
    "VS_chart_0_0_3": "correct", "VS_chart_0_1_0": "correct", "VS_chart_0_1_1": "correct",
    "VS_chart_0_1_2": "correct", "VS_chart_0_1_3": "incorrect",
    "VD_illusion_1_0_0": "correct", "VD_illusion_1_0_1": "correct", "VD_illusion_1_0_2": "incorrect",
    "VD_illusion_1_1_0": "correct", "VD_illusion_1_1_1": "unclear", "VD_illusion_1_1_2": "correct",
    "VD_figure_0_0_0": "correct", "VD_figure_0_1_0": "incorrect",
}
SAME = {"VS_chart_0_1_0": 1, "VS_chart_0_1_1": 0, "VS_chart_0_1_2": 1, "VS_chart_0_1_3": 1,
        "VD_illusion_1_1_0": 0, "VD_illusion_1_1_1": 1, "VD_illusion_1_1_2": 1, "VD_figure_0_1_0": 1}
# Hand-computed from the reference's definitions (utils.py) for LABELS and SAME:
# correct: VS f0 T T F T | VS f1 T T T F | ill f0 T T F | ill f1 T F T | fig f0 T | fig f1 F  -> 11/16
# figures (VS f0 excluded): chart_0_1 no, ill_1_0 no, ill_1_1 no, fig_0_0 yes, fig_0_1 no  -> 1/5
# pairs: chart q0 q1 ok, q2 q3 no; ill q0 ok, q1 q2 no; fig q0 no                          -> 3/8
# easy pairs (visual_input != 2): chart q0 q1 ok q2 q3 no, ill q0 q1 ok q2 no, fig ok       -> 5/8
# hard pairs (visual_input 2): ill q0 ok q1 no q2 ok, fig no                                -> 2/4
# LH: chart f0 q2; VI: ill f0 q2, chart f1 q3 (visual_input 1), ill f1 q1; Mixed: fig f1 (same) -> 1/3/1
EXPECTED = {"aAcc": 68.75, "fAcc": 20.0, "qAcc": 37.5, "easy_pair_acc": 62.5, "hard_pair_acc": 50.0,
            "overall": (68.75 + 20.0 + 37.5) / 3, "n": 16, "n_pairs": 8}
EXPECTED_VD = {"aAcc": 62.5, "fAcc": 25.0, "qAcc": 25.0}
EXPECTED_VS = {"aAcc": 75.0, "fAcc": 0.0, "qAcc": 50.0}


@pytest.fixture(scope="module")
def question_file(tmp_path_factory):
    rows = json.loads((DATA_DIR / "hallusionbench" / "HallusionBench.json").read_text())
    sub = [r for r in rows if (r["category"], r["subcategory"], r["set_id"]) in SETS]
    path = tmp_path_factory.mktemp("hb") / "sub.json"
    path.write_text(json.dumps(sub))
    return path, {f"{r['category']}_{r['subcategory']}_{r['set_id']}_{r['figure_id']}_{r['question_id']}": r
                  for r in sub}


@pytest.fixture
def server(monkeypatch):
    for v in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setenv(KEY_ENV, KEY)

    def respond(req, n):
        p = prompt_text(req)
        if "response1:" in p:  # consistency: decided by the question named in response 1
            qid = re.search(r"response1:.*?\[(\w+)\]", p, re.S)
            return 200, {}, chat_reply("same" if qid and SAME.get(qid.group(1)) else "different"), 0.0
        qid = re.search(r"Prediction answer:.*\[(\w+)\]", p).group(1)
        if qid == "VS_chart_0_0_0":  # never a usable label: parse failure, then 'unclear' as the reference
            return 200, {}, chat_reply("I would need to see the chart."), 0.0
        return 200, {}, chat_reply(f"{LABELS[qid].capitalize()}."), 0.0

    s = FakeServer(respond).start()
    yield s
    s.stop()


def bench(question_file, server=None, tmp_path=None, **kw):
    judge = {"base_url": server.base_url, "api_key_env": KEY_ENV, "parse_retries": 1, "progress": False,
             "backoff_base_s": 0.01, "cache_dir": str(tmp_path / "cache")} if server else {"api_key_env": None}
    return HallusionBench({"question_file": str(question_file), "judge": judge, **kw})


def rule_answer(row, label):
    """A yes/no answer that the rule labels as `label` (unclear: no yes/no word)."""
    if label == "unclear":
        return "I cannot tell."
    yes = row["gt_answer"] == "1"
    return "Yes, it is." if (label == "correct") == yes else "No, it is not."


def check_metrics(scores):
    for k, v in EXPECTED.items():
        assert scores[k] == pytest.approx(v), k
    for cat, exp in (("VD", EXPECTED_VD), ("VS", EXPECTED_VS)):
        for k, v in exp.items():
            assert scores[cat][k] == pytest.approx(v), (cat, k)
    fc = scores["figure_consistency"]
    assert (fc["correct"], fc["wrong"], fc["inconsistent"]) == (20.0, 20.0, 60.0)
    assert fc["score"] == pytest.approx(100 * (3 / 4 + 2 / 3 + 2 / 3 + 1 + 0) / 5)
    assert scores["failure_analysis"] == {"LH": 20.0, "VI": 60.0, "Mixed": 20.0, "n_attributed": 5}
    # yes_ratio_stats: predicted yes 6/16 vs true yes 5/16; 3 of the 5 errors are on no-questions
    assert scores["yes_no_bias"]["pct_diff"] == pytest.approx(1 / 16)
    assert scores["yes_no_bias"]["fp_ratio"] == pytest.approx(0.6)


# ---------------------------------------------------------------- data


def test_items_and_prompts():
    b = HallusionBench({"judge_mode": "rules", "image_root": "/hb"})
    items = b.items()
    ids = [it.question_id for it in items]
    assert len(ids) == 1129 == len(set(ids)) and ids[0] == "VS_chart_0_0_0"
    no_fig = [it for it in items if it.meta["visual_input"] == "0"]
    assert len(no_fig) == 178 and all(it.image is not None and it.image_path is None for it in no_fig)
    fig = next(it for it in items if it.question_id == "VD_figure_0_1_0")
    assert fig.image_path == "/hb/VD/figure/0_1.png" and fig.image is None
    assert len(HallusionBench({"judge_mode": "rules", "no_image": "skip"}).items()) == 951
    # verbatim prompts of utils.py (evaluate_by_chatgpt, check_same_by_chatgpt), checked against the reference code
    digest = {n: hashlib.sha256((DATA_DIR / "hallusionbench" / n).read_bytes()).hexdigest()[:16]
              for n in ("judge_correctness.txt", "judge_consistency.txt")}
    assert digest == {"judge_correctness.txt": "bb0c7f8346a25581", "judge_consistency.txt": "ad5c87aba5b60bda"}
    p = HallusionBench({}).load_prompt()
    assert p.render(question="Q?", gt_answer_details="G.", prediction="P").endswith(
        "\n\n Question:Q?\nReference answer: G.\nPrediction answer:P\nOutput:")
    with pytest.raises(ValueError, match="judge_mode"):
        HallusionBench({"judge_mode": "gpt"})


@pytest.mark.parametrize("reply,label", [("Correct.", "1"), ("The prediction is incorrect", "0"),
                                         ("“correct”", "1"), ("Unclear", "2")])
def test_reply_labels(reply, label):
    assert parse_correctness(reply) == label


def test_yes_no_rule():
    assert [read_yes_no(a) for a in ("Yes.", "no, it isn't", "YES!", "Yes and no", "Nope", "")] == [
        "yes", "no", "yes", None, None, None]


# ---------------------------------------------------------------- scoring


def test_judge_mode_hand_computed_and_cached(question_file, server, tmp_path):
    path, rows = question_file
    answers = [{"question_id": q, "answer": f"Perhaps so [{q}]."} for q in rows]
    b = bench(path, server, tmp_path, judge_mode="judge")
    scores = b.score(answers)
    check_metrics(scores)
    j = scores["judge"]
    # 16 correctness + 8 consistency questions; one reply never names a label: asked twice (parse_retries=1)
    assert j["requests"] == 24 and j["api_calls"] == 25 == len(server.hits) and j["parse_failures"] == 1
    assert j["id"] == "gpt-4@127.0.0.1:" + server.base_url.split(":")[2].split("/")[0]
    assert j["prompt_sha256"].startswith("bb0c7f83") and set(j["prompts"]) == {"main", "consistency"}
    assert server.hits[0]["body"]["model"] == "gpt-4" and "temperature" not in server.hits[0]["body"]
    assert b.label() == f"hallusionbench/judge/judge={j['id']}#bb0c7f83"
    again = bench(path, server, tmp_path, judge_mode="judge").score(answers)
    assert again["judge"]["api_calls"] == 0 and len(server.hits) == 25
    check_metrics(again)


def test_rules_mode_needs_no_judge(question_file, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    path, rows = question_file
    b = bench(path, judge_mode="rules")
    # the reference's result-file format: rows with model_prediction, ids from the source fields
    official = [{**r, "model_prediction": rule_answer(r, LABELS[q])} for q, r in rows.items()]
    f = path.parent / "result.json"
    f.write_text(json.dumps(official))
    scores = b.score(b.load_answers(f))
    check_metrics(scores)
    assert scores["judge"]["requests"] == 0 and scores["rule_labelled"] == 16 and scores["rule_unreadable"] == 2
    assert b.label() == "hallusionbench/rules"


def test_rules_then_judge_asks_only_for_unreadable(question_file, server, tmp_path):
    path, rows = question_file
    answers = [{"question_id": q, "answer": rule_answer(r, LABELS[q]).replace("tell.", f"tell [{q}].")}
               for q, r in rows.items()]
    server_labels = dict(LABELS, VS_chart_0_0_0="unclear")
    server.respond = lambda req, n: (200, {}, chat_reply(
        "different" if "response1:" in prompt_text(req) else
        server_labels[re.search(r"\[(\w+)\]", prompt_text(req)).group(1)]), 0.0)
    scores = bench(path, server, tmp_path).score(answers)
    check_metrics(scores)
    # 2 unreadable answers -> 2 correctness requests; 2 pairs with an unreadable member -> 2 consistency requests
    assert scores["judge"]["api_calls"] == 4 and scores["rule_labelled"] == 14


def test_mismatched_answers_and_all_requests_failed(question_file, server, tmp_path):
    from harness.judge import JudgeUnavailableError

    path, rows = question_file
    ids = list(rows)
    with pytest.raises(AnswerMismatchError, match="missing 1"):
        bench(path, server, tmp_path).score([{"question_id": q, "answer": "Yes"} for q in ids[1:]])
    server.respond = lambda req, n: (500, {}, "down", 0.0)
    answers = [{"question_id": q, "answer": f"Maybe [{q}]"} for q in ids]
    with pytest.raises(JudgeUnavailableError, match="all 24 judge requests failed"):
        bench(path, server, tmp_path, judge_mode="judge").score(answers)
