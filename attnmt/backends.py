"""Translation backends besides PyTorch: `Translator.load(MODEL_DIR, backend="ctranslate2", compute_type=...)`.

`CTranslate2Translator` translates with a CTranslate2 export of the model (`attnmt export`, `attnmt.export`) and
returns the torch path's `Translation` objects, so the CLI, the server and the page work unchanged. It tokenizes
with the model's sentencepiece files and calls `ctranslate2.Translator.translate_batch`:

    attnmt (SearchConfig, translate)        translate_batch
    beam_size, n_best                       beam_size, num_hypotheses
    length_penalty α                        length_penalty α, but CTranslate2 ranks by Σ log p / |y|^α where attnmt
                                            ranks by Σ log p / ((5 + |y|) / 6)^α: the same order for α = 0 (and for
                                            greedy search), close otherwise. `score` is recomputed with attnmt's rule
    max_length_ratio                        each sentence's limit ⌈ratio × |x|⌉ + LENGTH_SLACK (+ |prefix|)
                                            (`max_output_lengths`); one call for all sentences with the largest as
                                            max_decoding_length (CTranslate2 sorts and batches them itself), then a
                                            translation longer than its own limit is cut there and rescored, as
                                            attnmt's search ends it (greedy: the same tokens; beam: a hypothesis
                                            past its limit may have outranked one attnmt would keep)
    prefix                                  target_prefix (its subwords)
    min_length, no_repeat_ngram_size        min_decoding_length, no_repeat_ngram_size
    sampling, top_k, top_p, temperature     sampling_topk (1 when not sampling; 0: the whole vocabulary, as top_k
                                            0), sampling_topp, sampling_temperature
    seed                                    ctranslate2.set_random_seed(seed) before the call: the same seed and the
                                            same input give the same draws, but a sentence's draw depends on its
                                            batch (attnmt's torch path: on the seed and the sentence alone)
    attention                               return_attention: CTranslate2 returns one matrix, the last decoder
                                            layer's cross-attention averaged over its heads (the export asks for
                                            all heads): `attention_heads` is [1, 1, T + 1, S], and `describe()`
                                            says so (attention_layers = attention_heads = 1)

`score` (teacher-forced log p(reference | source)) is not offered: score with the PyTorch backend.

Threads: CTranslate2 splits the sentences of one call into batches (`batch_size` sentences, sorted by length) and
decodes `parallel_batches` of them at once, each on threads ÷ parallel_batches threads (its inter_threads and
intra_threads; `ctranslate2_threads`). The default is one thread per batch, the faster layout for many sentences on
a small CPU (docs/export.md, "Speed"); `parallel_batches=1` decodes one batch at a time on all the threads.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from attnmt import checkpoint, devices, manifest
from attnmt.config import load_config
from attnmt.data import Tokenizer
from attnmt.data.tokenizer import EOS_PIECE
from attnmt.errors import AttnmtError, CheckpointError
from attnmt.export import DEFAULT_QUANTIZATION, QUANTIZATIONS, check_export, default_output
from attnmt.models import ModelDescription, build_model
from attnmt.models.ctranslate2_spec import import_ctranslate2
from attnmt.search import length_penalty, max_output_lengths
from attnmt.translator import Translation, Translator

BACKENDS = ("torch", "ctranslate2")
COMPUTE_TYPES = ("default", "auto", "float32", "int8", "int8_float32", "int8_float16", "int8_bfloat16", "float16",
                 "bfloat16")  # CTranslate2's; which run depends on the device (ctranslate2.get_supported_compute_types)


def ctranslate2_threads(threads: int, parallel_batches: int | None = None, device: str = "cpu") -> tuple[int, int]:
    """CTranslate2's (inter_threads, intra_threads) for `threads` CPU threads: `parallel_batches` batches decoded at
    once, each on threads ÷ parallel_batches threads. Default: one thread per batch on a CPU; one batch at a time on
    a GPU (where each batch decoded at once holds a copy of the model)."""
    batches = parallel_batches if parallel_batches is not None else threads if device == "cpu" else 1
    if not 1 <= batches <= threads:
        raise AttnmtError(f"parallel_batches {batches}: choose 1 to {threads} (the threads CTranslate2 may use), so "
                          f"that every batch has a thread")
    return batches, threads // batches


def _description(config, tokenizer: Tokenizer) -> ModelDescription:
    """The model's own description (built on the meta device: no weights read), with the attention CTranslate2
    returns: one layer, one head (the last layer's mean), and no self-attention (it returns none)."""
    with torch.device("meta"):
        model = build_model(config.model, tokenizer.src_vocab_size, tokenizer.tgt_vocab_size)
    described = model.describe()
    return dataclasses.replace(described, summary=f"{described.summary} (CTranslate2)",
                               attention_layers=min(described.attention_layers, 1),
                               attention_heads=min(described.attention_heads, 1), self_attention_heads=0)


def choose_export(model_dir: Path, compute_type: str) -> Path:
    """The export a model directory's CTranslate2 backend reads: MODEL_DIR/ctranslate2-QUANT when compute_type is a
    quantization exported there, else MODEL_DIR/ctranslate2 (CTranslate2 converts float32 weights to the compute
    type as it loads them). None there: a `CheckpointError` with the command that writes one."""
    candidates = [default_output(model_dir, compute_type)] if compute_type in QUANTIZATIONS else []
    candidates.append(default_output(model_dir, DEFAULT_QUANTIZATION))
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise CheckpointError(f"{model_dir} has no CTranslate2 export ({candidates[-1]} is missing); write one with "
                          f"`attnmt export {model_dir} --to ctranslate2`")


def _ct2_device(device: str) -> tuple[str, int]:
    """attnmt's --device (auto | cpu | cuda | cuda:N) as CTranslate2's (device, index): auto is a GPU when
    CTranslate2 sees one."""
    ctranslate2 = import_ctranslate2()
    if device == "auto":
        return ("cuda", 0) if ctranslate2.get_cuda_device_count() > 0 else ("cpu", 0)
    chosen = devices.choose(device, option="device")
    return chosen.type, chosen.index or 0


def load_backend(backend: str, model_dir, device: str = "auto", mixed_precision: str = "none",
                 check_manifest: bool = True, quantization: str = "none", compute_type: str | None = None,
                 parallel_batches: int | None = None) -> Translator:
    """`Translator.load` with a backend other than torch; options that belong to another backend are errors naming
    them."""
    if backend not in BACKENDS:
        raise AttnmtError(f"backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    if backend == "torch":
        option = (f"compute_type {compute_type!r} (--compute-type)" if compute_type is not None else
                  f"parallel_batches {parallel_batches}")
        raise AttnmtError(f"{option} is CTranslate2's: use it with backend=\"ctranslate2\" (--backend ctranslate2), "
                          f"or leave it out")
    if not isinstance(model_dir, (str, Path)):
        if len(model_dir) != 1:
            raise AttnmtError("the CTranslate2 backend translates with one model: ensembles need the PyTorch backend")
        model_dir = model_dir[0]
    if mixed_precision != "none":
        raise AttnmtError(f"mixed_precision {mixed_precision!r} (--mixed-precision) is the PyTorch backend's; with "
                          f"CTranslate2 choose compute_type (--compute-type, e.g. int8_float32) instead")
    if quantization not in ("none", None):
        raise AttnmtError(f"quantization {quantization!r} (--quantization) is the PyTorch backend's; with CTranslate2 "
                          f"choose compute_type (--compute-type int8), or export quantized weights (`attnmt export "
                          f"MODEL_DIR --to ctranslate2 --quantization int8`)")
    return CTranslate2Translator.load(model_dir, device=device, compute_type=compute_type or "default",
                                      check_manifest=check_manifest, parallel_batches=parallel_batches)


class CTranslate2Translator(Translator):
    """A `Translator` whose searches run in CTranslate2 (the module docstring says how each option maps)."""

    backend = "ctranslate2"

    def __init__(self, engine, export_dir: Path, export_info: dict, tokenizer: Tokenizer, config,
                 description: ModelDescription, compute_type: str) -> None:
        self.engine = engine  # ctranslate2.Translator
        self.export_dir, self.export_info, self.compute_type = export_dir, export_info, compute_type
        self.model = None  # no torch model: `describe`, `device` and `translate` answer without one (nor traces)
        self.tokenizer, self.config, self.mixed_precision, self.quantization = tokenizer, config, "none", "none"
        self._description = description
        pieces = tokenizer.target_pieces(list(range(tokenizer.tgt_vocab_size)))
        self._target_ids = {piece: index for index, piece in enumerate(pieces)}

    @classmethod
    def load(cls, model_dir: str | Path, device: str = "auto", compute_type: str = "default",
             export_dir: str | Path | None = None, check_manifest: bool = True, threads: int | None = None,
             parallel_batches: int | None = None) -> "CTranslate2Translator":
        """The model directory's CTranslate2 export (`choose_export`, or `export_dir`), checked to be made from the
        directory's files as they are (`attnmt.export.check_export`: a stale export is a `CheckpointError`), on
        `device` with `compute_type` (float32, int8, int8_float32, ...: `ctranslate2.get_supported_compute_types`).
        `threads`: the CPU threads CTranslate2 may use (default torch's thread count, to compare like with like),
        `parallel_batches` of them decoded at once (default one per thread; the module docstring)."""
        model_dir = Path(model_dir)
        if compute_type not in COMPUTE_TYPES:
            raise AttnmtError(f"compute_type {compute_type!r}: choose one of {', '.join(COMPUTE_TYPES)}")
        if not (model_dir / checkpoint.CONFIG_FILE).is_file():
            raise CheckpointError(f"{model_dir} is not an attnmt model directory: {checkpoint.CONFIG_FILE} is missing")
        if check_manifest:
            manifest.check(model_dir)
        export_dir = choose_export(model_dir, compute_type) if export_dir is None else Path(export_dir)
        info = check_export(export_dir, model_dir)
        config = load_config(model_dir / checkpoint.CONFIG_FILE)
        tokenizer = Tokenizer.load(model_dir)
        ctranslate2 = import_ctranslate2()
        kind, index = _ct2_device(device)
        supported = ctranslate2.get_supported_compute_types(kind, index)
        if compute_type not in ("default", "auto") and compute_type not in supported:
            raise AttnmtError(f"compute_type {compute_type!r} does not run on this {kind} (CTranslate2 supports "
                              f"{', '.join(sorted(supported))} here); choose one of those")
        inter_threads, intra_threads = ctranslate2_threads(threads or torch.get_num_threads(), parallel_batches,
                                                           kind)
        try:
            engine = ctranslate2.Translator(str(export_dir), device=kind, device_index=index,
                                            compute_type=compute_type, inter_threads=inter_threads,
                                            intra_threads=intra_threads)
        except (RuntimeError, ValueError) as error:
            raise CheckpointError(f"{export_dir}: CTranslate2 cannot load it ({error}); export again with "
                                  f"`attnmt export {model_dir} --to ctranslate2`") from None
        return cls(engine, export_dir, info, tokenizer, config, _description(config, tokenizer), compute_type)

    @property
    def device(self) -> torch.device:
        return torch.device(self.engine.device, self.engine.device_index[0]) if self.engine.device == "cuda" \
            else torch.device("cpu")

    def describe(self) -> ModelDescription:
        return self._description

    def score(self, sources, references, batch_size=None, max_source_tokens=None):
        raise AttnmtError("the CTranslate2 backend translates only; score references with the PyTorch backend "
                          "(leave out --backend, or backend=\"torch\")")

    def _check_positions(self, source_lengths: list[int], limits: list[int]) -> None:
        """Every source, and every translation + BOS, within the export's position tables; else an error saying how
        to export longer ones."""
        rows = self.export_info["positions"]
        longest = max([*source_lengths, *(limit + 1 for limit in limits)], default=0)
        if longest > rows:
            raise AttnmtError(f"a source of {max(source_lengths)} subwords may translate into {max(limits)}: more "
                              f"than the {rows} positions exported to {self.export_dir}; export with more "
                              f"(`attnmt export MODEL_DIR --to ctranslate2 --positions {longest}`) or translate "
                              f"shorter texts")

    def translate(self, sentences: list[str], beam_size: int | None = None, n_best: int | None = None,
                  length_penalty: float | None = None, max_length_ratio: float | None = None,
                  batch_size: int | None = None, attention: bool = True, max_source_tokens: int | None = None,
                  prefix: str | Sequence[str] | None = None, min_length: int | None = None,
                  no_repeat_ngram_size: int | None = None, sampling: bool | None = None, top_k: int | None = None,
                  top_p: float | None = None, temperature: float | None = None, seed: int | None = None
                  ) -> list[Translation]:
        """`Translator.translate`, decoded by CTranslate2 (the module docstring maps each option)."""
        search, source_ids, prefix_ids = self._prepare(
            sentences, max_source_tokens, prefix, beam_size=beam_size, n_best=n_best, length_penalty=length_penalty,
            max_length_ratio=max_length_ratio, batch_size=batch_size, min_length=min_length,
            no_repeat_ngram_size=no_repeat_ngram_size, sampling=sampling, top_k=top_k, top_p=top_p,
            temperature=temperature, seed=seed)
        kept = [i for i, ids in enumerate(source_ids) if ids]
        limits = max_output_lengths(torch.tensor([len(source_ids[i]) for i in kept], dtype=torch.long),
                                    search.max_length_ratio,
                                    torch.tensor([len(prefix_ids[i]) for i in kept], dtype=torch.long)).tolist()
        self._check_positions([len(source_ids[i]) for i in kept], limits)
        if search.sampling and search.seed is not None:
            import_ctranslate2().set_random_seed(search.seed)
        results: list[Translation | None] = [None] * len(sentences)
        alpha = search.length_penalty if search.beam_size > 1 else 0.0  # greedy search: score = log_prob
        outputs = self._search([self.tokenizer.source_pieces(source_ids[i]) for i in kept],
                               target_prefix=[self.tokenizer.target_pieces(prefix_ids[i]) or None for i in kept],
                               max_batch_size=search.batch_size, beam_size=search.beam_size,
                               num_hypotheses=search.n_best, length_penalty=alpha,
                               max_decoding_length=max(limits, default=0) + 1,
                               min_decoding_length=search.min_length,
                               no_repeat_ngram_size=search.no_repeat_ngram_size,
                               sampling_topk=search.top_k if search.sampling else 1, sampling_topp=search.top_p,
                               sampling_temperature=search.temperature if search.sampling else 1.0,
                               max_input_length=0, return_scores=True, return_attention=attention,
                               return_end_token=True) if kept else []
        for i, limit, output in zip(kept, limits, outputs):
            translations = [self._translation_of(output, k, source_ids[i], limit, alpha, attention)
                            for k in range(len(output.hypotheses))]
            translations.sort(key=lambda t: t.score, reverse=True)
            best = translations[0]
            best.n_best = translations
            results[i] = best
        return [result if result is not None else self._empty_translation(attention) for result in results]

    def _search(self, source_pieces: list[list[str]], **options) -> list:
        """One `ctranslate2.Translator.translate_batch` call: the search itself (what a benchmark times)."""
        return self.engine.translate_batch(source_pieces, **options)

    def _log_prob(self, source_pieces: list[str], target_pieces: list[str]) -> float:
        """log p(y EOS | x) = Σ_t log p(y_t | y_<t, x), teacher forced by CTranslate2."""
        scored = self.engine.score_batch([source_pieces], [target_pieces], max_input_length=0)[0]
        return float(sum(scored.log_probs))  # EOS included

    def _translation_of(self, output, k: int, source_ids: list[int], limit: int, alpha: float, attention: bool
                        ) -> Translation:
        """Hypothesis k of a CTranslate2 result as a `Translation`: cut at `limit` subwords (attnmt's search ends a
        hypothesis there), `log_prob` = Σ log p (CTranslate2's score × its length penalty |y|^α, EOS counted), and
        `score` = log_prob / lp(|y| + 1), attnmt's ranking rule."""
        pieces = list(output.hypotheses[k])
        if pieces and pieces[-1] == EOS_PIECE and len(pieces) <= limit + 1:
            steps = len(pieces)  # what CTranslate2 normalized by: its tokens, EOS included
            log_prob = output.scores[k] * steps ** alpha
            pieces = pieces[:-1]
        else:  # cut at the limit: attnmt's search ends it there with EOS, whose log p counts
            pieces = pieces[:limit]
            log_prob = self._log_prob(self.tokenizer.source_pieces(source_ids), pieces)
        ids = [self._target_ids[piece] for piece in pieces]
        heads = None
        if attention:
            rows = np.asarray(output.attention[k], dtype=np.float32).reshape(-1, len(source_ids))  # [T', S]
            heads = rows[:len(ids) + 1][None, None]  # [1, 1, T + 1, S]
        return Translation(text=self.tokenizer.decode_target(ids), tokens=pieces,
                           source_tokens=self.tokenizer.source_pieces(source_ids), attention_heads=heads,
                           score=log_prob / length_penalty(len(ids) + 1, alpha), log_prob=log_prob)
