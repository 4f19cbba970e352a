"""The `attnmt` command: parse the arguments, call the modules, print. Errors users cause print as one message; so
does anything else that goes wrong (an internal error: its traceback goes to a file, `error_log_folders`)."""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import queue
import secrets
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

import yaml

from attnmt import __version__
from attnmt.config import LENGTH_SLACK
from attnmt.evaluation import TOKENIZERS
from attnmt.quantization import DEFAULT_QUANTIZATION, QUANTIZATIONS
from attnmt.errors import AttnmtError, BudgetSpent, CheckpointError, CorpusError, StorageError

DEMO_CONFIG = "pkg://configs/ko_en_demo.yaml"
DEMO_EXAMPLES = 8
MESSAGE_CHARS = 300  # of an internal error's message on the terminal (the log file has all of it)


def _overrides(pairs: list[str]) -> dict:
    values = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise AttnmtError(f"--set {pair!r}: write KEY=VALUE, e.g. --set training.max_steps=100")
        values[key] = yaml.safe_load(value)
    return values


def _search_options(args) -> dict:
    """The search options of the command line (None: not given, the model's default); `SearchConfig.resolve`
    checks them."""
    return {"beam_size": args.beam_size, "n_best": getattr(args, "n_best", None),
            "length_penalty": args.length_penalty, "max_length_ratio": args.max_length_ratio,
            "batch_size": args.batch_size, "prefix": args.prefix, "min_length": args.min_length,
            "no_repeat_ngram_size": args.no_repeat_ngram_size, "sampling": args.sample or None, "top_k": args.top_k,
            "top_p": args.top_p, "temperature": args.temperature, "seed": args.seed}


def _train_arguments(args) -> list[str]:
    """The arguments of `attnmt train` as given, less --distributed: what each of its processes runs."""
    arguments = [args.config]
    if args.model_dir:
        arguments += ["--model-dir", args.model_dir]
    for pair in args.set:
        arguments += ["--set", pair]
    return arguments + ["--resume"] * args.resume + ["--quiet"] * args.quiet


def launch_distributed(args) -> None:
    """`attnmt train --distributed N ...`: `torchrun --standalone --nproc-per-node N -m attnmt train ...`, N processes
    on this machine. Several machines: run torchrun on each (docs/distributed.md)."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    from attnmt import distributed
    from attnmt.config import load_config

    if args.distributed < 1:
        raise AttnmtError(f"--distributed {args.distributed}: give the number of processes, at least 1 (e.g. one per "
                          f"GPU)")
    if distributed.launched_by_torchrun():
        raise AttnmtError("--distributed starts torchrun, but this process already is one of torchrun's: drop "
                          "--distributed (torchrun's --nproc-per-node sets the number of processes)")
    load_config(args.config, _overrides(args.set))  # a bad config is one message here, not one per process
    try:
        torchrun(["--standalone", f"--nproc-per-node={args.distributed}", "-m", "attnmt", "train",
                  *_train_arguments(args)])
    except ChildFailedError as failure:
        codes = sorted({f.exitcode for f in failure.failures.values()})
        if codes == [BudgetSpent.exit_status]:
            raise BudgetSpent("the run has nothing left to train: the message above says how to raise its budget"
                              ) from None
        raise AttnmtError(f"training processes failed (exit code {', '.join(map(str, codes))}); their messages "
                          f"are above") from None


def command_train(args) -> None:
    from attnmt import distributed
    from attnmt.config import load_config
    from attnmt.training import train

    if args.distributed is not None:
        launch_distributed(args)
        return
    config = load_config(args.config, _overrides(args.set))
    summary = train(config, Path(args.model_dir) if args.model_dir else None, resume=args.resume,
                    show_progress=not args.quiet, refuse_spent=True)
    if not distributed.is_main():
        return
    print(f"trained {summary['steps']} steps in {summary['seconds'] / 60:.1f} min "
          f"({summary['target_tokens_per_second']:,.0f} target tokens/s); best dev BLEU {summary['best_dev_bleu']:.2f}; "
          f"model in {summary['model_dir']}")
    _print_end_of_training(summary)


def _print_end_of_training(summary: dict) -> None:
    """What `training.average_last` chose and the test scores (test_scores.json), if the run had them."""
    from attnmt.evaluation import format_scores

    if (average := summary.get("average")) is not None:
        chosen = "it is the model now" if average["installed"] else "the best model stays"
        print(f"average of the checkpoints of steps {', '.join(map(str, average['steps']))}: dev BLEU "
              f"{average['dev_bleu']:.2f}, the best validation's {average['best_dev_bleu']:.2f}: {chosen}")
    if (test := summary.get("test")) is not None:
        print(f"test: {test['test_set']}")
        print("\n".join("  " + line for line in format_scores(test, test["search"])))


STDIN_PAUSE_S = 0.05  # stdin quiet this long: translate the lines read so far (translate's streaming)
BUFFER_SIZE = 1000  # default --buffer-size: lines translated together at most
_END = object()  # the reader thread's last item: the end of standard input


TRANSLATE_FORMATS = f"""Translate each input line, in order: one output line per input line (a blank line gives an
empty line), written and flushed as each batch is done, so attnmt translate can sit in a pipe.

--n-best K: K lines per input line, "index<TAB>rank<TAB>score<TAB>logprob<TAB>text":
  index    the input line, 0-based          rank     1..K, best first
  score    what the beam ranks by: logprob / ((5 + n) / 6) ** length_penalty, n the tokens with EOS
  logprob  the model's log-probability Σ log p(y_t | y_<t, x) (the two are equal with length_penalty 0
           or greedy search)
  A blank input line gives one line "index<TAB>1<TAB>0.0000<TAB>0.0000<TAB>" (an empty text).
--print-alignment: "<TAB>i-j i-j ..." after each line's text, one pair per target word j (0-based), i its
  strongest source word by the attention (subword pieces merged into words: a source word's pieces
  summed, a target word's averaged); --layer/--head choose the attention (default: the last layer,
  averaged over its heads). Attention is not a guaranteed word alignment.
Several model directories: one ensemble (same tokenizer files); the first's config gives the defaults.
Streaming: a batch is translated once --buffer-size lines are read, or when stdin has paused for
{STDIN_PAUSE_S * 1000:g} ms."""

SCORE_FORMATS = """The model's log-probability of each reference given its source, by teacher forcing: one line per
pair, "index<TAB>logprob<TAB>tokens" (index 0-based; logprob Σ log p(y_t | y_<t, x) over the
reference's subwords and EOS; tokens their count, EOS included), then on stderr the corpus perplexity
exp(−Σ logprob / Σ tokens). --json: one JSON object {"pairs": [{"index", "log_prob", "tokens"}, ...],
"log_prob", "tokens", "perplexity"} on stdout. An empty reference is EOS alone; an empty source is an error."""


def _stdin_error(line_number: int) -> CorpusError:
    return CorpusError(f"standard input is not UTF-8 text (at or after line {line_number}); re-encode it, e.g. with "
                       f"`iconv -f CP949 -t UTF-8` (use its real encoding), or give it as --input FILE to see the line "
                       f"and byte")


def _read_stdin_lines(into: queue.Queue) -> None:
    """The reader thread of `stdin_batches`: each line of standard input (which must be UTF-8: a byte that is not, a
    decoding error or the surrogate a C locale's stdin passes it on as, is a `CorpusError`) into the queue, then an
    exception if reading failed, then `_END`."""
    count = 0
    try:
        for line in sys.stdin:
            line.encode("utf-8")  # a surrogate does not encode
            into.put(line.rstrip("\r\n"))
            count += 1
    except UnicodeError:
        into.put(_stdin_error(count + 1))
    except BaseException as error:  # handed to the main thread, which raises it
        into.put(error)
    into.put(_END)


def stdin_batches(buffer_size: int, pause_s: float = STDIN_PAUSE_S) -> Iterator[list[str]]:
    """Standard input's lines in batches, as they arrive: a batch ends at `buffer_size` lines, when no further line
    comes within `pause_s` (a person typing, a pipe that pauses) and at the end of the input. A reader thread reads
    stdin into a queue, so a batch is translated while later lines are read. A read error (not UTF-8) is raised
    instead of the batch it falls in."""
    lines: queue.Queue = queue.Queue(maxsize=2 * buffer_size)
    threading.Thread(target=_read_stdin_lines, args=(lines,), daemon=True, name="attnmt-stdin").start()
    batch: list[str] = []
    while True:
        try:
            item = lines.get(timeout=pause_s) if batch else lines.get()
        except queue.Empty:  # stdin paused: translate what there is
            yield batch
            batch = []
            continue
        if isinstance(item, BaseException):  # the batch it falls in is not translated
            raise item
        if item is _END:
            if batch:
                yield batch
            return
        batch.append(item)
        if len(batch) >= buffer_size:
            yield batch
            batch = []


def _input_batches(args, translator, limit: int) -> Iterator[list[str]]:
    """The input in batches of at most --buffer-size lines: a file read whole (and every line checked against the
    source length cap before anything is translated), or stdin as it arrives (`stdin_batches`; each batch checked
    before it is translated)."""
    from attnmt.data import read_lines

    if args.input is None:
        offset = 0
        for batch in stdin_batches(args.buffer_size):
            _check_lengths(args, translator, batch, limit, offset)
            yield batch
            offset += len(batch)
        return
    lines = read_lines(Path(args.input), role="input file")
    _check_lengths(args, translator, lines, limit, 0)
    for start in range(0, len(lines), args.buffer_size):
        yield lines[start:start + args.buffer_size]


def _check_lengths(args, translator, lines: list[str], limit: int, offset: int) -> None:
    """The source length cap (`check_source_lengths`) over lines `offset`..., as a message naming the input line."""
    from attnmt.errors import TextTooLong
    from attnmt.translator import check_source_lengths

    try:
        check_source_lengths(translator.source_lengths(lines), limit)
    except TextTooLong as error:
        cap = "--max-source-tokens" if args.max_source_tokens else \
            "the model's data.max_length, the longest source it was trained on"
        raise AttnmtError(f"{args.input or 'stdin'} line {offset + error.index + 1}: {error.length} subwords, over "
                          f"the limit of {error.limit} ({cap}); split the line, or raise the limit with "
                          f"--max-source-tokens {error.length}") from None


def _check_alignment_options(args, translator) -> None:
    """--print-alignment needs a model with attention; --layer/--head (checked by `attention_view`'s one rule) only
    go with it."""
    import numpy as np

    from attnmt.translator import attention_view

    if not args.print_alignment:
        if args.layer is not None or args.head is not None:
            raise AttnmtError("--layer and --head choose the attention that --print-alignment reads; add "
                              "--print-alignment, or leave them out")
        return
    layout = translator.describe()
    if not layout.has_attention:
        raise AttnmtError(f"--print-alignment reads the attention, but the model ({' '.join(args.model_dir)}) has "
                          f"`attention: none`; leave --print-alignment out")
    attention_view(np.zeros((layout.attention_layers, layout.attention_heads, 0, 0)), args.layer, args.head)


def translation_lines(index: int, result, n_best: bool, alignment=None) -> list[str]:
    """What `attnmt translate` prints for input line `index` (0-based): the text, or with --n-best one line per
    hypothesis "index<TAB>rank<TAB>score<TAB>logprob<TAB>text" (rank 1-based, score the ranking score, logprob
    Σ log p; a blank input line: one empty hypothesis "index<TAB>1<TAB>0.0000<TAB>0.0000<TAB>"); `alignment` (a
    hypothesis → its Moses pairs) adds "<TAB>i-j ..." to each line."""
    hypotheses = (result.n_best or [result]) if n_best else [result]
    lines = []
    for rank, hypothesis in enumerate(hypotheses, start=1):
        line = f"{index}\t{rank}\t{hypothesis.score:.4f}\t{hypothesis.log_prob:.4f}\t{hypothesis.text}" if n_best \
            else hypothesis.text
        lines.append(line if alignment is None else f"{line}\t{alignment(hypothesis)}")
    return lines


def _moses_alignment(layer: int | None, head: int | None):
    """hypothesis → its word alignment "i-j ..." (`attnmt.alignment.word_alignment`) by the attention view of `layer`
    and `head` (`Translation.attention_view`: default the last layer, averaged over its heads)."""
    from attnmt.alignment import moses_format, word_alignment

    def pairs(hypothesis) -> str:
        weights = hypothesis.attention_view(layer, head)  # [T + 1, S]
        return moses_format(word_alignment(weights, hypothesis.source_tokens, hypothesis.tokens))

    return pairs


def command_translate(args) -> None:
    from attnmt.translator import Translator

    if args.max_source_tokens is not None and args.max_source_tokens < 1:
        raise AttnmtError(f"--max-source-tokens {args.max_source_tokens}: give a number of subwords, at least 1")
    if args.buffer_size < 1:
        raise AttnmtError(f"--buffer-size {args.buffer_size}: give a number of lines, at least 1")
    translator = Translator.load(args.model_dir, device=args.device, mixed_precision=args.mixed_precision,
                                 quantization=args.quantization, **_backend_options(args))
    translator.search_settings(**_search_options(args))  # a bad option stops here, before any input is read
    _check_alignment_options(args, translator)
    alignment = _moses_alignment(args.layer, args.head) if args.print_alignment else None
    limit = args.max_source_tokens or translator.max_source_tokens
    index = 0
    for batch in _input_batches(args, translator, limit):
        results = translator.translate(batch, attention=args.print_alignment, **_search_options(args))
        for result in results:
            for line in translation_lines(index, result, args.n_best is not None, alignment):
                print(line)
            index += 1
        sys.stdout.flush()


def command_score(args) -> None:
    from attnmt.config import CorpusConfig
    from attnmt.data import read_corpus
    from attnmt.translator import Translator, perplexity

    translator = Translator.load(args.model_dir, device=args.device, mixed_precision=args.mixed_precision,
                                 quantization=args.quantization)
    translator.search_settings(batch_size=args.batch_size)  # a bad --batch-size stops here
    pairs = read_corpus(CorpusConfig(src=args.src, tgt=args.ref))
    for number, (source, _) in enumerate(pairs, start=1):
        if not source:
            raise CorpusError(f"{args.src} line {number}: the source is empty, and a reference is scored given its "
                              f"source; fill the line, or remove it from both files")
    scores = translator.score([s for s, _ in pairs], [r for _, r in pairs], batch_size=args.batch_size)
    total, tokens, value = sum(s.log_prob for s in scores), sum(s.tokens for s in scores), perplexity(scores)
    if args.json:
        finite = lambda number: number if math.isfinite(number) else None  # noqa: E731 (JSON has no inf)
        print(json.dumps({"pairs": [{"index": i, "log_prob": finite(s.log_prob), "tokens": s.tokens}
                                    for i, s in enumerate(scores)],
                          "log_prob": finite(total), "tokens": tokens, "perplexity": finite(value)}, indent=1))
        return
    for index, result in enumerate(scores):
        print(f"{index}\t{result.log_prob:.4f}\t{result.tokens}")
    sys.stdout.flush()
    print(f"{len(scores)} pairs, {tokens} target tokens (EOS included): log-probability {total:.4f}, perplexity "
          f"{value:.4f}", file=sys.stderr)


def _evaluation_pairs(args) -> list[tuple[str, str]]:
    """evaluate's input: --src + --ref (two aligned files) or --tsv (source<TAB>reference lines)."""
    from attnmt.config import CorpusConfig
    from attnmt.data import read_corpus

    if args.tsv is not None and (args.src is not None or args.ref is not None):
        raise AttnmtError("give either --tsv FILE (source<TAB>reference lines) or --src and --ref, not both")
    if args.tsv is not None:
        return read_corpus(CorpusConfig(tsv=args.tsv, src_column=0, tgt_column=1))
    if args.src is None or args.ref is None:
        raise AttnmtError("give the sentences to score: --src FILE --ref FILE (aligned lines), or --tsv FILE "
                          "(source<TAB>reference lines)")
    return read_corpus(CorpusConfig(src=args.src, tgt=args.ref))


def command_evaluate(args) -> None:
    from attnmt.evaluation import (bleu_by_length, check_tokenizer, corpus_scores, default_tokenizer, format_report,
                                   search_record, source_word_lengths)
    from attnmt.translator import Translator

    if args.tokenize is not None:
        check_tokenizer(args.tokenize)  # before the model loads
    pairs = _evaluation_pairs(args)
    sources, references = [s for s, _ in pairs], [r for _, r in pairs]
    translator = Translator.load(args.model_dir, device=args.device, mixed_precision=args.mixed_precision,
                                 quantization=args.quantization, **_backend_options(args))
    search = search_record(translator.search_settings(**_search_options(args)).model_dump())
    tokenize = args.tokenize or default_tokenizer(translator.config.data.tgt_lang)
    translations = translator.translate(sources, attention=False, **_search_options(args))
    hypotheses = [t.text for t in translations]
    if args.output:
        Path(args.output).write_text("".join(h + "\n" for h in hypotheses), encoding="utf-8")
    scores = corpus_scores(hypotheses, references, tokenize=tokenize)
    if args.length_unit == "words":
        lengths = source_word_lengths(sources)
    else:
        lengths = [len(t.source_tokens) for t in translations]
    buckets = bleu_by_length(lengths, hypotheses, references, tokenize=tokenize)
    if args.json:
        print(json.dumps({**scores, "tokenize": tokenize, "search": search, "length_unit": args.length_unit,
                          "bleu_by_length": buckets}, indent=1))
    else:
        print(format_report(scores, buckets, args.length_unit, search))


def command_average(args) -> None:
    """θ̄ = (1/N) Σ_i θ_i over the last N checkpoints `training.keep_checkpoints` kept in MODEL_DIR/checkpoints/:
    to -o FILE, and/or (--into-model) as the model directory's model.safetensors, once it loads."""
    from attnmt.averaging import average_tensors
    from attnmt.checkpoint import CHECKPOINTS, MODEL_FILE, last_checkpoints, save_tensors
    from attnmt.training import install_weights

    if args.output is None and not args.into_model:
        raise AttnmtError("say where the average goes: -o FILE.safetensors, and/or --into-model (it becomes "
                          f"{Path(args.model_dir) / MODEL_FILE})")
    kept = last_checkpoints(args.model_dir, args.n)
    tensors = average_tensors([path for _, path in kept])
    steps = ", ".join(str(step) for step, _ in kept)
    if args.into_model:  # first: a model that would not load is refused before anything is written
        install_weights(Path(args.model_dir), tensors, f"the average of {Path(args.model_dir) / CHECKPOINTS}")
        print(f"{Path(args.model_dir) / MODEL_FILE} is now the average of the checkpoints of steps {steps} "
              f"(manifest.json rewritten)")
    if args.output is not None:
        save_tensors(Path(args.output), tensors)
        print(f"{args.output}: the average of the checkpoints of steps {steps}")


def command_attention(args) -> None:
    """Default: the heatmap of `Translation.attention` (the last attention layer, averaged over its heads).
    --layer L / --head H (1-based) pick an attention layer and a head; --all-heads draws a grid of every head of
    --layer, or of every layer × head."""
    from attnmt.plotting import plot_attention, plot_attention_grid
    from attnmt.translator import Translator

    if args.all_heads and args.head is not None:
        raise AttnmtError("--all-heads draws every head; give either --all-heads or --head, not both")
    translator = Translator.load(args.model_dir, device=args.device, mixed_precision=args.mixed_precision,
                                 quantization=args.quantization)
    if not translator.describe().has_attention:
        raise AttnmtError(f"the model in {args.model_dir} has `attention: none`: there is no attention to draw")
    result = translator.translate([args.sentence], beam_size=args.beam_size)[0]
    if not result.source_tokens:
        raise AttnmtError(f"the sentence {args.sentence!r} is empty: there is no attention to draw")
    title = f"{args.sentence} → {result.text}"
    source, target = result.source_tokens, result.target_tokens_with_eos
    layers, head_count = result.attention_heads.shape[:2]
    if args.all_heads:
        result.attention_view(args.layer)  # checks --layer
        chosen = range(1, layers + 1) if args.layer is None else [args.layer]
        matrices = [result.attention_view(l, h) for l in chosen for h in range(1, head_count + 1)]
        titles = [f"layer {l}, head {h}" for l in chosen for h in range(1, head_count + 1)]
        path = plot_attention_grid(matrices, titles, source, target, args.output, columns=head_count)
    else:
        matrix = result.attention_view(args.layer, args.head)
        if args.layer is None and args.head is None:
            view = ""
        else:
            layer = layers if args.layer is None else args.layer
            view = f"\nlayer {layer}, " + (f"mean over {head_count} heads" if args.head is None else f"head {args.head}")
        path = plot_attention(matrix, source, target, args.output, title=title + view)
    print(f"{result.text}\nheatmap written to {path}")


def command_demo(args) -> None:
    """Train the demo's model (its config's step budget, so every machine trains the same model; a wall-clock guard
    stops a machine far slower than planned, and says so), then show it on the held-out pairs: BLEU, where the
    attention looks, a few translations and the heatmap of an instructive sentence."""
    import numpy as np
    from sacrebleu.metrics import CHRF

    from attnmt.alignment import attention_entropy, crossings, instructive_example, last_source_share
    from attnmt.checkpoint import has_train_state
    from attnmt.config import load_config
    from attnmt.evaluation import corpus_scores, default_tokenizer
    from attnmt.plotting import plot_attention
    from attnmt.training import Trainer
    from attnmt.translator import Translator

    overrides = {"training.max_minutes": args.max_minutes} if args.max_minutes else {}
    if args.max_steps:
        overrides["training.max_steps"] = args.max_steps
    overrides["training.score_test"] = False  # the demo scores the held-out pairs itself, below
    config = load_config(args.config, overrides)
    model_dir = Path(args.model_dir)
    resume = has_train_state(model_dir)
    trainer = Trainer(config, model_dir, resume=resume)
    if resume:
        print(f"{model_dir} already holds this demo's run: continuing it (delete the folder to start over)")
    budget = config.training
    print(f"attnmt demo: a Korean→English model ({trainer.model.describe().summary}) on Tatoeba kor-eng "
          f"(CC BY 2.0 FR, tatoeba.org and manythings.org/anki), "
          + (f"{budget.max_steps} steps" if budget.max_steps else f"{budget.max_epochs} epochs")
          + (f" (a guard stops it after {budget.max_minutes:g} minutes on a slow machine)" if budget.max_minutes
             else ""))
    summary = trainer.train()
    if budget.max_steps and summary["steps"] < budget.max_steps and not trainer.validations.stopped_early:
        print(f"note: the wall-clock guard ({budget.max_minutes:g} min) stopped training at step {summary['steps']} "
              f"of {budget.max_steps}: this machine is slower than the demo was sized for, so the figures below are "
              f"lower than on a faster one (run `attnmt demo` again to continue the run)")
    translator = Translator.load(model_dir)
    sources, references = (list(side) for side in zip(*trainer.corpora.test))
    translations = translator.translate(sources, beam_size=config.search.beam_size)
    hypotheses = [t.text for t in translations]
    scores = corpus_scores(hypotheses, references, tokenize=default_tokenizer(config.data.tgt_lang))
    print(f"\nheld-out test ({len(sources)} pairs never seen in training), beam {config.search.beam_size}: "
          f"BLEU {scores['bleu']:.2f}, chrF {scores['chrf']:.2f}")
    shown = [i for i, t in enumerate(translations) if t.attention is not None and t.attention.size]
    matrices = [translations[i].attention for i in shown]
    if matrices:
        print(f"attention: {100 * last_source_share(matrices):.1f}% of target words look hardest at the last source "
              f"token (a model that has not learned to align rests there), mean entropy "
              f"{np.mean([attention_entropy(m) for m in matrices]):.2f} nats")
    for source, reference, hypothesis in list(zip(sources, references, hypotheses))[:DEMO_EXAMPLES]:
        print(f"  ko:  {source}\n  ref: {reference}\n  out: {hypothesis}\n")
    print(f"model: {model_dir}  ({summary['steps']} steps, {summary['seconds'] / 60:.1f} min of training)")
    if matrices:
        chrf = CHRF()
        quality = [chrf.sentence_score(h, [r]).score for h, r in zip(hypotheses, references)]
        pick = shown[instructive_example(matrices, [quality[i] for i in shown])]
        example = translations[pick]
        heatmap = plot_attention(example.attention, example.source_tokens, example.target_tokens_with_eos,
                                 model_dir / "attention.png", title=f"{sources[pick]} → {example.text}")
        why = "whose word order changes" if crossings(example.attention) else "of several words"
        print(f"heatmap: {heatmap}  (\"{sources[pick]}\": a held-out sentence {why})")
    print(f"try:  attnmt translate {model_dir} <<< '나는 학생이에요.'\n"
          f"      attnmt attention {model_dir} '나는 학생이에요.' -o heatmap.png\n"
          f"      attnmt serve {model_dir}")


def command_data(args) -> None:
    from attnmt.data.catalog import CORPORA, fetch

    if args.name is not None and args.name not in CORPORA:
        raise AttnmtError(f"unknown corpus {args.name!r}; choose one of {', '.join(CORPORA)}")
    if args.name is None:
        for corpus in CORPORA.values():
            print(f"{corpus.name}: {corpus.description}\n    licence: {corpus.licence}")
        return
    if args.directory is None:
        raise AttnmtError(f"say where {args.name} goes: attnmt data {args.name} DIR (it writes DIR/{args.name}/)")
    print(f"attnmt data: {args.name} into {Path(args.directory) / args.name}")
    folder = fetch(args.name, args.directory, mirror=args.mirror)
    print(f"done: {folder} (SOURCE.md there says where the files come from and their licence)")


def command_study(args) -> None:
    from attnmt.study import run_study

    rows = run_study(args.config, args.grid, args.out, args.cells)
    print(f"{len(rows)} cells; tables and plots in {args.out}")


def command_verify(args) -> None:
    """Check each file of a model directory against its manifest.json, then load the model (finite weights that fit
    its config and tokenizer). --write: load the model as its files are, then write manifest.json for them."""
    from attnmt import manifest
    from attnmt.translator import Translator

    model_dir = Path(args.model_dir)
    if args.write:
        translator = Translator.load(model_dir, device="cpu", check_manifest=False)
        manifest.write(model_dir)
        print(f"wrote {model_dir / manifest.MANIFEST_FILE}: the SHA-256 of each file of this model "
              f"({translator.describe().summary}); loading it checks them from now on")
        return
    checks = manifest.verify(model_dir)
    for check in checks:
        print(f"OK        {check.name}" if check.problem is None else f"MISMATCH  {check.name} {check.problem}")
    failed = [check.name for check in checks if check.problem]
    if failed:
        raise CheckpointError(f"{model_dir}: {len(failed)} of {len(checks)} files do not match "
                              f"{manifest.MANIFEST_FILE} ({', '.join(failed)}); restore the directory from a copy or "
                              f"retrain it (if you changed them on purpose: attnmt verify --write {model_dir})")
    translator = Translator.load(model_dir, device="cpu", check_manifest=False)
    print(f"OK        the model loads: {translator.describe().summary}; finite weights that fit its config and "
          f"tokenizer")


def command_serve(args) -> None:
    from attnmt.serve import ServeSettings, serve

    settings = ServeSettings.from_options(
        batching=not args.no_batching, max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms,
        threads=args.threads, max_text_chars=args.max_text_chars, max_texts=args.max_texts,
        max_beam_size=args.max_beam_size, max_n_best=args.max_n_best, max_body_bytes=args.max_body_bytes,
        max_source_tokens=args.max_source_tokens, max_request_work=args.max_request_work,
        max_attention_values=args.max_attention_values, request_timeout_s=args.request_timeout_s,
        allowed_hosts=args.allowed_host, api_key=args.api_key, rate_limit=args.rate_limit)
    model_dirs = args.model_dir[0] if len(args.model_dir) == 1 else args.model_dir  # one: served as before
    serve(model_dirs, host=args.host, port=args.port, settings=settings, log_level=args.log_level,
          device=args.device, mixed_precision=args.mixed_precision, quantization=args.quantization,
          **_backend_options(args))


def command_export(args) -> None:
    from attnmt.export import export_ctranslate2

    out = export_ctranslate2(args.model_dir, args.output, quantization=args.quantization, positions=args.positions)
    print(f"attnmt export: {args.model_dir} → {out} (CTranslate2, {args.quantization}); translate with it: attnmt "
          f"translate {args.model_dir} --backend ctranslate2")


def _add_search_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--beam-size", type=int, help="1 = greedy; default from the model's config")
    parser.add_argument("--length-penalty", type=float, help="alpha of ((5 + length) / 6) ** alpha")
    parser.add_argument("--max-length-ratio", type=float,
                        help=f"stop at ratio × source length + {LENGTH_SLACK} tokens")
    parser.add_argument("--batch-size", type=int, help="sentences decoded together")
    parser.add_argument("--prefix", metavar="TEXT",
                        help="start every translation with this target text (its subwords forced, their "
                             "log-probabilities counted), then decode freely")
    parser.add_argument("--min-length", type=int, metavar="N",
                        help="target subwords (the prefix's included) before the end of a translation is allowed")
    parser.add_argument("--no-repeat-ngram-size", type=int, metavar="N",
                        help="never repeat an n-gram of target subwords within a translation (0: off)")
    parser.add_argument("--sample", action="store_true",
                        help="draw each subword from the model's distribution instead of the best (back-translation); "
                             "greedy: beam size 1")
    parser.add_argument("--top-k", type=int, metavar="K", help="with --sample: among the K most probable subwords")
    parser.add_argument("--top-p", type=float, metavar="P",
                        help="with --sample: within the fewest most probable subwords of probability ≥ P (nucleus)")
    parser.add_argument("--temperature", type=float, metavar="T",
                        help="with --sample: draw from p ** (1 / T); below 1 sharper, above 1 flatter")
    parser.add_argument("--seed", type=int, help="with --sample: the same seed draws the same translation of a line")


def _device_name(value: str) -> str:
    """argparse type of --device: one of auto | cpu | cuda | cuda:N, or a message listing them."""
    from attnmt.devices import check_name

    try:
        return check_name(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _add_device_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", type=_device_name, default="auto",
                        help="where the model translates: auto (a GPU if torch sees one, else the CPU), cpu, cuda or "
                             "cuda:N (default auto)")
    parser.add_argument("--mixed-precision", choices=["none", "bf16", "fp16"], default="none",
                        help="translate under torch.autocast: bf16 (CPUs with bfloat16 instructions, recent GPUs) or "
                             "fp16 (GPUs); log-probabilities stay float32 (default none: float32)")
    parser.add_argument("--quantization", choices=QUANTIZATIONS, default=DEFAULT_QUANTIZATION,
                        help="int8: dynamic int8 weights and activations on the CPU, faster decoding (each family "
                             "quantizes its own layers; docs/translate.md); default none: float32")


def _backend_options(args) -> dict:
    return {"backend": args.backend, "compute_type": args.compute_type, "parallel_batches": args.parallel_batches}


def _add_backend_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", choices=["torch", "ctranslate2"], default="torch",
                        help="ctranslate2: decode with the model's CTranslate2 export (attnmt export; Transformers "
                             "only; docs/export.md); default torch")
    parser.add_argument("--compute-type", metavar="TYPE",
                        help="with --backend ctranslate2: float32, int8, int8_float32 (CPU), float16, int8_float16 "
                             "(GPU), ...; default: the export's own")
    parser.add_argument("--parallel-batches", type=int, metavar="N",
                        help="with --backend ctranslate2: batches decoded at once, sharing the CPU threads (default: "
                             "one per thread, the faster for many sentences; 1: one batch at a time on all the "
                             "threads)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="attnmt", description="Sequence-to-sequence translation with attention.")
    parser.add_argument("--version", action="version", version=f"attnmt {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a model from a YAML config")
    train.add_argument("config", help="YAML config (see configs/)")
    train.add_argument("--model-dir", help="where the model goes; default: model_dir of the config")
    train.add_argument("--resume", action="store_true", help="continue the run saved in the model directory")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config value, e.g. --set training.max_steps=100")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.add_argument("--distributed", type=int, metavar="N",
                       help="train with N processes on this machine (DistributedDataParallel: one per GPU with NCCL, "
                            "else CPU processes with gloo) by starting torchrun; several machines: "
                            "docs/distributed.md")
    train.set_defaults(run=command_train)

    translate = commands.add_parser(
        "translate", help="translate stdin (or --input) to stdout, one line per input line, as lines arrive",
        formatter_class=argparse.RawDescriptionHelpFormatter, description=TRANSLATE_FORMATS)
    translate.add_argument("model_dir", nargs="+",
                           help="a model directory; several: one ensemble averaging their next-token probabilities "
                                "(models of any family with the same tokenizer files; the first model's config gives "
                                "the search defaults and data.max_length)")
    translate.add_argument("--input", help="a text file, one sentence per line; default stdin")
    translate.add_argument("--n-best", type=int, metavar="K",
                           help="the K best hypotheses (K ≤ the beam size), one line each: "
                                "'index<TAB>rank<TAB>score<TAB>logprob<TAB>text' (see above)")
    translate.add_argument("--print-alignment", action="store_true",
                           help="add '<TAB>i-j ...' to each line: for every target word j its strongest source word i "
                                "by the attention (Moses pairs, 0-based, subwords merged into words); attention is "
                                "not a guaranteed word alignment")
    translate.add_argument("--layer", type=int, metavar="L",
                           help="--print-alignment: attention layer, 1-based (a Transformer: its decoder layers); "
                                "default the last")
    translate.add_argument("--head", type=int, metavar="H",
                           help="--print-alignment: one head of the layer, 1-based; default their mean")
    translate.add_argument("--buffer-size", type=int, default=BUFFER_SIZE, metavar="N",
                           help=f"translate as soon as N lines are read, or stdin pauses for {STDIN_PAUSE_S * 1000:g} "
                                f"ms, and flush the output (default {BUFFER_SIZE})")
    translate.add_argument("--max-source-tokens", type=int, metavar="N",
                           help="refuse a line of more than N source subwords (--input: before translating anything; "
                                "stdin: when its batch comes); default the model's data.max_length, the longest "
                                "source it was trained on")
    _add_search_arguments(translate)
    _add_device_argument(translate)
    _add_backend_argument(translate)
    translate.set_defaults(run=command_translate)

    score = commands.add_parser(
        "score", help="log-probability of each reference given its source (teacher forcing), and the perplexity",
        formatter_class=argparse.RawDescriptionHelpFormatter, description=SCORE_FORMATS)
    score.add_argument("model_dir", nargs="+", help="a model directory; several: their ensemble")
    score.add_argument("--src", required=True, help="source sentences, one per line")
    score.add_argument("--ref", required=True, help="reference translations, aligned with --src")
    score.add_argument("--json", action="store_true", help="one JSON object on stdout instead")
    score.add_argument("--batch-size", type=int, help="pairs scored together; default the config's search.batch_size")
    _add_device_argument(score)
    score.set_defaults(run=command_score)

    evaluate = commands.add_parser("evaluate", help="sacreBLEU and chrF against references, BLEU by source length")
    evaluate.add_argument("model_dir", nargs="+", help="a model directory; several: their ensemble")
    evaluate.add_argument("--src", help="source sentences, one per line")
    evaluate.add_argument("--ref", help="reference translations, aligned with --src")
    evaluate.add_argument("--tsv", metavar="FILE", help="instead of --src and --ref: source<TAB>reference lines")
    evaluate.add_argument("--tokenize", choices=TOKENIZERS,
                          help="sacreBLEU's BLEU tokenizer; default by the model's target language (data.tgt_lang): "
                               "zh: zh, ja: ja-mecab (else char), ko: ko-mecab (else 13a), any other: 13a")
    evaluate.add_argument("--output", help="also write the translations to this file")
    evaluate.add_argument("--length-unit", choices=["words", "subwords"], default="words",
                          help="unit of the source-length buckets")
    evaluate.add_argument("--json", action="store_true", help="machine-readable output")
    _add_search_arguments(evaluate)
    _add_device_argument(evaluate)
    _add_backend_argument(evaluate)
    evaluate.set_defaults(run=command_evaluate)

    average = commands.add_parser("average", help="average the last N checkpoints a run kept "
                                                  "(training.keep_checkpoints) into one model")
    average.add_argument("model_dir")
    average.add_argument("-n", type=int, metavar="N", help="the last N kept checkpoints (default: all kept)")
    average.add_argument("-o", "--output", metavar="FILE", help="write the average to FILE (.safetensors)")
    average.add_argument("--into-model", action="store_true",
                         help="make the average the model directory's model.safetensors (after checking it loads; "
                              "manifest.json is rewritten); the model it replaces is gone")
    average.set_defaults(run=command_average)

    attention = commands.add_parser("attention", help="draw the attention heatmap of one translation")
    attention.add_argument("model_dir")
    attention.add_argument("sentence")
    attention.add_argument("-o", "--output", default="attention.png")
    attention.add_argument("--beam-size", type=int, default=1)
    attention.add_argument("--layer", type=int, metavar="L",
                           help="attention layer, 1-based (a Transformer: its decoder layers; an RNN has one); "
                                "default the last, averaged over heads unless --head or --all-heads")
    attention.add_argument("--head", type=int, metavar="H", help="one head of the layer, 1-based")
    attention.add_argument("--all-heads", action="store_true",
                           help="a grid of every head of --layer, or of every layer × head")
    _add_device_argument(attention)
    attention.set_defaults(run=command_attention)

    verify = commands.add_parser("verify", help="check every file of a model directory against its manifest.json "
                                                "(SHA-256 and size), then that the model loads; exit status 2 if not")
    verify.add_argument("model_dir")
    verify.add_argument("--write", action="store_true",
                        help="write manifest.json for the files as they are, once they load (a model trained before "
                             "attnmt wrote manifests, or files you changed on purpose)")
    verify.set_defaults(run=command_verify)

    study = commands.add_parser("study", help="train one model per grid cell and compare them")
    study.add_argument("config", help="the base YAML config")
    study.add_argument("--grid", required=True, help="YAML grid: budget, vary and/or cells (see attnmt/study.py)")
    study.add_argument("--out", required=True, help="output folder for the tables and plots")
    study.add_argument("--cells", help="where the trained cells go, one folder per config (default OUT/cells); "
                                       "cells already there are reused, and study processes sharing it split the work")
    study.set_defaults(run=command_study)

    serve = commands.add_parser("serve", help="serve a model over HTTP: a JSON API with request batching, and a page "
                                              "that draws the attention")
    serve.add_argument("model_dir", nargs="+", help="a model directory; several: each served under its directory's "
                                                     "name, requests choose one (\"model\"), the first the default "
                                                     "(not an ensemble: see `attnmt translate A B`)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on; 0.0.0.0 for every interface")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--max-batch-size", type=int, help="texts translated together in one model call (default 32)")
    serve.add_argument("--max-wait-ms", type=float, help="how long a request may wait for others to batch with "
                                                         "(default 5)")
    serve.add_argument("--no-batching", action="store_true", help="one request per model call, no waiting")
    serve.add_argument("--threads", type=int, help="torch CPU threads of the model worker (default 1)")
    serve.add_argument("--max-text-chars", type=int, help="characters per text (default 1000)")
    serve.add_argument("--max-texts", type=int, help="texts per request (default 64)")
    serve.add_argument("--max-beam-size", type=int, help="largest beam_size a request may ask for (default 16)")
    serve.add_argument("--max-n-best", type=int, help="largest n_best a request may ask for (default 10)")
    serve.add_argument("--max-body-bytes", type=int, help="request body size (default 1048576)")
    serve.add_argument("--max-source-tokens", type=int, metavar="N",
                       help="source subwords per text (default: the model's data.max_length)")
    serve.add_argument("--max-request-work", type=int, metavar="N",
                       help="decoding work per request: Σ over its texts of beam_size × the most target tokens "
                            "the text may get (default 50000)")
    serve.add_argument("--max-attention-values", type=int, metavar="N",
                       help="attention numbers one request may get back (default 1000000)")
    serve.add_argument("--request-timeout-s", type=float, metavar="S",
                       help="a translation not done in S seconds gets 504 (default 30)")
    serve.add_argument("--allowed-host", action="append", metavar="NAME",
                       help="a Host name the server answers besides localhost and --host (repeatable; '*': any; IP "
                            "addresses always): other names get 421, against DNS rebinding")
    serve.add_argument("--api-key", metavar="KEY",
                       help="POST /translate needs 'Authorization: Bearer KEY' (default $ATTNMT_API_KEY; the "
                            "variable keeps the key out of the process list)")
    serve.add_argument("--rate-limit", type=int, metavar="N",
                       help="translation requests per minute from one client address; more get 429")
    serve.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    _add_device_argument(serve)
    _add_backend_argument(serve)
    serve.set_defaults(run=command_serve)

    export = commands.add_parser("export", help="write a model for a fast inference engine: a CTranslate2 directory "
                                                "(Transformers; docs/export.md)")
    export.add_argument("model_dir")
    export.add_argument("--to", choices=["ctranslate2"], required=True, help="the format")
    export.add_argument("--quantization", choices=["float32", "int8", "int8_float32"], default="float32",
                        help="weight type of the export (default float32; CTranslate2 can also convert float32 "
                             "weights as it loads them: translate --compute-type)")
    export.add_argument("-o", "--output", help="the directory to write (default MODEL_DIR/ctranslate2, or "
                                               "MODEL_DIR/ctranslate2-QUANT)")
    export.add_argument("--positions", type=int, metavar="N",
                        help="rows of the position tables: the longest source, and translation + 1, it can handle "
                             "(default: room for data.max_length and max_length_ratio, at least 1024)")
    export.set_defaults(run=command_export)

    data = commands.add_parser("data", help="fetch a corpus by name (multi30k, tatoeba-kor-eng, tatoeba-eng-fra, "
                                             "ko-en-pydocs) into DIR/NAME, checking each file's SHA-256; "
                                             "without a name: the list")
    data.add_argument("name", nargs="?", help="the corpus; leave out to list them")
    data.add_argument("directory", nargs="?", help="where DIR/NAME/ goes, e.g. data")
    data.add_argument("--mirror", help="fetch each URL's path from this host instead (also ATTNMT_DATA_MIRROR)")
    data.set_defaults(run=command_data)

    demo = commands.add_parser("demo", help="train a Korean→English model on the bundled data and show where its "
                                             "attention looks")
    demo.add_argument("--model-dir", default="runs/demo")
    demo.add_argument("--config", default=DEMO_CONFIG,
                      help="the demo's config (default: the bundled ko_en_demo.yaml; configs/ko_en_seed001.yaml is "
                           "the model of the study notes, to compare)")
    demo.add_argument("--max-steps", type=int, help="training steps; default from the config")
    demo.add_argument("--max-minutes", type=float, help="wall-clock guard; default from the config")
    demo.set_defaults(run=command_demo)
    return parser


def error_log_folders() -> list[Path]:
    """Where an internal error's traceback goes, the first that can be written: $XDG_STATE_HOME/attnmt/errors (by
    default ~/.local/state/attnmt/errors, as the XDG base directory spec puts logs), else the temporary folder."""
    state = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return [state / "attnmt" / "errors", Path(tempfile.gettempdir()) / "attnmt-errors"]


def _internal_error(command: str, argv: list[str], error: Exception) -> int:
    """A bug reached the user: one line naming it and the file its traceback went to; exit status 1."""
    ident = f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
    report = (f"attnmt {__version__}, Python {platform.python_version()}, {platform.platform()}\n"
              f"argv: {argv}\n\n{''.join(traceback.format_exception(error))}")
    where = "not saved: no folder for it could be written"
    for folder in error_log_folders():
        try:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{ident}.log").write_text(report, encoding="utf-8")
        except OSError:
            continue
        where = f"in {folder / f'{ident}.log'}"
        break
    message = " ".join(str(error).split())
    if len(message) > MESSAGE_CHARS:
        message = message[:MESSAGE_CHARS] + "…"
    print(f"attnmt {command}: internal error {ident}: {type(error).__name__}: {message}; the full traceback is "
          f"{where} (please report it)", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    """Run one command; exit status 0, 2 for an error the user can fix (its message), 3 when `train --resume` has
    nothing left to train (its budget is spent: the message says how to raise it), 130 when interrupted, 141 when the
    reader of the output went away, 1 for an internal error (one line; the traceback in a file)."""
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except AttnmtError as error:
        print(f"attnmt {args.command}: {error}", file=sys.stderr)
        return getattr(error, "exit_status", 2)  # BudgetSpent: 3
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # whoever read the output stopped (`attnmt translate ... | head`): stop quietly, as
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # a pipe's writer does; no flush error at exit
        return 141  # 128 + SIGPIPE, the status of a Unix tool the pipe ended
    except OSError as error:  # a file or a disk users can fix (a full disk may not say which file it was writing)
        if error.filename is None and error.errno not in StorageError.ADVICE:
            return _internal_error(args.command, argv, error)
        print(f"attnmt {args.command}: {StorageError.from_os_error(error)}", file=sys.stderr)
        return 2
    except Exception as error:  # the last line of defence: no traceback reaches a user
        return _internal_error(args.command, argv, error)
    return 0


if __name__ == "__main__":
    sys.exit(main())
