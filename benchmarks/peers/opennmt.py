"""OpenNMT-py 3.5.1: one YAML config per run (`onmt_train -config`), pre-segmented pieces, the joint vocabulary as
its vocabulary file with `share_vocab`.

Entry points through hooks.py: `onmt.bin.train:main`, `onmt.bin.translate:main`.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from common import (MATCHED, Arch, DecodeJob, TrainJob, ensure_venv, inverse_sqrt_noam_factor, mark_setup_done, pip,
                    setup_done)
from system import System

DEPENDENCIES = ["configargparse", "ctranslate2", "tensorboard", "flask", "waitress", "pyonmttok", "pyyaml",
                "sacrebleu", "rapidfuzz", "pyahocorasick", "six", "numpy", "spacy", "fasttext-wheel"]
RECIPE = "torch==2.13.0; --no-deps OpenNMT-py==3.5.1; " + " ".join(DEPENDENCIES)
NEVER = 10 ** 9
RELABEL = """import sys, torch
checkpoint = torch.load(sys.argv[1], map_location="cpu", weights_only=False)
if checkpoint["opt"].self_attn_type == "scaled-dot-flash":
    checkpoint["opt"].self_attn_type = "scaled-dot"
torch.save(checkpoint, sys.argv[2])
"""


class OpenNMT(System):
    name, label, package = "opennmt", "OpenNMT-py", "OpenNMT-py"
    mapping = {
        "vocabulary": "`src_vocab` = `tgt_vocab` = the joint counts, `share_vocab`",
        "batch of 3000 tokens": "`batch_type: tokens`: sentences × longest side (+BOS/EOS) ≤ 3000, from "
                                "length-sorted buckets of 20,000",
        "learning rate (RNN / Transformer)": "`decay_method: none` / `noam`, `learning_rate` 0.358 "
                                             "(= 1e-3 · √256 · √500), warmup 500",
        "loss normalization": "`normalization: tokens`",
        "timed step": "`Trainer._gradient_accumulation` (`n_words`)",
        "end of the budget": "hook calls its model saver, then exits",
        "output limit": "`-max_length 130` (= 2 × 60 + 10; no a·x + b)",
        "beam length penalty": "`-length_penalty wu -alpha 1` = ((5 + n) / 6)^1",
        "greedy": "`-beam_size 1`: its greedy search",
    }
    arch_notes = {"rnn": "brnn GRU (its encoder size 512 = 256 per direction), `mlp` attention (512 wide), "
                         "`input_feed: 0` (Luong-style, as attnmt)",
                  "transformer": "pre-norm, shared + tied embeddings"}

    def setup(self) -> None:
        if setup_done(self.name, RECIPE):
            return
        python = ensure_venv(self.name)
        # Its declared requirements pin torch<2.3; install it alone, then what it imports (spacy included: onmt's
        # transforms import it at start-up).
        pip(python, "install", "-q", "--no-deps", "OpenNMT-py==3.5.1")
        pip(python, "install", "-q", *DEPENDENCIES)
        mark_setup_done(self.name, RECIPE)

    def config(self, job: TrainJob) -> dict:
        arch, data = job.arch, job.data
        config = {
            "save_data": str(job.work / "onmt"),
            "src_vocab": str(data.vocab_counts), "tgt_vocab": str(data.vocab_counts), "share_vocab": True,
            "src_vocab_size": 100000, "tgt_vocab_size": 100000, "src_words_min_frequency": 0,
            "tgt_words_min_frequency": 0,
            "data": {"corpus_1": {"path_src": str(data.pieces("train", "de")),
                                  "path_tgt": str(data.pieces("train", "en"))},
                     "valid": {"path_src": str(data.pieces("val", "de")), "path_tgt": str(data.pieces("val", "en"))}},
            "save_model": str(job.work / "model" / "model"),
            "seed": job.seed, "world_size": 1, "gpu_ranks": [],
            # batching: sentences × longest side (padded) ≤ batch_size, from length-sorted buckets; 20k examples a
            # bucket (the default uses 2.3 GB and a slow start), and no DataLoader worker processes
            "batch_type": "tokens", "batch_size": MATCHED.batch_tokens, "batch_size_multiple": 1,
            "bucket_size": 20000, "num_workers": 0, "normalization": "tokens", "accum_count": [1],
            "optim": "adam", "adam_beta1": arch.adam_betas[0], "adam_beta2": arch.adam_betas[1],
            "max_grad_norm": MATCHED.clip_grad_norm, "label_smoothing": MATCHED.label_smoothing,
            "dropout": [arch.dropout], "train_steps": NEVER, "valid_steps": NEVER, "save_checkpoint_steps": 0,
            "report_every": 100, "param_init": 0.0, "param_init_glorot": True,
        }
        if arch.warmup_steps:
            # noam: factor · d^-0.5 · min(step^-0.5, step · warmup^-1.5), attnmt's inverse_sqrt for this factor
            config.update({"decay_method": "noam", "warmup_steps": arch.warmup_steps,
                           "learning_rate": inverse_sqrt_noam_factor(arch)})
        else:
            config.update({"decay_method": "none", "learning_rate": arch.learning_rate, "learning_rate_decay": 1.0,
                           "start_decay_steps": NEVER})
        if arch.name == "rnn":
            config.update({
                "encoder_type": "brnn", "decoder_type": "rnn", "rnn_type": "GRU", "enc_layers": 1, "dec_layers": 1,
                # brnn halves the encoder size per direction, and the encoder size must equal the decoder's
                "enc_hid_size": 2 * arch.encoder_hidden_per_direction, "dec_hid_size": arch.decoder_hidden,
                "word_vec_size": arch.embedding_size, "global_attention": "mlp", "input_feed": 0, "bridge": True,
                "share_embeddings": False, "share_decoder_embeddings": False})
        else:
            config.update({
                "encoder_type": "transformer", "decoder_type": "transformer", "enc_layers": arch.layers,
                "dec_layers": arch.layers, "hidden_size": arch.d_model, "word_vec_size": arch.d_model,
                "heads": arch.heads, "transformer_ff": arch.feed_forward, "attention_dropout": [arch.attention_dropout],
                "position_encoding": True, "share_embeddings": True, "share_decoder_embeddings": True})
        return config

    def train_command(self, job: TrainJob) -> list[str]:
        (job.work / "model").mkdir(parents=True, exist_ok=True)
        path = job.work / "opennmt.yaml"
        path.write_text(yaml.safe_dump(self.config(job), sort_keys=False), encoding="utf-8")
        return self.hook("train", job, job.step_log, ["onmt.bin.train:main", "-config", str(path)])

    @staticmethod
    def checkpoint(job: TrainJob) -> Path:
        found = sorted((job.work / "model").glob("model_step_*.pt"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
        if not found:
            raise FileNotFoundError(f"no OpenNMT-py checkpoint in {job.work / 'model'}")
        return found[-1]

    def decode_variants(self, arch: Arch) -> dict[str, str]:
        variants = super().decode_variants(arch)
        if arch.name == "transformer":  # CTranslate2 converts OpenNMT-py's Transformers, not its RNNs
            variants.update({"ct2-float32": "OpenNMT-py → CTranslate2 float32 (its own converter)",
                             "ct2-int8": "OpenNMT-py → CTranslate2 int8 (its own converter)"})
        return variants

    @staticmethod
    def converted(job: TrainJob, variant: str) -> Path:
        return job.work / f"ctranslate2-{variant.removeprefix('ct2-')}"

    def prepare_variant(self, job: TrainJob, variant: str) -> None:
        """CTranslate2's own OpenNMT-py converter (in OpenNMT-py's environment), once per checkpoint. OpenNMT-py
        3.5 trains with `self_attn_type: scaled-dot-flash` (torch's fused attention), which the converter refuses;
        it computes the same attention as `scaled-dot`, so a copy of the checkpoint says scaled-dot. The
        checkpoints are pickles: `--unsafe_deserialization` for the one this benchmark trained itself."""
        if not variant.startswith("ct2-") or self.converted(job, variant).is_dir():
            return
        relabelled = job.work / "model-for-ctranslate2.pt"
        if not relabelled.exists():
            subprocess.run([str(job.python), "-c", RELABEL, str(self.checkpoint(job)), str(relabelled)], check=True,
                           capture_output=True)
        subprocess.run([str(job.python), "-m", "ctranslate2.converters.opennmt_py", "--model_path", str(relabelled),
                        "--unsafe_deserialization", "--output_dir", str(self.converted(job, variant)),
                        "--quantization", variant.removeprefix("ct2-")], check=True, capture_output=True)

    def decode_command(self, job: DecodeJob) -> list[str]:
        # OpenNMT-py has one fixed output limit (no a · source length + b): 2 · 60 + 10, the longest any source
        # allows in attnmt; length penalty `wu` with alpha 1 is attnmt's ((5 + n) / 6)^1. CTranslate2 divides by
        # length^1 instead (its only form).
        max_length = str(int(MATCHED.max_len_a * MATCHED.max_length + MATCHED.max_len_b))
        if job.variant.startswith("ct2-"):
            from attnmt.backends import ctranslate2_threads
            inter_threads, intra_threads = ctranslate2_threads(MATCHED.threads)  # as attnmt's backend lays them out
            cli = ["__main__:ct2_translate", str(self.converted(job.train, job.variant)), str(job.source_pieces),
                   str(job.output), "--beam", str(job.beam), "--batch-size", str(MATCHED.decode_batch_sentences),
                   "--max-length", max_length, "--inter-threads", str(inter_threads),
                   "--intra-threads", str(intra_threads)]
            return self.hook("decode", job.train, job.time_log, cli, hook_system="ctranslate2")
        cli = ["onmt.bin.translate:main", "-model", str(self.checkpoint(job.train)), "-src", str(job.source_pieces),
               "-output", str(job.output), "-gpu", "-1", "-batch_size", str(MATCHED.decode_batch_sentences),
               "-batch_type", "sents", "-beam_size", str(job.beam), "-length_penalty", "wu", "-alpha", "1.0",
               "-max_length", max_length, "-seed", str(job.train.seed)]
        return self.hook("decode", job.train, job.time_log, cli)
