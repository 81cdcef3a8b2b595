"""WER and medical-term WER under the ``medwer`` 1.0.0 protocol.

``medwer`` (PyPI) normalises like Whisper's English normaliser, with numbers
folded (``twenty five`` and ``25`` are one word), and scores the medical
terms of its bundled list phrase by phrase. The peer script
(``peer_pipeline.py``) imports :func:`medwer_score`; ``mmt bench`` runs this
file as a program::

    echo '{"pairs": [["reference", "hypothesis"], ...]}' | python benches/medwer_score.py

and reads one JSON object of summed counts (``edits``, ``reference_words``,
``medical_edits``, ``medical_reference_words``) from its output. Exit status
3 means ``medwer`` is not installed (``make setup-dev`` installs it);
``--check`` only tests that.
"""

from __future__ import annotations

import functools
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Optional, Protocol, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))

from wer import edit_distance  # noqa: E402

# Exit status when medwer cannot be imported.
NOT_INSTALLED = 3


@dataclass(frozen=True)
class MedwerScore:
    """Corpus WER and medical-term WER under the ``medwer`` 1.0.0 protocol."""

    edits: int
    reference_words: int
    medical_edits: int
    medical_reference_words: int

    @property
    def rate(self) -> float:
        return self.edits / self.reference_words if self.reference_words else float("nan")

    @property
    def medical_rate(self) -> float:
        if not self.medical_reference_words:
            return float("nan")
        return self.medical_edits / self.medical_reference_words


class Referenced(Protocol):
    """A scored recording: its name and reference transcript."""

    name: str
    reference: str


@functools.lru_cache(maxsize=1)
def medwer_scorer():
    """medwer's ``Scorer`` (normaliser and bundled term list), or None if not installed."""
    try:
        from medwer import Scorer
    except ImportError:
        return None
    return Scorer()


def medwer_score(clips: Sequence[Referenced], texts: dict[str, str]) -> Optional[MedwerScore]:
    """``medwer.Scorer.corpus`` of ``texts`` (by file name; missing = empty), or None."""
    return score_pairs((clip.reference, texts.get(clip.name, "")) for clip in clips)


def score_pairs(pairs: Iterable[tuple[str, str]]) -> Optional[MedwerScore]:
    """Summed counts over ``(reference, hypothesis)`` pairs, or None without medwer.

    The protocol of ``Scorer.corpus``: medwer's normaliser on both sides, pairs
    whose normalised reference is empty skipped, ``medwer.keep_medical`` with
    the bundled term list for the medical-term WER, edits and words summed
    over the corpus. Only the Levenshtein distance is ``wer.edit_distance``
    (the same number in O(words) memory: medwer's keeps the whole matrix of
    Python ints, about 0.2 GB for a 20-minute file's 2,400 words). Checked
    equal to ``Scorer.corpus`` on clips of the unseen short set.
    """
    scorer = medwer_scorer()
    if scorer is None:
        return None
    from medwer import keep_medical

    edits = words = medical_edits = medical_words = 0
    for reference_text, hypothesis_text in pairs:
        reference = scorer.norm(reference_text)
        if not reference.strip():
            continue
        hypothesis = scorer.norm(hypothesis_text)
        edits += edit_distance(reference.split(), hypothesis.split())
        words += len(reference.split())
        medical_ref = keep_medical(reference, scorer.entries, scorer.max_tokens).split()
        medical_hyp = keep_medical(hypothesis, scorer.entries, scorer.max_tokens).split()
        medical_edits += edit_distance(medical_ref, medical_hyp)
        medical_words += len(medical_ref)
    return MedwerScore(edits, words, medical_edits, medical_words)


def main(argv: Sequence[str]) -> int:
    if medwer_scorer() is None:
        print("medwer is not installed (make setup-dev installs it)", file=sys.stderr)
        return NOT_INSTALLED
    if "--check" in argv:
        return 0
    request = json.load(sys.stdin)
    pairs = [(str(reference), str(hypothesis)) for reference, hypothesis in request["pairs"]]
    result = score_pairs(pairs)
    json.dump(asdict(result) if result else {}, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
