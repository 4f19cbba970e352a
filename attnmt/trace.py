"""Trace: decode one sentence as search does, and keep everything a student may want to see of each step.

    greedy   step t expands one hypothesis: its attention over the source, its top-k next tokens with p(y | y_<t, x),
             the token chosen (the argmax, or the forced prefix's token)
    beam     step t expands the k alive hypotheses; of their k·V extensions the 2k best by Σ log p are looked at:
             an EOS among the first k finishes (ranked by score / lp(n), lp(n) = ((5 + n) / 6)^α), the best k that do
             not end are kept, the others are pruned

The result is a tree of `Node`s: the root (BOS), then one node per extension looked at, each with its parent, its
token, log p of that token and Σ log p. A node that was expanded (fed back to the model) carries what the model
computed from it: attention [L, H, S], the top-k candidates, and for models whose attention is an
`attnmt.attention.Attention` (the RNN family) the energies e = f(q, K) before the normalizer. For a model with
self-attention (the contract's optional `self_attention`: a Transformer), the trace also keeps the self-attention of
the best hypothesis, teacher forced over what the decoder read: the encoder's [Le, H, S, S], the decoder's
[Ld, H, T, T].

The loops below are search's (`attnmt.search`: the same rules, the same tensor operations, one sentence), kept out of
search's hot loop; `trace(...).best` gives the tokens `Translator.translate([text])` gives (tests/test_lab.py checks
that, for both families and both searches). Sampling is not traced.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from attnmt import devices
from attnmt.attention import recorded_energies
from attnmt.data.batching import pad_sequences
from attnmt.data.tokenizer import BOS_ID, EOS_ID
from attnmt.models import self_attention
from attnmt.search import Controls, _Finished, _is_done, _Rules, length_penalty, max_lengths, select

KEPT, PRUNED, FINISHED, ROOT = "kept", "pruned", "finished", "root"


@dataclass
class Candidate:
    token: int
    log_prob: float  # the model's log p(y | y_<t, x), before any decoding control


@dataclass
class Expansion:
    """What the model computed from one hypothesis at one step."""

    attention: np.ndarray | None  # [L, H, S]
    energies: np.ndarray | None  # [S], before the normalizer (None: the model's attention keeps none)
    candidates: list[Candidate]  # the top-k next tokens by the model's p, best first


@dataclass
class Node:
    """One hypothesis prefix: its parent's prefix + `token`."""

    id: int
    parent: int | None
    depth: int  # tokens after BOS (the root: 0)
    token: int
    log_prob: float  # log p of `token` given the parent (the model's, as search scores it)
    score: float  # Σ log p along the path
    status: str  # root | kept | pruned | finished
    forced: bool = False  # a token of the forced prefix
    normalized_score: float | None = None  # finished: score / lp(depth), what the beam ranks by
    expansion: Expansion | None = None


@dataclass
class PathSelfAttention:
    """The self-attention behind one hypothesis (`attnmt.models.contract.SelfAttention`, one sentence)."""

    nodes: list[int]  # the nodes whose tokens the decoder read (BOS first): the rows and columns of `decoder`
    encoder: np.ndarray  # [Le, H, S, S]: source position over source positions
    decoder: np.ndarray  # [Ld, H, T, T]: what the decoder read, over itself and what came before (causal)


@dataclass
class Trace:
    source_ids: list[int]
    beam_size: int
    length_penalty: float
    nodes: list[Node] = field(default_factory=list)
    finished: list[int] = field(default_factory=list)  # node ids, best first by normalized score
    normalizer: str | None = None  # the model's (when energies were recorded)
    temperature: float | None = None
    self_attention: PathSelfAttention | None = None  # the best hypothesis's (a model with self-attention)

    @property
    def best(self) -> list[int]:
        """The node ids of the best hypothesis, the root first, its EOS node last."""
        if not self.finished:
            return [0]
        path, node = [], self.nodes[self.finished[0]]
        while node.parent is not None:
            path.append(node.id)
            node = self.nodes[node.parent]
        return [0, *reversed(path)]

    def best_tokens(self) -> list[int]:
        """The best hypothesis's target ids without BOS and EOS (as `search.Hypothesis.tokens`)."""
        return [self.nodes[i].token for i in self.best[1:] if self.nodes[i].token != EOS_ID]


class _Recorder:
    """Node bookkeeping and the expansions of one step."""

    def __init__(self, trace: Trace, candidates: int, source_length: int) -> None:
        self.trace = trace
        self.candidates = candidates
        self.source_length = source_length

    def add(self, parent: int | None, token: int, log_prob: float, score: float, status: str, forced: bool = False,
            normalized: float | None = None) -> int:
        parent_depth = -1 if parent is None else self.trace.nodes[parent].depth
        node = Node(len(self.trace.nodes), parent, parent_depth + 1, token, log_prob, score, status, forced, normalized)
        self.trace.nodes.append(node)
        return node.id

    def expand(self, rows: list[int | None], model_log_probs: torch.Tensor, weights: torch.Tensor | None,
               energies: torch.Tensor | None) -> None:
        """Attach to each row's node (None: a dead row) what the model computed from it this step."""
        count = min(self.candidates, model_log_probs.size(1))
        top = model_log_probs.float().topk(count, dim=1)  # [R, k]
        values, ids = top.values.tolist(), top.indices.tolist()
        attention = None if weights is None else weights.float().cpu().numpy()[..., :self.source_length]
        energy = None if energies is None else energies.float().cpu().numpy()[..., :self.source_length]
        for row, node in enumerate(rows):
            if node is None:
                continue
            self.trace.nodes[node].expansion = Expansion(
                None if attention is None else attention[row], None if energy is None else energy[row],
                [Candidate(token, value) for token, value in zip(ids[row], values[row])])


def _step_energies(log: list, rows: int, trace: Trace) -> torch.Tensor | None:
    """The energies of this step [R, S] when the model made exactly one `Attention` call for its R rows."""
    if len(log) != 1 or log[0][1].dim() != 3 or log[0][1].size(0) != rows or log[0][1].size(1) != 1:
        return None
    module, energies = log[0]
    trace.normalizer, trace.temperature = module.normalizer.name, float(module.normalizer.temperature)
    return energies[:, 0]


def _model_step(model, prev: torch.Tensor, state, memory, trace: Trace):
    with recorded_energies(model) as log:
        log_probs, state, weights = model.step(prev, state, memory, True)  # [R, V], [R, L, H, S]
    return log_probs, state, weights, _step_energies(log, prev.size(0), trace)


@torch.inference_mode()
def _greedy(model, src, src_mask, ratio: float, controls: Controls, recorder: _Recorder) -> None:
    """`search.greedy_search` for one sentence, recording each step."""
    device, trace = src.device, recorder.trace
    memory = model.encode(src, src_mask)
    state = model.start_state(memory)
    rules = _Rules(controls, 1, device)
    blocker = rules.blocker(1, device)
    limits = max_lengths(src_mask, ratio, rules.prefix_lengths)  # [1]
    active = torch.zeros(1, dtype=torch.long, device=device)
    prev = torch.full((1,), BOS_ID, dtype=torch.long, device=device)
    score = torch.zeros(1, dtype=torch.float64, device=device)
    node = recorder.add(None, BOS_ID, 0.0, 0.0, ROOT)
    for t in range(int(limits.max()) + 1):
        model_log_probs, state, weights, energies = _model_step(model, prev, state, memory, trace)
        log_probs = rules.apply(model_log_probs, t, active, limits[active] <= t, blocker)
        recorder.expand([node], model_log_probs, weights, energies)
        best_score, best = log_probs.max(dim=-1)  # [1]
        score += best_score.double()
        token = int(best)
        forced = bool(t < rules.longest_prefix)
        node = recorder.add(node, token, float(best_score), float(score), FINISHED if token == EOS_ID else KEPT,
                            forced, float(score) if token == EOS_ID else None)
        if token == EOS_ID:
            trace.finished.append(node)
            return
        if blocker is not None:
            blocker.append(best)
        prev = best


@torch.inference_mode()
def _beam(model, src, src_mask, k: int, alpha: float, ratio: float, controls: Controls, recorder: _Recorder
          ) -> None:
    """`search.beam_search` for one sentence, recording every extension looked at: finished, kept or pruned."""
    device, trace = src.device, recorder.trace
    memory = select(model.encode(src, src_mask), torch.zeros(k, dtype=torch.long, device=device))
    state = model.start_state(memory)
    rules = _Rules(controls, 1, device)
    blocker = rules.blocker(k, device)
    limits = max_lengths(src_mask, ratio, rules.prefix_lengths)  # [1]
    sentences = torch.zeros(k, dtype=torch.long, device=device)
    alive_scores = torch.full((1, k), float("-inf"), dtype=torch.float64, device=device)  # [1, k]
    alive_scores[:, 0] = 0.0
    prev = torch.full((k,), BOS_ID, dtype=torch.long, device=device)
    rows: list[int | None] = [recorder.add(None, BOS_ID, 0.0, 0.0, ROOT)] + [None] * (k - 1)  # node of each row
    finished: list[_Finished] = []  # search's records, for its stopping rule

    for t in range(int(limits.max()) + 1):
        model_log_probs, state, weights, energies = _model_step(model, prev, state, memory, trace)
        log_probs = rules.apply(model_log_probs, t, sentences, limits[sentences] <= t, blocker)
        recorder.expand(rows, model_log_probs, weights, energies)
        vocab = log_probs.size(-1)
        candidates = (alive_scores.float().view(-1, 1) + log_probs).view(1, k * vocab)  # [1, k·V]
        top_ids = candidates.topk(min(2 * k, k * vocab), dim=1).indices  # [1, 2k]
        origin, token = top_ids // vocab, top_ids % vocab
        step_log_probs = log_probs.view(1, k, vocab)[torch.zeros(1, 1, dtype=torch.long, device=device), origin,
                                                     token]
        top_scores = alive_scores.gather(1, origin) + step_log_probs.double()  # [1, 2k]
        is_eos = token == EOS_ID
        rank = is_eos.long() * top_ids.size(1) + torch.arange(top_ids.size(1), device=device)
        keep = rank.argsort(dim=1)[:, :k]  # [1, k]
        kept = set(keep[0].tolist())
        forced = bool(t < rules.longest_prefix)
        nodes = {}
        for j, (o, y, s, lp, eos) in enumerate(zip(origin[0].tolist(), token[0].tolist(), top_scores[0].tolist(),
                                                   step_log_probs[0].tolist(), is_eos[0].tolist())):
            if not np.isfinite(s) or rows[o] is None:
                continue  # a dead beam's extension: not a hypothesis
            if eos and j < k:
                normalized = s / length_penalty(t + 1, alpha)
                nodes[j] = recorder.add(rows[o], y, lp, s, FINISHED, forced, normalized)
                finished.append(_Finished(s, normalized, t, o))
                trace.finished.append(nodes[j])
            else:
                nodes[j] = recorder.add(rows[o], y, lp, s, KEPT if j in kept and not eos else PRUNED, forced)
        alive_scores = top_scores.gather(1, keep).masked_fill(is_eos.gather(1, keep), float("-inf"))
        parents = origin.gather(1, keep).view(-1)
        prev = token.gather(1, keep).view(-1)
        rows = [nodes.get(j) if np.isfinite(a) else None for j, a in zip(keep[0].tolist(), alive_scores[0].tolist())]
        bound = float(alive_scores.max(dim=1).values[0]) / length_penalty(t + 2, alpha)
        if _is_done(finished, k, bound):
            break
        state = select(state, parents)
        if blocker is not None:
            blocker.select(parents)
            blocker.append(prev)
    trace.finished.sort(key=lambda i: trace.nodes[i].normalized_score, reverse=True)


@torch.inference_mode()
def _best_self_attention(model, src: torch.Tensor, src_mask: torch.Tensor, traced: Trace
                         ) -> PathSelfAttention | None:
    """The best hypothesis's self-attention, teacher forced over the tokens the decoder read (its path without the
    last node: BOS and the tokens before EOS); None for a model without self-attention."""
    read = traced.best[:-1] or [0]
    tgt_in = torch.tensor([[traced.nodes[i].token for i in read]], dtype=torch.long, device=src.device)  # [1, T]
    weights = self_attention(model, src, src_mask, tgt_in)
    if weights is None:
        return None
    return PathSelfAttention(read, weights.encoder[0].float().cpu().numpy(), weights.decoder[0].float().cpu().numpy())


def trace(translator, text: str, beam_size: int = 1, length_penalty_alpha: float = 1.0, prefix: str = "",
          min_length: int = 0, no_repeat_ngram_size: int = 0, candidates: int = 5,
          max_length_ratio: float | None = None) -> Trace:
    """Decode `text` with `translator`'s model as `Translator.translate([text], beam_size=...)` does (greedy for
    beam_size 1), recording the tree of hypotheses (module docstring); `candidates`: the top-k kept per expansion.
    An empty text gives the root alone (nothing is decoded, as `translate` gives an empty translation)."""
    source_ids = translator.tokenizer.encode_source([text.strip()])[0]
    ratio = translator.search_settings().max_length_ratio if max_length_ratio is None else max_length_ratio
    prefix_ids = translator.tokenizer.encode_target([prefix])[0] if prefix else []
    controls = Controls([prefix_ids], min_length, no_repeat_ngram_size)
    result = Trace(source_ids, beam_size, length_penalty_alpha)
    recorder = _Recorder(result, candidates, len(source_ids))
    if not source_ids:
        recorder.add(None, BOS_ID, 0.0, 0.0, ROOT)
        return result
    model, device = translator.model, translator.device
    src, src_mask = pad_sequences([source_ids])
    src, src_mask = src.to(device), src_mask.to(device)
    was_training = model.training
    model.eval()
    try:
        with devices.autocast(translator.mixed_precision, device):
            if beam_size == 1:
                _greedy(model, src, src_mask, ratio, controls, recorder)
            else:
                _beam(model, src, src_mask, beam_size, length_penalty_alpha, ratio, controls, recorder)
            result.self_attention = _best_self_attention(model, src, src_mask, result)
    finally:
        model.train(was_training)
    return result
