"""Unit tests for benches/wer.py: text normalisation and word error rate."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benches"))

from wer import (  # noqa: E402
    ErrorCounts, corpus_wer, edit_distance, normalize, paired_bootstrap, wer, words)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Hello, World!", "hello world"),
        ("  several \t spaces\nand lines  ", "several spaces and lines"),
        ("IF THE READER WILL EXCUSE ME", "if the reader will excuse me"),
        # Hyphens, dashes and slashes separate words.
        ('the "forty-two line Bible"', "the forty two line bible"),
        ("picture-books \u2014 and/or more", "picture books and or more"),
        # Other punctuation is deleted in place.
        ("Mr. Quist, i.e. the patient.", "mr quist ie the patient"),
        ("8.9% of 1,000", "89 of 1000"),
        ("Plan: admit; (repeat) [echo]...", "plan admit repeat echo"),
        # Apostrophes survive only inside a word; curly ones are straightened.
        ("the patient's daughter", "the patient's daughter"),
        ("tonight\u2019s dose, don't", "tonight's dose don't"),
        ("'quoted' words and patients' rooms", "quoted words and patients rooms"),
        # Numbers are not spelled out.
        ("twenty five", "twenty five"),
        ("25", "25"),
        ("", ""),
        ("?!.", ""),
    ],
)
def test_normalize(text: str, expected: str) -> None:
    assert normalize(text) == expected


def test_normalize_is_idempotent() -> None:
    text = "Mrs. Priya Venkataraman, date of birth July twenty-second \u2019 it\u2019s"
    assert normalize(normalize(text)) == normalize(text)


def test_words() -> None:
    assert words("A golden fortune, and a happy life.") == [
        "a", "golden", "fortune", "and", "a", "happy", "life",
    ]


@pytest.mark.parametrize(
    ("reference", "hypothesis", "distance"),
    [
        ([], [], 0),
        (["a"], [], 1),
        ([], ["a", "b"], 2),
        (["a", "b", "c"], ["a", "b", "c"], 0),
        (["a", "b", "c"], ["a", "x", "c"], 1),  # substitution
        (["a", "b", "c"], ["a", "c"], 1),  # deletion
        (["a", "b", "c"], ["a", "b", "x", "c"], 1),  # insertion
        (["a", "b", "c", "d"], ["b", "c", "d", "e"], 2),  # shift: 1 del + 1 ins
        (["kitten"], ["sitting"], 1),  # words, not characters
    ],
)
def test_edit_distance(reference: list[str], hypothesis: list[str], distance: int) -> None:
    assert edit_distance(reference, hypothesis) == distance
    assert edit_distance(hypothesis, reference) == distance


def test_wer_applies_normalisation_to_both_sides() -> None:
    counts = wer("And so, my fellow Americans!", "and so my fellow americans")
    assert counts == ErrorCounts(edits=0, reference_words=5)
    assert counts.rate == 0.0


def test_wer_counts_numbers_as_written() -> None:
    counts = wer("twenty five milligrams", "25 milligrams")
    assert counts == ErrorCounts(edits=2, reference_words=3)  # 1 sub + 1 del


def test_wer_can_exceed_one() -> None:
    counts = wer("yes", "no no no")
    assert counts.rate == pytest.approx(3.0)


def test_corpus_wer_is_total_edits_over_total_words() -> None:
    pairs = [
        ("one two three four", "one two three four"),  # 0 / 4
        ("five", "six"),  # 1 / 1
    ]
    total = corpus_wer(pairs)
    assert total == ErrorCounts(edits=1, reference_words=5)
    assert total.rate == pytest.approx(0.2)  # not the mean of 0.0 and 1.0


def test_empty_reference() -> None:
    assert ErrorCounts().rate == 0.0
    assert wer("", "").rate == 0.0
    assert wer("", "hello").rate == float("inf")


# --------------------------------------------------------------------------
# Paired bootstrap of a WER difference
# --------------------------------------------------------------------------


def test_paired_bootstrap_of_identical_systems_is_zero() -> None:
    files = [ErrorCounts(3, 10), ErrorCounts(0, 5), ErrorCounts(7, 20)]
    assert paired_bootstrap(files, files) == (0.0, 0.0)


def test_paired_bootstrap_brackets_the_difference_and_is_repeatable() -> None:
    worse = [ErrorCounts(edits, 20) for edits in (4, 6, 5, 9, 3, 7, 8, 5)]
    better = [ErrorCounts(edits, 20) for edits in (3, 4, 5, 6, 1, 7, 5, 4)]
    low, high = paired_bootstrap(worse, better)
    difference = 100 * (corpus_rate(worse) - corpus_rate(better))
    assert 0.0 < low < difference < high
    assert paired_bootstrap(worse, better) == (low, high)
    assert paired_bootstrap(better, worse) == pytest.approx((-high, -low))


def test_paired_bootstrap_is_wide_where_files_disagree() -> None:
    # The same total difference: on every file a little, or on one file a lot.
    even = paired_bootstrap([ErrorCounts(2, 20)] * 10, [ErrorCounts(1, 20)] * 10)
    lumped = paired_bootstrap([ErrorCounts(10, 20)] + [ErrorCounts(1, 20)] * 9,
                              [ErrorCounts(1, 20)] * 10)
    assert even is not None and lumped is not None
    assert even[1] - even[0] < lumped[1] - lumped[0]


def test_paired_bootstrap_needs_two_paired_files() -> None:
    assert paired_bootstrap([ErrorCounts(3, 10)], [ErrorCounts(1, 10)]) is None
    with pytest.raises(ValueError):
        paired_bootstrap([ErrorCounts(3, 10)] * 2, [ErrorCounts(1, 10)] * 3)


def corpus_rate(files: list[ErrorCounts]) -> float:
    return sum(files, ErrorCounts()).rate
