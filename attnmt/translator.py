"""Translator: a trained model directory, ready to translate sentences and show where it looked.

    >>> translator = Translator.load("runs/demo")            # device="auto": a GPU if torch sees one
    >>> result = translator.translate(["나는 학생이다."], beam_size=5)[0]
    >>> result.text, result.tokens, result.source_tokens, result.attention.shape, result.score

A Transformer's translation also carries `attention_heads`, the cross-attention of every decoder layer and head;
its `attention` is the mean over the heads of the last layer.

The CLI, the evaluation and the training loop's validation all translate through this class. It translates on the
device of the model's parameters (validation: the training device) and moves each batch there; what it returns
(tokens, scores, attention as numpy arrays) is on the CPU. It computes in float32, or with `mixed_precision="bf16"`
(fp16 on a GPU) under torch.autocast: matrix products in the lower precision, log-probabilities in float32; faster
where the hardware has bfloat16 instructions, and the translations may differ a little (measured in
docs/benchmarks.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from attnmt import checkpoint, devices
from attnmt.config import Config, load_config
from attnmt.data import Tokenizer
from attnmt.data.batching import pad_sequences
from attnmt.errors import AttnmtError, CheckpointError
from attnmt.models import build_model
from attnmt.search import Hypothesis, beam_search, greedy_search


@dataclass
class Translation:
    """One hypothesis for one source sentence."""

    text: str  # detokenized
    tokens: list[str]  # target subwords
    source_tokens: list[str]  # source subwords
    attention: np.ndarray | None  # [len(tokens) + 1, len(source_tokens)]: rows are target steps, EOS last
    score: float  # model log-probability Σ log p(y_t | y_<t, x)
    n_best: list["Translation"] = field(default_factory=list)  # all hypotheses asked for, best first (self included)
    # [layers, heads, len(tokens) + 1, len(source_tokens)]: per decoder layer and head (Transformer); None for RNNs
    attention_heads: np.ndarray | None = None

    @property
    def target_tokens_with_eos(self) -> list[str]:
        """Labels for the rows of `attention`."""
        return self.tokens + ["</s>"]


class Translator:
    """A model with its tokenizer and config; translates on the device the model's parameters are on."""

    def __init__(self, model: torch.nn.Module, tokenizer: Tokenizer, config: Config, mixed_precision: str = "none"
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

    @classmethod
    def load(cls, model_dir: str | Path, device: str = "auto", mixed_precision: str = "none") -> "Translator":
        """Load config.yaml, the tokenizer and model.safetensors from a model directory, and put the model on `device`
        (auto | cpu | cuda | cuda:N; auto: a GPU if torch sees one, else the CPU); it translates in float32, or
        under autocast with `mixed_precision` bf16 | fp16 (fp16: GPUs only)."""
        target = devices.choose(device, option="device")
        model_dir = Path(model_dir)
        if not (model_dir / checkpoint.CONFIG_FILE).is_file():
            raise CheckpointError(f"{model_dir} is not an attnmt model directory: {checkpoint.CONFIG_FILE} is missing")
        config = load_config(model_dir / checkpoint.CONFIG_FILE)
        tokenizer = Tokenizer.load(model_dir)
        model = build_model(config.model, tokenizer.src_vocab_size, tokenizer.tgt_vocab_size)
        checkpoint.load_model_weights(model_dir / checkpoint.MODEL_FILE, model)
        model.to(target).eval()
        return cls(model, tokenizer, config, mixed_precision)

    def _translation(self, hypothesis: Hypothesis, source_ids: list[int]) -> Translation:
        attention, heads = hypothesis.attention, None
        if attention is not None and attention.ndim == 4:  # [T, L, H, S]: every layer and head (Transformer)
            heads = attention.transpose(1, 2, 0, 3)  # [L, H, T, S]
            attention = heads[-1].mean(axis=0)  # the last layer, averaged over heads [T, S]
        return Translation(text=self.tokenizer.decode_target(hypothesis.tokens),
                           tokens=self.tokenizer.target_pieces(hypothesis.tokens),
                           source_tokens=self.tokenizer.source_pieces(source_ids),
                           attention=attention, score=hypothesis.score, attention_heads=heads)

    def translate(self, sentences: list[str], beam_size: int | None = None, n_best: int | None = None,
                  length_penalty: float | None = None, max_length_ratio: float | None = None,
                  batch_size: int | None = None, attention: bool = True) -> list[Translation]:
        """Translate sentences in batches of similar length; results come back in input order.

        beam_size 1 is greedy search. An empty (or blank) sentence gives an empty translation. `attention=False`
        leaves `attention` and `attention_heads` None and skips gathering them (faster: text is all that is wanted).
        """
        search = self.config.search
        beam_size = beam_size or search.beam_size
        n_best = n_best or search.n_best
        length_penalty = search.length_penalty if length_penalty is None else length_penalty
        max_length_ratio = max_length_ratio or search.max_length_ratio
        batch_size = batch_size or search.batch_size
        for option, value in (("beam_size", beam_size), ("n_best", n_best), ("batch_size", batch_size)):
            if value < 1:
                raise AttnmtError(f"`{option}` must be at least 1, not {value}")
        if max_length_ratio <= 0:
            raise AttnmtError(f"`max_length_ratio` must be positive, not {max_length_ratio}")
        was_training = self.model.training
        self.model.eval()
        source_ids = self.tokenizer.encode_source([s.strip() for s in sentences])
        results: list[Translation | None] = [None] * len(sentences)
        order = sorted((i for i, ids in enumerate(source_ids) if ids), key=lambda i: len(source_ids[i]))
        device = self.device
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            src, src_mask = pad_sequences([source_ids[i] for i in chunk])  # built on the CPU
            src, src_mask = src.to(device), src_mask.to(device)
            with devices.autocast(self.mixed_precision, device):
                if beam_size == 1:
                    hypotheses = greedy_search(self.model, src, src_mask, max_length_ratio, attention)
                else:
                    hypotheses = beam_search(self.model, src, src_mask, beam_size, length_penalty, max_length_ratio,
                                             min(n_best, beam_size), attention)
            for i, sentence_hypotheses in zip(chunk, hypotheses):
                translations = [self._translation(h, source_ids[i]) for h in sentence_hypotheses]
                best = translations[0]
                best.n_best = translations
                results[i] = best
        for i, result in enumerate(results):
            if result is None:
                results[i] = Translation("", [], [], np.zeros((0, 0), dtype=np.float32) if attention else None, 0.0)
        self.model.train(was_training)
        return results
