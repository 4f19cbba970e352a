"""Training: teacher forcing, label-smoothed cross-entropy, Adam, clipping, schedule, validation, checkpoints, resume.

    loss = − Σ_t Σ_y q(y) log p(y | y*_<t, x) / (number of target tokens)
           q = (1 − ε) one_hot(y*_t) + ε / V                    label smoothing ε
    g ← g · min(1, c / ‖g‖)                                     gradient-norm clipping (exploding gradients, seed 003)
    lr(step) = base · min(1, step / warmup) · decay             decay × factor after `plateau_patience` validations
                                                                without a lower dev loss (constant: decay = 1)
    lr(step) = base · min(step / warmup, √(warmup / step))     schedule: inverse_sqrt (the Transformer's): linear
                                                                warmup to base, then decay as 1/√step

Every `validate_every` steps: dev loss and dev sacreBLEU; the best model by BLEU goes to MODEL_DIR/model.safetensors,
the last step to MODEL_DIR/train_state/ (parameters, optimizer, RNG, schedule and the position in the data), from
which `attnmt train --resume` continues exactly where the run stopped.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from attnmt import checkpoint
from attnmt.config import Config
from attnmt.data import Batch, ParallelData, Tokenizer, drop_empty_pairs, read_corpus, split_by_target
from attnmt.data.tokenizer import PAD_ID
from attnmt.errors import CheckpointError, ConfigError
from attnmt.evaluation import corpus_scores
from attnmt.models import build_model
from attnmt.translator import Translator


@dataclass
class Corpora:
    """The text of each split after reading and cleaning, and what was dropped on the way."""

    train: list[tuple[str, str]]
    dev: list[tuple[str, str]]
    test: list[tuple[str, str]]
    dropped_empty: int


def read_corpora(config: Config) -> Corpora:
    """Read train/dev/test as configured: given files, or dev/test cut from train by target sentence."""
    data = config.data
    train, dropped = drop_empty_pairs(read_corpus(data.train))
    if data.split is not None:
        train, dev, test = split_by_target(train, data.split.dev_size, data.split.test_size, data.split.seed)
    else:
        dev, dropped_dev = drop_empty_pairs(read_corpus(data.dev))
        test, dropped_test = drop_empty_pairs(read_corpus(data.test)) if data.test else ([], 0)
        dropped += dropped_dev + dropped_test
    return Corpora(train, dev, test, dropped)


class LearningRateSchedule:
    """constant, plateau: lr(step) = max(base · min(1, step / warmup) · decay, min_learning_rate), with decay cut by
    `factor` on a dev-loss plateau (plateau only).

    inverse_sqrt: lr(step) = base · min(step / warmup, √(warmup / step)): rises linearly to `base` at step = warmup,
    then falls as 1/√step. With base = d_model^−0.5 · warmup^−0.5 this is Vaswani et al.'s
    d_model^−0.5 · min(step^−0.5, step · warmup^−1.5). No floor: the formula as written.
    """

    def __init__(self, config) -> None:
        self.config = config
        self.decay = 1.0
        self.best_loss = math.inf
        self.bad_validations = 0

    def rate(self, step: int) -> float:
        if self.config.schedule == "inverse_sqrt":
            warmup, step = self.config.warmup_steps, max(step, 1)
            return self.config.learning_rate * min(step / warmup, math.sqrt(warmup / step))
        warmup = min(1.0, step / self.config.warmup_steps) if self.config.warmup_steps else 1.0
        return max(self.config.learning_rate * warmup * self.decay, self.config.min_learning_rate)

    def after_validation(self, dev_loss: float) -> None:
        if self.config.schedule != "plateau":
            return
        if dev_loss < self.best_loss:
            self.best_loss, self.bad_validations = dev_loss, 0
            return
        self.bad_validations += 1
        if self.bad_validations > self.config.plateau_patience:
            self.decay *= self.config.plateau_factor
            self.bad_validations = 0

    def state_dict(self) -> dict:
        return {"decay": self.decay, "best_loss": self.best_loss, "bad_validations": self.bad_validations}

    def load_state_dict(self, state: dict) -> None:
        self.decay, self.best_loss, self.bad_validations = state["decay"], state["best_loss"], state["bad_validations"]


def sequence_loss(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """Summed label-smoothed cross-entropy over real target tokens. logits [B, T, V], targets [B, T]."""
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=PAD_ID,
                           label_smoothing=label_smoothing, reduction="sum")


@dataclass
class Progress:
    """Where training is: saved with every checkpoint so that a resumed run continues from here."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # batches of this epoch already trained on
    target_tokens: int = 0
    seconds: float = 0.0  # training time so far, over all runs of this model directory
    best_bleu: float = -1.0
    best_regular_bleu: float = -1.0  # best of the regular validations only: what early stopping compares with
    validations_without_improvement: int = 0
    stopped_early: bool = False


class Trainer:
    """Holds the model, optimizer, data and progress of one training run."""

    def __init__(self, config: Config, model_dir: Path | None = None, resume: bool = False, show_progress: bool = True):
        self.config = config
        self.settings = config.training
        self.model_dir = Path(model_dir or config.model_dir)
        self.show_progress = show_progress
        if self.settings.threads:
            torch.set_num_threads(self.settings.threads)
        saved = checkpoint.has_train_state(self.model_dir)
        if resume and not saved:
            raise CheckpointError(f"cannot resume: {self.model_dir / checkpoint.TRAIN_STATE} does not exist; "
                                  f"train without --resume first")
        if not resume and saved:
            raise CheckpointError(f"{self.model_dir} already holds a training run; continue it with --resume, "
                                  f"or choose another model directory (nothing was overwritten)")
        torch.manual_seed(self.settings.seed)
        self.corpora = read_corpora(config)
        self.model_dir.mkdir(parents=True, exist_ok=True)
        if resume:
            self.tokenizer = Tokenizer.load(self.model_dir)
        else:
            sources, targets = zip(*self.corpora.train)
            self.tokenizer = Tokenizer.train(config.tokenizer, list(sources), list(targets), self.model_dir)
            checkpoint.write_text(self.model_dir / checkpoint.CONFIG_FILE, config.to_yaml())
        self.train_data, self.dropped_long = ParallelData.from_pairs(self.corpora.train, self.tokenizer,
                                                                    config.data.max_length)
        if len(self.train_data) == 0:
            raise ConfigError(f"no training pair is left after dropping pairs over `data.max_length` "
                              f"({config.data.max_length} subwords); raise it")
        self.dev_data, _ = ParallelData.from_pairs(self.corpora.dev, self.tokenizer, 10 ** 9)
        self.model = build_model(config.model, self.tokenizer.src_vocab_size, self.tokenizer.tgt_vocab_size)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=self.settings.learning_rate,
                                          betas=self.settings.adam_betas, weight_decay=self.settings.weight_decay)
        self.schedule = LearningRateSchedule(self.settings)
        self.progress = Progress()
        if resume:
            saved = checkpoint.load_train_state(self.model_dir, self.model, self.optimizer)
            self.schedule.load_state_dict(saved["schedule"])
            self.progress = Progress(**saved["progress"])
        self.writer = None

    # --- reporting -----------------------------------------------------------------------------------------------

    def data_report(self) -> str:
        c = self.corpora
        return (f"data: {len(self.train_data)} training pairs ({self.dropped_long} dropped over "
                f"{self.config.data.max_length} subwords, {c.dropped_empty} empty pairs dropped), "
                f"{len(c.dev)} dev, {len(c.test)} test; vocabulary {self.tokenizer.src_vocab_size} source / "
                f"{self.tokenizer.tgt_vocab_size} target ({'joint' if self.tokenizer.joint else 'separate'}); "
                f"model {sum(p.numel() for p in self.model.parameters()):,} parameters")

    def _log_scalars(self, values: dict[str, float]) -> None:
        if not self.settings.tensorboard:
            return
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(str(self.model_dir / "tensorboard"))
        for name, value in values.items():
            self.writer.add_scalar(name, value, self.progress.step)

    # --- one step ------------------------------------------------------------------------------------------------

    def train_step(self, batch: Batch) -> float:
        """Forward, backward, clip, update. Returns the loss per target token."""
        self.model.train()
        for group in self.optimizer.param_groups:
            group["lr"] = self.schedule.rate(self.progress.step + 1)
        logits, _ = self.model(batch.src, batch.src_mask, batch.tgt_in)
        loss = sequence_loss(logits, batch.tgt_out, self.settings.label_smoothing) / batch.num_tgt_tokens
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.settings.clip_grad_norm:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.settings.clip_grad_norm)
        self.optimizer.step()
        self.progress.step += 1
        self.progress.target_tokens += batch.num_tgt_tokens
        return float(loss.detach())

    # --- validation ----------------------------------------------------------------------------------------------

    @torch.inference_mode()
    def dev_loss(self) -> float:
        """Cross-entropy per target token on dev, without label smoothing."""
        self.model.eval()
        total, tokens = 0.0, 0
        for indices in self.dev_data.batches(self.settings.batch_tokens, shuffle=False, seed=0):
            batch = self.dev_data.batch(indices)
            logits, _ = self.model(batch.src, batch.src_mask, batch.tgt_in)
            total += float(sequence_loss(logits, batch.tgt_out, 0.0))
            tokens += batch.num_tgt_tokens
        return total / max(tokens, 1)

    def validate(self, drives_schedule: bool = True) -> dict:
        """Dev loss and BLEU; save the model if BLEU improved. Regular validations also drive the schedule and
        early stopping; the one at the very end of a run only saves (so a stopped and resumed run trains the same)."""
        loss = self.dev_loss()
        translator = Translator(self.model, self.tokenizer, self.config)
        sources, references = zip(*self.corpora.dev)
        hypotheses = [r.text for r in translator.translate(list(sources), beam_size=self.settings.validation_beam_size)]
        scores = corpus_scores(hypotheses, list(references))
        improved = scores["bleu"] > self.progress.best_bleu
        if improved:
            self.progress.best_bleu = scores["bleu"]
            checkpoint.save_model(self.model_dir / checkpoint.MODEL_FILE, self.model)
        if drives_schedule:
            self.schedule.after_validation(loss)
            regular_improved = scores["bleu"] > self.progress.best_regular_bleu
            self.progress.best_regular_bleu = max(self.progress.best_regular_bleu, scores["bleu"])
            self.progress.validations_without_improvement = 0 if regular_improved else \
                self.progress.validations_without_improvement + 1
        record = {"step": self.progress.step, "epoch": self.progress.epoch, "dev_loss": round(loss, 4),
                  "dev_bleu": round(scores["bleu"], 2), "dev_chrf": round(scores["chrf"], 2),
                  "learning_rate": self.schedule.rate(self.progress.step), "best": improved,
                  "seconds": round(self.progress.seconds, 1)}
        with open(self.model_dir / "validations.jsonl", "a", encoding="utf-8") as log:
            log.write(json.dumps(record) + "\n")
        self._log_scalars({"dev/loss": loss, "dev/bleu": scores["bleu"], "dev/chrf": scores["chrf"]})
        return record

    def save_state(self) -> None:
        checkpoint.save_train_state(self.model_dir, self.model, self.optimizer,
                                    {"schedule": self.schedule.state_dict(), "progress": asdict(self.progress)})

    # --- the loop ------------------------------------------------------------------------------------------------

    def _out_of_budget(self, run_started: float, seconds_before: float) -> bool:
        s = self.settings
        if s.max_steps is not None and self.progress.step >= s.max_steps:
            return True
        if s.max_epochs is not None and self.progress.epoch >= s.max_epochs:
            return True
        if s.max_minutes is not None and seconds_before + time.perf_counter() - run_started >= s.max_minutes * 60:
            return True
        return self.progress.stopped_early

    def train(self) -> dict:
        """Train until a budget (steps, epochs, minutes) runs out or dev BLEU stops improving."""
        s, p = self.settings, self.progress
        say = tqdm.write if self.show_progress else (lambda _: None)
        say(self.data_report())
        bar = tqdm(total=s.max_steps, initial=p.step, disable=not self.show_progress, unit="step",
                   dynamic_ncols=True, desc="train")
        run_started, seconds_before = time.perf_counter(), p.seconds
        window_tokens, window_started, last_record = 0, time.perf_counter(), None
        while not self._out_of_budget(run_started, seconds_before):
            order = self.train_data.batches(s.batch_tokens, shuffle=True, seed=s.seed * 100_003 + p.epoch)
            for indices in order[p.batch_in_epoch:]:
                batch = self.train_data.batch(indices)
                loss = self.train_step(batch)
                p.batch_in_epoch += 1
                p.seconds = seconds_before + time.perf_counter() - run_started
                window_tokens += batch.num_tgt_tokens
                bar.update(1)
                if p.step % s.log_every == 0:
                    elapsed = time.perf_counter() - window_started
                    rate = window_tokens / max(elapsed, 1e-9)
                    postfix = {"loss": f"{loss:.3f}", "tok_s": f"{rate:,.0f}", "epoch": p.epoch,
                               "lr": f"{self.schedule.rate(p.step):.2e}"}
                    if s.max_minutes is not None:  # the bar's own ETA needs max_steps; a time budget has its own
                        postfix["left"] = f"{max(0.0, s.max_minutes - p.seconds / 60):.1f}min"
                    bar.set_postfix(postfix)
                    self._log_scalars({"train/loss": loss, "train/target_tokens_per_second": rate,
                                       "train/learning_rate": self.schedule.rate(p.step)})
                    window_tokens, window_started = 0, time.perf_counter()
                if p.step % s.validate_every == 0:
                    last_record = self.validate()
                    say(f"step {p.step}: dev loss {last_record['dev_loss']:.3f}, BLEU {last_record['dev_bleu']:.2f}"
                        f"{' (best, saved)' if last_record['best'] else ''}")
                    if s.early_stopping_patience and p.validations_without_improvement >= s.early_stopping_patience:
                        p.stopped_early = True
                        say(f"early stopping: dev BLEU has not improved for {s.early_stopping_patience} validations")
                    self.save_state()
                if self._out_of_budget(run_started, seconds_before):
                    break
            else:
                p.epoch += 1
                p.batch_in_epoch = 0
        bar.close()
        if last_record is None or last_record["step"] != p.step:
            last_record = self.validate(drives_schedule=False)
            say(f"step {p.step}: dev loss {last_record['dev_loss']:.3f}, BLEU {last_record['dev_bleu']:.2f}"
                f"{' (best, saved)' if last_record['best'] else ''}")
        self.save_state()
        if self.writer is not None:
            self.writer.close()
        return {"steps": p.step, "epochs": p.epoch, "seconds": p.seconds, "best_dev_bleu": p.best_bleu,
                "target_tokens_per_second": p.target_tokens / max(p.seconds, 1e-9),
                "model_dir": str(self.model_dir), "last_validation": last_record}


def train(config: Config, model_dir: Path | None = None, resume: bool = False, show_progress: bool = True) -> dict:
    """Train a model as `config` says; returns a summary (steps, seconds, best dev BLEU, tokens/s)."""
    return Trainer(config, model_dir, resume, show_progress).train()
