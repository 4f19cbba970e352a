"""The `attnmt` command: parse the arguments, call the modules, print. Errors users cause print as one message; so
does anything else that goes wrong (an internal error: its traceback goes to a file, `error_log_folders`)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import sys
import tempfile
import time
import traceback
from pathlib import Path

import yaml

from attnmt import __version__
from attnmt.config import LENGTH_SLACK
from attnmt.errors import AttnmtError, CheckpointError, CorpusError, StorageError

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
    return {"beam_size": args.beam_size, "n_best": getattr(args, "n_best", None),
            "length_penalty": args.length_penalty, "max_length_ratio": args.max_length_ratio,
            "batch_size": args.batch_size}


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
                    show_progress=not args.quiet)
    if not distributed.is_main():
        return
    print(f"trained {summary['steps']} steps in {summary['seconds'] / 60:.1f} min "
          f"({summary['target_tokens_per_second']:,.0f} target tokens/s); best dev BLEU {summary['best_dev_bleu']:.2f}; "
          f"model in {summary['model_dir']}")


def _read_input(path: str | None) -> list[str]:
    from attnmt.data import read_lines

    if path is None:
        return _read_stdin()
    return read_lines(Path(path), role="input file")


def _read_stdin() -> list[str]:
    """The lines of standard input, which must be UTF-8: a byte that is not (a decoding error, or the surrogate a C
    locale's stdin passes it on as) is a `CorpusError`."""
    lines: list[str] = []
    try:
        for line in sys.stdin:
            line.encode("utf-8")  # a surrogate does not encode
            lines.append(line.rstrip("\r\n"))
    except UnicodeError:
        raise CorpusError(f"standard input is not UTF-8 text (at or after line {len(lines) + 1}); re-encode it, e.g. "
                          f"with `iconv -f CP949 -t UTF-8` (use its real encoding), or give it as --input FILE to "
                          f"see the line and byte") from None
    return lines


def command_translate(args) -> None:
    from attnmt.errors import TextTooLong
    from attnmt.translator import Translator, check_source_lengths

    if args.max_source_tokens is not None and args.max_source_tokens < 1:
        raise AttnmtError(f"--max-source-tokens {args.max_source_tokens}: give a number of subwords, at least 1")
    translator = Translator.load(args.model_dir, device=args.device, mixed_precision=args.mixed_precision)
    translator.search_settings(**_search_options(args))  # a bad option stops here, before any input is read
    lines = _read_input(args.input)
    limit = args.max_source_tokens or translator.max_source_tokens
    try:  # before any output: a line over the cap stops the run at once
        check_source_lengths(translator.source_lengths(lines), limit)
    except TextTooLong as error:
        cap = "--max-source-tokens" if args.max_source_tokens else \
            "the model's data.max_length, the longest source it was trained on"
        raise AttnmtError(f"{args.input or 'stdin'} line {error.index + 1}: {error.length} subwords, over the limit "
                          f"of {error.limit} ({cap}); split the line, or raise the limit with "
                          f"--max-source-tokens {error.length}") from None
    chunk = 1000  # write as we go, so long inputs stream
    for start in range(0, len(lines), chunk):
        for result in translator.translate(lines[start:start + chunk], attention=False, **_search_options(args)):
            if args.n_best and args.n_best > 1:
                for hypothesis in result.n_best or [result]:  # a blank line: one empty hypothesis
                    print(f"{hypothesis.score:.4f}\t{hypothesis.text}")
            else:
                print(result.text)
        sys.stdout.flush()


def command_evaluate(args) -> None:
    from attnmt.config import CorpusConfig
    from attnmt.data import read_corpus
    from attnmt.evaluation import bleu_by_length, corpus_scores, format_report, source_word_lengths
    from attnmt.translator import Translator

    pairs = read_corpus(CorpusConfig(src=args.src, tgt=args.ref))
    sources, references = [s for s, _ in pairs], [r for _, r in pairs]
    translator = Translator.load(args.model_dir, device=args.device, mixed_precision=args.mixed_precision)
    translations = translator.translate(sources, attention=False, **_search_options(args))
    hypotheses = [t.text for t in translations]
    if args.output:
        Path(args.output).write_text("".join(h + "\n" for h in hypotheses), encoding="utf-8")
    scores = corpus_scores(hypotheses, references)
    if args.length_unit == "words":
        lengths = source_word_lengths(sources)
    else:
        lengths = [len(t.source_tokens) for t in translations]
    buckets = bleu_by_length(lengths, hypotheses, references)
    if args.json:
        print(json.dumps({**scores, "length_unit": args.length_unit, "bleu_by_length": buckets}, indent=1))
    else:
        print(format_report(scores, buckets, args.length_unit))


def command_attention(args) -> None:
    """Default: the heatmap of `Translation.attention` (the last attention layer, averaged over its heads).
    --layer L / --head H (1-based) pick an attention layer and a head; --all-heads draws a grid of every head of
    --layer, or of every layer × head."""
    from attnmt.plotting import plot_attention, plot_attention_grid
    from attnmt.translator import Translator

    if args.all_heads and args.head is not None:
        raise AttnmtError("--all-heads draws every head; give either --all-heads or --head, not both")
    translator = Translator.load(args.model_dir, device=args.device, mixed_precision=args.mixed_precision)
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
    from attnmt.evaluation import corpus_scores
    from attnmt.plotting import plot_attention
    from attnmt.training import Trainer
    from attnmt.translator import Translator

    overrides = {"training.max_minutes": args.max_minutes} if args.max_minutes else {}
    if args.max_steps:
        overrides["training.max_steps"] = args.max_steps
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
    scores = corpus_scores(hypotheses, references)
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
    serve(args.model_dir, host=args.host, port=args.port, settings=settings, log_level=args.log_level,
          device=args.device, mixed_precision=args.mixed_precision)


def _add_search_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--beam-size", type=int, help="1 = greedy; default from the model's config")
    parser.add_argument("--length-penalty", type=float, help="alpha of ((5 + length) / 6) ** alpha")
    parser.add_argument("--max-length-ratio", type=float,
                        help=f"stop at ratio × source length + {LENGTH_SLACK} tokens")
    parser.add_argument("--batch-size", type=int, help="sentences decoded together")


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="attnmt", description="Sequence-to-sequence translation with attention.")
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

    translate = commands.add_parser("translate", help="translate stdin (or --input) to stdout, line by line")
    translate.add_argument("model_dir")
    translate.add_argument("--input", help="a text file, one sentence per line; default stdin")
    translate.add_argument("--n-best", type=int, help="print the n best hypotheses as 'score<TAB>text'")
    translate.add_argument("--max-source-tokens", type=int, metavar="N",
                           help="refuse (before translating anything) a line of more than N source subwords; "
                                "default the model's data.max_length, the longest source it was trained on")
    _add_search_arguments(translate)
    _add_device_argument(translate)
    translate.set_defaults(run=command_translate)

    evaluate = commands.add_parser("evaluate", help="sacreBLEU and chrF against references, BLEU by source length")
    evaluate.add_argument("model_dir")
    evaluate.add_argument("--src", required=True, help="source sentences, one per line")
    evaluate.add_argument("--ref", required=True, help="reference translations, aligned with --src")
    evaluate.add_argument("--output", help="also write the translations to this file")
    evaluate.add_argument("--length-unit", choices=["words", "subwords"], default="words",
                          help="unit of the source-length buckets")
    evaluate.add_argument("--json", action="store_true", help="machine-readable output")
    _add_search_arguments(evaluate)
    _add_device_argument(evaluate)
    evaluate.set_defaults(run=command_evaluate)

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
    serve.add_argument("model_dir")
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
    serve.set_defaults(run=command_serve)

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
    """Run one command; exit status 0, 2 for an error the user can fix (its message), 130 when interrupted, 1 for an
    internal error (one line; the traceback in a file)."""
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except AttnmtError as error:
        print(f"attnmt {args.command}: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
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
