"""Search: turn a model's next-token distributions into translations.

Both searches work on a batch of sentences through the model contract (`attnmt.models.contract.Seq2SeqModel`:
`encode`, `start_state`, `step`), so every model family shares them.

    greedy   y_t = argmax_y log p(y | y_<t, x)
    beam     keep the k best prefixes by Σ log p; a finished hypothesis is ranked by
             score / lp(|y|), lp(n) = ((5 + n) / 6)^α      (Wu et al. 2016, α = length_penalty)

A hypothesis stops at EOS or at max_length_ratio × source length + LENGTH_SLACK tokens (`attnmt.config`).
Each result carries its tokens, its model score Σ log p (EOS included) and its attention, one row per step:
[T, L, H, S], the contract's layout of L attention layers × H heads (an RNN: 1 × 1).
Beam search keeps, per step, the attention of every row and each row's parent row (a back-pointer); a hypothesis's
tokens and attention are read once, by following its back-pointers, when it is returned. Copying every alive
prefix's history at every step instead costs time and memory quadratic in the output length.
With `keep_attention=False` no attention is gathered (every Hypothesis.attention is None) and the model is asked
for none (`step(..., need_weights=False)`), so translating to text alone skips that work.
Search runs on the device of `src` (every tensor it makes is made there); its results are Python lists and numpy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from attnmt.config import LENGTH_SLACK
from attnmt.data.tokenizer import BOS_ID, EOS_ID
from attnmt.models.contract import Seq2SeqModel, State


@dataclass
class Hypothesis:
    tokens: list[int]  # target ids without BOS/EOS
    score: float  # Σ log p(y_t | y_<t, x), the EOS step included
    attention: np.ndarray | None  # [len(tokens) + 1, L, H, source length]: one row per step, the EOS step last
    normalized_score: float  # score / lp(len), what the beam ranks by


def length_penalty(length: int, alpha: float) -> float:
    """lp(n) = ((5 + n) / 6)^α (Wu et al. 2016); α = 0 ranks by the raw log-probability."""
    return ((5.0 + length) / 6.0) ** alpha


def max_output_lengths(source_lengths: torch.Tensor, ratio: float) -> torch.Tensor:
    """The most target tokens a hypothesis may have before it is stopped, per source length (subwords):
    ⌈ratio × source length⌉ + LENGTH_SLACK (in float32, as search has always computed it)."""
    return (source_lengths.float() * ratio).ceil().long() + LENGTH_SLACK


def max_lengths(src_mask: torch.Tensor, ratio: float) -> torch.Tensor:
    """`max_output_lengths` of each sentence of a batch. [B]"""
    return max_output_lengths(src_mask.sum(dim=1), ratio)


def select(tensors: State, index: torch.Tensor) -> State:
    """Pick (and reorder) batch rows of every tensor of a state or memory."""
    return {name: tensor.index_select(0, index) for name, tensor in tensors.items()}


def _source_lengths(src_mask: torch.Tensor) -> list[int]:
    return src_mask.sum(dim=1).tolist()


def _force_end(log_probs: torch.Tensor, forced: torch.Tensor) -> torch.Tensor:
    """Rows that reached their length limit may only choose EOS (with the model's own log-probability for it)."""
    if not bool(forced.any()):  # most steps: no [B, V] copy
        return log_probs
    eos = log_probs[:, EOS_ID].clone()
    log_probs = log_probs.masked_fill(forced.unsqueeze(1), float("-inf"))
    log_probs[:, EOS_ID] = torch.where(forced, eos, log_probs[:, EOS_ID])
    return log_probs


def _attention_matrix(history: torch.Tensor | None, source_length: int) -> np.ndarray | None:
    """history [T, L, H, S] → numpy, cut to the real source positions."""
    if history is None:
        return None
    return history.float().cpu().numpy()[..., :source_length]


@torch.inference_mode()
def greedy_search(model: Seq2SeqModel, src: torch.Tensor, src_mask: torch.Tensor, max_length_ratio: float = 2.0,
                  keep_attention: bool = True) -> list[list[Hypothesis]]:
    """y_t = argmax log p(y | y_<t, x) for a batch of sentences; one hypothesis per sentence.
    A sentence that has chosen EOS leaves the batch, so the rest decode on fewer rows."""
    batch, device = src.size(0), src.device
    memory = model.encode(src, src_mask)
    state = model.start_state(memory)
    limits = max_lengths(src_mask, max_length_ratio)  # [B]
    steps = int(limits.max()) + 1
    active = torch.arange(batch, device=device)  # the sentence of each of the A rows still decoding
    prev = torch.full((batch,), BOS_ID, dtype=torch.long, device=device)  # [A]
    tokens = torch.full((batch, steps), EOS_ID, dtype=torch.long, device=device)  # [B, T]
    scores = torch.zeros(batch, dtype=torch.float64, device=device)  # [B]
    attention: torch.Tensor | None = None  # [B, T, L, H, S]
    for t in range(steps):
        log_probs, state, weights = model.step(prev, state, memory, keep_attention)  # [A, V], [A, L, H, S]
        log_probs = _force_end(log_probs, limits[active] <= t)
        best_score, best = log_probs.max(dim=-1)  # [A]
        tokens[active, t] = best
        scores[active] += best_score.double()
        if weights is not None:
            if attention is None:
                attention = weights.new_zeros(batch, steps, *weights.shape[1:])
            attention[active, t] = weights
        going = best != EOS_ID  # [A]
        if not bool(going.any()):
            break
        if not bool(going.all()):
            rows = going.nonzero().view(-1)
            active, best = active[rows], best[rows]
            memory, state = select(memory, rows), select(state, rows)
        prev = best
    source_lengths = _source_lengths(src_mask)
    results = []
    for i, sentence in enumerate(tokens.tolist()):
        length = sentence.index(EOS_ID)
        history = None if attention is None else attention[i, :length + 1]
        score = float(scores[i])
        results.append([Hypothesis(sentence[:length], score, _attention_matrix(history, source_lengths[i]), score)])
    return results


@dataclass
class _Finished:
    """A hypothesis that chose EOS at step `step` from row `row` of that step; its tokens and attention are read from
    the `_Trail` when it is returned."""

    score: float
    normalized_score: float
    step: int
    row: int


class _Trail:
    """What beam search keeps of each step to rebuild any hypothesis later, in memory linear in the steps: for every
    row of step t + 1, its parent row at step t and the token it was extended by (back-pointers); and, when attention
    is kept, the attention of every row of step t."""

    def __init__(self) -> None:
        self.parents: list[torch.Tensor] = []  # step t: [R(t + 1)], rows of step t
        self.tokens: list[torch.Tensor] = []  # step t: [R(t + 1)], the token chosen at step t
        self.attention: list[torch.Tensor] = []  # step t: [R(t), L, H, S] (R(t): rows at step t)

    def extend(self, parents: torch.Tensor, tokens: torch.Tensor) -> None:
        self.parents.append(parents)
        self.tokens.append(tokens)

    def hypotheses(self, finished: list[list[_Finished]], source_lengths: list[int]) -> list[list[Hypothesis]]:
        """Follow each finished hypothesis's back-pointers once: its tokens and its attention rows [T, L, H, S]."""
        parents = _per_step(self.parents)
        tokens = _per_step(self.tokens)
        paths = []  # per hypothesis: its row at each step, and its tokens
        for hypotheses in finished:
            for h in hypotheses:
                rows, ids, row = [0] * (h.step + 1), [0] * h.step, h.row
                for t in range(h.step, 0, -1):
                    rows[t] = row
                    ids[t - 1] = tokens[t - 1][row]
                    row = parents[t - 1][row]
                rows[0] = row
                paths.append((rows, ids))
        attention = self._gather([rows for rows, _ in paths]) if self.attention else None
        results, index, position = [], 0, 0
        for sentence, hypotheses in enumerate(finished):
            results.append([])
            for h in hypotheses:
                rows, ids = paths[index]
                index += 1
                matrix = None
                if attention is not None:
                    matrix = attention[position:position + len(rows), ..., :source_lengths[sentence]]
                    position += len(rows)
                results[-1].append(Hypothesis(ids, h.score, matrix, h.normalized_score))
        return results

    def _gather(self, paths: list[list[int]]) -> np.ndarray:
        """The attention rows of every path, one after another: [Σ len(path), L, H, S], as float32 numpy."""
        starts = np.cumsum([0] + [step.size(0) for step in self.attention[:-1]])
        index = [int(starts[t]) + row for rows in paths for t, row in enumerate(rows)]
        everything = torch.cat(self.attention)
        rows = torch.tensor(index, dtype=torch.long, device=everything.device)
        return everything.index_select(0, rows).float().cpu().numpy()


def _per_step(tensors: list[torch.Tensor]) -> list[list[int]]:
    """Per-step index tensors as Python lists, with one copy off the device."""
    if not tensors:
        return []
    flat = torch.cat(tensors).tolist()
    bounds = np.cumsum([0] + [t.numel() for t in tensors]).tolist()
    return [flat[a:b] for a, b in zip(bounds, bounds[1:])]


@torch.inference_mode()
def beam_search(model: Seq2SeqModel, src: torch.Tensor, src_mask: torch.Tensor, beam_size: int = 5,
                length_penalty_alpha: float = 1.0, max_length_ratio: float = 2.0, n_best: int = 1,
                keep_attention: bool = True) -> list[list[Hypothesis]]:
    """Beam search for a batch of sentences: B × k rows decoded together. Returns the n_best hypotheses per sentence,
    best first by score / lp(length).

    Each step takes the 2k best extensions of the k alive prefixes: those that end in EOS among the top k are
    finished, the best k that do not end continue. A sentence is done when it has k finished hypotheses and the
    k-th best of them is at least the best alive prefix's score / lp(its length if it ended at the next step): for
    α = 0, where scores only fall as a prefix grows, no alive prefix can then win; for α > 0 this is the usual
    heuristic. Done sentences leave the batch, so the rest decode on fewer rows. Prefixes are not copied from step to
    step: each step records its back-pointers (`_Trail`), and only the hypotheses returned are read back.
    """
    if n_best > beam_size:
        raise ValueError(f"n_best ({n_best}) cannot exceed beam_size ({beam_size})")
    batch, k, device = src.size(0), beam_size, src.device
    beams = torch.arange(k, device=device)
    memory = select(model.encode(src, src_mask), torch.arange(batch, device=device).repeat_interleave(k))
    state = model.start_state(memory)
    limits = max_lengths(src_mask, max_length_ratio)  # [B]

    active = torch.arange(batch, device=device)  # the sentence of each of the A active rows of k beams
    alive_scores = torch.full((batch, k), float("-inf"), dtype=torch.float64, device=device)  # [A, k]
    alive_scores[:, 0] = 0.0  # all beams start as the same empty prefix: keep one
    prev = torch.full((batch * k,), BOS_ID, dtype=torch.long, device=device)
    finished: list[list[_Finished]] = [[] for _ in range(batch)]
    trail = _Trail()

    for t in range(int(limits.max()) + 1):
        log_probs, state, weights = model.step(prev, state, memory, keep_attention)  # [A·k, V], [A·k, L, H, S]
        log_probs = _force_end(log_probs, limits[active].repeat_interleave(k) <= t)
        count, vocab = active.numel(), log_probs.size(-1)
        candidates = (alive_scores.float().view(-1, 1) + log_probs).view(count, k * vocab)  # [A, k·V]
        top_ids = candidates.topk(min(2 * k, k * vocab), dim=1).indices  # [A, 2k]
        origin = top_ids // vocab  # beam each candidate extends
        token = top_ids % vocab
        # the chosen candidates' scores, summed in float64 (ranking the whole k·V candidates in float32 is enough)
        step_log_probs = log_probs.view(count, k, vocab)[torch.arange(count, device=device).unsqueeze(1), origin, token]
        top_scores = alive_scores.gather(1, origin) + step_log_probs.double()  # [A, 2k]
        is_eos = token == EOS_ID
        if weights is not None:
            trail.attention.append(weights)

        # Finish: EOS candidates among the top k.
        finishing = is_eos[:, :k] & torch.isfinite(top_scores[:, :k])
        for a, j in finishing.nonzero().tolist():
            score = float(top_scores[a, j])
            finished[int(active[a])].append(_Finished(score, score / length_penalty(t + 1, length_penalty_alpha),
                                                      t, a * k + int(origin[a, j])))

        # Continue: the best k candidates that do not end here.
        rank = is_eos.long() * top_ids.size(1) + torch.arange(top_ids.size(1), device=device)
        keep = rank.argsort(dim=1)[:, :k]  # [A, k]
        alive_scores = top_scores.gather(1, keep).masked_fill(is_eos.gather(1, keep), float("-inf"))
        parents = (origin.gather(1, keep) + torch.arange(count, device=device).unsqueeze(1) * k).view(-1)
        prev = token.gather(1, keep).view(-1)

        # Done sentences leave the batch.
        bound = (alive_scores.max(dim=1).values / length_penalty(t + 2, length_penalty_alpha)).tolist()
        going = torch.tensor([not _is_done(finished[sentence], k, bound[a])  # one copy of `active` off a GPU
                              for a, sentence in enumerate(active.tolist())], dtype=torch.bool, device=device)
        if not bool(going.any()):
            break
        if not bool(going.all()):
            rows = (going.nonzero().view(-1, 1) * k + beams).view(-1)  # the rows of the sentences still going
            parents, prev, alive_scores, active = parents[rows], prev[rows], alive_scores[going], active[going]
            memory = select(memory, rows)
        trail.extend(parents, prev)
        state = select(state, parents)

    for hypotheses in finished:
        hypotheses.sort(key=lambda h: h.normalized_score, reverse=True)
        del hypotheses[n_best:]
    return trail.hypotheses(finished, _source_lengths(src_mask))


def _is_done(hypotheses: list[_Finished], k: int, best_alive: float) -> bool:
    """k hypotheses finished, and the k-th best of them is at least what the best alive prefix can still reach."""
    if len(hypotheses) < k:
        return False
    return sorted((h.normalized_score for h in hypotheses), reverse=True)[k - 1] >= best_alive
