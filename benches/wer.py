"""Word error rate with the text normalisation every MMT benchmark uses.

Standard library only, so any Python 3.9+ can score transcripts.

Normalisation (:func:`normalize`), applied identically to references and to
every engine's output:

1. Unicode NFKC, then lowercase (``casefold``).
2. Typographic apostrophes (U+2018, U+2019, U+02BC, U+FF07) become ``'``.
3. Hyphens, dashes and slashes become spaces: ``forty-two`` and ``forty two``
   are the same two words, ``and/or`` is two words.
4. An apostrophe is kept only *inside* a word, between two letters or digits
   (``patient's``, ``don't`` stay one word and must match exactly); quotes and
   leading or trailing apostrophes (``'tis``, ``patients'``) are dropped.
5. Every other punctuation mark or symbol (Unicode categories P* and S*) is
   deleted without leaving a space, so ``Mr.`` is ``mr``, ``i.e.`` is ``ie``,
   ``1,000`` is ``1000`` and ``8.9%`` is ``89``.
6. Whitespace is collapsed; words are the whitespace-separated pieces.

Numbers are *not* spelled out or converted: ``twenty five`` against ``25`` is
an error, as it is in the project's published figures (DESIGN.md,
"Evaluation data").

Corpus-level WER (:func:`corpus_wer`) is the sum of word-level Levenshtein
edits (substitutions + deletions + insertions) over all utterances divided by
the sum of reference words, not the mean of per-utterance rates.

Two systems' corpus WER on the same files differ by chance as much as by
skill: conditioned decoding with temperature fallback changes whole
stretches of text for a small cause. :func:`paired_bootstrap` puts an
interval on the difference by resampling the files.
"""

from __future__ import annotations

import random
import re
import unicodedata
from dataclasses import dataclass
from typing import Iterable, Sequence

__all__ = ["normalize", "words", "edit_distance", "ErrorCounts", "wer", "corpus_wer"]

_APOSTROPHES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u02bc": "'", "\uff07": "'"})
# Characters that separate words: hyphens, dashes, slashes (after NFKC).
_SEPARATORS = re.compile(r"[\u002d\u2010-\u2015\u2212/\\]")
# An apostrophe with a letter or digit on both sides.
_INNER_APOSTROPHE = re.compile(r"(?<=\w)'(?=\w)")
_KEEP = "\x00"  # placeholder for inner apostrophes while punctuation is removed


def normalize(text: str) -> str:
    """Return ``text`` normalised for scoring (see the module documentation)."""
    text = unicodedata.normalize("NFKC", text).casefold().translate(_APOSTROPHES)
    text = _SEPARATORS.sub(" ", text)
    text = _INNER_APOSTROPHE.sub(_KEEP, text)
    kept = []
    for char in text:
        if char == _KEEP:
            kept.append("'")
        elif char.isspace():
            kept.append(" ")
        elif unicodedata.category(char)[0] in "PS":
            continue
        else:
            kept.append(char)
    return " ".join("".join(kept).split())


def words(text: str) -> list[str]:
    """The normalised words of ``text``."""
    return normalize(text).split()


def edit_distance(reference: Sequence[str], hypothesis: Sequence[str]) -> int:
    """Levenshtein distance between two word sequences (unit costs).

    O(len(reference) * len(hypothesis)) time, O(len(hypothesis)) memory.
    """
    previous = list(range(len(hypothesis) + 1))
    for i, ref_word in enumerate(reference, start=1):
        current = [i] + [0] * len(hypothesis)
        for j, hyp_word in enumerate(hypothesis, start=1):
            current[j] = min(
                previous[j] + 1,  # deletion (reference word missing)
                current[j - 1] + 1,  # insertion (extra hypothesis word)
                previous[j - 1] + (ref_word != hyp_word),  # match / substitution
            )
        previous = current
    return previous[-1]


@dataclass(frozen=True)
class ErrorCounts:
    """Word edits and reference length; add them up across utterances."""

    edits: int = 0
    reference_words: int = 0

    def __add__(self, other: "ErrorCounts") -> "ErrorCounts":
        return ErrorCounts(
            self.edits + other.edits, self.reference_words + other.reference_words
        )

    @property
    def rate(self) -> float:
        """Edits per reference word (0.0 when there is no reference and no edit)."""
        if self.reference_words == 0:
            return 0.0 if self.edits == 0 else float("inf")
        return self.edits / self.reference_words


def wer(reference: str, hypothesis: str) -> ErrorCounts:
    """Edits and reference word count for one utterance, after normalisation."""
    ref = words(reference)
    return ErrorCounts(edit_distance(ref, words(hypothesis)), len(ref))


def corpus_wer(pairs: Iterable[tuple[str, str]]) -> ErrorCounts:
    """Total edits over total reference words for ``(reference, hypothesis)`` pairs."""
    total = ErrorCounts()
    for reference, hypothesis in pairs:
        total += wer(reference, hypothesis)
    return total


def paired_bootstrap(
    first: Sequence[ErrorCounts],
    second: Sequence[ErrorCounts],
    resamples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float] | None:
    """Interval of ``corpus WER(first) - corpus WER(second)`` in points.

    ``first[i]`` and ``second[i]`` are the two systems' errors on file ``i``.
    The files are drawn with replacement ``resamples`` times, each draw the
    same files for both systems (paired), and the central ``level`` of the
    differences is returned (Bisani and Ney's bootstrap for ASR). None for
    fewer than two files: one file cannot say how much its score is chance.
    The seed is fixed, so a report gives the same interval every time.
    """
    if len(first) != len(second):
        raise ValueError(f"{len(first)} against {len(second)} files: the systems must be paired")
    if len(first) < 2:
        return None
    rng = random.Random(seed)
    files = range(len(first))
    differences = []
    for _ in range(resamples):
        drawn = rng.choices(files, k=len(first))
        a = sum((first[i] for i in drawn), ErrorCounts())
        b = sum((second[i] for i in drawn), ErrorCounts())
        if a.reference_words:
            differences.append(100 * (a.rate - b.rate))
    if not differences:
        return None
    differences.sort()
    tail = (1 - level) / 2
    low = differences[int(tail * (len(differences) - 1))]
    high = differences[round((1 - tail) * (len(differences) - 1))]
    return low, high
