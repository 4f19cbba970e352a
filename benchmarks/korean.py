"""Korean→English on the Python documentation (ko-en-pydocs): train each config for the same wall-clock budget, then
measure it on the test split.

    python benchmarks/korean.py                                   # the RNN and the Transformer, 30 minutes each
    python benchmarks/korean.py --minutes 5 --configs configs/ko_en_pydocs_transformer.yaml

Per config: test sacreBLEU and chrF (cased, 13a; greedy and beam 5) with their signatures, BLEU by source length
(Korean words), train target tokens/s, greedy and beam-5 sentences/s, and what limits the model: the share of
source pieces that are <unk>, the share of test pairs longer than `data.max_length` (training never sees pairs that
long), and how many of the identifiers the reference copies from the Korean source (PyCFunction,
sys.argv, __init__) the translation copies too. Each config runs in its own process, one after the other, so no two
share the cores. Results go to benchmarks/results/korean.json and the Korean section of docs/benchmarks.md.
The corpus is read from --data (default ../shared/data/ko-en-pydocs beside the repository; `attnmt data
ko-en-pydocs DIR` fetches it).
"""

from __future__ import annotations

import json
import re
import resource
import sys
import time
from pathlib import Path

from attnmt.evaluation import markdown_table
from report import budget_parser, replace_section, run_each_config

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIGS = ["configs/ko_en_pydocs_rnn.yaml", "configs/ko_en_pydocs_transformer.yaml"]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "ko-en-pydocs"
LENGTH_BUCKET = 10  # Korean words per BLEU-by-length bucket

# A token that looks like code: a dotted or underscored name, CamelCase with an inner capital, or a call.
IDENTIFIER = re.compile(r"[A-Za-z_][\w.]*(?:_\w|\.\w|[a-z][A-Z])[\w.]*(?:\(\))?")


def copied_identifiers(source: str, reference: str) -> set[str]:
    """Identifiers that the reference has and the Korean source has too: what the translator copied."""
    return {token for token in IDENTIFIER.findall(reference) if token in source}


def identifier_copy_rate(sources: list[str], hypotheses: list[str], references: list[str]) -> tuple[float, int]:
    """(share of the copied identifiers that the hypothesis copies as well, how many there are)."""
    wanted = found = 0
    for source, hypothesis, reference in zip(sources, hypotheses, references):
        identifiers = copied_identifiers(source, reference)
        wanted += len(identifiers)
        found += sum(identifier in hypothesis for identifier in identifiers)
    return (found / wanted if wanted else float("nan")), wanted


def data_overrides(data: Path) -> dict:
    return {f"data.{split}.{side}": str(data / f"{split}.{lang}")
            for split in ("train", "dev", "test") for side, lang in (("src", "ko"), ("tgt", "en"))}


def measure_one(config_path: str, minutes: float, model_dir: Path, data: Path) -> dict:
    """Train and measure one config in this process."""
    from attnmt.config import load_config
    from attnmt.data import UNK_ID, read_corpus
    from attnmt.evaluation import bleu_by_length, corpus_scores, source_word_lengths
    from attnmt.training import Trainer
    from attnmt.translator import Translator

    config = load_config(config_path, {"training.max_minutes": minutes, "training.tensorboard": False,
                                       **data_overrides(data)})
    summary = Trainer(config, model_dir, resume=False, show_progress=False).train()
    translator = Translator.load(model_dir)
    sources, references = (list(side) for side in zip(*read_corpus(config.data.test)))
    source_ids = translator.tokenizer.encode_source(sources)
    pieces = sum(len(ids) for ids in source_ids)
    target_ids = translator.tokenizer.encode_target(references)
    too_long = sum(max(len(s), len(t)) > config.data.max_length for s, t in zip(source_ids, target_ids))
    row = {"config": Path(config_path).name, "model": translator.describe().summary,
           "parameters": translator.describe().parameters,
           "train_minutes": round(summary["seconds"] / 60, 1), "steps": summary["steps"],
           "epochs": summary["epochs"], "train_tgt_tokens_per_s": round(summary["target_tokens_per_second"]),
           "best_dev_bleu": round(summary["best_dev_bleu"], 2),
           "source_unk_percent": round(100 * sum(ids.count(UNK_ID) for ids in source_ids) / max(pieces, 1), 2),
           "test_over_max_length_percent": round(100 * too_long / len(sources), 1)}
    for name, beam in (("greedy", 1), ("beam5", 5)):
        started = time.perf_counter()
        hypotheses = [t.text for t in translator.translate(sources, beam_size=beam, attention=False)]
        seconds = time.perf_counter() - started
        scores = corpus_scores(hypotheses, references)
        row[f"{name}_sentences_per_s"] = round(len(sources) / seconds, 1)
        row[f"test_bleu_{name}"] = round(scores["bleu"], 2)
        row[f"test_chrf_{name}"] = round(scores["chrf"], 2)
        row["bleu_signature"], row["chrf_signature"] = scores["bleu_signature"], scores["chrf_signature"]
        if beam == 5:
            row["bleu_by_length"] = bleu_by_length(source_word_lengths(sources), hypotheses, references,
                                                   bucket_width=LENGTH_BUCKET)
            rate, count = identifier_copy_rate(sources, hypotheses, references)
            row["identifiers_copied_percent"], row["identifiers_in_test"] = round(100 * rate, 1), count
            row["examples"] = [{"ko": s, "ref": r, "out": h} for s, r, h in
                               list(zip(sources, references, hypotheses))[:: max(1, len(sources) // 5)][:5]]
    row["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return row


COLUMNS = [("config", "config"), ("parameters", "params"), ("train_minutes", "train min"), ("steps", "steps"),
           ("epochs", "epochs"), ("train_tgt_tokens_per_s", "train tgt tok/s"),
           ("test_bleu_greedy", "BLEU greedy"), ("test_bleu_beam5", "BLEU beam 5"),
           ("test_chrf_beam5", "chrF beam 5"), ("greedy_sentences_per_s", "greedy sent/s"),
           ("beam5_sentences_per_s", "beam-5 sent/s"), ("identifiers_copied_percent", "identifiers copied %"),
           ("source_unk_percent", "source <unk> %"), ("peak_rss_mib", "peak RSS MiB")]
BEGIN, END = "<!-- korean:begin -->", "<!-- korean:end -->"


def length_table(rows: list[dict]) -> str:
    """BLEU (beam 5) by Korean source length, one column per config."""
    lows = sorted({bucket["low"] for row in rows for bucket in row["bleu_by_length"]})
    table = []
    for low in lows:
        line = {"words": f"{low}–{low + LENGTH_BUCKET - 1}"}
        for row in rows:
            bucket = next((b for b in row["bleu_by_length"] if b["low"] == low), None)
            line[row["config"]] = None if bucket is None else f"{bucket['bleu']:.1f} ({bucket['sentences']})"
        table.append(line)
    return markdown_table(table, [("words", "Korean words")] + [(row["config"], f"{row['config']}: BLEU (sentences)")
                                                               for row in rows])


def write_markdown(results: dict, path: Path) -> None:
    rows = results["rows"]
    runs = sorted({(row["command"], row["date"]) for row in rows}, key=lambda run: run[1])
    examples = [f"- `{row['config']}`: ko `{e['ko']}`  \n  ref: {e['ref']}  \n  out: {e['out']}"
                for row in rows for e in row["examples"][:2]]
    section = "\n".join([
        BEGIN,
        "## Korean→English: the Python documentation (ko-en-pydocs)",
        "",
        f"Machine: {results['machine']}; torch threads as set in each config (2); the configs ran one after the "
        "other.  ",
        "Each config trains for its wall-clock budget (validations on the 1,537 dev pairs included), then decodes "
        "the 1,494 test pairs (documents never seen in training) with the best checkpoint by dev BLEU; sacreBLEU `"
        + rows[0]["bleu_signature"] + "`, chrF `" + rows[0]["chrf_signature"] + "`. Subwords: one joint "
        "sentencepiece unigram model of 8,000 pieces trained on the training pairs, character coverage 0.9995. "
        "\"identifiers copied\": of the code names the reference keeps from the Korean source (`PyCFunction`, "
        "`sys.argv`, `__init__`), the share the translation keeps too.",
        "Runs (each row comes from one of them):",
        "",
        *[f"- `{command}` ({date})" for command, date in runs],
        "",
        markdown_table(rows, COLUMNS),
        "",
        "BLEU (beam 5) by the length of the Korean source:",
        "",
        length_table(rows),
        "",
        "A few test translations (beam 5):",
        "",
        *examples,
        END,
    ])
    replace_section(path, BEGIN, END, section)


def main() -> None:
    parser = budget_parser(__doc__, DEFAULT_CONFIGS, "runs/benchmark_korean", "benchmarks/results/korean.json")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the ko-en-pydocs folder")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure_one(args.one, args.minutes, Path(args.work_dir), args.data)))
        return
    if not (args.data / "train.ko").is_file():
        sys.exit(f"ko-en-pydocs not found at {args.data}: fetch it with `attnmt data ko-en-pydocs DIR` and pass "
                 f"--data DIR/ko-en-pydocs")
    results = run_each_config(__file__, args.configs, args.minutes, args.work_dir, args.json,
                              ["--data", str(args.data)])
    write_markdown(results, Path(args.markdown))
    print(markdown_table(results["rows"], COLUMNS))


if __name__ == "__main__":
    main()
