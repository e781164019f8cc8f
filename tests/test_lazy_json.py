"""One-entry-per-line JSON tables read lazily (benchmarks/lazy_json.py): the same object as json.loads."""
from __future__ import annotations

import json

import pytest

from benchmarks.chair_metric import GROUND_TRUTH_FILES, load_ground_truth
from benchmarks.lazy_json import LazyObject, read_object, write_lines_object
from benchmarks.nltk_setup import NLTK_DATA_DIR

TAGGER_WEIGHTS = (NLTK_DATA_DIR / "taggers" / "averaged_perceptron_tagger_eng"
                  / "averaged_perceptron_tagger_eng.weights.json")


@pytest.mark.parametrize("path", [*GROUND_TRUTH_FILES.values(), TAGGER_WEIGHTS], ids=lambda p: p.name)
def test_shipped_tables_read_lazily_equal_json_loads(path):
    lazy, whole = read_object(path), json.loads(path.read_text(encoding="utf-8"))
    assert isinstance(lazy, LazyObject)  # the shipped layout: a regression here makes scoring slow again
    assert list(lazy) == list(whole) and len(lazy) == len(whole)
    assert dict(lazy.items()) == whole


def test_round_trip_with_escaped_keys_and_exact_floats(tmp_path):
    table = {"plain": [1, 2], 'quote " key': {"a": 0.1}, "back\\slash": [], "tab\tkey": ["x,\n"],
             "ünï": {"w": -0.30000000000000004}, "end": "s"}
    lazy = read_object(write_lines_object(tmp_path / "t.json", table))
    assert isinstance(lazy, LazyObject) and list(lazy) == list(table) and dict(lazy) == table
    assert json.loads((tmp_path / "t.json").read_text(encoding="utf-8")) == table
    assert repr(lazy["ünï"]["w"]) == repr(table["ünï"]["w"])
    crlf = tmp_path / "crlf.json"  # a Windows checkout: read as text, its line ends are "\n"
    crlf.write_bytes((tmp_path / "t.json").read_bytes().replace(b"\n", b"\r\n"))
    assert isinstance(read_object(crlf), LazyObject) and dict(read_object(crlf)) == table


@pytest.mark.parametrize("text", [
    '{"a": [1], "b": [2]}',                      # one line
    '{\n"a": [1],\n"b": [2],\n}\n',              # trailing comma: json.loads rejects it
    '{\n"a": [1]\n"b": [2]\n}\n',                # a missing comma
    '{\n}\n', '[1, 2]', '{\n"a":\n[1]\n}\n',
])
def test_other_layouts_are_decoded_whole(tmp_path, text):
    path = tmp_path / "t.json"
    path.write_text(text, encoding="utf-8", newline="")
    try:
        want = json.loads(text)
    except ValueError:
        with pytest.raises(ValueError):
            read_object(path)
        return
    got = read_object(path)
    assert not isinstance(got, LazyObject) and got == want


def test_a_bad_value_names_the_file_and_entry(tmp_path):
    path = tmp_path / "gt.json"
    path.write_text('{\n"9": ["dog"],\n"25": ["cat",]\n}\n', encoding="utf-8")
    lazy = read_object(path)
    assert lazy["9"] == ["dog"]
    with pytest.raises(ValueError, match=r"gt\.json: entry '25'"):
        lazy["25"]


def test_ground_truth_reads_only_what_it_is_asked(tmp_path):
    path = tmp_path / "gt.json"
    write_lines_object(path, {"9": ["dog", "cat"], "25": "not a list"})
    gt = load_ground_truth(str(path))
    assert gt[9] == frozenset({"dog", "cat"}) and 25 in gt and len(gt) == 2
    with pytest.raises(ValueError, match="image 25: expected a list"):
        gt[25]


def test_tagger_rejects_non_finite_weights_in_a_row(tmp_path):
    from benchmarks.perceptron_tagger import _no_constants

    path = tmp_path / "w.json"
    path.write_text('{\n"bias": {"NN": 1.0},\n"i word x": {"NN": NaN}\n}\n', encoding="utf-8")
    lazy = read_object(path, parse_constant=_no_constants)
    assert lazy["bias"] == {"NN": 1.0}
    with pytest.raises(ValueError, match="non-finite number NaN"):
        lazy["i word x"]
