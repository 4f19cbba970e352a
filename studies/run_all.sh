#!/usr/bin/env bash
# Run the three attention-study grids on Multi30k de→en and on the Tatoeba long-sentence split, as committed in
# docs/studies/. Start it twice at once on a 2-core machine (`bash studies/run_all.sh & bash studies/run_all.sh --reverse`):
# the two processes share runs/study_cells and split the cells between them.
set -euo pipefail
cd "$(dirname "$0")/.."
ATTNMT=${ATTNMT:-.venv/bin/attnmt}
PYTHON=${PYTHON:-.venv/bin/python}
grids=(scorers decoders normalizers)
if [[ "${1:-}" == "--reverse" ]]; then grids=(normalizers decoders scorers); fi
[[ -f data/multi30k/train.de ]] || "$ATTNMT" data multi30k data
[[ -f data/tatoeba-eng-fra/eng-fra.tsv ]] || "$ATTNMT" data tatoeba-eng-fra data
[[ -f runs/data/tatoeba_en_fr_long/train.en ]] || "$PYTHON" studies/tatoeba_long_split.py
for dataset in multi30k_de_en tatoeba_en_fr_long; do
  for grid in "${grids[@]}"; do
    "$ATTNMT" study "studies/$dataset.yaml" --grid "studies/$grid.yaml" --out "docs/studies/$dataset/$grid" \
      --cells "runs/study_cells/$dataset"
  done
done
