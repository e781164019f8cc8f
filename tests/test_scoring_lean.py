"""Lean score-only runs: no torch / datasets / scipy / scikit-learn loaded, NLTK replacements equal to
NLTK on the shipped captions and on the whole WordNet index, count rows equal to the per-caption
records, and the same rows over several worker processes."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.chair_counts import chair_counts, resolve_workers
from benchmarks.chair_metric import chair_evaluate, chair_overall, load_ground_truth, load_vocab
from tests.conftest import run_cli

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data"
TABLE1 = sorted((DATA / "chair_captions" / "less_is_more_table1").glob("*.jsonl"))
HEAVY = ("torch", "datasets", "scipy", "sklearn", "pandas", "transformers", "nltk")
TRICKY = [
    'He said "hi" -- and (then) left... ok? Yes! 3.5 kg, e-mail & can\'t; gonna wanna "quoted".',
    "A 1990s photo: “quoted” text, ‘single’ «guillemets» — dash – en, [brackets] {braces} <angle>.",
    "'Tis the season; 't was fun. We'll see, they've gone, I'm here, you'd go, it's Bob's cat's toy.",
    "Cannot gimme lemme gotta more'n d'ye WANNA go? ``backticks'' and ''pairs'' at #3 @home 50% *star*",
    "Ends with period.\" Then 'quote' (paren.) and trailing comma, colon: 12:30, 1,000",
]


def _captions() -> list[str]:
    caps = [json.loads(line)["text"] for p in TABLE1 for line in p.read_text().splitlines()]
    return list(dict.fromkeys(caps))


def test_word_tokenize_equals_nltk():
    import nltk

    from benchmarks.chair_text import word_tokenize
    from benchmarks.nltk_setup import ensure_nltk_data

    ensure_nltk_data()
    caps = _captions()
    assert len(caps) > 4000
    for text in [c.lower() for c in caps[::4]] + caps[1:400:4] + TRICKY + [t.upper() for t in TRICKY]:
        assert word_tokenize(text) == nltk.word_tokenize(text), text


def test_word_tokenize_equals_nltk_on_random_text():
    """Random texts over the characters every tokenizer rule reads (quotes, periods at the end and inside,
    contractions, other whitespace, case-folding oddities): the gated, tail-only rules change nothing."""
    import random

    import nltk

    from benchmarks.chair_text import word_tokenize
    from benchmarks.nltk_setup import ensure_nltk_data

    ensure_nltk_data()
    pieces = ["a", "dog", "Cat", " ", " ", "  ", ".", ". ", "..", "...", ",", ", ", ":", ";", "'", "''", '"', "`",
              "``", "(", ")", "]", "-", "--", "!", "?", "'s ", "n't ", "'ll ", "can", "not", "gon", "na", "wan",
              "'t", "is", "d", "'ye", "more", "'n", "\n", "\t", "1", "2,000", "1999", "“", "”", "’", "‘", "«", "»",
              "İ", "ı", "K", "ſ", "e.g.", "St.", "Mr. ", "U.S."]
    rng = random.Random(0)
    for _ in range(3000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 14)))
        assert word_tokenize(text) == nltk.word_tokenize(text), repr(text)


def test_word_tokenize_equals_nltk_on_random_plain_text():
    """Plain sentences (ASCII letters, digits, spaces, ``,.-``) take the short rule list: same tokens as nltk,
    commas before digits and at the end, periods inside and at the end, contractions and near-contractions."""
    import random

    import nltk

    from benchmarks.chair_text import word_tokenize
    from benchmarks.nltk_setup import ensure_nltk_data

    ensure_nltk_data()
    pieces = ["a", "dog", "Cat", " ", "  ", ".", ". ", ",", ", ", ",1", "-", "1", "2,000", "3.5", "1999", "can", "not",
              "cannot", "Cannot", "gon", "na", "wan", "wanna", "got", "ta", "gotta", "lem", "me", "gim", "more",
              "wagon", "St.", "Mr. ", "e.g.", "J.", "3.", "x-ray", "A.", "end,", "end.", " ,", "."]
    rng = random.Random(2)
    for _ in range(4000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 14)))
        assert word_tokenize(text) == nltk.word_tokenize(text), repr(text)


def test_wordnet_tables_and_lemmas_equal_nltk():
    from nltk.corpus import wordnet as wn
    from nltk.stem import WordNetLemmatizer

    from benchmarks.chair_text import _wordnet, lemmatize, word_tokenize

    wn.ensure_loaded()
    index, exceptions = _wordnet()
    for pos in "nvar":  # the lemma index and exception lists are nltk's, entry for entry
        assert index[pos] == {w for w, ps in wn._lemma_pos_offset_map.items() if pos in ps}
        assert exceptions[pos] == wn._exception_map[pos]
    words = {w for cap in _captions()[:1500] for w in word_tokenize(cap.lower())}
    words |= {w for pos in "nvar" for w in list(exceptions[pos])[:300]}
    wnl = WordNetLemmatizer()
    for w in sorted(words):
        for pos in "nvar":
            assert lemmatize(w, pos) == wnl.lemmatize(w, pos), (w, pos)


def test_plain_json_rows_equal_datasets(tmp_path):
    import datasets

    from benchmarks.loading import plain_json_rows

    files = [ROOT / "benchmarks" / "data" / "chair" / "chair-500.jsonl",
             ROOT / "benchmarks" / "data" / "chair" / "damro_chair_images_500.jsonl"]
    files += sorted((ROOT / "benchmarks" / "data").glob("pope/**/*.json*"))[:3]
    ragged = tmp_path / "ragged.jsonl"
    ragged.write_text('{"a": 1, "b": "x"}\n{"a": 2}\n{"b": "y", "c": true}\n')
    for f in files + [ragged]:
        rows = plain_json_rows(f.read_text(encoding="utf-8"))
        assert rows is not None, f
        assert rows == [dict(r) for r in datasets.load_dataset("json", data_files=str(f), split="train")], f
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text('{"a": 1}\n{"a": 1.5}\n')
    assert plain_json_rows(mixed.read_text()) is None  # datasets would turn 1 into 1.0: left to datasets


@pytest.mark.parametrize("workers", [1, 2])
def test_count_rows_equal_caption_records(workers):
    gt, vocab = load_ground_truth("lemma_pos"), load_vocab()
    pairs = []
    for i, path in enumerate(TABLE1[:2]):  # the same images twice: repeated and distinct captions
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            pairs.append((rec["image_id"], rec["text"]))
    pairs = pairs[:300] + pairs[500:800]
    ev = chair_evaluate(pairs, gt, vocab)
    want = [(1, int(bool(d["mscoco_hallucinated_words"])), len(d["mscoco_generated_words"]),
             len(d["mscoco_hallucinated_words"]), len({m["object"] for m in d["mentions"] if not m["hallucinated"]}),
             len(d["mscoco_gt_words"]), d["metrics"]["Len"]) for d in ev["sentences"]]
    rows = chair_counts(pairs, gt, vocab, workers=workers)
    assert rows == want
    assert chair_overall(rows) == ev["overall_metrics"]


def test_workers_option():
    assert resolve_workers(None, 10) == 1
    assert resolve_workers(3, 10) == 3
    with pytest.raises(ValueError, match="benchmark.workers"):
        resolve_workers(0, 10)


DRIVER = """
import json, os, runpy, sys
sys.path.insert(0, os.getcwd())
sys.argv = ["run.py", *sys.argv[1:]]
try:
    runpy.run_path("run.py", run_name="__main__")
except SystemExit as e:
    assert not e.code, e.code
print("LOADED=" + json.dumps([m for m in {heavy!r} if m in sys.modules]))
"""


@pytest.mark.parametrize("args", [
    ["benchmark=chair", f"answers={TABLE1[0]}", "benchmark.bootstrap=50"],
    ["benchmark=mme", f"answers={DATA / 'mme' / 'LaVIN'}", "benchmark.bootstrap=50"],
], ids=["chair", "mme"])
def test_score_only_loads_no_heavy_package(tmp_path, args):
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER.format(heavy=HEAVY))
    proc = run_cli([str(driver), *args, f"hydra.run.dir={tmp_path / 'run'}", f"results_store={tmp_path / 'r.jsonl'}"])
    loaded = json.loads(proc.stdout.split("LOADED=")[-1].strip())
    assert loaded == [], f"score-only run imported {loaded}"
    assert json.loads((tmp_path / "run" / "scores.json").read_text())["n"] > 0


def test_pope_question_files_need_no_datasets():
    code = ("import sys; from benchmarks.pope import POPE as P; b = P({'split': 'all'}); "
            "assert len(b.items()) == 9000; print([m for m in ('datasets', 'torch') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_fast_tagger_equals_nltk_tagger():
    import nltk
    from nltk.tag.perceptron import PerceptronTagger

    from benchmarks.perceptron_tagger import FastPerceptronTagger

    caps = _captions()[::40] + TRICKY
    token_lists = [nltk.word_tokenize(c.lower()) for c in caps] + [[], ["dog"]]
    fast = FastPerceptronTagger()
    want = [PerceptronTagger().tag(tokens) for tokens in token_lists[:50]]
    assert [fast.tag(tokens) for tokens in token_lists[:50]] == want  # cold memo: every decision scored
    assert [fast.tag(tokens) for tokens in token_lists[:50]] == want  # memoised decisions
    assert [fast.tag_needed(tokens, [True] * len(tokens)) for tokens in token_lists[:50]] == want
    reference = PerceptronTagger()
    assert [fast.tag(tokens) for tokens in token_lists] == [reference.tag(tokens) for tokens in token_lists]


def test_tagger_features_params_and_normalisation_equal_nltk():
    from nltk.tag.perceptron import PerceptronTagger

    from benchmarks.perceptron_tagger import END, START, FastPerceptronTagger, normalize

    ref, fast = PerceptronTagger(), FastPerceptronTagger()
    assert (list(START), list(END)) == (ref.START, ref.END)
    assert fast.weights == ref.model.weights and fast.tagdict == ref.tagdict and set(fast.classes) == ref.classes
    words = ["A", "well-known", "-x", "dog", "ran", "2,000", "1999", "19999", "m", "", "İ", "3rd", "."]
    assert [normalize(w) for w in words] == [ref.normalize(w) for w in words]
    tokens = words[:-4] + ["in", "1999", "."]
    ctx = ref.START + [ref.normalize(w) for w in tokens] + ref.END
    prev, prev2 = ref.START
    for i, word in enumerate(tokens):
        features = ref._get_features(i, word, ctx, prev, prev2)
        assert set(features.values()) == {1}
        assert list(features) == list(fast._feature_keys(i, word, ctx, prev, prev2))
        prev2, prev = prev, "NN"


def test_pinned_word_tokenizer_rules_equal_nltk():
    import re

    from nltk.tokenize.destructive import NLTKWordTokenizer as T

    from benchmarks.chair_text import _rules

    def engine(p):
        inner = getattr(p, "_rx", p)  # nltk 3.10 wraps its `regex` patterns in a timed pattern
        return type(inner).__module__.partition(".")[0], inner.pattern, inner.flags

    first, then, contractions = _rules()
    want_first = T.STARTING_QUOTES + T.PUNCTUATION + [T.PARENS_BRACKETS, T.DOUBLE_DASHES]
    for got, want in ((first, want_first), (then, T.ENDING_QUOTES)):
        assert [(engine(p), r) for p, r, *_ in got] == [(engine(p), r) for p, r in want]
    assert [engine(p) for _, p in contractions] == [engine(p) for p in T.CONTRACTIONS2 + T.CONTRACTIONS3]
    for head, p in contractions:  # every match of the pattern holds its head
        literal = re.sub(r"\(\?#X\)|\(\?i\)|\\b|\(\?=\\s\)|[()]", "", p.pattern).strip()
        assert head in literal.lower(), (head, p.pattern)


def test_punkt_equals_nltk_on_random_text():
    """Abbreviations, initials, numbers, ellipses, quotes and brackets after a period, line breaks, non-ASCII
    space and case: our Punkt splits every text as nltk's English Punkt does, with the same parameters."""
    import random

    from nltk.tokenize.punkt import PunktTokenizer

    from benchmarks.nltk_setup import ensure_nltk_data
    from benchmarks.punkt import PunktSplitter

    ensure_nltk_data()
    ref, ours = PunktTokenizer("english"), PunktSplitter()
    p = ref._params
    assert (ours.abbrev_types, ours.collocations, ours.sent_starters) == (p.abbrev_types, p.collocations,
                                                                          p.sent_starters)
    assert dict(ours.ortho) == dict(p.ortho_context)
    pieces = ["a", "dog", "Cat", "The", "the", "He", " ", "  ", ".", ". ", "..", "...", ",", ":", ";", "'", '"', "(",
              ")", "]", "-", "--", "!", "?", "\n", "\n\n", "\t", "1", "2,000", "1999", "3.", "J.", "j.", "e.g.", "St.",
              "Mr.", "U.S.", "etc.", "Inc.", "Co.", "“", "”", "’", "«", "»", "İ", "No.", "vs.", "p.m.", " I", "Bach",
              "dividend", "5.", "\u00a0", "\u2029", "\x85", "Mid-air", "mid-Jan.", "jan."]
    rng = random.Random(0)
    for _ in range(6000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 16)))
        assert ours.tokenize(text) == ref.tokenize(text), repr(text)
    for cap in _captions()[::3]:
        assert ours.tokenize(cap) == ref.tokenize(cap), cap


@pytest.mark.parametrize("fix_vocab_quirks", [False, True])
def test_class_counts_equal_full_lemma_pipeline_on_every_shipped_caption(fix_vocab_quirks):
    """Tagging only the tokens whose tag can matter gives the counts of lemmatizing every token."""
    from benchmarks.chair_counts import summarise
    from benchmarks.chair_metric import analyse_words, lemma_pos

    vocab = load_vocab(fix_vocab_quirks)
    caps = _captions() + TRICKY + ["", "Toilet seat and a teddy bear, hot dogs.", "Dogs dogging; a baby bird."]
    want = []
    for _, lemmas in map(lemma_pos, caps):
        merged, found = analyse_words(lemmas, vocab)
        want.append((len(merged), tuple(obj for _, obj, _, _ in found)))
    assert summarise(caps, vocab) == want


def test_tag_needed_equals_full_tagging_where_needed():
    import random

    from benchmarks.chair_classes import needed_tags
    from benchmarks.chair_text import word_tokenize
    from benchmarks.perceptron_tagger import FastPerceptronTagger

    tagger, full = FastPerceptronTagger(), FastPerceptronTagger()
    rng = random.Random(1)
    for cap in _captions()[::25] + TRICKY:
        tokens = word_tokenize(cap.lower())
        want = full.tag(tokens)
        wanted = [rng.random() < 0.1 for _ in tokens]
        need = needed_tags([not w for w in wanted], tokens, tagger.tagdict)
        got = tagger.tag_needed(tokens, need)
        assert [g for g, n in zip(got, need) if n] == [w for w, n in zip(want, need) if n]
        assert all(tag is None for (_, tag), n in zip(got, need) if not n)
