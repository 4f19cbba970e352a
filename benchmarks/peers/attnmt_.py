"""attnmt itself, from the environment `run.py` runs in (the repository's venv): the shipped Multi30k configs with the
matched settings written over them, and the same sentencepiece model as every peer (`tokenizer.src_model`).

`attnmt-bf16` is the same with `training.mixed_precision: bf16`: the matrix products of training in bfloat16 under
torch.autocast (weights, optimizer state and loss stay float32; translation is float32). It is not a matched setting
(every peer trains in float32 here); its row shows what the option buys on a CPU with bfloat16 instructions."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from common import MATCHED, ROOT, Arch, DecodeJob, TrainJob
from system import System

CONFIGS = {"rnn": ROOT / "attnmt" / "configs" / "multi30k_de_en_rnn.yaml",
           "transformer": ROOT / "attnmt" / "configs" / "multi30k_de_en_transformer.yaml"}
NEVER = 10 ** 9  # a step count no run reaches: validation, logging and the step limit stay out of the way
CTRANSLATE2_ARCHS = ("transformer",)  # CTranslate2 has Transformer models only


class Attnmt(System):
    name, label, package = "attnmt", "attnmt", "attnmt"
    wants_pieces = False  # reads raw text and writes detokenized text, through the same sentencepiece model
    mapping = {
        "vocabulary": "the sentencepiece model itself (`tokenizer.src_model`)",
        "batch of 3000 tokens": "`batch_tokens`: sentences × longest side (+EOS) ≤ 3000, length-sorted",
        "learning rate (RNN / Transformer)": "`constant` / `inverse_sqrt`, `warmup_steps` 500",
        "loss normalization": "per target token",
        "timed step": "`Trainer.train_step`",
        "end of the budget": "hook sets `max_steps`; attnmt validates once and saves",
        "output limit": "2 × source + 10",
        "beam length penalty": "((5 + n) / 6)^1",
        "greedy": "its batched greedy search",
    }
    arch_notes = {"rnn": "Luong-style decoder (query s_t), additive score with a 256-wide layer, no input feeding; "
                         "teacher forcing runs the decoder GRU over all positions at once; dropout on the embeddings "
                         "and the decoder output, as OpenNMT-py places it (`encoder_state_dropout: false`)",
                  "transformer": "pre-norm, shared + tied embeddings"}

    def python(self) -> Path:
        return Path(sys.executable)

    def setup(self) -> None:
        """Nothing to install: attnmt runs from the environment this benchmark runs in."""

    def version(self) -> str | None:
        from importlib.metadata import version
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "attnmt"], cwd=ROOT, capture_output=True,
                               text=True).stdout.strip()
        return f"{version('attnmt')} ({commit}{' + local changes' if dirty else ''})"

    def config(self, job: TrainJob) -> dict:
        """The shipped config of the architecture, with the data, tokenizer and matched settings set."""
        arch, data = job.arch, job.data
        config = yaml.safe_load(CONFIGS[arch.name].read_text(encoding="utf-8"))
        config["name"] = f"peers_{arch.name}"
        config["model_dir"] = str(job.work / "model")
        config["data"].update({
            "train": {"src": str(data.raw("train", "de")), "tgt": str(data.raw("train", "en"))},
            "dev": {"src": str(data.raw("val", "de")), "tgt": str(data.raw("val", "en"))},
            "test": {"src": str(data.raw("test2016", "de")), "tgt": str(data.raw("test2016", "en"))},
            "max_length": MATCHED.max_length})
        config["tokenizer"] = {"joint": True, "vocab_size": MATCHED.vocab_size, "model_type": "unigram",
                               "src_model": str(data.spm_model)}
        model = config["model"]
        model["dropout"] = arch.dropout
        if arch.name == "rnn":
            model.update({"embedding_size": arch.embedding_size,
                          "encoder_hidden_size": arch.encoder_hidden_per_direction,
                          "hidden_size": arch.decoder_hidden, "bidirectional": True, "encoder_state_dropout": False,
                          "attention": {"score": "additive", "hidden_size": arch.attention_hidden}})
        else:
            model.update({"encoder_layers": arch.layers, "decoder_layers": arch.layers, "hidden_size": arch.d_model,
                          "heads": arch.heads, "feed_forward_size": arch.feed_forward,
                          "attention_dropout": arch.attention_dropout})
        training = config["training"]
        for key in ("max_minutes", "max_epochs", "plateau_patience", "plateau_factor"):
            training.pop(key, None)
        training.update({
            "seed": job.seed, "batch_tokens": MATCHED.batch_tokens, "max_steps": NEVER,
            "learning_rate": arch.learning_rate, "adam_betas": list(arch.adam_betas),
            "schedule": "inverse_sqrt" if arch.warmup_steps else "constant", "warmup_steps": arch.warmup_steps,
            "label_smoothing": MATCHED.label_smoothing, "clip_grad_norm": MATCHED.clip_grad_norm,
            "validate_every": NEVER, "log_every": 100, "tensorboard": False, "threads": MATCHED.threads})
        config["search"].update({"beam_size": MATCHED.beam_size, "length_penalty": 1.0,
                                 "max_length_ratio": MATCHED.max_len_a, "batch_size": MATCHED.decode_batch_sentences})
        return config

    def train_command(self, job: TrainJob) -> list[str]:
        path = job.work / "attnmt.yaml"
        path.write_text(yaml.safe_dump(self.config(job), sort_keys=False), encoding="utf-8")
        return self.hook("train", job, job.step_log,
                         ["attnmt.cli:main", "train", str(path), "--model-dir", str(job.work / "model"), "--quiet"])

    def decode_variants(self, arch: Arch) -> dict[str, str]:
        variants = {"float32": "attnmt, PyTorch float32", "int8": "attnmt, PyTorch int8 (`--quantization int8`)"}
        if arch.name in CTRANSLATE2_ARCHS:
            variants.update({"ct2-float32": "attnmt → CTranslate2 float32 (`attnmt export`)",
                             "ct2-int8": "attnmt → CTranslate2 int8 (`attnmt export --quantization int8`)"})
        return variants

    def prepare_variant(self, job: TrainJob, variant: str) -> None:
        """A CTranslate2 path reads the model's export: written (or found up to date) by `attnmt export`."""
        if variant.startswith("ct2-"):
            subprocess.run([sys.executable, "-m", "attnmt", "export", str(job.work / "model"), "--to", "ctranslate2",
                            "--quantization", variant.removeprefix("ct2-")], check=True)

    def decode_command(self, job: DecodeJob) -> list[str]:
        # attnmt stops a hypothesis at max_length_ratio · source length + 10 tokens (MATCHED.max_len_b is that 10).
        cli = ["attnmt.cli:main", "translate", str(job.train.work / "model"), "--input", str(job.source_raw),
               "--beam-size", str(job.beam), "--batch-size", str(MATCHED.decode_batch_sentences),
               "--length-penalty", "1.0", "--max-length-ratio", str(MATCHED.max_len_a)]
        if job.variant == "int8":
            cli += ["--quantization", "int8"]
        elif job.variant.startswith("ct2-"):
            cli += ["--backend", "ctranslate2", "--compute-type", job.variant.removeprefix("ct2-")]
        return self.hook("decode", job.train, job.time_log, cli, ["--stdout", str(job.output)])


class AttnmtBF16(Attnmt):
    name, label, hook_name = "attnmt-bf16", "attnmt, bf16 autocast", "attnmt"
    arch_notes = {arch: note + "; training under bf16 autocast (`training.mixed_precision: bf16`)"
                  for arch, note in Attnmt.arch_notes.items()}

    def config(self, job: TrainJob) -> dict:
        config = super().config(job)
        config["training"]["mixed_precision"] = "bf16"
        return config
