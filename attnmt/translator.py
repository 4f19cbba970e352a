"""Translator: a trained model directory, ready to translate sentences and show where it looked.

    >>> translator = Translator.load("runs/demo")            # device="auto": a GPU if torch sees one
    >>> result = translator.translate(["나는 학생이다."], beam_size=5)[0]
    >>> result.text, result.tokens, result.source_tokens, result.attention.shape, result.score, result.log_prob
    >>> ensemble = Translator.load(["runs/a", "runs/b"])     # several models: one ensemble (same tokenizer files)
    >>> ensemble.score(["나는 학생이다."], ["I am a student."])[0].log_prob    # teacher-forced log p(reference | source)

Each translation carries two numbers: `log_prob`, the model's log-probability Σ_t log p(y_t | y_<t, x) (EOS included),
and `score`, what the search ranked its hypotheses by: log_prob / lp(|y| + 1) with the length penalty
lp(n) = ((5 + n) / 6)^α (`attnmt.search`); with α = 0, and for greedy search, the two are equal. `n_best` lists are
sorted by `score`, best first.

Every translation of a model with attention carries `attention_heads` [L, H, T, S], the attention of each of its
L attention layers and H heads (an RNN: 1 × 1; a Transformer: each decoder layer's cross-attention), and
`attention` [T, S], the default view: the last layer averaged over its heads. `result.attention_view(layer, head)`
gives any other view (1-based numbers, as the CLI's --layer/--head and the page).

The CLI, the evaluation and the training loop's validation all translate through this class. It translates on the
device of the model's parameters (validation: the training device) and moves each batch there; what it returns
(tokens, scores, attention as numpy arrays) is on the CPU. It computes in float32, or with `mixed_precision="bf16"`
(fp16 on a GPU) under torch.autocast: matrix products in the lower precision, log-probabilities in float32; faster
where the hardware has bfloat16 instructions, and the translations may differ a little (measured in
docs/benchmarks.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from attnmt import checkpoint, devices, manifest, quantization as quantizing
from attnmt.config import Config, SearchConfig, load_config
from attnmt.data import Tokenizer
from attnmt.data.batching import collate, pad_sequences
from attnmt.data.tokenizer import TOKENIZER_FILES
from attnmt.errors import AttnmtError, CheckpointError, TextTooLong
from attnmt.models import ModelDescription, Seq2SeqModel, build_model
from attnmt.models.contract import log_probabilities
from attnmt.models.ensemble import Ensemble
from attnmt.search import Controls, Hypothesis, Sampling, beam_search, greedy_search


def attention_view(heads: np.ndarray, layer: int | None = None, head: int | None = None) -> np.ndarray:
    """One [T, S] matrix of heads [L, H, T, S]: head `head` of layer `layer`, or the layer's mean over its heads
    when `head` is None; `layer` None is the last layer. Numbers are 1-based; out of range is an `AttnmtError`
    naming the valid range."""
    layers, head_count = heads.shape[:2]
    chosen = heads[layers - 1 if layer is None else _index("layer", layer, layers, "attention layer", "")]
    if head is None:
        return chosen.mean(axis=0)
    return chosen[_index("head", head, head_count, "head", " per layer")]


def check_source_lengths(lengths: list[int], limit: int) -> None:
    """The source-length cap: a text of more than `limit` subwords is refused (a `TextTooLong` naming the first such
    text), never truncated: a model translates badly what is longer than it was trained on, and the work of a
    search grows with the length."""
    for index, length in enumerate(lengths):
        if length > limit:
            raise TextTooLong(index, length, limit)


def tokenizer_fingerprints(model_dir: Path) -> dict[str, str]:
    """The SHA-256 of each tokenizer file a model directory holds (`manifest.fingerprint`, the manifest's rule), by
    file name."""
    return {name: manifest.fingerprint(Path(model_dir) / name)["sha256"] for name in TOKENIZER_FILES
            if (Path(model_dir) / name).is_file()}


def check_shared_tokenizer(model_dirs: Sequence[Path]) -> None:
    """The models of an ensemble read the same subwords behind the same ids: every directory's tokenizer files
    (names and SHA-256) are the first's, or a `CheckpointError` names both directories and the file that differs."""
    first = tokenizer_fingerprints(model_dirs[0])
    for other in model_dirs[1:]:
        found = tokenizer_fingerprints(other)
        if found == first:
            continue
        differing = sorted(name for name in first.keys() | found.keys() if first.get(name) != found.get(name))
        raise CheckpointError(f"{model_dirs[0]} and {other} do not share a tokenizer ({', '.join(differing)} "
                              f"differ{'s' * (len(differing) == 1)}: SHA-256 compared): the models of an ensemble "
                              f"must be trained with the same sentencepiece files (tokenizer.src_model / tgt_model "
                              f"in their configs); ensemble only models that share them")


def _load_model(model_dir: Path, tokenizer: Tokenizer) -> Seq2SeqModel:
    """The model of a directory (its config's model section, its weights), for `tokenizer`'s vocabularies, on the
    CPU."""
    config = load_config(model_dir / checkpoint.CONFIG_FILE)
    model = build_model(config.model, tokenizer.src_vocab_size, tokenizer.tgt_vocab_size)
    checkpoint.load_model_weights(model_dir / checkpoint.MODEL_FILE, model)
    return model


def _index(option: str, number: int, count: int, noun: str, suffix: str) -> int:
    """A 1-based layer/head number → a 0-based index, or an error naming the valid range."""
    if not 1 <= number <= count:
        raise AttnmtError(f"{option} {number}: the model has {count} {noun}{'s' * (count != 1)}{suffix}; "
                          f"choose 1..{count} (1-based)")
    return number - 1


@dataclass
class Translation:
    """One hypothesis for one source sentence."""

    text: str  # detokenized
    tokens: list[str]  # target subwords
    source_tokens: list[str]  # source subwords
    # [L, H, len(tokens) + 1, len(source_tokens)]: every attention layer and head; rows are target steps, EOS last.
    # None without attention (or when translated with attention=False)
    attention_heads: np.ndarray | None
    score: float  # the ranking score: log_prob / lp(len(tokens) + 1), what the search sorted hypotheses by
    log_prob: float  # the model's log-probability Σ log p(y_t | y_<t, x), the EOS step included
    n_best: list["Translation"] = field(default_factory=list)  # all hypotheses asked for, best first by `score`
    #                                                            (self included)

    @cached_property
    def attention(self) -> np.ndarray | None:
        """The default view [len(tokens) + 1, len(source_tokens)]: the last layer, averaged over its heads."""
        return None if self.attention_heads is None else attention_view(self.attention_heads)

    def attention_view(self, layer: int | None = None, head: int | None = None) -> np.ndarray:
        """See `attention_view` (module level); an `AttnmtError` if this translation has no attention."""
        if self.attention_heads is None:
            raise AttnmtError("this translation has no attention (a model with `attention: none`, or translated "
                              "with attention=False)")
        return attention_view(self.attention_heads, layer, head)

    @property
    def target_tokens_with_eos(self) -> list[str]:
        """Labels for the rows of `attention`."""
        return self.tokens + ["</s>"]


@dataclass(frozen=True)
class ReferenceScore:
    """A reference scored given its source (`Translator.score`)."""

    log_prob: float  # log p(y | x) = Σ_t log p(y_t | y_<t, x) over the reference's subwords and EOS
    tokens: int  # the target tokens that sum counts: the reference's subwords + 1 (EOS)


@torch.inference_mode()
def reference_log_probs(model: Seq2SeqModel, src: torch.Tensor, src_mask: torch.Tensor, tgt_in: torch.Tensor,
                        tgt_out: torch.Tensor, tgt_mask: torch.Tensor) -> torch.Tensor:
    """Teacher forcing: log p(y | x) = Σ_t log p(y_t | y_<t, x) of each row, the decoder reading `BOS y` (tgt_in)
    and scored on `y EOS` (tgt_out) at the real positions (tgt_mask). [B], float64 (the sum is exact)."""
    logits, _ = model(src, src_mask, tgt_in)  # [B, T, V]
    token_log_probs = log_probabilities(logits).gather(-1, tgt_out.unsqueeze(-1)).squeeze(-1)  # [B, T]
    return token_log_probs.double().masked_fill(~tgt_mask, 0.0).sum(dim=1)  # [B]


def perplexity(scores: Sequence[ReferenceScore]) -> float:
    """A corpus's perplexity, exp(−Σ log p / Σ tokens) over its references (EOS counted); nan for no tokens."""
    tokens = sum(s.tokens for s in scores)
    if not tokens:
        return math.nan
    try:
        return math.exp(-sum(s.log_prob for s in scores) / tokens)
    except OverflowError:  # a model that finds the references all but impossible
        return math.inf


class Translator:
    """A model with its tokenizer and config; translates on the device the model's parameters are on."""

    backend = "torch"  # what decodes: PyTorch, with `model`, or another engine (`attnmt.backends`; `model` None)

    def __init__(self, model: Seq2SeqModel, tokenizer: Tokenizer, config: Config, mixed_precision: str = "none"
                 ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        devices.check_mixed_precision(mixed_precision, self.device, option="mixed_precision")
        self.mixed_precision = mixed_precision
        self.quantization = quantizing.DEFAULT_QUANTIZATION  # `load` records int8 here

    @property
    def device(self) -> torch.device:
        """Where the model is, and where each batch goes."""
        return devices.model_device(self.model)

    def describe(self) -> ModelDescription:
        """The model in family-neutral terms (see `attnmt.models.contract.ModelDescription`)."""
        return self.model.describe()

    @classmethod
    def load(cls, model_dir: str | Path | Sequence[str | Path], device: str = "auto", mixed_precision: str = "none",
             check_manifest: bool = True, quantization: str = quantizing.DEFAULT_QUANTIZATION, backend: str = "torch",
             compute_type: str | None = None, parallel_batches: int | None = None) -> "Translator":
        """Load config.yaml, the tokenizer and model.safetensors from a model directory, and put the model on `device`
        (auto | cpu | cuda | cuda:N; auto: a GPU if torch sees one, else the CPU); it translates in float32, or
        under autocast with `mixed_precision` bf16 | fp16 (fp16: GPUs only), or with `quantization="int8"` in dynamic
        int8 on the CPU (`attnmt.quantization`: each model's family says which of its modules quantize; `auto` is
        then the CPU; attention is returned as before).

        A list of several directories loads them as one ensemble (`attnmt.models.ensemble.Ensemble`: the mean of their
        next-token probabilities), models of any family; they must have the same tokenizer files
        (`check_shared_tokenizer`). The first model's config is the translator's: its search defaults and its
        data.max_length (`max_source_tokens`). A list of one is that model alone.

        First every file is checked against manifest.json (`attnmt.manifest.check`; a directory without one loads
        with a warning); `check_manifest=False` skips that (`attnmt verify --write` does, to write one). A file that
        does not match, cannot be read, does not fit the others or holds non-finite weights is a `CheckpointError`
        (or a `StorageError`) naming the file.

        `backend="ctranslate2"` translates with the directory's CTranslate2 export (`attnmt export`) in `compute_type`
        (float32, int8, int8_float32, ...), `parallel_batches` batches at once (default one per CPU thread):
        `attnmt.backends`, same `Translation` objects."""
        if backend != "torch" or compute_type is not None or parallel_batches is not None:
            from attnmt.backends import load_backend
            return load_backend(backend, model_dir, device=device, mixed_precision=mixed_precision,
                                check_manifest=check_manifest, quantization=quantization, compute_type=compute_type,
                                parallel_batches=parallel_batches)
        quantizing.check_quantization(quantization)
        target = devices.choose(quantizing.device_option(quantization, device), option="device")
        quantizing.check_placement(quantization, target, mixed_precision)
        model_dirs = [Path(model_dir)] if isinstance(model_dir, (str, Path)) else [Path(d) for d in model_dir]
        if not model_dirs:
            raise CheckpointError("no model directory given: give one, or several for an ensemble")
        for directory in model_dirs:
            if not (directory / checkpoint.CONFIG_FILE).is_file():
                raise CheckpointError(f"{directory} is not an attnmt model directory: {checkpoint.CONFIG_FILE} is "
                                      f"missing")
            if check_manifest:
                manifest.check(directory)
        check_shared_tokenizer(model_dirs)
        config = load_config(model_dirs[0] / checkpoint.CONFIG_FILE)
        tokenizer = Tokenizer.load(model_dirs[0])
        members = [quantizing.quantize(_load_model(directory, tokenizer), quantization) for directory in model_dirs]
        model = members[0] if len(members) == 1 else Ensemble(members, [str(d) for d in model_dirs])
        model.to(target).eval()
        translator = cls(model, tokenizer, config, mixed_precision)
        translator.quantization = quantization
        return translator

    def _translation(self, hypothesis: Hypothesis, source_ids: list[int]) -> Translation:
        heads = None if hypothesis.attention is None else hypothesis.attention.transpose(1, 2, 0, 3)  # [L, H, T, S]
        return Translation(text=self.tokenizer.decode_target(hypothesis.tokens),
                           tokens=self.tokenizer.target_pieces(hypothesis.tokens),
                           source_tokens=self.tokenizer.source_pieces(source_ids),
                           attention_heads=heads, score=hypothesis.normalized_score, log_prob=hypothesis.score)

    def search_settings(self, **options) -> SearchConfig:
        """The config's search defaults with `options` (beam_size, n_best, length_penalty, max_length_ratio,
        batch_size, and the decoding controls of `translate`; None: the default) applied and checked:
        `SearchConfig.resolve`."""
        return self.config.search.resolve(**options)

    @property
    def max_source_tokens(self) -> int:
        """The default cap on a source's subwords: `data.max_length`, the longest source the model was trained on."""
        return self.config.data.max_length

    def _encode(self, sentences: list[str]) -> list[list[int]]:
        return self.tokenizer.encode_source([s.strip() for s in sentences])

    def source_lengths(self, sentences: list[str]) -> list[int]:
        """The subwords of each sentence, as `translate` encodes it."""
        return [len(ids) for ids in self._encode(sentences)]

    def _prepare(self, sentences: list[str], max_source_tokens: int | None, prefix: str | Sequence[str] | None,
                 **options) -> tuple[SearchConfig, list[list[int]], list[list[int]]]:
        """What every backend's `translate` starts with: the search settings (`options` and a one-string `prefix`
        checked by `SearchConfig.resolve`), the sentences' source ids (each within `max_source_tokens`, if given)
        and each sentence's forced target prefix ids."""
        if isinstance(sentences, str):
            raise TypeError("translate takes a list of sentences; for one sentence: translate([sentence])[0]")
        search = self.search_settings(prefix=prefix if isinstance(prefix, str) else None, **options)
        source_ids = self._encode(sentences)
        if max_source_tokens is not None:
            check_source_lengths([len(ids) for ids in source_ids], max_source_tokens)
        prefix_ids = self._prefix_ids(search.prefix if prefix is None or isinstance(prefix, str) else prefix,
                                      len(sentences))
        return search, source_ids, prefix_ids

    def translate(self, sentences: list[str], beam_size: int | None = None, n_best: int | None = None,
                  length_penalty: float | None = None, max_length_ratio: float | None = None,
                  batch_size: int | None = None, attention: bool = True, max_source_tokens: int | None = None,
                  prefix: str | Sequence[str] | None = None, min_length: int | None = None,
                  no_repeat_ngram_size: int | None = None, sampling: bool | None = None, top_k: int | None = None,
                  top_p: float | None = None, temperature: float | None = None, seed: int | None = None
                  ) -> list[Translation]:
        """Translate sentences in batches of similar length; results come back in input order.

        Options left None take the model config's `search` defaults; beam_size 1 is greedy search; n_best above
        beam_size is an error (`SearchConfig.resolve`, which checks every option). An empty (or blank) sentence gives
        an empty translation. `attention=False` leaves `attention_heads` None and skips gathering it (faster: text is
        all that is wanted). With `max_source_tokens` (e.g. `self.max_source_tokens`), a sentence of more subwords is
        a `TextTooLong` naming it, raised before anything is translated (`check_source_lengths`); None translates any
        length.

        Decoding controls (`attnmt.search`): `prefix`, target text each translation starts with (one string for every
        sentence, or a list of one per sentence): its subwords are forced, then decoding goes on; `min_length`
        subwords before the end; `no_repeat_ngram_size` n: no n-gram twice. `sampling=True` draws each subword (greedy
        search; beam_size must be 1) from the distribution cut by `top_k`, `top_p` and sharpened or flattened by
        `temperature`; with a `seed` a sentence's draw depends on the seed and the sentence alone.
        """
        search, source_ids, prefix_ids = self._prepare(
            sentences, max_source_tokens, prefix, beam_size=beam_size, n_best=n_best, length_penalty=length_penalty,
            max_length_ratio=max_length_ratio, batch_size=batch_size, min_length=min_length,
            no_repeat_ngram_size=no_repeat_ngram_size, sampling=sampling, top_k=top_k, top_p=top_p,
            temperature=temperature, seed=seed)
        sampler = (Sampling(search.temperature, search.top_k, search.top_p, search.seed) if search.sampling else
                   None)
        was_training = self.model.training
        self.model.eval()
        results: list[Translation | None] = [None] * len(sentences)
        order = sorted((i for i, ids in enumerate(source_ids) if ids), key=lambda i: len(source_ids[i]))
        device = self.device
        for start in range(0, len(order), search.batch_size):
            chunk = order[start:start + search.batch_size]
            src, src_mask = pad_sequences([source_ids[i] for i in chunk])  # built on the CPU
            src, src_mask = src.to(device), src_mask.to(device)
            controls = Controls([prefix_ids[i] for i in chunk], search.min_length, search.no_repeat_ngram_size)
            with devices.autocast(self.mixed_precision, device):
                if search.beam_size == 1:
                    hypotheses = greedy_search(self.model, src, src_mask, search.max_length_ratio, attention,
                                               controls, sampler)
                else:
                    hypotheses = beam_search(self.model, src, src_mask, search.beam_size, search.length_penalty,
                                             search.max_length_ratio, search.n_best, attention, controls)
            for i, sentence_hypotheses in zip(chunk, hypotheses):
                translations = [self._translation(h, source_ids[i]) for h in sentence_hypotheses]
                best = translations[0]
                best.n_best = translations
                results[i] = best
        self.model.train(was_training)
        return [result if result is not None else self._empty_translation(attention) for result in results]

    def prefix_lengths(self, prefixes: list[str]) -> list[int]:
        """The target subwords of each prefix, as `translate` forces them."""
        return [len(ids) for ids in self.tokenizer.encode_target(list(prefixes))]

    def _prefix_ids(self, prefix: str | Sequence[str], count: int) -> list[list[int]]:
        """The target ids forced first for each of `count` sentences: one prefix for all, or one each."""
        if isinstance(prefix, str):
            return [self.tokenizer.encode_target([prefix])[0] if prefix else []] * count
        prefixes = list(prefix)
        if len(prefixes) != count or not all(isinstance(p, str) for p in prefixes):
            raise AttnmtError(f"prefix: give one string for every sentence, or a list of one string per sentence "
                              f"({count}); got a list of {len(prefixes)}")
        return [ids if p else [] for p, ids in zip(prefixes, self.tokenizer.encode_target(prefixes))]

    def score(self, sources: list[str], references: list[str], batch_size: int | None = None,
              max_source_tokens: int | None = None) -> list[ReferenceScore]:
        """How likely the model finds each reference given its source, by teacher forcing (`reference_log_probs`):
        log p(y | x) = Σ_t log p(y_t | y_<t, x) over the reference's subwords and EOS, and that token count, in input
        order; `perplexity` sums them up for a corpus. Pairs go through `forward` in batches of `batch_size`
        (default the config's search.batch_size) sorted by length. An ensemble scores with its mixture
        log (1/K) Σ_k p_k. An empty reference is EOS alone (1 token); an empty source, or lists of different lengths,
        is an `AttnmtError` naming the pair; `max_source_tokens` caps sources as in `translate`."""
        if isinstance(sources, str) or isinstance(references, str):
            raise TypeError("score takes lists of sentences; for one pair: score([source], [reference])[0]")
        if len(sources) != len(references):
            raise AttnmtError(f"score got {len(sources)} sources and {len(references)} references: give one "
                              f"reference per source")
        batch_size = self.search_settings(batch_size=batch_size).batch_size
        source_ids = self._encode(sources)
        target_ids = self.tokenizer.encode_target([r.strip() for r in references])
        for index, ids in enumerate(source_ids):
            if not ids:
                raise AttnmtError(f"pair {index + 1}: the source is empty; a reference is scored given its source, "
                                  f"so give a source text or leave the pair out")
        if max_source_tokens is not None:
            check_source_lengths([len(ids) for ids in source_ids], max_source_tokens)
        order = sorted(range(len(sources)), key=lambda i: (len(target_ids[i]), len(source_ids[i])))
        results: list[ReferenceScore | None] = [None] * len(sources)
        was_training = self.model.training
        self.model.eval()
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            batch = collate([source_ids[i] for i in chunk], [target_ids[i] for i in chunk], chunk).to(self.device)
            with devices.autocast(self.mixed_precision, self.device):
                log_probs = reference_log_probs(self.model, batch.src, batch.src_mask, batch.tgt_in, batch.tgt_out,
                                                batch.tgt_mask)  # [B]
            for i, value in zip(chunk, log_probs.tolist()):
                results[i] = ReferenceScore(log_prob=value, tokens=len(target_ids[i]) + 1)
        self.model.train(was_training)
        return results

    def _empty_translation(self, attention: bool) -> Translation:
        """The translation of an empty sentence: no tokens, and (with attention) an empty [L, H, 0, 0] of the
        model's layout."""
        layout = self.describe()
        heads = np.zeros((layout.attention_layers, layout.attention_heads, 0, 0), dtype=np.float32)
        return Translation("", [], [], heads if attention and layout.has_attention else None, score=0.0,
                           log_prob=0.0)
