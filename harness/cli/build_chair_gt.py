"""Build a CHAIR ground-truth file (``imid_to_objects_*.json``) from COCO 2014 annotations.

For every image: the union of (a) its instance categories mapped through the CHAIR synonym list and
(b) the MSCOCO objects found in its reference captions, normalised like the chosen variant:

- ``lemma_pos``: lower-case, word_tokenize, pos_tag, WordNet lemmatizer with the POS (what the
  OPERA / less-is-more / DAMRO ``chair.py`` builds when it has no cache);
- ``singularize``: lower-case, word_tokenize, ``pattern.en.singularize`` per token (Maxlinn's
  original cache, used by OPERA and DAMRO). Needs the ``pattern`` package; ``inflect`` is accepted
  as a fallback but is only an approximation of pattern's rules (a warning says so).

Images listed in a file without any annotation get an empty list (the reference only creates keys
for annotated images; for COCO, where every image has captions, the two agree).

Example (train + val, like the reference)::

    halluc-bench-build-chair-gt --instances ann/instances_train2014.json --instances ann/instances_val2014.json \\
        --captions ann/captions_train2014.json --captions ann/captions_val2014.json \\
        --variant lemma_pos --out imid_to_objects_lemma_pos.json
"""
from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path
from typing import Callable, Iterable

from benchmarks.chair_metric import ChairVocab, analyse_words, lemma_pos_tokens, load_vocab
from benchmarks.lazy_json import write_lines_object


def get_singularizer() -> tuple[Callable[[str], str], str]:
    """``pattern.en.singularize`` (exact) or an ``inflect``-based stand-in; SystemExit if neither is installed."""
    try:
        from pattern.en import singularize  # type: ignore

        return singularize, "pattern.en.singularize"
    except ImportError:
        pass
    try:
        import inflect  # type: ignore

        engine = inflect.engine()

        def singular(word: str) -> str:
            """inflect's singular form, or the word itself."""
            try:
                return engine.singular_noun(word) or word
            except Exception:  # inflect rejects some tokens (e.g. empty or odd punctuation)
                return word

        print("warning: `pattern` is not installed; using inflect.singular_noun, which differs from "
              "pattern.en.singularize on some words, so the result may not equal the shipped singularize GT",
              file=sys.stderr)
        return singular, "inflect"
    except ImportError:
        raise SystemExit("--variant singularize needs the `pattern` package (pattern.en.singularize, as the original "
                         "CHAIR cache used) or, as an approximation, `inflect`; neither is installed "
                         "(pip install pattern  or  pip install inflect), or use --variant lemma_pos") from None


def caption_objects_for_variant(variant: str, vocab: ChairVocab,
                                singularize: Callable[[str], str] | None = None) -> Callable[[str], list[str]]:
    """A function: reference caption -> MSCOCO objects mentioned, normalised as ``variant``."""
    if variant == "lemma_pos":
        return lambda cap: [obj for _, obj, _, _ in analyse_words(lemma_pos_tokens(cap)[1], vocab)[1]]
    if variant == "singularize":
        import nltk

        from benchmarks.nltk_setup import ensure_nltk_data

        ensure_nltk_data()
        sing = singularize or get_singularizer()[0]
        return lambda cap: [obj for _, obj, _, _ in
                            analyse_words([sing(w) for w in nltk.word_tokenize(cap.lower())], vocab)[1]]
    raise ValueError(f"unknown variant {variant!r}: use lemma_pos or singularize")


def build_ground_truth(instances: Iterable[str | Path], captions: Iterable[str | Path], variant: str = "lemma_pos",
                       fix_vocab_quirks: bool = False,
                       singularize: Callable[[str], str] | None = None) -> dict[int, list[str]]:
    """image id -> sorted MSCOCO objects from COCO instance and caption annotation files (pycocotools)."""
    from pycocotools.coco import COCO

    vocab = load_vocab(fix_vocab_quirks)
    objects: dict[int, set[str]] = defaultdict(set)
    for path in instances:
        coco = COCO(str(path))
        names = {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())}
        for imid in coco.getImgIds():
            objects[imid]  # images without annotations still get an (empty) entry
        for ann in coco.loadAnns(coco.getAnnIds()):
            name = names[ann["category_id"]]
            if name not in vocab.inverse_synonym_dict:
                raise KeyError(f"{path}: category {name!r} is not in the CHAIR synonym list")
            objects[ann["image_id"]].add(vocab.inverse_synonym_dict[name])
    to_objects = caption_objects_for_variant(variant, vocab, singularize)
    for path in captions:
        coco = COCO(str(path))
        for imid in coco.getImgIds():
            objects[imid]
        for ann in coco.loadAnns(coco.getAnnIds()):
            objects[ann["image_id"]].update(to_objects(ann["caption"]))
    return {imid: sorted(objs) for imid, objs in sorted(objects.items())}


def main(argv: list[str] | None = None) -> int:
    """Command line entry point: parse arguments, build, write the JSON file."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--instances", action="append", required=True,
                    help="COCO instances_*.json (repeat for train and val)")
    ap.add_argument("--captions", action="append", required=True, help="COCO captions_*.json (repeat for train and val)")
    ap.add_argument("--variant", choices=("lemma_pos", "singularize"), default="lemma_pos",
                    help="how reference captions are normalised (default lemma_pos)")
    ap.add_argument("--fix-vocab-quirks", action="store_true",
                    help="strip/lower-case the synonym list (' motor bike', ' cheesecake', 'iPhone'); "
                         "score with fix_vocab_quirks=true too")
    ap.add_argument("--out", required=True, help="output JSON: {image id: [objects]}")
    args = ap.parse_args(argv)
    singularize = get_singularizer()[0] if args.variant == "singularize" else None  # fail before loading COCO
    gt = build_ground_truth(args.instances, args.captions, args.variant, args.fix_vocab_quirks, singularize)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_lines_object(out, {str(k): v for k, v in gt.items()})  # one image per line: scoring reads it lazily
    n_empty = sum(1 for v in gt.values() if not v)
    print(f"wrote {out}: {len(gt)} images ({n_empty} without objects), variant {args.variant}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
