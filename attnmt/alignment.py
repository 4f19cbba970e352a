"""What a translation's attention says about alignment, for the demo, studies and reports.

Every function takes attention matrices α [T, S] (rows: target steps, the EOS step last; columns: source tokens),
e.g. `Translation.attention`. Attention is not a guaranteed word alignment (a model may look elsewhere and still
translate well), but these numbers tell whether it behaves like one.

    entropy              H(α_t) = −Σ_s α_ts log α_ts, averaged over steps (nats): 0 = one-hot, log S = uniform
    strongest source     a_t = argmax_s α_ts, the source token step t looks at most
    last-source share    |{t < T : a_t = S}| / (T − 1): how often a word's strongest weight falls on the last source
                         token (EOS step excluded). A unidirectional encoder's last state sums up the sentence and the
                         decoder starts from it, so an attention that has learned little rests there.
    crossings            pairs of target steps t < t' whose strongest sources go backwards, a_t > a_t' (EOS step
                         excluded): > 0 where the word order changes, as from Korean (verb last) to English.

Word alignment from attention (`attnmt translate --print-alignment`): subwords are merged into words first, a
sentencepiece piece that starts with "▁" starting a word (so words are the whitespace-separated words of the text),

    word attention       A_jw = (1/|t(j)|) Σ_{t ∈ t(j)} Σ_{s ∈ s(w)} α_ts    target word j's pieces t(j) averaged,
                         source word w's pieces s(w) summed (the EOS step dropped): each row still sums to ≤ 1
    alignment            for every target word j, the pair (i, j) with i = argmax_w A_jw, written the Moses way
                         "i-j" (0-based source word, target word), e.g. "0-0 2-1 1-2"
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def attention_entropy(weights: np.ndarray) -> float:
    """Mean over target steps of H(α_t) = −Σ_s α_ts log α_ts (nats): low = focused, log(S) = uniform."""
    clipped = np.clip(weights, 1e-12, 1.0)
    return float(np.mean(-(weights * np.log(clipped)).sum(axis=-1)))


def strongest_sources(weights: np.ndarray) -> np.ndarray:
    """a_t = argmax_s α_ts for every target step but the EOS step. [T − 1]"""
    return weights[:-1].argmax(axis=-1)


def last_source_share(matrices: Iterable[np.ndarray]) -> float:
    """Over all translations: the share of target tokens (EOS excluded) whose strongest weight is on the last source
    token; nan when there is no target token."""
    last = total = 0
    for weights in matrices:
        strongest = strongest_sources(weights)
        last += int((strongest == weights.shape[1] - 1).sum())
        total += strongest.size
    return last / total if total else float("nan")


def crossings(weights: np.ndarray) -> int:
    """Pairs of target steps t < t' (EOS excluded) with a_t > a_t': how far the alignment departs from monotonic."""
    strongest = strongest_sources(weights)
    return int(sum((strongest[i] > strongest[i + 1:]).sum() for i in range(strongest.size)))


def instructive_example(matrices: list[np.ndarray], qualities: list[float], min_tokens: int = 4,
                        max_tokens: int = 12) -> int:
    """The index of the translation whose heatmap teaches most: a sentence of several source tokens
    (min_tokens..max_tokens) whose strongest sources change order (crossings > 0), the best translated of those
    (`qualities`, e.g. sentence chrF against the reference). Without such a sentence, the best translated of the
    right length, then the best translated of all."""
    def rank(i: int) -> tuple:
        sized = min_tokens <= matrices[i].shape[1] <= max_tokens and matrices[i].shape[0] > 2
        return sized and crossings(matrices[i]) > 0, sized, qualities[i]

    return max(range(len(matrices)), key=rank)


WORD_START = "\u2581"  # sentencepiece's "▁": the piece begins a new word


def word_ids(pieces: list[str]) -> list[int]:
    """The word of each subword piece (0-based): a piece starting with "▁" starts a new word; the first piece always
    starts word 0."""
    ids, word = [], -1
    for position, piece in enumerate(pieces):
        if position == 0 or piece.startswith(WORD_START):
            word += 1
        ids.append(word)
    return ids


def _membership(ids: list[int]) -> np.ndarray:
    """One-hot G [pieces, words]: G_pw = 1 if piece p is part of word w."""
    matrix = np.zeros((len(ids), ids[-1] + 1 if ids else 0))
    matrix[np.arange(len(ids)), ids] = 1.0
    return matrix


def word_attention(weights: np.ndarray, source_pieces: list[str], target_pieces: list[str]) -> np.ndarray:
    """A_jw = (1/|t(j)|) Σ_{t ∈ t(j)} Σ_{s ∈ s(w)} α_ts: attention α [T (+ the EOS step), S] between subwords →
    [target words, source words], the pieces of a source word summed, those of a target word averaged."""
    source_words = _membership(word_ids(source_pieces))  # [S, Sw]
    target_words = _membership(word_ids(target_pieces))  # [T, Tw]
    summed = target_words.T @ weights[:len(target_pieces)] @ source_words  # [Tw, Sw]
    return summed / np.maximum(target_words.sum(axis=0), 1.0)[:, None]


def word_alignment(weights: np.ndarray, source_pieces: list[str], target_pieces: list[str]) -> list[tuple[int, int]]:
    """(i, j) for every target word j in order: i = argmax_w A_jw, its strongest source word (`word_attention`);
    none when either side is empty."""
    if not source_pieces or not target_pieces:
        return []
    strongest = word_attention(weights, source_pieces, target_pieces).argmax(axis=1)  # [Tw]
    return [(int(i), j) for j, i in enumerate(strongest)]


def moses_format(pairs: list[tuple[int, int]]) -> str:
    """Alignment pairs as Moses writes them: "i-j" (source word, target word, 0-based), space-separated."""
    return " ".join(f"{i}-{j}" for i, j in pairs)
