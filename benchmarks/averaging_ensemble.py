"""What checkpoint averaging and ensembling add on Multi30k de→en test2016, measured.

    python benchmarks/averaging_ensemble.py [--steps 1200] [--keep 5] [--every 100]
        → benchmarks/results/averaging_ensemble.json and its section of docs/benchmarks.md

Trains the Multi30k RNN (configs/multi30k_de_en_rnn.yaml, bf16 autocast, budgeted by steps so that any machine trains
the same models) twice, with training seeds 1 and 2, validating every `--every` steps. The parameters of the last
`--keep` validations are kept, as `training.keep_checkpoints` keeps them (each run is trained in segments that end at
those validations and resumed, which trains bit for bit as one run does, see docs/reliability.md). Then scores on
test2016 (sacreBLEU, beam 5):
- each seed's best model (the highest dev BLEU) and its last step;
- the average of the last `--keep` kept parameters (attnmt/averaging.py, what `attnmt average` writes);
- the ensemble of the two seeds' best models (attnmt/models/ensemble.py, what `attnmt translate A B` decodes), and of
  the two averages.
The corpora come from ../shared/data (`report.shared_data_overrides`); trained folders under runs/ are reused.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from report import machine, publish, shared_data_overrides

ROOT = Path(__file__).resolve().parent.parent
CONFIG = "configs/multi30k_de_en_rnn.yaml"
WORK = ROOT / "runs" / "benchmark_averaging_ensemble"
RESULTS = ROOT / "benchmarks" / "results" / "averaging_ensemble.json"
SEEDS = (1, 2)


def kept_steps(steps: int, keep: int, every: int) -> list[int]:
    """The validation steps whose parameters are kept: the last `keep` multiples of `every` up to `steps`."""
    return [steps - every * k for k in reversed(range(keep))]


def train_segments(seed: int, steps: int, keep: int, every: int) -> Path:
    """Train seed `seed` up to each kept step in turn (resuming), keeping train_state's parameters at each."""
    model_dir = WORK / f"seed{seed}"
    settings = {"training.seed": seed, "training.max_minutes": None, "training.validate_every": every,
                "training.mixed_precision": "bf16", "training.save_every_minutes": None,
                "training.score_test": False,
                **shared_data_overrides(ROOT / CONFIG)}
    for target in kept_steps(steps, keep, every):
        kept = model_dir / "kept" / f"step_{target}.safetensors"
        if kept.is_file():
            continue
        sets = [f"{key}={'null' if value is None else value}" for key, value in
                {**settings, "training.max_steps": target}.items()]
        command = [sys.executable, "-m", "attnmt", "train", CONFIG, "--model-dir", str(model_dir), "--quiet"]
        command += ["--resume"] if (model_dir / "train_state").is_dir() else []
        for pair in sets:
            command += ["--set", pair]
        subprocess.run(command, cwd=ROOT, check=True)
        kept.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(model_dir / "train_state" / "model.safetensors", kept)
    return model_dir


def test_bleu(translator, sources: list[str], references: list[str]) -> tuple[float, str, float]:
    """test BLEU with the config's search (beam 5), its signature, and the seconds decoding took."""
    from attnmt.evaluation import corpus_scores

    began = time.perf_counter()
    hypotheses = [t.text for t in translator.translate(sources, attention=False)]
    seconds = time.perf_counter() - began
    scores = corpus_scores(hypotheses, references)
    return round(scores["bleu"], 2), scores["bleu_signature"], round(seconds, 1)


def with_parameters(model_dir: Path, tensors: dict[str, torch.Tensor]):
    """The model of `model_dir` with other parameters (kept or averaged) loaded into it."""
    from attnmt.translator import Translator

    translator = Translator.load(model_dir, device="cpu")
    translator.model.load_state_dict(tensors, strict=False)
    return translator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1200, help="training steps of each seed")
    parser.add_argument("--keep", type=int, default=5, help="validations whose parameters are kept and averaged")
    parser.add_argument("--every", type=int, default=100, help="steps between validations")
    args = parser.parse_args()
    torch.set_num_threads(2)

    from safetensors.torch import load_file

    from attnmt.averaging import average_tensors
    from attnmt.config import load_config
    from attnmt.models.ensemble import Ensemble
    from attnmt.translator import Translator

    folders = {seed: train_segments(seed, args.steps, args.keep, args.every) for seed in SEEDS}
    data = load_config(ROOT / CONFIG, shared_data_overrides(ROOT / CONFIG)).data
    sources = Path(data.test.src).read_text(encoding="utf-8").splitlines()
    references = Path(data.test.tgt).read_text(encoding="utf-8").splitlines()

    rows, averaged = [], {}
    for seed, folder in folders.items():
        kept = [folder / "kept" / f"step_{step}.safetensors" for step in kept_steps(args.steps, args.keep, args.every)]
        averaged[seed] = average_tensors(kept)
        candidates = {"best model (dev BLEU)": Translator.load(folder, device="cpu"),
                      f"last step ({args.steps})": with_parameters(folder, load_file(str(kept[-1]))),
                      f"average of the last {args.keep} validations": with_parameters(folder, averaged[seed])}
        for what, translator in candidates.items():
            bleu, signature, seconds = test_bleu(translator, sources, references)
            rows.append({"system": f"seed {seed}: {what}", "test BLEU": bleu, "decode s": seconds})
            print(rows[-1], flush=True)

    first = Translator.load(folders[SEEDS[0]], device="cpu")
    ensembles = {"ensemble of the two best models": [Translator.load(f, device="cpu").model for f in folders.values()],
                 "ensemble of the two averages": [with_parameters(f, averaged[s]).model for s, f in folders.items()]}
    for what, members in ensembles.items():
        translator = Translator(Ensemble(members, [str(f.relative_to(ROOT)) for f in folders.values()]),
                                first.tokenizer, first.config)
        bleu, signature, seconds = test_bleu(translator, sources, references)
        rows.append({"system": what, "test BLEU": bleu, "decode s": seconds})
        print(rows[-1], flush=True)

    results = {"machine": machine(), "command": "python " + " ".join(["benchmarks/averaging_ensemble.py"] + sys.argv[1:]),
               "config": CONFIG, "steps": args.steps, "keep": args.keep, "every": args.every, "seeds": list(SEEDS),
               "bleu_signature": signature, "rows": rows}
    header = "| system | test BLEU | decode s |\n| --- | ---: | ---: |\n"
    table = header + "".join(f"| {r['system']} | {r['test BLEU']:.2f} | {r['decode s']:.1f} |\n" for r in rows)
    intro = (f"`{results['command']}` · {results['machine']}  \n"
             f"{CONFIG} (bf16 autocast), {args.steps} steps per seed, validations every {args.every} steps; "
             f"test2016, beam 5, sacreBLEU `{signature}`. Decoding times are float32 search on 2 threads.\n\n")
    publish(results, RESULTS, "averaging_ensemble", "Checkpoint averaging and ensembles (Multi30k de→en)",
            intro + table)


if __name__ == "__main__":
    main()
