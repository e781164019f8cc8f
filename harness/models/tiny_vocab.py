"""The word list of the tiny offline tokenizers: template words, benchmark words and the COCO objects."""
from __future__ import annotations

from benchmarks.base import DATA_DIR

COMMON = """
a an the is are was were be been there this that these those it its of in on at to with and or but not no yes
some two three four many one several large small big little red blue green white black yellow brown orange
gray grey pink purple wooden metal old young tall short next near behind under above front side top bottom
left right middle sitting standing holding walking lying eating playing looking riding parked flying
while his her their they he she we you i what where which how who why image picture photo describe detail
detailed please answer question single word phrase using short caption generate give provide does do can
has have had there's room table street field water sky grass road wall floor window building area scene
view background foreground group couple other another each both all very also as by from for into out up
down over around together near inside outside day night light dark color colors total number how many
user assistant system human gpt question answer describe image picture this
""".split()

PUNCT = [".", ",", "?", "!", ":", "'", "\"", "(", ")", "-", "/", ";"]


def tiny_vocabulary() -> list[str]:
    """Sorted, de-duplicated words: common words, punctuation and every word of the CHAIR synonym list."""
    words = set(COMMON) | set(PUNCT)
    synonyms = (DATA_DIR / "chair" / "synonyms.txt").read_text().split()
    for w in synonyms:
        words.update(w.strip(",").lower().split())
    return sorted(w for w in words if w)
