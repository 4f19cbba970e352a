"""Reading parallel corpora (two aligned text files or one TSV file) and cutting held-out parts from them; and
`read_corpora`, the train/dev/test text of a run as its config describes it (`write_split` puts the parts cut by
`data.split` into the model directory, as dev.SRC / dev.TGT / test.SRC / test.TGT).

Files are read in binary, one line at a time, and each line is decoded on its own, so that an encoding error can be
reported with its exact line number and byte offset. Only `\\n` ends a line (a `\\r` before it is stripped), so
Unicode line separators inside a sentence never shift the alignment of two files. A NUL byte is an error (it is
what a binary file or a UTF-16 text holds), and so is a corpus without a single sentence pair.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

from attnmt.checkpoint import write_text
from attnmt.config import Config, CorpusConfig, DataConfig, resolve_path
from attnmt.errors import CorpusError

Pair = tuple[str, str]

_BOM = "\ufeff"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")  # UTF-16 (and UTF-32) files start with one of these


def _check_exists(path: Path, role: str) -> None:
    """Raise `CorpusError` unless `path` is an existing regular file."""
    if not path.exists():
        raise CorpusError(
            f"{role} {path} does not exist; check the path "
            f"(relative paths are taken from the working directory {os.getcwd()})"
        )
    if not path.is_file():
        raise CorpusError(f"{role} {path} is not a regular file; give the path of a text file")


def _decode_line(raw: bytes, path: Path, line_number: int, file_offset: int) -> str:
    """Decode one line as strict UTF-8 without NUL bytes, or raise `CorpusError` naming the file, line and byte
    offset."""
    if file_offset == 0 and raw.startswith(_UTF16_BOMS):
        raise CorpusError(f"{path} starts with a UTF-16 byte-order mark: it is UTF-16 (or UTF-32) text, not UTF-8; "
                          f"re-encode it, e.g. `iconv -f UTF-16 -t UTF-8 {path.name} > {path.stem}.utf8{path.suffix}`")
    nul = raw.find(b"\0")
    if nul >= 0:
        raise CorpusError(f"{path}, line {line_number}: byte {nul} of the line (byte {file_offset + nul} of the file) "
                          f"is a NUL byte: the file is binary, or UTF-16/UTF-32 text; give a UTF-8 text file "
                          f"(re-encode it with iconv if it is text)")
    try:
        return raw.decode("utf-8", errors="strict")
    except UnicodeDecodeError as error:
        bad = raw[error.start:error.end].hex(" ")
        raise CorpusError(
            f"{path}, line {line_number}: byte {error.start} of the line (byte {file_offset + error.start} of the "
            f"file, value 0x{bad}) is not valid UTF-8; re-encode the file as UTF-8, "
            f"e.g. `iconv -f CP949 -t UTF-8 {path.name} > {path.stem}.utf8{path.suffix}` (use its real encoding)"
        ) from None


def read_lines(path: Path, role: str = "corpus file") -> list[str]:
    """All lines of a UTF-8 file, line endings (`\\n`, `\\r\\n`) and a leading byte-order mark removed.

    Surrounding whitespace is kept (a TSV line may start with an empty column); callers strip their fields.
    """
    _check_exists(path, role)
    lines: list[str] = []
    offset = 0
    try:
        with path.open("rb") as handle:
            for line_number, raw in enumerate(handle, start=1):
                text = _decode_line(raw, path, line_number, offset)
                offset += len(raw)
                if line_number == 1 and text.startswith(_BOM):
                    text = text[len(_BOM):]
                lines.append(text.rstrip("\r\n"))
    except OSError as error:
        raise CorpusError(f"{role} {path} cannot be read ({error.strerror or error}); check its permissions and "
                          f"its disk") from None
    return lines


def _read_text_pair(src_path: Path, tgt_path: Path) -> list[Pair]:
    """Pairs from two aligned text files: line i of one translates line i of the other."""
    sources = read_lines(src_path, "source file")
    targets = read_lines(tgt_path, "target file")
    if len(sources) != len(targets):
        raise CorpusError(
            f"the source file {src_path} has {len(sources)} lines but the target file {tgt_path} has "
            f"{len(targets)} lines; the two files must be aligned line by line (line i of one is the translation "
            f"of line i of the other): find the missing or extra lines, or give one TSV file instead"
        )
    return [(src.strip(), tgt.strip()) for src, tgt in zip(sources, targets)]


def _split_tsv_line(line: str, path: Path, line_number: int, src_column: int, tgt_column: int) -> Pair:
    """The (source, target) fields of one TSV line; a blank line gives an empty pair (dropped later)."""
    if not line.strip():
        return "", ""
    fields = line.split("\t")
    needed = max(src_column, tgt_column) + 1
    if len(fields) < needed:
        raise CorpusError(
            f"{path}, line {line_number}: found {len(fields)} tab-separated column(s) but need at least {needed} "
            f"(src_column={src_column}, tgt_column={tgt_column}, counted from 0); fix the line, or set "
            f"`src_column`/`tgt_column` in the config to the columns the file has"
        )
    return fields[src_column].strip(), fields[tgt_column].strip()


def _read_tsv(path: Path, src_column: int, tgt_column: int) -> list[Pair]:
    """Pairs from the chosen 0-based columns of a tab-separated file."""
    lines = read_lines(path, "TSV file")
    return [
        _split_tsv_line(line, path, line_number, src_column, tgt_column)
        for line_number, line in enumerate(lines, start=1)
    ]


def read_corpus(spec: CorpusConfig) -> list[Pair]:
    """Read the (source, target) pairs a `CorpusConfig` describes, each field stripped of surrounding whitespace.

    Raises `CorpusError` for a missing file, bytes that are not UTF-8, two text files of different lengths, or a TSV
    line with too few columns. Empty fields are kept; see `drop_empty_pairs`.
    """
    if spec.tsv is not None:
        return _read_tsv(resolve_path(spec.tsv), spec.src_column, spec.tgt_column)
    assert spec.src is not None and spec.tgt is not None  # guaranteed by CorpusConfig's validator
    return _read_text_pair(resolve_path(spec.src), resolve_path(spec.tgt))


def _files(spec: CorpusConfig) -> str:
    """The file(s) a `CorpusConfig` names, for messages."""
    if spec.tsv is not None:
        return str(resolve_path(spec.tsv))
    return f"{resolve_path(spec.src)} + {resolve_path(spec.tgt)}"


def read_pairs(spec: CorpusConfig, role: str) -> tuple[list[Pair], int]:
    """The non-empty pairs of a corpus (`read_corpus`, then `drop_empty_pairs`) and how many were dropped; a corpus
    without one is a `CorpusError` naming its file(s)."""
    pairs, dropped = drop_empty_pairs(read_corpus(spec))
    if not pairs:
        raise CorpusError(f"the {role} corpus {_files(spec)} holds no sentence pair (it is empty, or every line has "
                          f"an empty side); fill it, or fix `data.{role}` in the config")
    return pairs, dropped


def drop_empty_pairs(pairs: list[Pair]) -> tuple[list[Pair], int]:
    """Keep the pairs whose source and target are both non-empty; return them and how many were dropped."""
    kept = [(src, tgt) for src, tgt in pairs if src and tgt]
    return kept, len(pairs) - len(kept)


def _distinct_targets(pairs: list[Pair]) -> list[str]:
    """The distinct target sentences in order of first appearance (a deterministic order to shuffle)."""
    return list(dict.fromkeys(tgt for _, tgt in pairs))


def split_by_target(
    pairs: list[Pair], dev_size: int, test_size: int, seed: int
) -> tuple[list[Pair], list[Pair], list[Pair]]:
    """Cut (train, dev, test) from `pairs`, grouped by target sentence.

    The distinct target sentences are shuffled with `random.Random(seed)`; the first `dev_size` go to dev, the next
    `test_size` to test, the rest to train. Every pair of one target sentence lands in the same part, so alternative
    source sentences of one translation never straddle the split. Each part keeps the corpus order.
    """
    if dev_size < 0 or test_size < 0:
        raise CorpusError(f"dev_size ({dev_size}) and test_size ({test_size}) must not be negative")
    targets = _distinct_targets(pairs)
    needed = dev_size + test_size + 1
    if len(targets) < needed:
        raise CorpusError(
            f"cannot split off {dev_size} dev and {test_size} test target sentences: the corpus has only "
            f"{len(targets)} distinct target sentences (need at least {needed}, leaving one for training); "
            f"lower `data.split.dev_size`/`data.split.test_size` or give a `dev` corpus"
        )
    random.Random(seed).shuffle(targets)
    part_of = {tgt: 1 for tgt in targets[:dev_size]}
    part_of.update({tgt: 2 for tgt in targets[dev_size:dev_size + test_size]})
    parts: tuple[list[Pair], list[Pair], list[Pair]] = ([], [], [])
    for pair in pairs:
        parts[part_of.get(pair[1], 0)].append(pair)
    return parts


@dataclass
class Corpora:
    """The text of each split after reading and cleaning, and what was dropped on the way."""

    train: list[Pair]
    dev: list[Pair]
    test: list[Pair]
    dropped_empty: int


def split_file_names(data: DataConfig, part: str) -> tuple[str, str]:
    """The files a split's `part` (dev, test) is written to in the model directory: PART.SRC_LANG and PART.TGT_LANG
    (dev.ko, dev.en); with one language on both sides PART.src.LANG and PART.tgt.LANG."""
    if data.src_lang == data.tgt_lang:
        return f"{part}.src.{data.src_lang}", f"{part}.tgt.{data.tgt_lang}"
    return f"{part}.{data.src_lang}", f"{part}.{data.tgt_lang}"


def write_split(model_dir: Path, data: DataConfig, corpora: "Corpora") -> list[str]:
    """With `data.split`: write the dev and test parts cut from the training corpus into the model directory, one
    sentence per line, each side in its own file (`split_file_names`), atomically; the names written. Without a
    split: nothing."""
    if data.split is None:
        return []
    written = []
    for part, pairs in (("dev", corpora.dev), ("test", corpora.test)):
        if not pairs:
            continue
        for name, side in zip(split_file_names(data, part), zip(*pairs)):
            write_text(Path(model_dir) / name, "".join(sentence + "\n" for sentence in side))
            written.append(name)
    return written


def describe_test_set(data: DataConfig) -> str:
    """Where the test pairs come from, for reports: the split's files in the model directory, or `data.test`."""
    if data.split is not None:
        return f"the test part of data.split ({' + '.join(split_file_names(data, 'test'))} in the model directory)"
    return f"data.test ({_files(data.test)})" if data.test is not None else "no test set"


def read_corpora(config: Config) -> Corpora:
    """Read train/dev/test as configured: given files, or dev/test cut from train by target sentence."""
    data = config.data
    train, dropped = read_pairs(data.train, "train")
    if data.split is not None:
        train, dev, test = split_by_target(train, data.split.dev_size, data.split.test_size, data.split.seed)
    else:
        dev, dropped_dev = read_pairs(data.dev, "dev")
        test, dropped_test = read_pairs(data.test, "test") if data.test else ([], 0)
        dropped += dropped_dev + dropped_test
    return Corpora(train, dev, test, dropped)
