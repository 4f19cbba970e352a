"""Multi30k de→en: train each config for the same wall-clock budget, then measure it on test2016.

    python benchmarks/multi30k.py                      # both RNN configs, 30 minutes each
    python benchmarks/multi30k.py --minutes 5 --configs configs/multi30k_de_en_rnn.yaml

Per config: test2016 sacreBLEU (detokenized, cased; greedy and beam 5), train target tokens/s, greedy and beam-5
sentences/s, peak resident memory. Each config runs in its own process, so peak memory is its own. Results go to
benchmarks/results/multi30k.json and to the Multi30k section of docs/benchmarks.md, with the machine described.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path


from attnmt.evaluation import markdown_table
from report import budget_parser, replace_section, run_each_config, shared_data_overrides

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIGS = ["configs/multi30k_de_en_rnn.yaml", "configs/multi30k_de_en_none.yaml"]
DATA = ROOT.parent / "shared" / "data" / "multi30k"


def measure_one(config_path: str, minutes: float, model_dir: Path) -> dict:
    """Train and measure one config in this process."""
    from attnmt.config import load_config
    from attnmt.data import read_corpus
    from attnmt.evaluation import corpus_scores
    from attnmt.training import Trainer
    from attnmt.translator import Translator

    config = load_config(config_path, {"training.max_minutes": minutes, "training.tensorboard": False,
                                       **shared_data_overrides(config_path)})
    summary = Trainer(config, model_dir, resume=False, show_progress=False).train()
    translator = Translator.load(model_dir)
    sources, references = zip(*read_corpus(config.data.test))
    row = {"config": Path(config_path).name, "attention": translator.describe().summary,
           "parameters": translator.describe().parameters,
           "train_minutes": round(summary["seconds"] / 60, 1), "steps": summary["steps"],
           "epochs": summary["epochs"],
           "train_tgt_tokens_per_s": round(summary["target_tokens_per_second"]),
           "best_dev_bleu": round(summary["best_dev_bleu"], 2)}
    for name, beam in (("greedy", 1), ("beam5", 5)):
        started = time.perf_counter()
        hypotheses = [t.text for t in translator.translate(list(sources), beam_size=beam, attention=False)]
        seconds = time.perf_counter() - started
        scores = corpus_scores(hypotheses, list(references))
        row[f"{name}_sentences_per_s"] = round(len(sources) / seconds, 1)
        row[f"test2016_bleu_{name}"] = round(scores["bleu"], 2)
        row["bleu_signature"] = scores["bleu_signature"]
    row["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return row


COLUMNS = [("config", "config"), ("attention", "attention"), ("parameters", "params"),
           ("train_minutes", "train min"), ("steps", "steps"), ("epochs", "epochs"),
           ("train_tgt_tokens_per_s", "train tgt tok/s"), ("test2016_bleu_greedy", "BLEU greedy"),
           ("test2016_bleu_beam5", "BLEU beam 5"), ("greedy_sentences_per_s", "greedy sent/s"),
           ("beam5_sentences_per_s", "beam-5 sent/s"), ("peak_rss_mib", "peak RSS MiB")]
BEGIN, END = "<!-- multi30k:begin -->", "<!-- multi30k:end -->"


def write_markdown(results: dict, path: Path) -> None:
    runs = sorted({(row["command"], row["date"]) for row in results["rows"]}, key=lambda run: run[1])
    section = "\n".join([
        BEGIN,
        "## Multi30k de→en: RNN with and without attention, and the Transformer",
        "",
        f"Machine: {results['machine']}; torch threads as set in each config (2).  ",
        "Each config trains for its wall-clock budget (validations included), then decodes test2016 (1,000 "
        "sentences) with the best checkpoint by dev BLEU; sacreBLEU `" + results["rows"][0]["bleu_signature"] + "`.",
        "Runs (each row comes from one of them):",
        "",
        *[f"- `{command}` ({date})" for command, date in runs],
        "",
        markdown_table(results["rows"], COLUMNS),
        END,
    ])
    replace_section(path, BEGIN, END, section)


def main() -> None:
    args = budget_parser(__doc__, DEFAULT_CONFIGS, "runs/benchmark_multi30k", "benchmarks/results/multi30k.json"
                         ).parse_args()
    if args.one:
        print(json.dumps(measure_one(args.one, args.minutes, Path(args.work_dir))))
        return
    if not DATA.is_dir():
        sys.exit(f"Multi30k not found at {DATA}: this benchmark reads ../shared/data/multi30k beside the repository")
    results = run_each_config(__file__, args.configs, args.minutes, args.work_dir, args.json)
    write_markdown(results, Path(args.markdown))
    print(markdown_table(results["rows"], COLUMNS))


if __name__ == "__main__":
    main()
