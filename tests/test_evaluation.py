"""Tests of attnmt.evaluation: sacreBLEU scores, BLEU by source length, reports and tables."""

import pytest
from sacrebleu.metrics import BLEU, CHRF

from attnmt.errors import AttnmtError
from attnmt.evaluation import (
    bleu_by_length,
    corpus_scores,
    format_report,
    markdown_table,
    source_word_lengths,
)

HYPOTHESES = [
    "The cat sat on the mat today.",
    "He reads a book in the garden.",
    "It is raining heavily this evening.",
]
REFERENCES = [
    "The cat sat on the mat.",
    "He is reading a book in the garden.",
    "It rains a lot this evening.",
]


def test_perfect_hypotheses_score_100():
    sentences = ["I am a student at this school.", "The weather is very nice today."]
    scores = corpus_scores(sentences, sentences)
    assert scores["bleu"] == pytest.approx(100.0)
    assert scores["chrf"] == pytest.approx(100.0)
    assert scores["sentences"] == 2


def test_scores_match_sacrebleu_called_directly():
    scores = corpus_scores(HYPOTHESES, REFERENCES)
    expected_bleu = BLEU().corpus_score(HYPOTHESES, [REFERENCES]).score
    expected_chrf = CHRF().corpus_score(HYPOTHESES, [REFERENCES]).score
    assert scores["bleu"] == pytest.approx(expected_bleu)
    assert scores["chrf"] == pytest.approx(expected_chrf)
    assert 0.0 < scores["bleu"] < 100.0
    assert isinstance(scores["bleu"], float) and isinstance(scores["chrf"], float)


def test_signatures_describe_default_settings():
    scores = corpus_scores(HYPOTHESES, REFERENCES)
    assert "nrefs:1" in scores["bleu_signature"]
    assert "tok:13a" in scores["bleu_signature"]
    assert "case:mixed" in scores["bleu_signature"]
    assert "nrefs:1" in scores["chrf_signature"]


def test_length_mismatch_names_both_counts():
    with pytest.raises(AttnmtError) as error:
        corpus_scores(HYPOTHESES, REFERENCES[:2])
    assert "3 hypotheses" in str(error.value)
    assert "2 references" in str(error.value)


def test_empty_input_is_an_error():
    with pytest.raises(AttnmtError, match="no sentences"):
        corpus_scores([], [])


def test_source_word_lengths_counts_whitespace_words():
    assert source_word_lengths(["나는 학생 이다", "  two   words ", ""]) == [3, 2, 0]


def test_bleu_by_length_buckets():
    lengths = [3, 9, 10, 25, 0]
    hypotheses = [f"hypothesis number {i} is here" for i in range(5)]
    references = [f"hypothesis number {i} is there" for i in range(5)]
    buckets = bleu_by_length(lengths, hypotheses, references)
    assert [bucket["bucket"] for bucket in buckets] == ["0-10", "10-20", "20-30"]
    assert [(bucket["low"], bucket["high"]) for bucket in buckets] == [(0, 10), (10, 20), (20, 30)]
    assert [bucket["sentences"] for bucket in buckets] == [3, 1, 1]
    first_subset = [0, 1, 4]
    expected = corpus_scores([hypotheses[i] for i in first_subset], [references[i] for i in first_subset])
    assert buckets[0]["bleu"] == pytest.approx(expected["bleu"])


def test_bleu_by_length_omits_empty_buckets_and_honours_width():
    buckets = bleu_by_length([1, 2, 31], ["a b c d"] * 3, ["a b c d"] * 3, bucket_width=5)
    assert [bucket["bucket"] for bucket in buckets] == ["0-5", "30-35"]
    assert [bucket["sentences"] for bucket in buckets] == [2, 1]
    assert buckets[0]["bleu"] == pytest.approx(100.0)


def test_bleu_by_length_rejects_mismatch_and_bad_width():
    with pytest.raises(AttnmtError, match="2 source lengths"):
        bleu_by_length([1, 2], HYPOTHESES, REFERENCES)
    with pytest.raises(AttnmtError, match="bucket width"):
        bleu_by_length([1, 2, 3], HYPOTHESES, REFERENCES, bucket_width=0)


def test_format_report_names_unit_and_signatures():
    scores = corpus_scores(HYPOTHESES, REFERENCES)
    buckets = bleu_by_length(source_word_lengths(REFERENCES), HYPOTHESES, REFERENCES)
    report = format_report(scores, buckets, unit="words")
    assert "source length (words)" in report
    assert scores["bleu_signature"] in report
    assert scores["chrf_signature"] in report
    assert f"{scores['bleu']:.2f}" in report
    assert "| 0-10 | 3 |" in report


def test_markdown_table_formats_numbers_and_aligns():
    rows = [
        {"name": "bahdanau", "bleu": 12.3456, "steps": 12000},
        {"name": "a|b", "bleu": 7, "steps": None},
    ]
    table = markdown_table(rows, [("name", "model"), ("bleu", "BLEU"), ("steps", "steps")])
    lines = table.splitlines()
    assert lines[0] == "| model | BLEU | steps |"
    assert lines[1] == "| --- | ---: | ---: |"
    assert lines[2] == "| bahdanau | 12.35 | 12000 |"
    assert lines[3] == "| a\\|b | 7 |  |"
