"""Search: turn a model's next-token distributions into translations.

Both searches work on a batch of sentences through the model contract (`attnmt.models.contract.Seq2SeqModel`:
`encode`, `start_state`, `step`), so every model family shares them.

    greedy   y_t = argmax_y log p(y | y_<t, x)
    beam     keep the k best prefixes by Σ log p; a finished hypothesis is ranked by
             score / lp(|y|), lp(n) = ((5 + n) / 6)^α      (Wu et al. 2016, α = length_penalty)

A hypothesis stops at EOS or at max_length_ratio × source length + LENGTH_SLACK tokens (`attnmt.config`), plus the
tokens of its forced prefix.

Decoding controls (`Controls`; all off by default, and then search is exactly as without them), applied to each
step's log p(y | y_<t, x) before choosing:
    prefix                 a sentence's first target tokens are forced: every other token gets −inf while t < |prefix|
                           (the forced tokens' log p count in the score, and their attention is kept)
    min_length             EOS gets −inf while the hypothesis has fewer than min_length tokens (the prefix included)
    no_repeat_ngram_size   n: a token that would complete an n-gram the hypothesis already holds gets −inf
                           (fairseq's and OpenNMT-py's rule; the prefix's n-grams count)
The length limit overrides them all (a hypothesis at its limit may only end), and the prefix overrides min_length and
n-gram blocking. Sampling (`Sampling`, greedy search only) draws y_t from p(y | y_<t, x)^(1/T), cut to the top k
tokens and to the nucleus of probability p, instead of taking the argmax; the score stays Σ log p of the model.

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

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from attnmt.config import LENGTH_SLACK
from attnmt.data.tokenizer import BOS_ID, EOS_ID, PAD_ID
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


def max_output_lengths(source_lengths: torch.Tensor, ratio: float, prefix_lengths: torch.Tensor | int = 0
                       ) -> torch.Tensor:
    """The most target tokens a hypothesis may have before it is stopped, per source length (subwords):
    ⌈ratio × source length⌉ + LENGTH_SLACK (in float32, as search has always computed it), plus the tokens of its
    forced prefix (a prefix does not use up the room of the translation)."""
    return (source_lengths.float() * ratio).ceil().long() + LENGTH_SLACK + prefix_lengths


def max_lengths(src_mask: torch.Tensor, ratio: float, prefix_lengths: torch.Tensor | int = 0) -> torch.Tensor:
    """`max_output_lengths` of each sentence of a batch. [B]"""
    return max_output_lengths(src_mask.sum(dim=1), ratio, prefix_lengths)


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


# ---- decoding controls ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Controls:
    """What a search must respect besides the model (the module docstring); the defaults change nothing."""

    prefixes: list[list[int]] | None = None  # per sentence of the batch: the target ids forced first ([]: none)
    min_length: int = 0  # target tokens (the prefix's included) before EOS is allowed
    no_repeat_ngram_size: int = 0  # n of the n-grams that may not repeat; 0: off


@dataclass(frozen=True)
class Sampling:
    """Greedy search draws each token instead of taking the argmax: from q ∝ p^(1/temperature), cut to the top_k most
    probable tokens (0: all of them) and to the nucleus top_p (`sampling_log_probs`). With a `seed`, a sentence's
    draws depend on the seed and its source alone (`sentence_seed`), not on the batch; without one they come from
    torch's global random generator (`torch.manual_seed` repeats them)."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None


def forbid_end(log_probs: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """min_length: log p(EOS) = −inf in `rows` [A] (hypotheses still shorter than min_length)."""
    log_probs = log_probs.clone()
    log_probs[rows, EOS_ID] = float("-inf")
    return log_probs


def force_tokens(log_probs: torch.Tensor, tokens: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """A forced prefix: in `rows` [A] every token but `tokens` [A] gets −inf; the forced token keeps its log p, which
    counts in the score like any other."""
    kept = log_probs.gather(1, tokens.unsqueeze(1))  # [A, 1]
    return log_probs.masked_fill(rows.unsqueeze(1), float("-inf")).scatter(1, tokens.unsqueeze(1), kept)


class RepeatBlocker:
    """no_repeat_ngram_size n for the rows of a search, in time linear in the hypothesis length per step.

    y_j (1 ≤ j ≤ t) is banned as y_{t+1} when the n − 1 tokens before it are the last n − 1 tokens:
    y_{j−n+1..j−1} = y_{t−n+2..t}. Each row keeps its tokens y_1..y_t (BOS not among them) and
    m[j] = min(n − 1, the longest common suffix of y_<j and y_≤t); y_j is banned iff m[j] = n − 1. When
    c = y_{t+1} joins: m'[1] = 0, m'[j + 1] = min(n − 1, m[j] + 1) if y_j = c, else 0."""

    def __init__(self, n: int, rows: int, device: torch.device) -> None:
        self.context = min(n - 1, 2 ** 31)  # n − 1 (any n above the longest hypothesis bans nothing)
        self.tokens = torch.zeros(rows, 0, dtype=torch.long, device=device)  # [R, t]: y_1..y_t
        self.suffix = torch.zeros(rows, 0, dtype=torch.long, device=device)  # [R, t]: m[1..t]

    def ban(self, log_probs: torch.Tensor) -> torch.Tensor:
        """log p = −inf for each row's banned tokens. [R, V]"""
        banned = self.suffix >= self.context  # [R, t]
        if not bool(banned.any()):
            return log_probs
        vocab = log_probs.size(1)
        ids = self.tokens.masked_fill(~banned, vocab)  # a banned token's id, else a spare column
        mask = torch.zeros(ids.size(0), vocab + 1, dtype=torch.bool, device=ids.device).scatter_(1, ids, True)
        return log_probs.masked_fill(mask[:, :vocab], float("-inf"))

    def append(self, tokens: torch.Tensor) -> None:
        """Each row's next token c [R] joins it."""
        grown = torch.where(self.tokens == tokens.unsqueeze(1), (self.suffix + 1).clamp(max=self.context), 0)
        self.suffix = torch.cat([torch.zeros_like(tokens).unsqueeze(1), grown], dim=1)  # [R, t + 1]
        self.tokens = torch.cat([self.tokens, tokens.unsqueeze(1)], dim=1)

    def select(self, rows: torch.Tensor) -> None:
        """Keep (and reorder to) `rows`: the rows still going, or beam search's parents."""
        self.tokens, self.suffix = self.tokens.index_select(0, rows), self.suffix.index_select(0, rows)


class _Rules:
    """The controls of one batch, applied to each step's log-probabilities before the search chooses."""

    def __init__(self, controls: Controls | None, batch: int, device: torch.device) -> None:
        controls = controls or Controls()
        self.min_length = controls.min_length
        self.ngram = controls.no_repeat_ngram_size
        prefixes = controls.prefixes or []
        self.longest_prefix = max((len(p) for p in prefixes), default=0)
        self.prefix_lengths: torch.Tensor | int = 0  # [B]
        if self.longest_prefix:
            if len(prefixes) != batch:
                raise ValueError(f"{len(prefixes)} prefixes for a batch of {batch} sentences")
            self.prefix_lengths = torch.tensor([len(p) for p in prefixes], dtype=torch.long, device=device)
            self.prefix_table = torch.tensor([p + [EOS_ID] * (self.longest_prefix - len(p)) for p in prefixes],
                                             dtype=torch.long, device=device)  # [B, P]

    def blocker(self, rows: int, device: torch.device) -> RepeatBlocker | None:
        return RepeatBlocker(self.ngram, rows, device) if self.ngram > 0 else None

    def apply(self, log_probs: torch.Tensor, t: int, sentences: torch.Tensor, at_limit: torch.Tensor,
              blocker: RepeatBlocker | None) -> torch.Tensor:
        """Step t's log p [R, V] of rows of sentences `sentences` [R] with n-grams banned, EOS forbidden below
        min_length, the prefix forced (over those two: a forced token keeps the model's log p), and the rows at
        their length limit (`at_limit` [R]) ended."""
        model_log_probs = log_probs
        if blocker is not None:
            log_probs = blocker.ban(log_probs)
        if t < self.min_length:
            log_probs = forbid_end(log_probs, ~at_limit)
        if t < self.longest_prefix:
            forcing = self.prefix_lengths[sentences] > t  # [R]
            forced = force_tokens(model_log_probs, self.prefix_table[sentences, t], forcing)
            log_probs = torch.where(forcing.unsqueeze(1), forced, log_probs)
        return _force_end(log_probs, at_limit)


def sampling_log_probs(log_probs: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """log q(y) = log p(y) / T − log Z over the top_k most probable tokens (0: all) and the nucleus, the fewest most
    probable tokens whose q sums to at least top_p (Holtzman et al. 2020); −inf elsewhere. [A, V] in float64."""
    scaled = log_probs.double()
    scaled = (scaled - scaled.max(dim=1, keepdim=True).values) / temperature  # the best stays 0 for any T > 0
    if 0 < top_k < scaled.size(1):
        kth = scaled.topk(top_k, dim=1).values[:, -1:]  # [A, 1]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    log_q = scaled.log_softmax(dim=1)
    if top_p < 1:
        sorted_log_q, order = log_q.sort(dim=1, descending=True)
        before = sorted_log_q.exp().cumsum(dim=1) - sorted_log_q.exp()  # the mass of the more probable tokens
        outside = torch.zeros_like(before, dtype=torch.bool).scatter(1, order, before >= top_p)  # never the best
        log_q = log_q.masked_fill(outside, float("-inf")).log_softmax(dim=1)
    return log_q


def draw(log_q: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Inverse transform sampling: per row, the first token y whose cumulative Σ_{y' ≤ y} q(y') exceeds u ~ U[0, 1)
    (a token of q = 0 is never drawn). log_q [A, V], uniforms [A] → tokens [A]."""
    cumulative = log_q.exp().cumsum(dim=1)  # [A, V]
    token = torch.searchsorted(cumulative, (uniforms * cumulative[:, -1]).unsqueeze(1).contiguous(), right=True)
    return token.view(-1).clamp(max=log_q.size(1) - 1)


def sentence_seed(seed: int, source_ids: list[int]) -> int:
    """The seed of one sentence's draws: a hash of the seed and the sentence's source ids (64 bits)."""
    text = f"{seed}:{','.join(map(str, source_ids))}".encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little")


NEVER_DRAWN = (PAD_ID, BOS_ID)  # no target holds them: a model gives them some probability all the same


class _Draws:
    """u ~ U[0, 1) for each row at each step: from a generator per sentence seeded with `sentence_seed`, or from
    torch's global generator without a seed (on the CPU either way, so a GPU draws what the CPU does); then the
    token u picks from `sampling_log_probs` (PAD and BOS never)."""

    def __init__(self, sampling: Sampling, src: torch.Tensor, src_mask: torch.Tensor) -> None:
        self.sampling = sampling
        self.generators: list[torch.Generator] | None = None
        if sampling.seed is not None:
            sources = [row[:length] for row, length in zip(src.tolist(), _source_lengths(src_mask))]
            self.generators = [torch.Generator().manual_seed(sentence_seed(sampling.seed, ids)) for ids in sources]

    def choose(self, log_probs: torch.Tensor, sentences: torch.Tensor) -> torch.Tensor:
        """A token drawn for each row [A] of sentences `sentences` [A]."""
        if self.generators is None:
            uniforms = torch.rand(sentences.numel(), dtype=torch.float64)
        else:
            uniforms = torch.cat([torch.rand(1, dtype=torch.float64, generator=self.generators[i])
                                  for i in sentences.tolist()])
        never = torch.tensor(NEVER_DRAWN, device=log_probs.device)
        log_q = sampling_log_probs(log_probs.index_fill(1, never, float("-inf")), self.sampling.temperature,
                                   self.sampling.top_k, self.sampling.top_p)
        return draw(log_q, uniforms.to(log_probs.device))


def _attention_matrix(history: torch.Tensor | None, source_length: int) -> np.ndarray | None:
    """history [T, L, H, S] → numpy, cut to the real source positions."""
    if history is None:
        return None
    return history.float().cpu().numpy()[..., :source_length]


@torch.inference_mode()
def greedy_search(model: Seq2SeqModel, src: torch.Tensor, src_mask: torch.Tensor, max_length_ratio: float = 2.0,
                  keep_attention: bool = True, controls: Controls | None = None, sampling: Sampling | None = None
                  ) -> list[list[Hypothesis]]:
    """y_t = argmax log p(y | y_<t, x) for a batch of sentences, under `controls`, or drawn (`sampling`); one
    hypothesis per sentence. A sentence that has chosen EOS leaves the batch, so the rest decode on fewer rows."""
    batch, device = src.size(0), src.device
    memory = model.encode(src, src_mask)
    state = model.start_state(memory)
    rules = _Rules(controls, batch, device)
    blocker = rules.blocker(batch, device)
    draws = None if sampling is None else _Draws(sampling, src, src_mask)
    limits = max_lengths(src_mask, max_length_ratio, rules.prefix_lengths)  # [B]
    steps = int(limits.max()) + 1
    active = torch.arange(batch, device=device)  # the sentence of each of the A rows still decoding
    prev = torch.full((batch,), BOS_ID, dtype=torch.long, device=device)  # [A]
    tokens = torch.full((batch, steps), EOS_ID, dtype=torch.long, device=device)  # [B, T]
    scores = torch.zeros(batch, dtype=torch.float64, device=device)  # [B]
    attention: torch.Tensor | None = None  # [B, T, L, H, S]
    for t in range(steps):
        log_probs, state, weights = model.step(prev, state, memory, keep_attention)  # [A, V], [A, L, H, S]
        log_probs = rules.apply(log_probs, t, active, limits[active] <= t, blocker)
        if draws is None:
            best_score, best = log_probs.max(dim=-1)  # [A]
        else:
            best = draws.choose(log_probs, active)  # [A]
            best_score = log_probs.gather(1, best.unsqueeze(1)).view(-1)  # the model's log p of the drawn token
        tokens[active, t] = best
        scores[active] += best_score.double()
        if weights is not None:
            if attention is None:
                attention = weights.new_zeros(batch, steps, *weights.shape[1:])
            attention[active, t] = weights
        going = best != EOS_ID  # [A]
        if not bool(going.any()):
            break
        if blocker is not None:
            blocker.append(best)
        if not bool(going.all()):
            rows = going.nonzero().view(-1)
            active, best = active[rows], best[rows]
            memory, state = select(memory, rows), select(state, rows)
            if blocker is not None:
                blocker.select(rows)
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
                keep_attention: bool = True, controls: Controls | None = None) -> list[list[Hypothesis]]:
    """Beam search for a batch of sentences: B × k rows decoded together. Returns the n_best hypotheses per sentence,
    best first by score / lp(length).

    Each step takes the 2k best extensions of the k alive prefixes: those that end in EOS among the top k are
    finished, the best k that do not end continue. A sentence is done when it has k finished hypotheses and the
    k-th best of them is at least the best alive prefix's score / lp(its length if it ended at the next step): for
    α = 0, where scores only fall as a prefix grows, no alive prefix can then win; for α > 0 this is the usual
    heuristic. Done sentences leave the batch, so the rest decode on fewer rows. Prefixes are not copied from step to
    step: each step records its back-pointers (`_Trail`), and only the hypotheses returned are read back. (n-gram
    blocking, when `controls` asks for it, keeps each alive row's token ids: a [k, t] copy per step, ids only.)
    While a forced prefix lasts, one hypothesis is alive (the other beams stay at −inf); the beam opens after it.
    """
    if n_best > beam_size:
        raise ValueError(f"n_best ({n_best}) cannot exceed beam_size ({beam_size})")
    batch, k, device = src.size(0), beam_size, src.device
    beams = torch.arange(k, device=device)
    memory = select(model.encode(src, src_mask), torch.arange(batch, device=device).repeat_interleave(k))
    state = model.start_state(memory)
    rules = _Rules(controls, batch, device)
    blocker = rules.blocker(batch * k, device)
    limits = max_lengths(src_mask, max_length_ratio, rules.prefix_lengths)  # [B]

    active = torch.arange(batch, device=device)  # the sentence of each of the A active rows of k beams
    alive_scores = torch.full((batch, k), float("-inf"), dtype=torch.float64, device=device)  # [A, k]
    alive_scores[:, 0] = 0.0  # all beams start as the same empty prefix: keep one
    prev = torch.full((batch * k,), BOS_ID, dtype=torch.long, device=device)
    finished: list[list[_Finished]] = [[] for _ in range(batch)]
    trail = _Trail()

    for t in range(int(limits.max()) + 1):
        log_probs, state, weights = model.step(prev, state, memory, keep_attention)  # [A·k, V], [A·k, L, H, S]
        sentences = active.repeat_interleave(k)  # [A·k]
        log_probs = rules.apply(log_probs, t, sentences, limits[sentences] <= t, blocker)
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
        if blocker is not None:
            blocker.select(parents)
            blocker.append(prev)

    for hypotheses in finished:
        hypotheses.sort(key=lambda h: h.normalized_score, reverse=True)
        del hypotheses[n_best:]
    return trail.hypotheses(finished, _source_lengths(src_mask))


def _is_done(hypotheses: list[_Finished], k: int, best_alive: float) -> bool:
    """k hypotheses finished, and the k-th best of them is at least what the best alive prefix can still reach."""
    if len(hypotheses) < k:
        return False
    return sorted((h.normalized_score for h in hypotheses), reverse=True)[k - 1] >= best_alive
