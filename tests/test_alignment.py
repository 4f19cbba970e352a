"""attnmt.alignment: what the attention matrices of translations say (entropy, last-source share, crossings)."""

from __future__ import annotations

import numpy as np
import pytest

from attnmt.alignment import attention_entropy, crossings, instructive_example, last_source_share, strongest_sources


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
