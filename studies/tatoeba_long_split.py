"""Make the long-sentence setting of the attention study from Tatoeba English→French.

Train on short sentences only (English source of at most SHORT words), test on a held-out sample spread over
lengths up to the longest in the corpus, so BLEU by source length shows how each model extrapolates:

    python studies/tatoeba_long_split.py              # reads data/tatoeba-eng-fra/eng-fra.tsv
    attnmt study studies/tatoeba_en_fr_long.yaml --grid studies/scorers.yaml --out docs/studies/tatoeba_long/scorers

Writes OUT/{train,dev,test}.{en,fr} and OUT/split.json (counts per length band). The split is seeded and
deterministic. An English sentence that appears in the test or dev set never appears in train.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

SHORT = 8  # training pairs: English source of 1..SHORT words
TEST_BANDS = [(4, 8), (9, 10), (11, 12), (13, 15), (16, 99)]  # inclusive word-count bands of the test set
PER_BAND = 300
DEV_BAND, DEV_SIZE = (5, 10), 500


def words(text: str) -> int:
    return len(text.split())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tsv", default="data/tatoeba-eng-fra/eng-fra.tsv", help="English<TAB>French pairs")
    parser.add_argument("--out", default="runs/data/tatoeba_en_fr_long", help="output folder")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    pairs = []
    for number, line in enumerate(Path(args.tsv).read_text(encoding="utf-8").splitlines(), start=1):
        columns = line.split("\t")
        if len(columns) < 2:
            raise SystemExit(f"{args.tsv}, line {number}: expected English<TAB>French, got {line!r}")
        pairs.append((columns[0].strip(), columns[1].strip()))

    rng = random.Random(args.seed)
    by_source: dict[str, list[tuple[str, str]]] = {}
    for source, target in pairs:
        by_source.setdefault(source, []).append((source, target))
    sources = sorted(by_source)
    rng.shuffle(sources)

    held_out: set[str] = set()
    test, bands = [], []
    for low, high in TEST_BANDS:
        chosen = [s for s in sources if low <= words(s) <= high and s not in held_out][:PER_BAND]
        held_out.update(chosen)
        test += [by_source[s][0] for s in chosen]  # one reference per source sentence
        bands.append({"words": f"{low}-{high}", "test_pairs": len(chosen)})
    dev_sources = [s for s in sources if DEV_BAND[0] <= words(s) <= DEV_BAND[1] and s not in held_out][:DEV_SIZE]
    held_out.update(dev_sources)
    dev = [by_source[s][0] for s in dev_sources]
    train = [pair for s in sources if words(s) <= SHORT and s not in held_out for pair in by_source[s]]

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, subset in (("train", train), ("dev", dev), ("test", test)):
        for column, lang in ((0, "en"), (1, "fr")):
            (out / f"{name}.{lang}").write_text("".join(pair[column] + "\n" for pair in subset), encoding="utf-8")
    report = {"tsv": args.tsv, "seed": args.seed, "train_max_words": SHORT, "train_pairs": len(train),
              "dev_pairs": len(dev), "test_pairs": len(test), "test_bands": bands}
    (out / "split.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
