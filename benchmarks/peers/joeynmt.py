"""JoeyNMT 2.3.0: one YAML config per run, pre-segmented pieces read at word level (split on spaces), one joint
vocabulary file so that the Transformer can share its embeddings.

Run inside its environment as `python -m joeynmt train|translate CONFIG`; here through hooks.py with the entry
point `joeynmt.__main__:main`.
"""

from __future__ import annotations

import yaml

from common import MATCHED, DecodeJob, TrainJob, ensure_venv, mark_setup_done, pip, setup_done
from system import System

RECIPE = "torch==2.13.0; joeynmt==2.3.0 importlib_metadata"
NEVER = 10 ** 8  # validation_freq: a multiple of logging_freq that no run reaches


class JoeyNMT(System):
    name, label, package = "joeynmt", "JoeyNMT", "joeynmt"
    mapping = {
        "vocabulary": "`voc_file`: the joint piece list; `level: word` on pieces",
        "batch of 3000 tokens": "`batch_type: token`: a batch closes at sentences × (longest side + 1) ≥ 3000; "
                                "random order, no length grouping",
        "learning rate (RNN / Transformer)": "`exponential` with `decrease_factor: 1.0` / "
                                             "`warmupinversesquareroot`, peak 1e-3, warmup 500",
        "loss normalization": "`normalization: tokens`",
        "timed step": "`TrainManager._train_step` (`batch.ntokens`)",
        "end of the budget": "hook raises KeyboardInterrupt; JoeyNMT saves `latest.ckpt`",
        "output limit": "1.5 × longest source of the batch (its default; no a·x + b)",
        "beam length penalty": "`beam_alpha: 1.0` = ((5 + n) / 6)^1",
        "greedy": "`beam_size: 1`: its greedy search",
    }
    arch_notes = {"rnn": "Luong-style decoder (query s_t), additive score with a 512-wide layer (JoeyNMT sizes it to "
                         "the decoder), no input feeding; teacher forcing runs step by step",
                  "transformer": "pre-norm, shared + tied embeddings; decoding recomputes every prefix (no "
                                 "key/value cache)"}

    def setup(self) -> None:
        if setup_done(self.name, RECIPE):
            return
        python = ensure_venv(self.name)
        # importlib_metadata is imported by joeynmt but not declared as a dependency.
        pip(python, "install", "-q", "joeynmt==2.3.0", "importlib_metadata")
        mark_setup_done(self.name, RECIPE)

    # ---- configs -------------------------------------------------------------------------------------------------

    @staticmethod
    def model_section(job: TrainJob) -> dict:
        arch = job.arch
        if arch.name == "rnn":
            return {
                "initializer": "xavier_uniform", "bias_initializer": "zeros", "init_gain": 1.0,
                "embed_initializer": "normal", "embed_init_weight": 0.1,
                "tied_embeddings": False, "tied_softmax": False,
                "encoder": {"type": "recurrent", "rnn_type": "gru", "num_layers": 1, "bidirectional": True,
                            "hidden_size": arch.encoder_hidden_per_direction,  # per direction in JoeyNMT
                            "embeddings": {"embedding_dim": arch.embedding_size, "dropout": arch.dropout},
                            "dropout": arch.dropout},
                "decoder": {"type": "recurrent", "rnn_type": "gru", "num_layers": 1,
                            "hidden_size": arch.decoder_hidden, "attention": "bahdanau",
                            "input_feeding": False, "init_hidden": "bridge",
                            "embeddings": {"embedding_dim": arch.embedding_size, "dropout": arch.dropout},
                            "dropout": arch.dropout, "hidden_dropout": arch.dropout},
            }
        side = {"type": "transformer", "num_layers": arch.layers, "num_heads": arch.heads,
                "hidden_size": arch.d_model, "ff_size": arch.feed_forward, "dropout": arch.dropout,
                "layer_norm": "pre",
                "embeddings": {"embedding_dim": arch.d_model, "scale": True, "dropout": arch.dropout}}
        return {"initializer": "xavier_uniform", "embed_initializer": "xavier_uniform", "bias_initializer": "zeros",
                "init_gain": 1.0, "tied_embeddings": True, "tied_softmax": True,
                "encoder": dict(side), "decoder": dict(side)}

    def config(self, job: TrainJob) -> dict:
        arch, data = job.arch, job.data
        side = {"level": "word", "lowercase": False, "normalize": False,  # the text is already pieces
                "max_length": MATCHED.max_length, "min_length": 1, "voc_file": str(data.vocab_list),
                "tokenizer_type": "sentencepiece"}
        training = {
            "optimizer": "adam", "adam_betas": list(arch.adam_betas), "learning_rate": arch.learning_rate,
            "learning_rate_min": 1.0e-9, "weight_decay": 0.0, "clip_grad_norm": MATCHED.clip_grad_norm,
            "label_smoothing": MATCHED.label_smoothing, "normalization": "tokens",
            "batch_size": MATCHED.batch_tokens, "batch_type": "token", "batch_multiplier": 1,
            "epochs": 100000, "validation_freq": NEVER, "logging_freq": 100, "early_stopping_metric": "loss",
            "keep_best_ckpts": 1, "print_valid_sents": [], "shuffle": True, "use_cuda": False, "fp16": False,
            "overwrite": False, "num_workers": 0,
        }
        if arch.warmup_steps:  # linear warmup to the peak, then peak · sqrt(warmup / step): the same curve as attnmt's
            training.update({"scheduling": "warmupinversesquareroot", "learning_rate_peak": arch.learning_rate,
                             "learning_rate_warmup": arch.warmup_steps})
        else:  # constant: no schedule raises "Invalid scheduler", and `plateau` crashes on torch 2.13
            training.update({"scheduling": "exponential", "decrease_factor": 1.0})
        return {
            "name": f"peers_{arch.name}", "joeynmt_version": "2.3.0", "model_dir": str(job.work / "model"),
            "use_cuda": False, "fp16": False, "random_seed": job.seed,
            "data": {"train": str(data.root / "train.sp"), "dev": str(data.root / "val.sp"),
                     "dataset_type": "plain",
                     "src": {"lang": "de", **side}, "trg": {"lang": "en", **side},
                     "special_symbols": {"unk_token": "<unk>", "unk_id": 0, "pad_token": "<pad>", "pad_id": 1,
                                         "bos_token": "<s>", "bos_id": 2, "eos_token": "</s>", "eos_id": 3}},
            "testing": {"batch_size": MATCHED.decode_batch_sentences, "batch_type": "sentence", "beam_size": 1,
                        "beam_alpha": 1.0, "eval_metrics": ["bleu"], "max_output_length": -1,
                        "return_prob": "none", "generate_unk": True},
            "training": training,
            "model": self.model_section(job),
        }

    # ---- commands ------------------------------------------------------------------------------------------------

    def train_command(self, job: TrainJob) -> list[str]:
        path = job.work / "joeynmt.yaml"
        path.write_text(yaml.safe_dump(self.config(job), sort_keys=False), encoding="utf-8")
        return self.hook("train", job, job.step_log, ["joeynmt.__main__:main", "train", str(path), "--skip-test"])

    def decode_command(self, job: DecodeJob) -> list[str]:
        config = self.config(job.train)
        # max_output_length -1: JoeyNMT's own limit, 1.5 × the longest source of the batch (it has no a·x + b).
        config["testing"].update({"beam_size": job.beam, "load_model": str(job.train.work / "model" / "latest.ckpt")})
        path = job.output.with_suffix(".yaml")
        path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        # stdout, not `-o FILE`: JoeyNMT 2.3.0's translate fails writing a file ('BaseConfig' has no n_best)
        cli = ["joeynmt.__main__:main", "translate", str(path)]
        return self.hook("decode", job.train, job.time_log, cli,
                         ["--stdin", str(job.source_pieces), "--stdout", str(job.output)])
