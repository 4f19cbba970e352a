"""Sockeye 3.1.34: Transformer only (it has no RNN models since version 2), command-line options, pre-segmented
pieces with one shared vocabulary (Sockeye builds it from the training pieces, as it builds the same set as the
joint vocabulary file).

Entry points through hooks.py: `sockeye.train:main`, `sockeye.translate:main`.
"""

from __future__ import annotations

from common import MATCHED, DecodeJob, TrainJob, ensure_venv, mark_setup_done, pip, setup_done
from system import System

RECIPE = "torch==2.13.0; --no-deps sockeye==3.1.34; pyyaml numpy<2.0.0 sacrebleu"
NEVER = 10 ** 9


class Sockeye(System):
    name, label, package = "sockeye", "Sockeye", "sockeye"
    unsupported = {"rnn": "Sockeye has no RNN (Transformer only since Sockeye 2)"}
    mapping = {
        "vocabulary": "`--shared-vocab`, built by Sockeye from the training pieces (the same set)",
        "batch of 3000 tokens": "`--batch-type max-word`: 3000 ÷ the bucket's padded target length sentences "
                                "(buckets 8 wide)",
        "learning rate (RNN / Transformer)": "— / `inv-sqrt-decay`, initial rate 0.0224 (= 1e-3 · √500), "
                                             "warmup 500",
        "loss normalization": "per target token (its default)",
        "timed step": "`EarlyStoppingTrainer._step` (`target_length`)",
        "end of the budget": "hook sets `max_updates`; Sockeye checkpoints (dev perplexity, `params.best`)",
        "output limit": "its own: training length ratio, mean + 2 s.d.",
        "beam length penalty": "`--length-penalty-alpha 1 --length-penalty-beta 5` = ((5 + n) / 6)^1",
        "greedy": "`--beam-size 1`: its beam search with one beam (its `--greedy` cannot batch)",
    }
    arch_notes = {"transformer": "pre-norm (`n` / `dr`), source, target and output embeddings tied"}

    def setup(self) -> None:
        if setup_done(self.name, RECIPE):
            return
        python = ensure_venv(self.name)
        # Its requirements pin versions that would replace torch; it needs only these besides torch.
        pip(python, "install", "-q", "--no-deps", "sockeye==3.1.34")
        pip(python, "install", "-q", "pyyaml", "numpy<2.0.0", "sacrebleu")
        mark_setup_done(self.name, RECIPE)

    def train_command(self, job: TrainJob) -> list[str]:
        arch, data = job.arch, job.data
        # inv-sqrt-decay is base · min(1, t / warmup) / sqrt(max(t, warmup)): base = peak · sqrt(warmup) gives
        # attnmt's curve
        base_lr = arch.learning_rate * arch.warmup_steps ** 0.5
        cli = ["sockeye.train:main",
               "--source", str(data.pieces("train", "de")), "--target", str(data.pieces("train", "en")),
               "--validation-source", str(data.pieces("val", "de")),
               "--validation-target", str(data.pieces("val", "en")),
               "--output", str(job.work / "model"), "--shared-vocab", "--use-cpu", "--seed", str(job.seed),
               "--max-seq-len", f"{MATCHED.max_length}:{MATCHED.max_length}",
               "--encoder", "transformer", "--decoder", "transformer", "--num-layers", f"{arch.layers}:{arch.layers}",
               "--transformer-model-size", str(arch.d_model), "--num-embed", f"{arch.d_model}:{arch.d_model}",
               "--transformer-attention-heads", f"{arch.heads}:{arch.heads}",
               "--transformer-feed-forward-num-hidden", f"{arch.feed_forward}:{arch.feed_forward}",
               "--transformer-preprocess", "n:n", "--transformer-postprocess", "dr:dr",
               "--transformer-dropout-attention", f"{arch.attention_dropout}:{arch.attention_dropout}",
               "--transformer-dropout-act", f"{arch.dropout}:{arch.dropout}",
               "--transformer-dropout-prepost", f"{arch.dropout}:{arch.dropout}",
               "--embed-dropout", f"{arch.dropout}:{arch.dropout}", "--weight-tying-type", "src_trg_softmax",
               # batches: as many sentences as fit max-word target tokens at the bucket's padded target length
               "--batch-type", "max-word", "--batch-size", str(MATCHED.batch_tokens),
               "--batch-sentences-multiple-of", "1", "--update-interval", "1",
               "--optimizer", "adam", "--optimizer-betas", f"{arch.adam_betas[0]}:{arch.adam_betas[1]}",
               "--initial-learning-rate", str(base_lr), "--learning-rate-scheduler-type", "inv-sqrt-decay",
               "--learning-rate-warmup", str(arch.warmup_steps),
               "--label-smoothing", str(MATCHED.label_smoothing), "--gradient-clipping-type", "norm",
               "--gradient-clipping-threshold", str(MATCHED.clip_grad_norm),
               # no checkpoint (dev evaluation, saving) before the end, no checkpoint decoding
               "--checkpoint-interval", str(NEVER), "--decode-and-evaluate", "0", "--max-updates", str(NEVER),
               "--keep-last-params", "1"]
        return self.hook("train", job, job.step_log, cli)

    def decode_command(self, job: DecodeJob) -> list[str]:
        # length penalty ((5 + n) / 6)^1 as attnmt (alpha 1, beta 5); Sockeye's own output limit (from the
        # length-ratio statistics of the training data: mean + 2 standard deviations).
        cli = ["sockeye.translate:main", "--models", str(job.train.work / "model"), "--input", str(job.source_pieces),
               "--output", str(job.output), "--use-cpu", "--batch-size", str(MATCHED.decode_batch_sentences),
               "--beam-size", str(job.beam), "--length-penalty-alpha", "1.0", "--length-penalty-beta", "5.0",
               "--output-type", "translation", "--seed", str(job.train.seed)]
        return self.hook("decode", job.train, job.time_log, cli)
