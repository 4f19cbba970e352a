"""Training: teacher forcing, label-smoothed cross-entropy, Adam, clipping, schedule, validation, checkpoints, resume.

    loss = − Σ_t Σ_y q(y) log p(y | y*_<t, x) / (number of target tokens)
           q = (1 − ε) one_hot(y*_t) + ε / V                    label smoothing ε
    g ← g · min(1, c / ‖g‖)                                     gradient-norm clipping (exploding gradients, seed 003)
    lr(step) = max(base · min(1, step / warmup) · decay, min)   schedule: constant (decay = 1) or plateau (decay ×
                                                                factor after `plateau_patience` validations without
                                                                a lower dev loss); min = `min_learning_rate`
    lr(step) = base · min(step / warmup, √(warmup / step))     schedule: inverse_sqrt (the Transformer's): linear
                                                                warmup to base, then decay as 1/√step

One optimizer step trains on `batches_per_step` consecutive batches of the epoch's order (gradient accumulation),
each process of a distributed run on its own share of them (see attnmt/distributed.py); the loss is normalized by the
target tokens of the whole step, so the step's gradient is the same however many processes share it.

Every `validate_every` steps: dev loss and dev sacreBLEU; the best model by BLEU goes to MODEL_DIR/model.safetensors,
and after `early_stopping_patience` validations without a better BLEU training stops (`ValidationBookkeeper` decides
both, and steps the plateau schedule); the last step goes to MODEL_DIR/train_state/ (parameters, optimizer, RNG,
schedule and the position in the data), from which `attnmt train --resume` continues exactly where the run stopped.
In a distributed run only the main process (rank 0) validates and writes; the others wait for it and take over its
results.

A kill loses little and a crash at any instant leaves a run that resumes: train_state/ is also saved every
`save_every_minutes` between validations; SIGTERM or SIGINT (Ctrl-C) lets the step finish, saves, then acts as it would
have (see `StopSignals`); a save cut short is finished or undone when the run starts again (checkpoint.py), and
validations a resumed run replays are logged once. A step whose loss or gradient norm is not finite updates nothing;
`max_nonfinite_steps` of them in a row stop training with a `DivergenceError`, and parameters that are not finite are
never saved.

Everything runs on `training.device`, the forward pass under autocast where `training.mixed_precision` asks for it
(bf16, or fp16 with a gradient scaler; the loss in float32): see attnmt/devices.py.

The practitioner's loop: `training.init_from: MODEL_DIR` starts a fresh run from another model directory's weights and
tokenizer (fine-tuning; the optimizer and schedule start anew); `keep_checkpoints: N` keeps the parameters of the last
N validations in MODEL_DIR/checkpoints/, and `average_last: N` makes their average θ̄ = (1/N) Σ_i θ_i the model when
its dev BLEU beats the best validation's (average.json says what it measured); at the end the test set is scored with
the model (test_scores.json; `score_test`). A run resumed with its budget spent has nothing to do: `train(...,
refuse_spent=True)` (what `attnmt train --resume` asks) raises `BudgetSpent`, which says how to raise the budget.
"""

from __future__ import annotations

import copy
import json
import math
import os
import signal
import sys
import tempfile
import threading
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Sequence

import torch
from tqdm import tqdm

from attnmt import checkpoint, devices, distributed, manifest
from attnmt.alignment import instructive_example
from attnmt.averaging import average_tensors
from attnmt.config import TRAINING_ONLY_MODEL_KEYS, Config, TrainingConfig, load_config, resolve_path
from attnmt.data import Batch, ParallelData, Tokenizer, read_corpora
from attnmt.data.corpus import describe_test_set, write_split
from attnmt.data.tokenizer import PAD_ID, TOKENIZER_FILES
from attnmt.errors import BudgetSpent, CheckpointError, ConfigError, DivergenceError, StorageError
from attnmt.evaluation import corpus_scores, default_tokenizer, search_record, sentence_chrf
from attnmt.models import build_model
from attnmt.translator import Translation, Translator

VALIDATION_LOG = "validations.jsonl"  # MODEL_DIR/validations.jsonl: one JSON record per validation, each step once
AVERAGE_LOG = "average.json"  # MODEL_DIR/average.json: what `training.average_last` measured and chose
TEST_SCORES = "test_scores.json"  # MODEL_DIR/test_scores.json: the best model on the test set, at the end of training
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
SAMPLE_COUNT = 3  # dev translations shown in TensorBoard at each validation
HEATMAP_CANDIDATES = 16  # dev sentences the TensorBoard heatmap's sentence is chosen from (`instructive_example`)


# --- the learning rate ------------------------------------------------------------------------------------------------


def warmup_factor(step: int, warmup_steps: int) -> float:
    """min(1, step / warmup): the linear warmup, 1 from step `warmup` on (always 1 without warmup)."""
    return min(1.0, step / warmup_steps) if warmup_steps else 1.0


def learning_rate(step: int, settings: TrainingConfig, decay: float = 1.0) -> float:
    """The learning rate of optimizer step `step` (the first step is 1): a pure function of the step, given the
    plateau schedule's `decay` (1 until a plateau cuts it; always 1 for constant and inverse_sqrt).

    constant, plateau:  lr(step) = max(base · min(1, step / warmup) · decay, min_learning_rate)
    inverse_sqrt:       lr(step) = base · min(step / warmup, √(warmup / step)): rises linearly to `base` at
                        step = warmup, then falls as 1/√step. With base = d_model^−0.5 · warmup^−0.5 this is Vaswani
                        et al.'s d_model^−0.5 · min(step^−0.5, step · warmup^−1.5). No floor: the formula as written.
    """
    base, warmup = settings.learning_rate, settings.warmup_steps
    if settings.schedule == "inverse_sqrt":
        step = max(step, 1)
        # 1. step ≤ warmup: step / warmup is the smaller, a linear rise to `base`
        # 2. step > warmup: √(warmup / step) is the smaller, a fall as 1/√step
        return base * min(step / warmup, math.sqrt(warmup / step))
    # 1. step < warmup: a linear rise to `base`   2. then `base`, times the plateau's decay   3. never under the floor
    return max(base * warmup_factor(step, warmup) * decay, settings.min_learning_rate)


class LearningRateSchedule:
    """`learning_rate` with the one state a schedule has: the plateau decay. With `schedule: plateau`, a dev loss
    no lower than the best so far is a bad validation; after more than `plateau_patience` of them in a row
    decay ← decay · `plateau_factor` and the count starts again. Other schedules keep decay = 1.

    state_dict keys (train_state/state.json "schedule"): decay, best_loss, bad_validations.
    """

    def __init__(self, settings: TrainingConfig) -> None:
        self.settings = settings
        self.decay = 1.0
        self.best_loss = math.inf
        self.bad_validations = 0

    def rate(self, step: int) -> float:
        """The learning rate of step `step`: `learning_rate(step, settings, decay)`."""
        return learning_rate(step, self.settings, self.decay)

    def after_validation(self, dev_loss: float) -> None:
        """Count a plateau (plateau schedule only): cut the decay after `plateau_patience` bad validations."""
        if self.settings.schedule != "plateau":
            return
        if dev_loss < self.best_loss:
            self.best_loss, self.bad_validations = dev_loss, 0
            return
        self.bad_validations += 1
        if self.bad_validations > self.settings.plateau_patience:
            self.decay *= self.settings.plateau_factor
            self.bad_validations = 0

    def state_dict(self) -> dict:
        return {"decay": self.decay, "best_loss": self.best_loss, "bad_validations": self.bad_validations}

    def load_state_dict(self, state: dict) -> None:
        for name, value in self.state_dict().items():
            setattr(self, name, _like(state[name], value))


# --- what a validation decides ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ValidationDecision:
    """What one validation decided."""

    save_best: bool  # dev BLEU beat every earlier validation's: write the model to MODEL_DIR/model.safetensors
    stop_early: bool  # `early_stopping_patience` regular validations in a row without a better dev BLEU: stop


class ValidationBookkeeper:
    """Decides, from each validation's dev loss and BLEU, whether to save the model as the best and whether to stop
    early, and steps the plateau schedule; holds what it decides from.

    Every validation: save as best ⇔ bleu > best_bleu. Regular validations (every `validate_every` steps) also
    step `schedule` on the dev loss and count the validations without a BLEU above best_regular_bleu; once that count
    reaches `early_stopping_patience` (None: never), training stops. The validation at the very end of a run is not
    regular: it only saves, so that a stopped and resumed run trains as the straight run does.

    state_dict keys (train_state/state.json "progress", next to `Progress`'s): best_bleu, best_regular_bleu,
    validations_without_improvement, stopped_early. The schedule's state is saved on its own ("schedule").
    """

    def __init__(self, schedule: LearningRateSchedule, early_stopping_patience: int | None) -> None:
        self.schedule = schedule
        self.patience = early_stopping_patience
        self.best_bleu = -1.0
        self.best_regular_bleu = -1.0  # the best of the regular validations only: what early stopping compares with
        self.validations_without_improvement = 0
        self.stopped_early = False

    def decide(self, loss: float, bleu: float, regular: bool = True) -> ValidationDecision:
        """Take one validation's dev loss and BLEU into account; return what it decides."""
        save_best = bleu > self.best_bleu
        if save_best:
            self.best_bleu = bleu
        if not regular:
            return ValidationDecision(save_best=save_best, stop_early=False)
        self.schedule.after_validation(loss)
        if bleu > self.best_regular_bleu:
            self.best_regular_bleu, self.validations_without_improvement = bleu, 0
        else:
            self.validations_without_improvement += 1
        if self.patience and self.validations_without_improvement >= self.patience:
            self.stopped_early = True
        return ValidationDecision(save_best=save_best, stop_early=self.stopped_early)

    def state_dict(self) -> dict:
        return {"best_bleu": self.best_bleu, "best_regular_bleu": self.best_regular_bleu,
                "validations_without_improvement": self.validations_without_improvement,
                "stopped_early": self.stopped_early}

    def load_state_dict(self, state: dict) -> None:
        """Restore from `state` (a state.json "progress" dict); a key it lacks keeps its current value."""
        for name, value in self.state_dict().items():
            setattr(self, name, _like(state.get(name, value), value))


def _like(value, current):
    """`value` (read back from JSON) as the type of `current`: an int, float or bool, or a `TypeError`."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) != isinstance(current, bool):
        raise TypeError(f"{value!r} where a {type(current).__name__} belongs")
    return type(current)(value)


class SmoothedCrossEntropy(torch.autograd.Function):
    """Summed label-smoothed cross-entropy over the real targets (y*_t ≠ PAD), with its gradient in one expression:

        loss = (1 − ε) Σ_t −log p(y*_t) + (ε / V) Σ_t Σ_y −log p(y)       p = softmax(z_t)
        ∂loss / ∂z_t = p_t − q_t,   q_t = (1 − ε) one_hot(y*_t) + ε / V    (0 at padding)

    The value of `torch.nn.functional.cross_entropy(z, y*, ignore_index=PAD_ID, label_smoothing=ε, reduction="sum")`
    (to float rounding); its backward pass is one exp of the saved log p, in place, where torch's runs the backward
    passes of nll_loss, of the smoothing sum and of log_softmax, each over a new [N, V] (the output layer's
    vocabulary). So it backpropagates once (training's backward), not twice through a retained graph.
    logits z [N, V], targets [N] → a scalar.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float) -> torch.Tensor:
        log_probs = torch.log_softmax(logits, dim=-1)  # log p [N, V]
        padding = (targets == PAD_ID).unsqueeze(1)  # [N, 1]
        nll = -log_probs.gather(1, targets.unsqueeze(1)).masked_fill_(padding, 0.0).sum()  # Σ_t −log p(y*_t)
        smooth = -log_probs.sum(1, keepdim=True).masked_fill_(padding, 0.0).sum()  # Σ_t Σ_y −log p(y)
        ctx.save_for_backward(log_probs, targets, padding)
        ctx.label_smoothing, ctx.backpropagated = label_smoothing, False
        return (1.0 - label_smoothing) * nll + smooth * (label_smoothing / logits.size(-1))

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        if ctx.backpropagated:
            raise RuntimeError("SmoothedCrossEntropy backpropagates once: its saved log p became the gradient")
        ctx.backpropagated = True
        log_probs, targets, padding = ctx.saved_tensors
        smoothing = ctx.label_smoothing
        grad = log_probs.exp_().sub_(smoothing / log_probs.size(-1))  # p − ε / V, over log p's memory
        grad.scatter_add_(1, targets.unsqueeze(1), grad.new_full((targets.size(0), 1), smoothing - 1.0))  # − (1 − ε)
        return grad.mul_(grad_loss * ~padding), None, None  # · ∂L/∂loss, 0 at padding


def sequence_loss(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """Summed label-smoothed cross-entropy over real target tokens (`SmoothedCrossEntropy`). logits [B, T, V],
    targets [B, T]."""
    return SmoothedCrossEntropy.apply(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), label_smoothing)


@dataclass
class Progress:
    """Where training is: saved with every checkpoint (state.json "progress", together with the
    `ValidationBookkeeper`'s state) so that a resumed run continues from here."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # batches of this epoch already trained on
    target_tokens: int = 0
    seconds: float = 0.0  # training time so far, over all runs of this model directory


class StopSignals:
    """SIGTERM and SIGINT (Ctrl-C) while training, as a context: the first one only sets `received`, so that the loop
    can finish its step and save, and puts the handler it replaced back, so that a second one acts at once as if we
    were not there. `raise_again` then does what the first would have done. Signals ignored when training starts
    (SIG_IGN) stay ignored; outside the main thread, where Python runs no handler, nothing is caught."""

    def __init__(self) -> None:
        self.received: int | None = None
        self.replaced: dict[int, object] = {}

    def __enter__(self) -> "StopSignals":
        self.received, self.replaced = None, {}
        if threading.current_thread() is threading.main_thread():
            for number in STOP_SIGNALS:
                handler = signal.getsignal(number)
                if handler not in (signal.SIG_IGN, None):
                    self.replaced[number] = handler
                    signal.signal(number, self._catch)
        return self

    def _catch(self, number: int, frame) -> None:
        if self.received is None:
            self.received = number
        signal.signal(number, self.replaced[number])

    def __exit__(self, *exception) -> None:
        for number, handler in self.replaced.items():
            signal.signal(number, handler)

    @property
    def name(self) -> str:
        return signal.Signals(self.received).name

    def raise_again(self) -> None:
        """Do what the received signal would have done without us: call the handler it had (SIGINT's raises
        KeyboardInterrupt: the CLI exits 130), or take its default action (SIGTERM: the process ends by it, exit
        status 143)."""
        handler = self.replaced[self.received]
        signal.signal(self.received, handler)
        if callable(handler):
            handler(self.received, None)
        else:
            os.kill(os.getpid(), self.received)


def section_differences(before: Config, now: Config, sections: tuple[str, ...] = ("model", "tokenizer"),
                        ignored: tuple[str, ...] = ()) -> list[str]:
    """"section.key: X there, Y here" for each key of `sections` whose value differs between two configs, but the
    `ignored` ones ("section.key")."""
    differences = []
    for section in sections:
        old, new = getattr(before, section).model_dump(mode="json"), getattr(now, section).model_dump(mode="json")
        differences += [f"{section}.{key}: {old.get(key)!r} there, {new.get(key)!r} here"
                        for key in sorted(old.keys() | new.keys())
                        if old.get(key) != new.get(key) and f"{section}.{key}" not in ignored]
    return differences


def install_weights(model_dir: Path, tensors: dict[str, torch.Tensor], origin: str) -> None:
    """Make `tensors` (from `origin`, for messages) the model directory's model.safetensors, once they load: its files
    match manifest.json, and the tensors are finite and fit the model its config.yaml and tokenizer describe; written
    atomically, then manifest.json rewritten."""
    model_dir = Path(model_dir)
    manifest.check(model_dir)
    config = load_config(model_dir / checkpoint.CONFIG_FILE)
    tokenizer = Tokenizer.load(model_dir)
    with torch.random.fork_rng(devices=[]):  # building a model draws initial values: leave the random state alone
        model = build_model(config.model, tokenizer.src_vocab_size, tokenizer.tgt_vocab_size)
    checkpoint.check_finite(Path(origin), tensors)
    checkpoint.check_fit(Path(origin), tensors, model)
    model.load_state_dict(tensors, strict=False)
    checkpoint.save_tensors(model_dir / checkpoint.MODEL_FILE, tensors)
    manifest.write(model_dir)


class Trainer:
    """Holds the model, optimizer, data and progress of one training run (of this process, in a distributed run).

    `context`: this process's place among the training processes, its device included (`distributed.init`); by
    default the single process of a plain run, on `training.device`. The model, every batch, validation and the
    optimizer state live on that device; checkpoints are written from CPU copies and load onto any device.
    """

    def __init__(self, config: Config, model_dir: Path | None = None, resume: bool = False, show_progress: bool = True,
                 context: distributed.Context | None = None):
        self.config = config
        self.settings = config.training
        self.model_dir = Path(model_dir or config.model_dir)
        self.dist = context or distributed.single_process(self.settings.device)
        devices.check_mixed_precision(self.settings.mixed_precision, self.dist.device)
        self.show_progress = show_progress and self.dist.is_main
        if self.settings.threads:
            torch.set_num_threads(self.settings.threads)
        saved = checkpoint.has_train_state(self.model_dir)
        if saved:  # one that lacks a file: the same advice with --resume or without
            checkpoint.check_train_state(self.model_dir)
        if resume and not saved:
            raise CheckpointError(f"cannot resume: {self.model_dir / checkpoint.TRAIN_STATE} does not exist; "
                                  f"train without --resume first")
        if not resume and saved:
            raise CheckpointError(f"{self.model_dir} already holds a training run; continue it with --resume, "
                                  f"or choose another model directory (nothing was overwritten)")
        if resume:
            self._check_same_model()
        # fine-tuning: a fresh run starts from another model's weights and tokenizer; a resumed run from its own state
        self.init_source = None if resume else self._init_source()
        if self.dist.is_main:  # a save a crash cut short, temporary files of cut writes
            checkpoint.recover_train_state(self.model_dir)
        self.dist.barrier()
        torch.manual_seed(self.settings.seed)
        self.corpora = read_corpora(config)
        self.model_dir.mkdir(parents=True, exist_ok=True)
        self.tokenizer = Tokenizer.load(self.model_dir) if resume else self._new_tokenizer()
        self.train_data, self.dropped_long = ParallelData.from_pairs(self.corpora.train, self.tokenizer,
                                                                    config.data.max_length)
        if len(self.train_data) == 0:
            raise ConfigError(f"no training pair is left after dropping pairs over `data.max_length` "
                              f"({config.data.max_length} subwords); raise it")
        self.dev_data, _ = ParallelData.from_pairs(self.corpora.dev, self.tokenizer, 10 ** 9)
        self.model = build_model(config.model, self.tokenizer.src_vocab_size, self.tokenizer.tgt_vocab_size
                                 ).to(self.dist.device)
        if self.init_source is not None:  # step 0 holds the source model's parameters
            checkpoint.load_model_weights(self.init_source / checkpoint.MODEL_FILE, self.model)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=self.settings.learning_rate,
                                          betas=self.settings.adam_betas, weight_decay=self.settings.weight_decay)
        self.scaler = devices.gradient_scaler(self.settings.mixed_precision, self.dist.device)
        self.schedule = LearningRateSchedule(self.settings)  # its plateau decay is stepped by `validations`
        self.validations = ValidationBookkeeper(self.schedule, self.settings.early_stopping_patience)
        self.progress = Progress()
        if resume:  # onto the model's device, whichever device the state was saved from
            saved = checkpoint.load_train_state(self.model_dir, self.model, self.optimizer)
            with checkpoint.reading_train_state(self.model_dir / checkpoint.TRAIN_STATE / checkpoint.STATE_FILE):
                self.schedule.load_state_dict(saved["schedule"])
                self._load_progress(saved["progress"])
                if self.scaler.is_enabled() and "grad_scaler" in saved:
                    self.scaler.load_state_dict(saved["grad_scaler"])
        self.network = self.dist.wrap(self.model)  # what training calls; DDP all-reduces the gradients in backward
        self.writer = None
        self.saved_step = self.progress.step if resume else None  # of the last train_state/ written
        self.last_save = time.perf_counter()
        self.nonfinite_steps = 0  # steps in a row whose loss or gradient norm was not finite
        self.stop_signals = StopSignals()

    def _check_same_model(self) -> None:
        """A run resumes with the model and vocabulary it was started with: a config whose `model` or `tokenizer`
        section differs from the saved config.yaml's is a `CheckpointError` (before anything is loaded)."""
        path = self.model_dir / checkpoint.CONFIG_FILE
        if not path.is_file():
            return  # a crash before config.yaml was written; loading the state says what is missing
        saved = load_config(path)
        for section in ("model", "tokenizer"):
            differences = section_differences(saved, self.config, (section,))
            if differences:
                raise CheckpointError(
                    f"{self.model_dir} holds a run of another {section} ({'; '.join(differences)}); resume it with "
                    f"its own config ({path}), or start this one in another model directory (nothing was "
                    f"overwritten)")

    def _init_source(self) -> Path | None:
        """The model directory `training.init_from` names, checked: a trained model (its files match its manifest)
        of the same model and tokenizer sections as this config (but `TRAINING_ONLY_MODEL_KEYS`, e.g. dropout), and
        not this run's own directory. None without init_from."""
        if self.settings.init_from is None:
            return None
        source = resolve_path(self.settings.init_from)
        key = f"`training.init_from` ({source})"
        if not (source / checkpoint.CONFIG_FILE).is_file() or not (source / checkpoint.MODEL_FILE).is_file():
            raise CheckpointError(f"{key} is not a trained attnmt model directory ({checkpoint.CONFIG_FILE} and "
                                  f"{checkpoint.MODEL_FILE} are needed); give the model directory of a finished run")
        if source.resolve() == self.model_dir.resolve():
            raise ConfigError(f"{key} is this run's own model directory; fine-tune into another one (--model-dir)")
        manifest.check(source)
        free = tuple(f"model.{name}" for name in TRAINING_ONLY_MODEL_KEYS)  # dropout may change
        differences = section_differences(load_config(source / checkpoint.CONFIG_FILE), self.config, ignored=free)
        if differences:
            raise ConfigError(f"{key} was trained with another model or tokenizer ({'; '.join(differences)}): a "
                              f"fine-tuned run keeps both (only {', '.join(free)} may change); set these keys as "
                              f"{source / checkpoint.CONFIG_FILE} has them")
        return source

    def _copy_tokenizer(self, source: Path) -> Tokenizer:
        """The tokenizer file(s) of the model directory `source`, copied into this one (atomically; stale ones of an
        earlier start removed)."""
        names = Tokenizer.load(source).files
        for name in TOKENIZER_FILES:
            if name not in names:
                (self.model_dir / name).unlink(missing_ok=True)
        for name in names:
            try:
                content = (source / name).read_bytes()
            except OSError as error:
                raise StorageError.from_os_error(error, "read", source / name) from None
            checkpoint.atomic_write(self.model_dir / name, content)
        return Tokenizer.load(self.model_dir)

    def _new_tokenizer(self) -> Tokenizer:
        """Train the tokenizer on the training sentences (or copy that of `training.init_from`) and write config.yaml,
        examples.txt and the dev/test parts of a `data.split` next to it. In a distributed run the main process does,
        and the others load what it wrote."""
        if not self.dist.is_main:
            self.dist.barrier()  # until the main process has written the tokenizer
            return Tokenizer.load(self.model_dir)
        if self.init_source is not None:
            tokenizer = self._copy_tokenizer(self.init_source)
        else:
            sources, targets = zip(*self.corpora.train)
            tokenizer = Tokenizer.train(self.config.tokenizer, list(sources), list(targets), self.model_dir)
        checkpoint.write_text(self.model_dir / checkpoint.CONFIG_FILE, self.config.to_yaml())
        checkpoint.write_examples(self.model_dir, [source for source, _ in self.corpora.dev])
        write_split(self.model_dir, self.config.data, self.corpora)
        manifest.write(self.model_dir)  # last: it lists the files just written
        self.dist.barrier()
        return tokenizer

    # --- reporting -----------------------------------------------------------------------------------------------

    def data_report(self) -> str:
        c, description = self.corpora, self.model.describe()
        return (f"data: {len(self.train_data)} training pairs ({self.dropped_long} dropped over "
                f"{self.config.data.max_length} subwords, {c.dropped_empty} empty pairs dropped), "
                f"{len(c.dev)} dev, {len(c.test)} test; vocabulary {self.tokenizer.src_vocab_size} source / "
                f"{self.tokenizer.tgt_vocab_size} target ({'joint' if self.tokenizer.joint else 'separate'}); "
                f"model: {description.summary}, {description.parameters:,} parameters on {self.dist.device}, "
                f"mixed precision {self.settings.mixed_precision}")

    def distributed_report(self) -> str:
        d = self.dist
        return (f"distributed: {d.world_size} processes ({d.backend} on {d.device.type}); one step takes "
                f"{self.batches_per_step} batches, {self.settings.batches_per_step} per process")

    def _warn(self, message: str) -> None:
        """Tell the user, on stderr, with the progress bar or without (the main process only)."""
        if self.dist.is_main:
            tqdm.write(message, file=sys.stderr)

    def _tensorboard(self):
        """The TensorBoard writer (MODEL_DIR/tensorboard/), made on first use; None without `training.tensorboard`
        and on processes other than the main one."""
        if not self.settings.tensorboard or not self.dist.is_main:
            return None
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(str(self.model_dir / "tensorboard"))
        return self.writer

    def _log_scalars(self, values: dict[str, float]) -> None:
        writer = self._tensorboard()
        if writer is None:
            return
        for name, value in values.items():
            writer.add_scalar(name, value, self.progress.step)

    def _log_samples(self, pairs: list[tuple[str, str]], hypotheses: list[str]) -> None:
        """TensorBoard text "dev/translations": the first SAMPLE_COUNT dev sentences, reference and translation."""
        writer = self._tensorboard()
        if writer is None:
            return
        rows = [f"**source:** {source}  \n**reference:** {reference}  \n**translation:** {hypothesis}"
                for (source, reference), hypothesis in zip(pairs[:SAMPLE_COUNT], hypotheses)]
        writer.add_text("dev/translations", "\n\n---\n\n".join(rows), self.progress.step)

    def _log_attention(self) -> None:
        """TensorBoard image "dev/attention": the heatmap (attnmt/plotting.py) of the dev sentence among the first
        HEATMAP_CANDIDATES whose attention teaches most (`alignment.instructive_example`: several words, word order
        that changes, well translated), as the model translates it now."""
        writer = self._tensorboard()
        if writer is None or not self.model.describe().has_attention:
            return
        import numpy as np
        from PIL import Image

        from attnmt.plotting import plot_attention

        pairs = self.corpora.dev[:HEATMAP_CANDIDATES]
        translator = Translator(self.model, self.tokenizer, self.config)
        translations = translator.translate([source for source, _ in pairs],
                                            beam_size=self.settings.validation_beam_size)
        shown = [i for i, t in enumerate(translations) if t.attention is not None and t.attention.size]
        if not shown:
            return
        matrices = [translations[i].attention for i in shown]
        qualities = [sentence_chrf(translations[i].text, pairs[i][1]) for i in shown]
        pick = shown[instructive_example(matrices, qualities)]
        example = translations[pick]
        with tempfile.TemporaryDirectory() as folder:
            path = plot_attention(example.attention, example.source_tokens, example.target_tokens_with_eos,
                                  Path(folder) / "attention.png",
                                  title=f"step {self.progress.step}: {pairs[pick][0]} → {example.text}")
            with Image.open(path) as image:
                pixels = np.asarray(image.convert("RGB"))  # [H, W, 3]
        writer.add_image("dev/attention", pixels, self.progress.step, dataformats="HWC")

    # --- one step ------------------------------------------------------------------------------------------------

    @property
    def batches_per_step(self) -> int:
        """Batches one optimizer step takes from the epoch's order: `training.batches_per_step` per process."""
        return self.settings.batches_per_step * self.dist.world_size

    def _target_tokens(self, indices: list[int]) -> int:
        """Target tokens the batch of training pairs `indices` predicts, EOS included (its `num_tgt_tokens`)."""
        return sum(len(self.train_data.tgt_ids[i]) + 1 for i in indices)

    def _seed_dropout(self) -> None:
        """Distributed runs only: seed this step's dropout from (seed, step, rank), so that processes drop different
        units, and a resumed run draws what the straight run drew (train_state keeps one random state, rank 0's).
        A single process keeps its one random stream, which train_state saves and restores."""
        if self.dist.enabled:
            seed = ((self.settings.seed * 1_000_003 + self.progress.step) * 65_537 + self.dist.rank) % 2 ** 63
            torch.manual_seed(seed)

    def _autocast(self):
        """The context of a forward pass: autocast to `training.mixed_precision` on the training device."""
        return devices.autocast(self.settings.mixed_precision, self.dist.device)

    def _loss(self, model: torch.nn.Module, batch: Batch, label_smoothing: float) -> torch.Tensor:
        """Summed cross-entropy of `batch` (on the training device) under `model`: the forward pass in the mixed
        precision, the loss in float32."""
        with self._autocast():
            logits, _ = model(batch.src, batch.src_mask, batch.tgt_in)  # [B, T, V]
        return sequence_loss(logits.float(), batch.tgt_out, label_smoothing)

    def _keeping_gradients_local(self, last: bool):
        """Where DDP's backward should not all-reduce yet: every batch of a step but this process's last, whose
        backward all-reduces the summed gradients once (DDP's `no_sync`). A no-op in a single process."""
        return self.network.no_sync() if self.dist.enabled and not last else nullcontext()

    def train_step(self, batches: Batch | Sequence[Batch], step_tokens: int | None = None) -> float:
        """One optimizer step: forward and backward on each of this process's batches (their gradients add up),
        then clip and update. `step_tokens`: the target tokens of the whole step, over all processes (default:
        those of `batches`). Returns the step's loss per target token, over all processes. A step whose loss or
        gradient norm is not finite updates nothing (see `_skip_nonfinite`) and counts as a step all the same. With
        fp16 the loss is scaled before backward and the gradients unscaled before clipping; the scaler itself skips a
        step whose gradients overflow (how it finds its scale: not counted as a non-finite step)."""
        batches = [batches] if isinstance(batches, Batch) else list(batches)
        step_tokens = step_tokens or sum(batch.num_tgt_tokens for batch in batches)
        self.network.train()
        self._seed_dropout()
        for group in self.optimizer.param_groups:
            group["lr"] = self.schedule.rate(self.progress.step + 1)
        self.optimizer.zero_grad(set_to_none=True)
        summed = 0.0  # Σ cross-entropy of this process's tokens
        for position, batch in enumerate(batches):
            batch = batch.to(self.dist.device)
            with self._keeping_gradients_local(last=position == len(batches) - 1):
                loss = self._loss(self.network, batch, self.settings.label_smoothing)
                # × world size: DDP averages the gradients of the processes, and the step's gradient is their sum
                self.scaler.scale(loss * self.dist.world_size / step_tokens).backward()
            summed = summed + loss.detach()
        step_loss = float(self.dist.sum(summed) / step_tokens)
        self.scaler.unscale_(self.optimizer)  # fp16: the true gradients before clipping; otherwise nothing
        gradient_norm = self._clip_gradients()
        finite = math.isfinite(step_loss) and (self.scaler.is_enabled() or math.isfinite(gradient_norm))
        if finite:
            self.scaler.step(self.optimizer)
        self.scaler.update()
        self.progress.step += 1
        self.progress.target_tokens += step_tokens
        self.nonfinite_steps = 0 if finite else self.nonfinite_steps + 1
        if not finite:
            self._skip_nonfinite(step_loss, gradient_norm)
        return step_loss

    def _clip_gradients(self) -> float:
        """‖g‖ over every parameter's gradient; where `clip_grad_norm` c is set, g ← g · min(1, c / ‖g‖)."""
        if self.settings.clip_grad_norm:
            return float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.settings.clip_grad_norm))
        return float(torch.nn.utils.get_total_norm([p.grad for p in self.model.parameters() if p.grad is not None]))

    def _skip_nonfinite(self, loss: float, gradient_norm: float) -> None:
        """Report a step skipped for a loss or gradient norm that is not finite; after `max_nonfinite_steps` in a row,
        stop training with a `DivergenceError` (the last train_state/ written is the last good one)."""
        count, step = self.nonfinite_steps, self.progress.step
        self._warn(f"step {step}: loss {loss:.4g}, gradient norm {gradient_norm:.4g}: not finite, so the step is "
                   f"skipped (no update; {count} in a row, training stops at {self.settings.max_nonfinite_steps})")
        if count < self.settings.max_nonfinite_steps:
            return
        state = self.model_dir / checkpoint.TRAIN_STATE
        kept = (f"the last good state is in {state} (step {self.saved_step}): after the change, continue it with "
                f"--resume (e.g. --set training.learning_rate=...)" if self.saved_step is not None else
                "no state was saved yet: after the change, train again")
        raise DivergenceError(f"training diverged: {count} steps in a row (steps {step - count + 1} to {step}) had a "
                              f"loss or gradient norm that is not a finite number, so training stopped. Lower "
                              f"`training.learning_rate`, set `training.clip_grad_norm`, or look for broken pairs in "
                              f"the data; {kept}")

    def _check_finite_parameters(self) -> None:
        """A `DivergenceError` if a parameter is not finite: such a model is never validated, nor saved as the best
        model or as train_state/."""
        bad = [name for name, parameter in self.model.named_parameters() if not bool(torch.isfinite(parameter).all())]
        if bad:
            raise DivergenceError(f"training diverged: parameter(s) {', '.join(bad[:3])} hold numbers that are not "
                                  f"finite at step {self.progress.step}; nothing of this step was saved. Lower "
                                  f"`training.learning_rate` or set `training.clip_grad_norm`, then continue from the "
                                  f"last state saved ({self.model_dir / checkpoint.TRAIN_STATE}) with --resume")

    # --- validation ----------------------------------------------------------------------------------------------

    @torch.inference_mode()
    def dev_loss(self) -> float:
        """Cross-entropy per target token on dev, without label smoothing."""
        self.model.eval()
        total, tokens = 0.0, 0
        for indices in self.dev_data.batches(self.settings.batch_tokens, shuffle=False, seed=0):
            batch = self.dev_data.batch(indices).to(self.dist.device)
            total += float(self._loss(self.model, batch, 0.0))
            tokens += batch.num_tgt_tokens
        return total / max(tokens, 1)

    @property
    def bleu_tokenizer(self) -> str:
        """BLEU's tokenizer for this run's target language (`evaluation.default_tokenizer`)."""
        return default_tokenizer(self.config.data.tgt_lang)

    def dev_translations(self, model: torch.nn.Module | None = None) -> list[Translation]:
        """The translations of dev (beam `validation_beam_size`, text only) by the model being trained, or `model`."""
        translator = Translator(self.model if model is None else model, self.tokenizer, self.config)  # float32
        sources = [source for source, _ in self.corpora.dev]
        return translator.translate(sources, beam_size=self.settings.validation_beam_size, attention=False)

    def dev_scores(self, model: torch.nn.Module | None = None, translations: list[Translation] | None = None
                   ) -> dict[str, float]:
        """Corpus BLEU and chrF of dev translations: `translations`, or those of `dev_translations(model)`."""
        translations = translations if translations is not None else self.dev_translations(model)
        references = [reference for _, reference in self.corpora.dev]
        return corpus_scores([t.text for t in translations], references, tokenize=self.bleu_tokenizer)

    def validate(self, regular: bool = True) -> tuple[dict, ValidationDecision]:
        """Dev loss and BLEU, and what `validations` decides from them: save the model if BLEU improved; regular
        validations also step the schedule and count towards early stopping (see `ValidationBookkeeper`). Logs the
        record to MODEL_DIR/validations.jsonl (VALIDATION_LOG) and returns it with the decision."""
        loss = self.dev_loss()
        translations = self.dev_translations()
        scores = self.dev_scores(translations=translations)
        decision = self.validations.decide(loss, scores["bleu"], regular)
        if decision.save_best:
            checkpoint.save_model(self.model_dir / checkpoint.MODEL_FILE, self.model)
            manifest.write(self.model_dir)
        if self.settings.keep_checkpoints:
            checkpoint.keep_checkpoint(self.model_dir, self.progress.step, self.model, self.settings.keep_checkpoints)
        record = {"step": self.progress.step, "epoch": self.progress.epoch, "dev_loss": round(loss, 4),
                  "dev_bleu": round(scores["bleu"], 2), "dev_chrf": round(scores["chrf"], 2),
                  "learning_rate": self.schedule.rate(self.progress.step), "best": decision.save_best,
                  "seconds": round(self.progress.seconds, 1)}
        with open(self.model_dir / VALIDATION_LOG, "a", encoding="utf-8") as log:
            log.write(json.dumps(record) + "\n")
        self._log_scalars({"dev/loss": loss, "dev/bleu": scores["bleu"], "dev/chrf": scores["chrf"]})
        self._log_samples(self.corpora.dev, [t.text for t in translations])
        self._log_attention()
        return record, decision

    def _validate_everywhere(self, regular: bool = True) -> tuple[dict, ValidationDecision]:
        """`validate` on the main process; the others wait, then take its record, decision, schedule and progress
        (best BLEU, early-stopping count), so that every process goes on with the same learning rate and stops at the
        same step."""
        self._check_finite_parameters()
        result = self.validate(regular) if self.dist.is_main else None
        result, schedule, progress = self.dist.from_main((result, self.schedule.state_dict(), self._progress_state()))
        self.schedule.load_state_dict(schedule)
        self._load_progress(progress)
        return result

    def _progress_state(self) -> dict:
        """state.json's "progress": `Progress` and the `ValidationBookkeeper`'s state, in one flat dict."""
        return {**asdict(self.progress), **self.validations.state_dict()}

    def _load_progress(self, state: dict) -> None:
        """Restore `progress` (in place: the training loop holds it) and `validations` from a `_progress_state` dict,
        from train_state/ or from the main process; a key it lacks keeps its current value."""
        for field in fields(Progress):
            if field.name in state:
                setattr(self.progress, field.name, _like(state[field.name], getattr(self.progress, field.name)))
        self.validations.load_state_dict(state)

    def save_state(self) -> None:
        """Write train_state/ (the main process only: every process holds the same parameters and optimizer); never
        parameters that are not finite."""
        self._check_finite_parameters()
        self.saved_step, self.last_save = self.progress.step, time.perf_counter()
        if not self.dist.is_main:
            return
        state = {"schedule": self.schedule.state_dict(), "progress": self._progress_state()}
        if self.scaler.is_enabled():  # fp16: the loss scale it has found
            state["grad_scaler"] = self.scaler.state_dict()
        checkpoint.save_train_state(self.model_dir, self.model, self.optimizer, state)

    # --- the loop ------------------------------------------------------------------------------------------------

    def spent(self, seconds: float | None = None) -> str | None:
        """Why the run has nothing left to train, with what to do about it: a budget (max_steps, max_epochs,
        max_minutes, after `seconds` of training over all its runs; default: so far) used up, or early stopping.
        None while it has steps left."""
        s, p, where = self.settings, self.progress, self.model_dir
        seconds = p.seconds if seconds is None else seconds
        raise_it = "; to train further, raise it: attnmt train CONFIG --resume --set training.{key}={value}"
        if s.max_steps is not None and p.step >= s.max_steps:
            return (f"{where} has trained {p.step} steps, its whole `training.max_steps` ({s.max_steps})"
                    + raise_it.format(key="max_steps", value=2 * s.max_steps))
        if s.max_epochs is not None and p.epoch >= s.max_epochs:
            return (f"{where} has trained {p.epoch} epochs, its whole `training.max_epochs` ({s.max_epochs})"
                    + raise_it.format(key="max_epochs", value=2 * s.max_epochs))
        if s.max_minutes is not None and seconds >= s.max_minutes * 60:
            return (f"{where} has trained {seconds / 60:.1f} minutes (all its runs together), its whole "
                    f"`training.max_minutes` ({s.max_minutes:g})" + raise_it.format(key="max_minutes",
                                                                                     value=f"{2 * s.max_minutes:g}"))
        if self.validations.stopped_early:
            return (f"{where} stopped early at step {p.step}: dev BLEU did not improve for "
                    f"{s.early_stopping_patience} validations in a row; to train further, fine-tune its model in "
                    f"another directory: attnmt train CONFIG --model-dir NEW_DIR --set training.init_from={where}")
        return None

    def _out_of_budget(self, run_started: float, seconds_before: float) -> bool:
        if self.stop_signals.received is not None:
            return True
        return self.spent(seconds_before + time.perf_counter() - run_started) is not None

    def _stop(self, run_started: float, seconds_before: float) -> bool:
        """Whether the run is over; in a distributed run the main process decides (clocks differ between them, and
        signals reach them at different steps)."""
        return self.dist.main_decides(self._out_of_budget(run_started, seconds_before))

    def _steps(self, order: list[list[int]], start: int) -> list[list[list[int]]]:
        """The epoch's batch order from batch `start` on, cut into the batches of one step each. A last step with
        fewer batches than a step takes is left out (the next epoch shuffles its order anew)."""
        size = self.batches_per_step
        if len(order) < size:
            raise ConfigError(f"one epoch has {len(order)} batches of `training.batch_tokens` "
                              f"{self.settings.batch_tokens}, but one step takes {size} "
                              f"({self.dist.world_size} process(es) × `training.batches_per_step` "
                              f"{self.settings.batches_per_step}); lower `batch_tokens`, `batches_per_step` or "
                              f"the number of processes")
        return [order[first:first + size] for first in range(start, len(order) - size + 1, size)]

    def _save_due(self) -> bool:
        """Whether `save_every_minutes` have passed since train_state/ was last written."""
        every = self.settings.save_every_minutes
        return every is not None and time.perf_counter() - self.last_save >= every * 60

    def _trim_validation_log(self) -> dict | None:
        """Keep in MODEL_DIR/validations.jsonl the validations up to the step this run starts from (rewritten
        atomically when any goes): the run replays the later ones, and logs them again. Lines a crash cut short go
        too. Returns the record of that very step, if it is there (no need to validate that step again at the end)."""
        checkpoint.drop_checkpoints_after(self.model_dir, self.progress.step)  # replayed as the log's records are
        path = self.model_dir / VALIDATION_LOG
        if not path.is_file():
            return None
        text = path.read_text(encoding="utf-8", errors="replace")
        kept = [(line, record) for line, record in ((line, _logged_record(line)) for line in text.splitlines())
                if record is not None and record["step"] <= self.progress.step]
        trimmed = "".join(line + "\n" for line, _ in kept)
        if trimmed != text:
            checkpoint.write_text(path, trimmed)
        return next((record for _, record in reversed(kept) if record["step"] == self.progress.step), None)

    def train(self) -> dict:
        """Train until a budget (steps, epochs, minutes) runs out, dev BLEU stops improving, or SIGTERM or SIGINT
        comes: then the step in progress finishes, train_state/ is saved, and the signal acts (`StopSignals`)."""
        with self.stop_signals:
            summary = self._train()
            if self.stop_signals.received is not None:
                self._warn(f"stopped by {self.stop_signals.name} at step {self.progress.step}; resume with --resume")
                self.stop_signals.raise_again()
        return summary

    def _train(self) -> dict:
        """The training loop of `train`."""
        s, p = self.settings, self.progress
        say = tqdm.write if self.show_progress else (lambda _: None)
        say(self.data_report())
        if self.dist.enabled:
            say(self.distributed_report())
        last_record = self.dist.from_main(self._trim_validation_log() if self.dist.is_main else None)
        if p.step and (reason := self.spent()) is not None:
            self._warn(f"nothing to train: {reason}")
        bar = tqdm(total=s.max_steps, initial=p.step, disable=not self.show_progress, unit="step",
                   dynamic_ncols=True, desc="train")
        run_started, seconds_before = time.perf_counter(), p.seconds
        window_tokens, window_started, self.last_save = 0, time.perf_counter(), time.perf_counter()
        while not self._stop(run_started, seconds_before):
            order = self.train_data.batches(s.batch_tokens, shuffle=True, seed=s.seed * 100_003 + p.epoch)
            for step_batches in self._steps(order, p.batch_in_epoch):
                mine = distributed.shard(step_batches, self.dist.rank, self.dist.world_size)
                step_tokens = sum(self._target_tokens(indices) for indices in step_batches)
                loss = self.train_step([self.train_data.batch(indices) for indices in mine], step_tokens)
                p.batch_in_epoch += len(step_batches)
                p.seconds = seconds_before + time.perf_counter() - run_started
                window_tokens += step_tokens
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
                    last_record, decision = self._validate_everywhere()
                    say(f"step {p.step}: dev loss {last_record['dev_loss']:.3f}, BLEU {last_record['dev_bleu']:.2f}"
                        f"{' (best, saved)' if last_record['best'] else ''}")
                    if decision.stop_early:
                        say(f"early stopping: dev BLEU has not improved for {s.early_stopping_patience} validations")
                    self.save_state()
                elif self._save_due():
                    self.save_state()
                if self._stop(run_started, seconds_before):
                    break
            else:
                p.epoch += 1
                p.batch_in_epoch = 0
        bar.close()
        stopped_by_signal = self.dist.from_main(self.stop_signals.received) is not None
        if not stopped_by_signal and (last_record is None or last_record["step"] != p.step):
            last_record, _ = self._validate_everywhere(regular=False)
            say(f"step {p.step}: dev loss {last_record['dev_loss']:.3f}, BLEU {last_record['dev_bleu']:.2f}"
                f"{' (best, saved)' if last_record['best'] else ''}")
        self.save_state()
        self.dist.barrier()  # every process returns once the state is on disk
        average = test = None
        if not stopped_by_signal:
            if self.dist.is_main:
                average = self.average_last()
                test = self.score_test()
            self.dist.barrier()
        if self.writer is not None:
            self.writer.close()
        return {"steps": p.step, "epochs": p.epoch, "seconds": p.seconds, "best_dev_bleu": self.validations.best_bleu,
                "target_tokens_per_second": p.target_tokens / max(p.seconds, 1e-9),
                "model_dir": str(self.model_dir), "last_validation": last_record, "average": average, "test": test}

    # --- the end of training -------------------------------------------------------------------------------------

    def average_last(self) -> dict | None:
        """`training.average_last: N`: θ̄ = (1/N) Σ_i θ_i over the last N kept checkpoints; if its dev BLEU beats the
        best validation's, θ̄ becomes model.safetensors (`install_weights`). Both BLEUs and the choice go to
        MODEL_DIR/average.json (and TensorBoard's dev/bleu_average); returns that record (None: off, or fewer than
        two checkpoints kept)."""
        count = self.settings.average_last
        kept = checkpoint.kept_checkpoints(self.model_dir)[-count:] if count else []
        if len(kept) < 2:
            return None
        tensors = average_tensors([path for _, path in kept])
        averaged = copy.deepcopy(self.model)
        averaged.load_state_dict(tensors, strict=False)
        scores = self.dev_scores(averaged)
        best = self.validations.best_bleu
        installed = scores["bleu"] > best
        if installed:
            install_weights(self.model_dir, tensors, f"the average of {self.model_dir / checkpoint.CHECKPOINTS}")
        record = {"steps": [step for step, _ in kept], "dev_bleu": round(scores["bleu"], 2),
                  "dev_chrf": round(scores["chrf"], 2), "best_dev_bleu": round(best, 2), "installed": installed,
                  "bleu_signature": scores["bleu_signature"]}
        checkpoint.write_text(self.model_dir / AVERAGE_LOG, json.dumps(record, indent=1) + "\n")
        self._log_scalars({"dev/bleu_average": scores["bleu"]})
        return record

    def score_test(self) -> dict | None:
        """`training.score_test`: BLEU and chrF of the model directory's model (the best, or the average) on the
        test set, translated with the config's search settings; written to MODEL_DIR/test_scores.json with the
        signatures and search settings, and returned (None: off, or no test set)."""
        if not self.settings.score_test or not self.corpora.test:
            return None
        translator = Translator.load(self.model_dir, device=str(self.dist.device))
        search = translator.search_settings()
        sources, references = (list(side) for side in zip(*self.corpora.test))
        translations = translator.translate(sources, attention=False)
        scores = corpus_scores([t.text for t in translations], references, tokenize=self.bleu_tokenizer)
        record = {"test_set": describe_test_set(self.config.data), **scores,
                  "search": search_record(search.model_dump())}
        checkpoint.write_text(self.model_dir / TEST_SCORES, json.dumps(record, indent=1, ensure_ascii=False) + "\n")
        return record


def _logged_record(line: str) -> dict | None:
    """One line of validations.jsonl as its record; None for a line a crash cut short (or not a record)."""
    try:
        record = json.loads(line)
        record["step"] = int(record["step"])
    except (ValueError, KeyError, TypeError, IndexError):
        return None
    return record


def train(config: Config, model_dir: Path | None = None, resume: bool = False, show_progress: bool = True,
          refuse_spent: bool = False) -> dict:
    """Train a model as `config` says; returns a summary (steps, seconds, best dev BLEU, tokens/s, the average and
    test scores). In a process that torchrun started, train together with the others (see attnmt/distributed.py).
    `refuse_spent`: a resumed run with nothing left to train (`Trainer.spent`) is a `BudgetSpent` saying how to raise
    its budget, instead of a run of 0 steps."""
    context = distributed.init(config.training.device)
    try:
        trainer = Trainer(config, model_dir, resume, show_progress, context)
        if refuse_spent and resume and (reason := trainer.spent()) is not None:
            raise BudgetSpent(f"nothing to train: {reason}")
        return trainer.train()
    finally:
        context.close()
