"""Translator: a trained model directory, ready to translate sentences and show where it looked.

    >>> translator = Translator.load("runs/demo")            # device="auto": a GPU if torch sees one
    >>> result = translator.translate(["나는 학생이다."], beam_size=5)[0]
    >>> result.text, result.tokens, result.source_tokens, result.attention.shape, result.score

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

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from attnmt import checkpoint, devices, manifest
from attnmt.config import Config, SearchConfig, load_config
from attnmt.data import Tokenizer
from attnmt.data.batching import pad_sequences
from attnmt.errors import AttnmtError, CheckpointError, TextTooLong
from attnmt.models import ModelDescription, Seq2SeqModel, build_model
from attnmt.search import Hypothesis, beam_search, greedy_search


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
    score: float  # model log-probability Σ log p(y_t | y_<t, x)
    n_best: list["Translation"] = field(default_factory=list)  # all hypotheses asked for, best first (self included)

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


class Translator:
    """A model with its tokenizer and config; translates on the device the model's parameters are on."""

    def __init__(self, model: Seq2SeqModel, tokenizer: Tokenizer, config: Config, mixed_precision: str = "none"
                 ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        devices.check_mixed_precision(mixed_precision, self.device, option="mixed_precision")
        self.mixed_precision = mixed_precision

    @property
    def device(self) -> torch.device:
        """Where the model is, and where each batch goes."""
        return devices.model_device(self.model)

    def describe(self) -> ModelDescription:
        """The model in family-neutral terms (see `attnmt.models.contract.ModelDescription`)."""
        return self.model.describe()

    @classmethod
    def load(cls, model_dir: str | Path, device: str = "auto", mixed_precision: str = "none",
             check_manifest: bool = True) -> "Translator":
        """Load config.yaml, the tokenizer and model.safetensors from a model directory, and put the model on `device`
        (auto | cpu | cuda | cuda:N; auto: a GPU if torch sees one, else the CPU); it translates in float32, or
        under autocast with `mixed_precision` bf16 | fp16 (fp16: GPUs only).

        First every file is checked against manifest.json (`attnmt.manifest.check`; a directory without one loads
        with a warning); `check_manifest=False` skips that (`attnmt verify --write` does, to write one). A file that
        does not match, cannot be read, does not fit the others or holds non-finite weights is a `CheckpointError`
        (or a `StorageError`) naming the file."""
        target = devices.choose(device, option="device")
        model_dir = Path(model_dir)
        if not (model_dir / checkpoint.CONFIG_FILE).is_file():
            raise CheckpointError(f"{model_dir} is not an attnmt model directory: {checkpoint.CONFIG_FILE} is missing")
        if check_manifest:
            manifest.check(model_dir)
        config = load_config(model_dir / checkpoint.CONFIG_FILE)
        tokenizer = Tokenizer.load(model_dir)
        model = build_model(config.model, tokenizer.src_vocab_size, tokenizer.tgt_vocab_size)
        checkpoint.load_model_weights(model_dir / checkpoint.MODEL_FILE, model)
        model.to(target).eval()
        return cls(model, tokenizer, config, mixed_precision)

    def _translation(self, hypothesis: Hypothesis, source_ids: list[int]) -> Translation:
        heads = None if hypothesis.attention is None else hypothesis.attention.transpose(1, 2, 0, 3)  # [L, H, T, S]
        return Translation(text=self.tokenizer.decode_target(hypothesis.tokens),
                           tokens=self.tokenizer.target_pieces(hypothesis.tokens),
                           source_tokens=self.tokenizer.source_pieces(source_ids),
                           attention_heads=heads, score=hypothesis.score)

    def search_settings(self, **options) -> SearchConfig:
        """The config's search defaults with `options` (beam_size, n_best, length_penalty, max_length_ratio,
        batch_size; None: the default) applied and checked: `SearchConfig.resolve`."""
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

    def translate(self, sentences: list[str], beam_size: int | None = None, n_best: int | None = None,
                  length_penalty: float | None = None, max_length_ratio: float | None = None,
                  batch_size: int | None = None, attention: bool = True, max_source_tokens: int | None = None
                  ) -> list[Translation]:
        """Translate sentences in batches of similar length; results come back in input order.

        Options left None take the model config's `search` defaults; beam_size 1 is greedy search; n_best above
        beam_size is an error (`SearchConfig.resolve`). An empty (or blank) sentence gives an empty translation.
        `attention=False` leaves `attention_heads` None and skips gathering it (faster: text is all that is wanted).
        With `max_source_tokens` (e.g. `self.max_source_tokens`), a sentence of more subwords is a `TextTooLong`
        naming it, raised before anything is translated (`check_source_lengths`); None translates any length.
        """
        if isinstance(sentences, str):
            raise TypeError("translate takes a list of sentences; for one sentence: translate([sentence])[0]")
        search = self.search_settings(beam_size=beam_size, n_best=n_best, length_penalty=length_penalty,
                                      max_length_ratio=max_length_ratio, batch_size=batch_size)
        source_ids = self._encode(sentences)
        if max_source_tokens is not None:
            check_source_lengths([len(ids) for ids in source_ids], max_source_tokens)
        was_training = self.model.training
        self.model.eval()
        results: list[Translation | None] = [None] * len(sentences)
        order = sorted((i for i, ids in enumerate(source_ids) if ids), key=lambda i: len(source_ids[i]))
        device = self.device
        for start in range(0, len(order), search.batch_size):
            chunk = order[start:start + search.batch_size]
            src, src_mask = pad_sequences([source_ids[i] for i in chunk])  # built on the CPU
            src, src_mask = src.to(device), src_mask.to(device)
            with devices.autocast(self.mixed_precision, device):
                if search.beam_size == 1:
                    hypotheses = greedy_search(self.model, src, src_mask, search.max_length_ratio, attention)
                else:
                    hypotheses = beam_search(self.model, src, src_mask, search.beam_size, search.length_penalty,
                                             search.max_length_ratio, search.n_best, attention)
            for i, sentence_hypotheses in zip(chunk, hypotheses):
                translations = [self._translation(h, source_ids[i]) for h in sentence_hypotheses]
                best = translations[0]
                best.n_best = translations
                results[i] = best
        self.model.train(was_training)
        return [result if result is not None else self._empty_translation(attention) for result in results]

    def _empty_translation(self, attention: bool) -> Translation:
        """The translation of an empty sentence: no tokens, and (with attention) an empty [L, H, 0, 0] of the
        model's layout."""
        layout = self.describe()
        heads = np.zeros((layout.attention_layers, layout.attention_heads, 0, 0), dtype=np.float32)
        return Translation("", [], [], heads if attention and layout.has_attention else None, 0.0)
