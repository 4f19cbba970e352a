"""Tests of attnmt.search: greedy and beam search, on a hand-made Markov model and on the trained reversal model."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from attnmt.data import BOS_ID, EOS_ID, pad_sequences
from attnmt.models import ModelDescription, Seq2SeqModel
from attnmt.search import Hypothesis, beam_search, greedy_search, length_penalty

from conftest import random_sentences

# ---- a model whose probabilities are known exactly ------------------------------------------------------------------

V = 10  # 4 special ids, then tokens 4..9


class MarkovModel(Seq2SeqModel):
    """A hand-made implementation of the model contract (`attnmt.models.contract.Seq2SeqModel`) whose probabilities
    are known exactly: log p(y_t | y_<t, x) = table[y_{t-1}], whatever the source. Its attention (one layer of one
    head, [B, 1, 1, S]) puts all weight on source position (previous token mod source length), so each attention
    row tells which token the hypothesis had before it."""

    def __init__(self, probabilities: torch.Tensor) -> None:
        self.table = probabilities.double().log()  # [V, V]

    def encode(self, src, src_mask):
        return {"mask": src_mask}

    def start_state(self, memory):
        return {"steps": torch.zeros(memory["mask"].size(0), dtype=torch.long)}

    def _weights(self, prev, mask):
        """One-hot on source position (prev mod source length): prev [B, ...] → [B, ..., 1, 1, S]."""
        position = prev % mask.sum(dim=1).view(-1, *[1] * (prev.dim() - 1))
        return torch.nn.functional.one_hot(position, mask.size(1)).float().unsqueeze(-2).unsqueeze(-2)

    def step(self, prev, state, memory, need_weights=True):
        weights = self._weights(prev, memory["mask"]) if need_weights else None  # [B, 1, 1, S]
        return self.table[prev].float(), {"steps": state["steps"] + 1}, weights

    def forward(self, src, src_mask, tgt_in, return_attention=False):
        """Teacher forcing: the table's rows are the log-probabilities (log_softmax leaves them as they are)."""
        weights = self._weights(tgt_in, src_mask) if return_attention else None  # [B, T, 1, 1, S]
        return self.table[tgt_in].float(), weights

    def describe(self):
        return ModelDescription(family="markov", summary="a bigram table", attention="one-hot", attention_layers=1,
                                attention_heads=1, encoder_layers=0, decoder_layers=0, hidden_size=0, parameters=0)

    def sequence_score(self, tokens: list[int]) -> float:
        path = [BOS_ID, *tokens, EOS_ID]
        return float(sum(self.table[a, b] for a, b in zip(path, path[1:])))


def random_table(seed: int, eos_floor: float = 0.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    probabilities = torch.rand(V, V, generator=generator) ** 3 + 1e-3
    probabilities[:, EOS_ID] += eos_floor
    probabilities[:, :EOS_ID] = 1e-9  # PAD, UNK, BOS are (almost) never chosen
    return probabilities / probabilities.sum(dim=1, keepdim=True)


def sources(lengths: list[int]):
    return pad_sequences([[4 + i % 6 for i in range(length)] for length in lengths])


def check_attention_follows_tokens(hypothesis: Hypothesis, source_length: int) -> None:
    assert hypothesis.attention.shape == (len(hypothesis.tokens) + 1, 1, 1, source_length)  # [T, L, H, S]
    previous = [BOS_ID, *hypothesis.tokens]
    expected = np.eye(source_length)[[token % source_length for token in previous]]
    np.testing.assert_array_equal(hypothesis.attention[:, 0, 0], expected)


def test_beam_search_escapes_the_greedy_trap():
    """Greedy takes the likelier first token A (0.6) and then EOS (0.2): 0.12. Beam 2 finds B EOS: 0.4 × 0.9."""
    A, B = 4, 5
    probabilities = torch.full((V, V), 1.0)
    probabilities[:, :EOS_ID] = 1e-9
    probabilities[BOS_ID] = 1e-9
    probabilities[BOS_ID, A], probabilities[BOS_ID, B] = 0.6, 0.4
    probabilities[A] = 0.8 / 6  # each token after A is less likely than EOS
    probabilities[A, :EOS_ID] = 1e-9
    probabilities[A, EOS_ID] = 0.2
    probabilities[B] = 1e-9
    probabilities[B, EOS_ID], probabilities[B, 6] = 0.9, 0.1
    probabilities /= probabilities.sum(dim=1, keepdim=True)
    model = MarkovModel(probabilities)
    src, src_mask = sources([3])
    greedy = greedy_search(model, src, src_mask)[0][0]
    beam = beam_search(model, src, src_mask, beam_size=2, length_penalty_alpha=0.0)[0][0]
    assert greedy.tokens == [A]
    assert beam.tokens == [B]
    assert greedy.score == pytest.approx(model.sequence_score([A]), abs=1e-6)
    assert beam.score == pytest.approx(model.sequence_score([B]), abs=1e-6)
    assert beam.score > greedy.score


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_beam_does_not_stop_while_an_alive_prefix_beats_the_finished_ones(alpha):
    """The model is sure of A B EOS (0.99 each step), but an early EOS is the runner-up at steps 0 and 1. Beam 2
    finishes [] and [A] first; it must go on until A B EOS, which beats both, rather than stop at 2 finished."""
    A, B = 4, 5
    probabilities = torch.full((V, V), 1e-4)
    probabilities[:, :EOS_ID] = 1e-9
    probabilities[BOS_ID, A], probabilities[BOS_ID, EOS_ID] = 0.99, 1e-3
    probabilities[A, B], probabilities[A, EOS_ID] = 0.99, 1e-3
    probabilities[B, EOS_ID] = 0.99
    probabilities /= probabilities.sum(dim=1, keepdim=True)
    model = MarkovModel(probabilities)
    src, src_mask = sources([2])
    greedy = greedy_search(model, src, src_mask)[0][0]
    assert greedy.tokens == [A, B]
    hypotheses = beam_search(model, src, src_mask, beam_size=2, length_penalty_alpha=alpha, n_best=2)[0]
    assert hypotheses[0].tokens == [A, B]
    assert hypotheses[0].score == pytest.approx(greedy.score, abs=1e-6)


@pytest.mark.parametrize("seed", range(6))
def test_scores_are_sums_of_step_log_probs_and_attention_follows_each_hypothesis(seed):
    model = MarkovModel(random_table(seed, eos_floor=0.3))
    lengths = [3, 1, 5, 2]
    src, src_mask = sources(lengths)
    for hypotheses in greedy_search(model, src, src_mask):
        assert len(hypotheses) == 1
    results = {"greedy": greedy_search(model, src, src_mask),
               "beam": beam_search(model, src, src_mask, beam_size=4, length_penalty_alpha=0.0, n_best=4)}
    for name, per_sentence in results.items():
        for length, hypotheses in zip(lengths, per_sentence):
            for hypothesis in hypotheses:
                assert EOS_ID not in hypothesis.tokens and BOS_ID not in hypothesis.tokens
                assert hypothesis.score == pytest.approx(model.sequence_score(hypothesis.tokens), abs=1e-6)
                check_attention_follows_tokens(hypothesis, length)


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_n_best_are_distinct_and_sorted(alpha):
    model = MarkovModel(random_table(7, eos_floor=0.2))
    src, src_mask = sources([4, 2])
    for hypotheses in beam_search(model, src, src_mask, beam_size=5, length_penalty_alpha=alpha, n_best=5):
        assert len(hypotheses) == 5
        assert len({tuple(h.tokens) for h in hypotheses}) == 5
        normalized = [h.normalized_score for h in hypotheses]
        assert normalized == sorted(normalized, reverse=True)
        for h in hypotheses:
            assert h.normalized_score == pytest.approx(h.score / length_penalty(len(h.tokens) + 1, alpha))
    fewer = beam_search(model, src, src_mask, beam_size=5, length_penalty_alpha=alpha, n_best=2)
    assert [len(h) for h in fewer] == [2, 2]
    with pytest.raises(ValueError, match="n_best"):
        beam_search(model, src, src_mask, beam_size=2, n_best=3)


def test_length_penalty_favours_longer_hypotheses():
    assert length_penalty(7, 0.0) == 1.0
    assert length_penalty(1, 1.0) == 1.0
    assert length_penalty(10, 1.0) > length_penalty(5, 1.0) > 1.0


def test_hypotheses_stop_at_the_length_limit_with_the_eos_log_prob_counted():
    """EOS is (almost) impossible: every hypothesis runs to ceil(ratio × source length) + 10 tokens, then ends."""
    probabilities = torch.full((V, V), 1.0)
    probabilities[:, :EOS_ID] = 1e-9
    probabilities[:, EOS_ID] = 1e-6
    probabilities[:, 4] = 5.0  # a clear favourite, so greedy repeats it
    probabilities /= probabilities.sum(dim=1, keepdim=True)
    model = MarkovModel(probabilities)
    lengths, ratio = [3, 1, 4], 1.5
    src, src_mask = sources(lengths)
    limits = [math.ceil(length * ratio) + 10 for length in lengths]
    for hypotheses, limit in zip(greedy_search(model, src, src_mask, max_length_ratio=ratio), limits):
        assert hypotheses[0].tokens == [4] * limit
        assert hypotheses[0].score == pytest.approx(model.sequence_score([4] * limit), abs=1e-5)
    beams = beam_search(model, src, src_mask, beam_size=3, length_penalty_alpha=0.0, max_length_ratio=ratio,
                        n_best=3)
    for hypotheses, limit in zip(beams, limits):
        assert len(hypotheses) == 3
        for hypothesis in hypotheses:
            assert len(hypothesis.tokens) == limit
            assert hypothesis.score == pytest.approx(model.sequence_score(hypothesis.tokens), abs=1e-5)


def test_beam_search_copies_history_in_linear_not_quadratic_size(monkeypatch):
    """Issue 15: the attention history (and the prefixes) were copied whole at every step, so a long output cost
    time and memory quadratic in its length. Count the elements every `torch.cat` and `index_select` makes during a
    search that runs to its length limit: they must stay within a few times the size of the history itself."""
    probabilities = torch.full((V, V), 1.0)
    probabilities[:, :EOS_ID] = 1e-9
    probabilities[:, EOS_ID] = 1e-9  # never ends before the limit: 2 × 40 + 10 steps
    model = MarkovModel(probabilities / probabilities.sum(dim=1, keepdim=True))
    src, src_mask = sources([40])
    made = []
    cat, index_select = torch.cat, torch.Tensor.index_select

    def counting_cat(tensors, *args, **kwargs):
        out = cat(tensors, *args, **kwargs)
        made.append(out.numel())
        return out

    def counting_index_select(self, *args, **kwargs):
        out = index_select(self, *args, **kwargs)
        made.append(out.numel())
        return out

    monkeypatch.setattr(torch, "cat", counting_cat)
    monkeypatch.setattr(torch.Tensor, "index_select", counting_index_select)
    k = 8
    [hypotheses] = beam_search(model, src, src_mask, beam_size=k, n_best=k)
    monkeypatch.undo()
    steps = 2 * 40 + 10 + 1
    assert all(len(h.tokens) == steps - 1 for h in hypotheses)
    history = steps * k * 40  # every row's attention over 40 source positions, each step
    assert sum(made) < 4 * history, (sum(made), history)


def test_the_markov_model_keeps_the_contract():
    assert isinstance(MarkovModel(random_table(0)), Seq2SeqModel)


def test_searches_without_attention_return_no_matrix():
    class NoAttention(MarkovModel):
        def step(self, prev, state, memory, need_weights=True):
            log_probs, state, _ = super().step(prev, state, memory)
            return log_probs, state, None

    model = NoAttention(random_table(3, eos_floor=0.5))
    src, src_mask = sources([2, 3])
    for search in (greedy_search, lambda *a: beam_search(*a, beam_size=3)):
        for hypotheses in search(model, src, src_mask):
            assert all(h.attention is None for h in hypotheses)


# ---- the trained reversal model -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def inputs(reversal_model, reversal_translator):
    """Held-out sentences like the training data, and longer ones the model never saw (where it is unsure)."""
    sentences = [src for src, _ in reversal_model.test_pairs[:150]]
    sentences += random_sentences(100, seed=21, min_length=9, max_length=14)
    sentences += random_sentences(20, seed=22, min_length=1, max_length=2)
    ids = reversal_translator.tokenizer.encode_source(sentences)
    return sentences, ids


def chunks(ids: list[list[int]], size: int = 40):
    for start in range(0, len(ids), size):
        yield pad_sequences(ids[start:start + size])


def search_all(model, ids, search, **options) -> list[list[Hypothesis]]:
    results = []
    for src, src_mask in chunks(ids):
        results += search(model, src, src_mask, **options)
    return results


@pytest.fixture(scope="module")
def greedy_results(reversal_translator, inputs):
    return search_all(reversal_translator.model, inputs[1], greedy_search)


def teacher_forced(model, source_ids: list[list[int]], hypotheses: list[Hypothesis]):
    """Per hypothesis: Σ log p of its tokens and EOS, and the attention matrix, from one forward pass."""
    src, src_mask = pad_sequences(source_ids)
    tgt_in, _ = pad_sequences([[BOS_ID, *h.tokens] for h in hypotheses])
    with torch.no_grad():
        logits, attention = model(src, src_mask, tgt_in, return_attention=True)
    log_probs = torch.log_softmax(logits.double(), dim=-1)
    results = []
    for i, (ids, h) in enumerate(zip(source_ids, hypotheses)):
        targets = [*h.tokens, EOS_ID]
        score = float(sum(log_probs[i, t, token] for t, token in enumerate(targets)))
        results.append((score, attention[i, :len(targets), ..., :len(ids)].numpy()))  # [T, L, H, S]
    return results


def test_the_trained_model_is_a_sensible_subject(reversal_translator, inputs, greedy_results):
    """The checks below need a model that is sure on familiar inputs and unsure on unfamiliar ones."""
    sentences, _ = inputs
    decoded = [reversal_translator.tokenizer.decode_target(h[0].tokens) for h in greedy_results]
    in_domain = sum(d == " ".join(reversed(s.split())) for s, d in zip(sentences[:150], decoded))
    assert in_domain >= 140
    scores = [h[0].score for h in greedy_results]
    assert np.mean(scores[150:250]) < np.mean(scores[:150])


def test_beam_size_one_equals_greedy(reversal_translator, inputs, greedy_results):
    beam = search_all(reversal_translator.model, inputs[1], beam_search, beam_size=1, length_penalty_alpha=0.0)
    for g, b in zip(greedy_results, beam):
        assert b[0].tokens == g[0].tokens
        assert b[0].score == pytest.approx(g[0].score, abs=1e-5)
        np.testing.assert_allclose(b[0].attention, g[0].attention, atol=1e-6)


def test_beam_never_scores_below_greedy(reversal_translator, inputs, greedy_results):
    beam = search_all(reversal_translator.model, inputs[1], beam_search, beam_size=5, length_penalty_alpha=0.0)
    worse = [(i, b[0].score, g[0].score) for i, (g, b) in enumerate(zip(greedy_results, beam))
             if b[0].score < g[0].score - 1e-5]
    assert worse == []


def test_hypothesis_scores_and_attention_equal_teacher_forcing(reversal_translator, inputs, greedy_results):
    model = reversal_translator.model
    _, ids = inputs
    beam = search_all(model, ids, beam_search, beam_size=4, length_penalty_alpha=1.0, n_best=4)
    checked = 0
    for name, results in {"greedy": greedy_results, "beam": beam}.items():
        source_ids = [ids[i] for i, hypotheses in enumerate(results) for _ in hypotheses]
        flat = [h for hypotheses in results for h in hypotheses]
        for start in range(0, len(flat), 100):
            expected = teacher_forced(model, source_ids[start:start + 100], flat[start:start + 100])
            for h, source, (score, attention) in zip(flat[start:start + 100], source_ids[start:start + 100],
                                                     expected):
                assert h.score == pytest.approx(score, abs=1e-4), name
                assert h.attention.shape == (len(h.tokens) + 1, 1, 1, len(source))
                np.testing.assert_allclose(h.attention.sum(axis=-1), 1.0, atol=1e-5)
                np.testing.assert_allclose(h.attention, attention, atol=1e-5)
                checked += 1
    assert checked > len(ids) * 3


def test_beam_hypotheses_equal_teacher_forcing_in_both_families(family_model):
    """Each returned hypothesis's score and attention rows (read back through the beam's back-pointers) are those
    of one teacher-forced pass over its tokens, for the RNN and the Transformer."""
    translator = family_model.translator()
    sentences = [src for src, _ in family_model.test_pairs[:12]] + random_sentences(12, seed=31, min_length=9,
                                                                                     max_length=14)
    ids = translator.tokenizer.encode_source(sentences)
    results = search_all(translator.model, ids, beam_search, beam_size=4, length_penalty_alpha=1.0, n_best=4)
    flat = [h for hypotheses in results for h in hypotheses]
    source_ids = [ids[i] for i, hypotheses in enumerate(results) for _ in hypotheses]
    layout = translator.describe()
    for h, source, (score, attention) in zip(flat, source_ids, teacher_forced(translator.model, source_ids, flat),
                                             strict=True):
        assert h.score == pytest.approx(score, abs=1e-4)
        assert h.attention.shape == (len(h.tokens) + 1, layout.attention_layers, layout.attention_heads, len(source))
        np.testing.assert_allclose(h.attention, attention, atol=1e-5)
    assert len(flat) == 4 * len(sentences)


def test_n_best_on_the_trained_model(reversal_translator, inputs):
    _, ids = inputs
    for alpha in (0.0, 1.0):
        results = search_all(reversal_translator.model, ids[:60], beam_search, beam_size=5,
                             length_penalty_alpha=alpha, n_best=3)
        for hypotheses in results:
            assert len(hypotheses) == 3
            assert len({tuple(h.tokens) for h in hypotheses}) == 3
            normalized = [h.normalized_score for h in hypotheses]
            assert normalized == sorted(normalized, reverse=True)


def test_search_results_do_not_depend_on_the_batch(reversal_translator, inputs, greedy_results):
    model = reversal_translator.model
    _, ids = inputs
    chosen = list(range(0, len(ids), 9))
    batched = search_all(model, [ids[i] for i in chosen], beam_search, beam_size=3, length_penalty_alpha=1.0,
                         n_best=3)
    for i, together in zip(chosen, batched):
        src, src_mask = pad_sequences([ids[i]])
        alone = beam_search(model, src, src_mask, beam_size=3, length_penalty_alpha=1.0, n_best=3)[0]
        assert [h.tokens for h in alone] == [h.tokens for h in together]
        assert [h.score for h in alone] == pytest.approx([h.score for h in together], abs=1e-5)
        greedy_alone = greedy_search(model, src, src_mask)[0][0]
        assert greedy_alone.tokens == greedy_results[i][0].tokens


def test_translator_reports_what_the_search_found(reversal_translator, inputs, greedy_results):
    sentences, ids = inputs
    translations = reversal_translator.translate(sentences, beam_size=1)
    for translation, ids_, hypotheses in zip(translations, ids, greedy_results):
        h = hypotheses[0]
        assert translation.text == reversal_translator.tokenizer.decode_target(h.tokens)
        assert translation.tokens == reversal_translator.tokenizer.target_pieces(h.tokens)
        assert translation.source_tokens == reversal_translator.tokenizer.source_pieces(ids_)
        assert translation.score == pytest.approx(h.score, abs=1e-5)
        assert translation.attention.shape == (len(translation.target_tokens_with_eos), len(translation.source_tokens))
    n_best = reversal_translator.translate(sentences[:10], beam_size=4, n_best=3, length_penalty=0.0)
    for translation in n_best:
        assert len(translation.n_best) == 3 and translation.n_best[0] is translation
        assert [t.score for t in translation.n_best] == sorted([t.score for t in translation.n_best], reverse=True)


@pytest.mark.parametrize("beam_size", [1, 4])
def test_text_only_translation_finds_the_same_hypotheses(reversal_translator, inputs, beam_size):
    """attention=False skips gathering attention; tokens and scores stay those of the search that keeps it."""
    sentences = inputs[0][::3]
    kept = reversal_translator.translate(sentences, beam_size=beam_size, n_best=min(beam_size, 2))
    text_only = reversal_translator.translate(sentences, beam_size=beam_size, n_best=min(beam_size, 2), attention=False)
    for a, b in zip(kept, text_only, strict=True):
        assert a.attention is not None and b.attention is None and b.attention_heads is None
        assert [t.tokens for t in a.n_best] == [t.tokens for t in b.n_best]
        assert [t.score for t in a.n_best] == pytest.approx([t.score for t in b.n_best], abs=1e-6)
    assert reversal_translator.translate([""], attention=False)[0].attention is None


def test_translator_passes_the_search_options_on(reversal_translator, inputs):
    """n-best lists from the Translator are those of beam_search with the same beam size and length penalty."""
    sentences, ids = inputs
    chosen = list(range(150, 250, 5))  # unfamiliar lengths, where the length penalty changes the ranking
    orders = {}
    for alpha in (0.0, 2.0):
        translations = reversal_translator.translate([sentences[i] for i in chosen], beam_size=4, n_best=4,
                                                     length_penalty=alpha)
        direct = search_all(reversal_translator.model, [ids[i] for i in chosen], beam_search, beam_size=4,
                            length_penalty_alpha=alpha, n_best=4)
        orders[alpha] = [[t.text for t in translation.n_best] for translation in translations]
        assert orders[alpha] == [[reversal_translator.tokenizer.decode_target(h.tokens) for h in hypotheses]
                                 for hypotheses in direct]
    assert orders[0.0] != orders[2.0]


def test_done_sentences_leave_the_beam_batch(reversal_translator):
    """A short and a long sentence decoded together: once the short one is done, steps run on the long one's k rows
    only, and both results equal decoding each sentence alone."""
    model = reversal_translator.model
    short, long = reversal_translator.tokenizer.encode_source(["a b c", "a b c d e f g h i j a b c d e f"])
    rows_per_step = []

    class Counting:
        def __getattr__(self, name):
            return getattr(model, name)

        def step(self, prev, state, memory, need_weights=True):
            rows_per_step.append(prev.numel())
            return model.step(prev, state, memory, need_weights)

    src, src_mask = pad_sequences([short, long])
    together = beam_search(Counting(), src, src_mask, beam_size=4, length_penalty_alpha=1.0)
    assert rows_per_step[0] == 8 and rows_per_step[-1] == 4
    for ids, result in zip([short, long], together):
        alone = beam_search(model, *pad_sequences([ids]), beam_size=4, length_penalty_alpha=1.0)
        assert alone[0][0].tokens == result[0].tokens
