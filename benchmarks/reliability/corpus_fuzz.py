"""Fuzzing corpus reading: does any corpus file make reading fail with anything but an attnmt error (a traceback)?

    python benchmarks/reliability/corpus_fuzz.py --examples 2000   → benchmarks/results/reliability_corpus_fuzz.json

Hypothesis writes the files of a training and a dev corpus, as one TSV file each or as two aligned text files each,
or a training corpus that dev is cut from (`data.split`): lines of any Unicode text (tabs and Unicode line separators
included), each file with one fault or none (FAULTS): a line of random bytes, a NUL byte, a line or the whole file in
UTF-16, CP949, Latin-1, Shift-JIS or CP1252, a UTF-8 or UTF-16 byte-order mark, CRLF, lone CR or mixed line ends, a
huge line, blank lines, no line end at the end, an empty file. Each case is read by `read_corpora`, what
`attnmt train` reads its corpora with. An outcome is the pairs, an AttnmtError (counted by its class), or a
traceback: any other exception.
`def run(examples) -> dict` is what tests/test_training_faults.py and this script's main call.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import traceback
from collections import Counter
from pathlib import Path

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # benchmarks/: report.py

from report import machine  # noqa: E402

from attnmt.config import parse_config  # noqa: E402
from attnmt.data import read_corpora  # noqa: E402
from attnmt.errors import AttnmtError  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results" / "reliability_corpus_fuzz.json"
TRACEBACK = "traceback"  # the outcome of an exception that is not an AttnmtError
# the choices below, the plain one repeated, so that every other file is still a corpus that reads
OTHER_ENCODINGS = ("utf-16", "utf-16-le", "cp949", "latin-1", "shift_jis", "cp1252")
HUGE = 300_000  # characters of a huge line
LAYOUTS = ("tsv", "text", "split")  # dev as its own TSV file, as two aligned text files, or cut from train
READABLE = ("utf-8 BOM", "CRLF", "huge line", "blank lines", "mixed line ends")  # faults read as meant
FAULTS = ("none",) * 6 + READABLE + ("random bytes", "NUL", "a line in another encoding", "another encoding",
                                     "UTF-16 BOM", "lone CR", "empty")  # none, mostly: whole corpora read too


@st.composite
def texts(draw) -> str:
    """A few words of any characters but line ends and NUL, joined by spaces, or now and then by a tab or a Unicode
    line separator."""
    alphabet = st.characters(codec="utf-8", exclude_characters="\n\r\0")
    words = draw(st.lists(st.text(alphabet=alphabet, min_size=1, max_size=12), min_size=1, max_size=6))
    return draw(st.sampled_from([" "] * 4 + ["\t", "\u2028"])).join(words)


@st.composite
def files(draw, count: int, tsv: bool) -> bytes:
    """A file of `count` lines of text (`tsv`: two tab-separated columns), with one fault drawn from FAULTS."""
    fault = draw(st.sampled_from(FAULTS))
    lines = [(f"{draw(texts())}\t{draw(texts())}" if tsv else draw(texts())).encode() for _ in range(count)]
    at = draw(st.integers(0, max(count - 1, 0)))  # the line a fault of one line hits
    ends = [b"\n"] * count
    if fault == "empty" or not lines:
        return b""
    if fault == "random bytes":
        lines[at] = draw(st.binary(min_size=1, max_size=60))
    elif fault == "NUL":
        column = draw(st.integers(0, len(lines[at])))
        lines[at] = lines[at][:column] + b"\0" + lines[at][column:]
    elif fault == "a line in another encoding":
        lines[at] = lines[at].decode().encode(draw(st.sampled_from(OTHER_ENCODINGS)), errors="replace")
    elif fault == "another encoding":
        encoding = draw(st.sampled_from(OTHER_ENCODINGS))
        lines = [line.decode().encode(encoding, errors="replace") for line in lines]
    elif fault == "huge line":
        lines[at] = ("a " * HUGE + "\tb" if tsv else "a " * HUGE).encode()
    elif fault == "blank lines":
        lines[at] = draw(st.sampled_from([b"", b" ", b"\t", b" \t "]))
    elif fault in ("CRLF", "lone CR", "mixed line ends"):
        choices = {"CRLF": [b"\r\n"], "lone CR": [b"\r"], "mixed line ends": [b"\n", b"\r\n"]}[fault]
        ends = [draw(st.sampled_from(choices)) for _ in lines]
    if draw(st.booleans()):
        ends[-1] = b""  # no line end after the last line
    bom = {"utf-8 BOM": b"\xef\xbb\xbf", "UTF-16 BOM": b"\xff\xfe"}.get(fault, b"")
    return bom + b"".join(line + end for line, end in zip(lines, ends))


@st.composite
def corpus_cases(draw) -> dict:
    """A layout (see LAYOUTS) and the bytes of each file it names."""
    layout = draw(st.sampled_from(LAYOUTS))
    names = {"tsv": ("train.tsv", "dev.tsv"), "text": ("train.src", "train.tgt", "dev.src", "dev.tgt"),
             "split": ("train.tsv",)}[layout]
    count = draw(st.integers(0, 10))  # lines of every file: two aligned text files have as many
    return {"layout": layout, "files": {name: draw(files(count, tsv=name.endswith(".tsv"))) for name in names}}


def _config(layout: str, folder: Path):
    def corpus(name: str) -> dict:
        if layout == "text":
            return {"src": str(folder / f"{name}.src"), "tgt": str(folder / f"{name}.tgt")}
        return {"tsv": str(folder / f"{name}.tsv")}

    data = {"train": corpus("train"), **({"split": {"dev_size": 1, "test_size": 0}} if layout == "split" else
                                          {"dev": corpus("dev")})}
    return parse_config({"data": data, "training": {"max_steps": 1}}, origin="fuzz config")


def read_once(case: dict) -> tuple[str, str]:
    """Write the case's files and read them as `attnmt train` does: ("pairs", ""), (the AttnmtError's class, its
    message), or (TRACEBACK, the traceback)."""
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        for name, content in case["files"].items():
            (folder / name).write_bytes(content)
        try:
            corpora = read_corpora(_config(case["layout"], folder))
        except AttnmtError as error:
            return type(error).__name__, str(error)
        except Exception:  # what this benchmark counts: anything but an AttnmtError
            return TRACEBACK, traceback.format_exc()
    if not corpora.train or not corpora.dev:
        return TRACEBACK, f"no exception, but {len(corpora.train)} training and {len(corpora.dev)} dev pairs"
    return "pairs", ""


def run(examples: int) -> dict:
    """Read `examples` hypothesis cases; count the outcomes, and keep the first few tracebacks."""
    outcomes: Counter[str] = Counter()
    tracebacks: list[str] = []

    @settings(max_examples=examples, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(case=corpus_cases())
    def one(case: dict) -> None:
        outcome, detail = read_once(case)
        outcomes[outcome] += 1
        if outcome == TRACEBACK and len(tracebacks) < 5:
            tracebacks.append(detail)

    one()
    return {"examples": sum(outcomes.values()), "read": outcomes["pairs"], "tracebacks": outcomes[TRACEBACK],
            "attnmt_errors": {name: count for name, count in sorted(outcomes.items())
                              if name not in ("pairs", TRACEBACK)},
            "first_tracebacks": tracebacks, "machine": machine()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=2000, help="hypothesis cases to read")
    parser.add_argument("--out", type=Path, default=RESULTS, help="the results JSON")
    args = parser.parse_args()
    result = run(args.examples)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"{result['examples']} corpora: {result['read']} read, {result['attnmt_errors']} attnmt errors, "
          f"{result['tracebacks']} tracebacks → {args.out}")


if __name__ == "__main__":
    main()
