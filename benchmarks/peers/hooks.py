"""Run a toolkit's own command line inside its virtual environment, timing it the same way for every system.

    python -P hooks.py train  --system NAME --log steps.jsonl [--stop-after-steps N] [--budget-seconds S] -- CLI ...
    python -P hooks.py decode --system NAME --log decode.json [--stdin FILE] [--stdout FILE] -- CLI ...
    python -P hooks.py decode --system ctranslate2 --log decode.json -- __main__:ct2_translate MODEL SRC OUT ...

CLI is a console entry point as `module:function` followed by its arguments; it runs in this process with
`sys.argv` set, exactly as the toolkit's own script would run it. Before it starts, one method of the toolkit is
wrapped (see `TRAIN_STEP` and `DECODE_BATCH`):

- train: the toolkit's function that runs one training step (forward, backward and, where it lives there, the update).
  Each call appends {"step", "start", "tokens"} to the log: its perf_counter at the start and the real (non-padding)
  target tokens of its batch. A step's time is the gap to the next step's start, so the data loading, update and
  bookkeeping between two calls count too. `--stop-after-steps N` ends the process when step N starts (logged, not
  run): N - 1 steps are timed. `--budget-seconds S` ends training at the first step that starts S seconds after the
  first step started, and saves the model the toolkit's own way (`STOP`); `--save-at-step N` does the same at
  step N (a model trained for a number of steps, whatever else loads the machine).
- decode: the function that translates one batch. The log gets the start of the first call, the end of the last, the
  number of calls: search time, without start-up, model loading, reading input or writing output.

This file runs under each peer's python with only the standard library and the toolkit itself; `-P` keeps this
folder off sys.path, so `joeynmt.py` next to it cannot shadow the real joeynmt package.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != HERE]


# ---- where each toolkit trains one step, and how many target tokens its batch holds -----------------------------

def _joeynmt_tokens(self, batch):  # TrainManager._train_step(batch): batch.ntokens = trg_mask.sum(), EOS included
    return int(batch.ntokens)


def _fairseq_tokens(self, samples, *args, **kwargs):  # Trainer.train_step(samples): "ntokens" = target tokens
    return sum(int(s["ntokens"]) for s in samples if s)


def _sockeye_tokens(self, batch):  # EarlyStoppingTrainer._step(batch): target lengths without padding
    return int(batch.target_length.sum())


def _attnmt_tokens(self, batches, step_tokens=None):  # Trainer.train_step(batch or batches[, step_tokens])
    if step_tokens:
        return int(step_tokens)
    return sum(int(b.num_tgt_tokens) for b in (batches if isinstance(batches, (list, tuple)) else [batches]))


# OpenNMT-py counts its own target words in `total_stats.n_words` (non-padding, EOS included) during the call, so its
# tokens are read after the call: see `wrap_train_step`.
TRAIN_STEP = {
    # system: (module, class, method, tokens before the call or None)
    "joeynmt": ("joeynmt.training", "TrainManager", "_train_step", _joeynmt_tokens),
    "opennmt": ("onmt.trainer", "Trainer", "_gradient_accumulation", None),
    "fairseq": ("fairseq.trainer", "Trainer", "train_step", _fairseq_tokens),
    "sockeye": ("sockeye.training", "EarlyStoppingTrainer", "_step", _sockeye_tokens),
    "attnmt": ("attnmt.training", "Trainer", "train_step", _attnmt_tokens),
}


# ---- how each toolkit stops at the end of a wall-clock budget and keeps its model --------------------------------
# Each returns True when the step that just started should still run (the toolkit then stops after it), False when
# it has stopped the toolkit itself.

def _stop_joeynmt(trainer) -> bool:
    # JoeyNMT catches KeyboardInterrupt in its training loop and saves the current weights (latest.ckpt) in `finally`.
    raise KeyboardInterrupt


def _stop_opennmt(trainer) -> bool:
    # OpenNMT-py's loop only stops at its `train_steps`; save as its own end of training does, and leave.
    trainer.model_saver.save(trainer.optim.training_step - 1, moving_average=trainer.moving_average)
    _exit(0)
    return False


def _stop_fairseq(trainer) -> bool:
    # validate_and_save() reads cfg.optimization.max_update after every update: this one is the last, and fairseq
    # saves checkpoint_last.pt as it does at max_update.
    trainer.cfg.optimization.max_update = trainer.get_num_updates() + 1
    return True


def _stop_sockeye(trainer) -> bool:
    # Sockeye checks max_updates before each step and then writes a checkpoint (params.best on the first one).
    trainer.config.max_updates = trainer.state.updates + 1
    return True


def _stop_attnmt(trainer) -> bool:
    # attnmt checks max_steps after each step, then validates once and saves the model.
    trainer.settings.max_steps = trainer.progress.step + 1
    return True


# the attribute of the trainer that holds the model (its parameters are counted once, at the first step)
MODEL = {"joeynmt": "model", "opennmt": "model", "fairseq": "model", "sockeye": "sockeye_model", "attnmt": "model"}

STOP = {"joeynmt": _stop_joeynmt, "opennmt": _stop_opennmt, "fairseq": _stop_fairseq, "sockeye": _stop_sockeye,
        "attnmt": _stop_attnmt}


# ---- where each toolkit translates one batch ---------------------------------------------------------------------

DECODE_BATCH = {
    # system: [(module holding the name that is called, attribute path)]
    "joeynmt": [("joeynmt.prediction", "search")],
    "opennmt": [("onmt.translate.translator", "Translator.translate_batch")],
    "fairseq": [("fairseq.sequence_generator", "SequenceGenerator.generate")],
    "sockeye": [("sockeye.inference", "Translator._translate_np")],
    "attnmt": [("attnmt.translator", "greedy_search"), ("attnmt.translator", "beam_search"),
               ("attnmt.backends", "CTranslate2Translator._search")],
    "ctranslate2": [("__main__", "ct2_search")],  # a peer's CTranslate2 conversion, decoded by ct2_translate below
}


# ---- CTranslate2 for a peer's converted model ----------------------------------------------------------------------

def ct2_search(translator, batch: list[list[str]], **options) -> list:
    """Sentences through CTranslate2 (the call the hook times)."""
    return translator.translate_batch(batch, **options)


def ct2_translate() -> int:
    """ct2_translate MODEL_DIR SOURCE_PIECES OUTPUT --beam K --batch-size N --max-length L --inter-threads I
    --intra-threads J: translate pre-segmented sources with a CTranslate2 model as attnmt's CTranslate2 backend does
    (one translate_batch call: CTranslate2 sorts the sentences by length into batches of N and decodes I batches at
    once, each on J threads), and write the output pieces in input order. CTranslate2 chooses its matrix library
    itself, as in attnmt's backend."""
    parser = argparse.ArgumentParser(prog="ct2_translate")
    parser.add_argument("model")
    parser.add_argument("source")
    parser.add_argument("output")
    parser.add_argument("--beam", type=int, required=True)
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--max-length", type=int, required=True)
    parser.add_argument("--inter-threads", type=int, required=True)
    parser.add_argument("--intra-threads", type=int, required=True)
    parser.add_argument("--compute-type", default="default")
    args = parser.parse_args(sys.argv[1:])
    import ctranslate2
    translator = ctranslate2.Translator(args.model, device="cpu", compute_type=args.compute_type,
                                        inter_threads=args.inter_threads, intra_threads=args.intra_threads)
    with open(args.source, encoding="utf-8") as lines:
        sources = [line.split() for line in lines]
    search = globals()["ct2_search"]  # the timed wrapper, once the hook has installed it
    results = search(translator, sources, max_batch_size=args.batch_size, beam_size=args.beam,
                     max_decoding_length=args.max_length, length_penalty=1.0)
    with open(args.output, "w", encoding="utf-8") as out:
        out.writelines(" ".join(result.hypotheses[0]) + "\n" for result in results)
    return 0


# ---- the wrappers ------------------------------------------------------------------------------------------------

_LOG = None


def _exit(code: int) -> None:
    """Leave at once (no atexit handlers of the toolkit, no waiting for its worker threads), logs flushed."""
    if _LOG is not None:
        _LOG.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _replace(module_name: str, path: str, make_wrapper) -> None:
    """Replace `module.Class.method` (or `module.function`) with make_wrapper(original)."""
    owner = importlib.import_module(module_name)
    *parents, name = path.split(".")
    for parent in parents:
        owner = getattr(owner, parent)
    setattr(owner, name, make_wrapper(getattr(owner, name)))


def wrap_train_step(system: str, log, stop_after: int | None, budget: float | None, save_at: int | None) -> None:
    module, cls, method, tokens_before = TRAIN_STEP[system]
    state = {"step": 0, "first": None, "stopping": False}

    def make_wrapper(original):
        @functools.wraps(original)
        def timed(self, *args, **kwargs):
            now = time.perf_counter()
            state["step"] += 1
            step = state["step"]
            if state["first"] is None:
                state["first"] = now
                model = getattr(self, MODEL[system], None)
                if model is not None:
                    log.write(json.dumps({"parameters": sum(p.numel() for p in model.parameters())}) + "\n")
            if stop_after is not None and step >= stop_after:
                log.write(json.dumps({"step": step, "start": now, "tokens": None, "stop": "steps"}) + "\n")
                _exit(0)
            over_budget = budget is not None and now - state["first"] >= budget
            if (over_budget or (save_at is not None and step >= save_at)) and not state["stopping"]:
                state["stopping"] = True
                reason = "budget" if over_budget else "steps"
                log.write(json.dumps({"step": step, "start": now, "tokens": None, "stop": reason}) + "\n")
                log.flush()
                if not STOP[system](self):
                    return None
            if tokens_before is not None:
                tokens = tokens_before(self, *args, **kwargs)
                result = original(self, *args, **kwargs)
            else:  # OpenNMT-py: _gradient_accumulation(true_batches, normalization, total_stats, report_stats)
                total_stats = args[2]
                before = total_stats.n_words
                result = original(self, *args, **kwargs)
                tokens = int(total_stats.n_words - before)
            log.write(json.dumps({"step": step, "start": now, "tokens": tokens}) + "\n")
            return result
        return timed

    _replace(module, f"{cls}.{method}", make_wrapper)


def wrap_decode(system: str, log_path: str) -> None:
    state = {"first_start": None, "last_end": None, "calls": 0}

    def save() -> None:
        with open(log_path, "w", encoding="utf-8") as out:
            json.dump(state, out)

    def make_wrapper(original):
        @functools.wraps(original)
        def timed(*args, **kwargs):
            start = time.perf_counter()
            if state["first_start"] is None:
                state["first_start"] = start
            result = original(*args, **kwargs)
            state["last_end"] = time.perf_counter()
            state["calls"] += 1
            save()
            return result
        return timed

    for module, path in DECODE_BATCH[system]:
        _replace(module, path, make_wrapper)


def main() -> None:
    global _LOG
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["train", "decode"])
    parser.add_argument("--system", required=True, choices=sorted(DECODE_BATCH))
    parser.add_argument("--log", required=True)
    parser.add_argument("--stop-after-steps", type=int)
    parser.add_argument("--budget-seconds", type=float)
    parser.add_argument("--save-at-step", type=int)
    parser.add_argument("--stdin", help="a file to read as standard input")
    parser.add_argument("--stdout", help="a file to write standard output to")
    argv = sys.argv[1:]
    if "--" not in argv or argv.index("--") == len(argv) - 1:
        parser.error("give the toolkit's command line after --: -- module:function ARGS...")
    split = argv.index("--")
    args, cli = parser.parse_args(argv[:split]), argv[split + 1:]

    threads = os.environ.get("ATTNMT_PEERS_THREADS")
    if threads:
        import torch
        torch.set_num_threads(int(threads))

    if args.mode == "train":
        _LOG = open(args.log, "a", encoding="utf-8", buffering=1)
        wrap_train_step(args.system, _LOG, args.stop_after_steps, args.budget_seconds, args.save_at_step)
    else:
        wrap_decode(args.system, args.log)
    if args.stdin:
        sys.stdin = open(args.stdin, encoding="utf-8")
    if args.stdout:
        sys.stdout = open(args.stdout, "w", encoding="utf-8")

    module_name, function_name = cli[0].split(":")
    sys.argv = [module_name.rsplit(".", 1)[-1], *cli[1:]]
    entry = getattr(importlib.import_module(module_name), function_name)
    try:
        code = entry()
    except SystemExit as stop:
        code = stop.code
    if _LOG is not None:
        _LOG.close()
    sys.stdout.flush()
    # os._exit rather than sys.exit: some toolkits leave non-daemon threads (tensorboard writers) behind.
    os._exit(code if isinstance(code, int) else (0 if code is None else 1))


if __name__ == "__main__":
    main()
