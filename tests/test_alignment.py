"""attnmt.alignment: what the attention matrices of translations say (entropy, last-source share, crossings)."""

from __future__ import annotations

import numpy as np
import pytest

from attnmt.alignment import (attention_entropy, crossings, instructive_example, last_source_share, moses_format,
                              strongest_sources, word_alignment, word_attention, word_ids)


def test_attention_entropy_uniform_and_focused():
    assert attention_entropy(np.full((3, 4), 0.25)) == pytest.approx(np.log(4))
    assert attention_entropy(np.eye(3)) == pytest.approx(0.0, abs=1e-9)


def test_last_source_share_leaves_the_eos_step_out():
    on_last = np.tile(np.eye(4)[3], (3, 1))  # 2 words + EOS, all on the last of 4 source tokens
    diagonal = np.eye(4)[[0, 1, 2, 3]]  # 3 words on tokens 0..2, EOS on the last
    assert last_source_share([on_last]) == 1.0
    assert last_source_share([diagonal]) == 0.0
    assert last_source_share([on_last, diagonal]) == pytest.approx(2 / 5)
    assert np.isnan(last_source_share([np.eye(3)[[2]]]))  # EOS only: no target token


def test_crossings_count_backward_steps():
    monotonic = np.eye(5)
    assert list(strongest_sources(monotonic)) == [0, 1, 2, 3] and crossings(monotonic) == 0
    korean_verb_last = np.eye(4)[[0, 3, 1, 2, 3]]  # subject, verb (last source word), then the object words
    assert crossings(korean_verb_last) == 2


def test_the_instructive_example_has_several_words_and_reordering():
    monotonic = np.eye(6)  # 6 source tokens, in order
    reordered = np.eye(6)[[0, 5, 1, 2, 3, 4, 5]]
    short = np.eye(2)
    matrices = [short, monotonic, reordered, reordered[:, :5] / reordered[:, :5].sum(1, keepdims=True).clip(1e-9)]
    assert instructive_example(matrices, [0.99, 0.9, 0.5, 0.4]) == 2  # reordering beats a better monotonic one
    assert instructive_example([short, monotonic], [0.99, 0.1]) == 1  # several words beat a better short one
    assert instructive_example([short, short * 0.5], [0.2, 0.3]) == 1  # otherwise the best translated


def test_word_ids_start_a_word_at_each_word_start_piece():
    assert word_ids(["▁Der", "▁Hund", "e", "s", "▁", "läuft", "."]) == [0, 1, 1, 1, 2, 2, 2]
    assert word_ids(["ab", "▁c"]) == [0, 1]  # the first piece starts a word, "▁" or not
    assert word_ids([]) == []


def test_word_attention_sums_source_pieces_and_averages_target_pieces():
    source = ["▁a", "b", "▁c"]  # words: ab, c
    target = ["▁x", "▁y", "z"]  # words: x, yz
    weights = np.array([[0.6, 0.3, 0.1],
                        [0.1, 0.1, 0.8],
                        [0.5, 0.0, 0.5],
                        [0.2, 0.2, 0.6]])  # the EOS row is dropped
    np.testing.assert_allclose(word_attention(weights, source, target),
                               [[0.9, 0.1], [(0.2 + 0.5) / 2, (0.8 + 0.5) / 2]])
    pairs = word_alignment(weights, source, target)
    assert pairs == [(0, 0), (1, 1)]
    assert moses_format(pairs) == "0-0 1-1" and moses_format([]) == ""
    # by the strongest piece alone the second target word would split: merging is what makes it one decision
    assert list(strongest_sources(weights)) == [0, 2, 0]


def test_word_alignment_of_an_empty_side_is_empty():
    assert word_alignment(np.zeros((1, 2)), ["▁a", "▁b"], []) == []
    assert word_alignment(np.zeros((0, 0)), [], []) == []
