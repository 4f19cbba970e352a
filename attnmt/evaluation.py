"""Corpus scores for translations: sacreBLEU BLEU and chrF, BLEU by source length, text reports.

Scores come from sacreBLEU on detokenized, cased text, so they can be compared with published numbers; every score
is reported together with its sacreBLEU signature (which names the tokenizer) and, where a model translated, the
search settings it translated with.

BLEU's tokenizer follows the target language (`default_tokenizer`, the one rule validation, `attnmt evaluate` and
the test scoring at the end of training use): sacreBLEU's own choice per language,

    zh → zh            Chinese: characters of CJK ideographs split, the rest as 13a
    ja → ja-mecab      Japanese morphemes (pip install 'sacrebleu[ja]'), else char
    ko → ko-mecab      Korean morphemes (pip install 'sacrebleu[ko]'), else 13a (Korean writes spaces between words)
    any other → 13a    the WMT standard

`attnmt evaluate --tokenize NAME` picks any of `TOKENIZERS` instead.
"""

from __future__ import annotations

import functools
import numbers
import re
from collections.abc import Mapping, Sequence
from typing import Any

from sacrebleu.metrics import BLEU, CHRF

from attnmt.errors import AttnmtError

__all__ = [
    "TOKENIZERS",
    "default_tokenizer",
    "check_tokenizer",
    "corpus_scores",
    "sentence_chrf",
    "search_record",
    "format_search",
    "format_scores",
    "bleu_by_length",
    "source_word_lengths",
    "format_report",
    "markdown_table",
]


def _check_same_length(**named_lists: Sequence[Any]) -> int:
    """Return the common length of the named lists; raise AttnmtError naming every count if they differ."""
    counts = {name: len(values) for name, values in named_lists.items()}
    if len(set(counts.values())) > 1:
        described = ", ".join(f"{count} {name}" for name, count in counts.items())
        raise AttnmtError(
            f"cannot score translations: got {described}; "
            "every sentence needs exactly one hypothesis and one reference"
        )
    return next(iter(counts.values()), 0)


# sacreBLEU's tokenizers that work offline (its spm / flores ones download a model first)
TOKENIZERS = ("13a", "intl", "char", "zh", "ja-mecab", "ko-mecab", "none")
DEFAULT_TOKENIZER = "13a"
# language (ISO 639-1 or -3, the part before any "-" or "_") → sacreBLEU's tokenizer, and its fallback where that
# one needs packages that are not installed
LANGUAGE_TOKENIZERS = {"zh": "zh", "zho": "zh", "chi": "zh", "cmn": "zh", "ja": "ja-mecab", "jpn": "ja-mecab",
                       "ko": "ko-mecab", "kor": "ko-mecab"}
FALLBACK_TOKENIZERS = {"ja-mecab": "char", "ko-mecab": "13a"}
EXTRA_PACKAGES = {"ja-mecab": "sacrebleu[ja]", "ko-mecab": "sacrebleu[ko]"}  # what a tokenizer needs installed


@functools.cache
def tokenizer_usable(name: str) -> bool:
    """Whether sacreBLEU can make the tokenizer here (ja-mecab and ko-mecab need extra packages)."""
    try:
        BLEU(tokenize=name)
    except (RuntimeError, ImportError, OSError):
        return False
    return True


def default_tokenizer(language: str) -> str:
    """BLEU's tokenizer for a target language (see the module docstring): zh, ja-mecab (else char), ko-mecab (else
    13a), otherwise 13a."""
    primary = re.split(r"[-_]", language.strip().lower(), maxsplit=1)[0]
    choice = LANGUAGE_TOKENIZERS.get(primary, DEFAULT_TOKENIZER)
    return choice if tokenizer_usable(choice) else FALLBACK_TOKENIZERS.get(choice, DEFAULT_TOKENIZER)


def check_tokenizer(name: str, option: str = "--tokenize") -> str:
    """`name` if it is one of `TOKENIZERS` and usable here; else an `AttnmtError` naming `option` and what to do."""
    if name not in TOKENIZERS:
        raise AttnmtError(f"{option} {name}: not a BLEU tokenizer attnmt offers; choose one of {', '.join(TOKENIZERS)}")
    if not tokenizer_usable(name):
        raise AttnmtError(f"{option} {name}: sacreBLEU's {name} tokenizer needs packages that are not installed: "
                          f"pip install '{EXTRA_PACKAGES.get(name, 'sacrebleu')}', or choose another tokenizer "
                          f"(char works for any language)")
    return name


def _corpus_bleu(metric: BLEU, hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU of the hypotheses against one reference each, with an existing BLEU metric."""
    return float(metric.corpus_score(list(hypotheses), [list(references)]).score)


def corpus_scores(hypotheses: list[str], references: list[str], tokenize: str = DEFAULT_TOKENIZER) -> dict:
    """Score hypotheses against one reference each with sacreBLEU BLEU (tokenized by `tokenize`, e.g.
    `default_tokenizer(target language)`) and chrF, otherwise sacreBLEU's default settings.

    Returns ``{"bleu", "bleu_signature", "chrf", "chrf_signature", "sentences"}``; scores are
    on the 0-100 scale. Raises AttnmtError if the lists differ in length or are empty.
    """
    sentences = _check_same_length(hypotheses=hypotheses, references=references)
    if sentences == 0:
        raise AttnmtError("cannot score translations: there are no sentences (both lists are empty)")
    bleu = BLEU(tokenize=check_tokenizer(tokenize, "BLEU tokenizer"))
    chrf = CHRF()
    return {
        "bleu": _corpus_bleu(bleu, hypotheses, references),
        "bleu_signature": str(bleu.get_signature()),
        "chrf": float(chrf.corpus_score(list(hypotheses), [list(references)]).score),
        "chrf_signature": str(chrf.get_signature()),
        "sentences": sentences,
    }


def sentence_chrf(hypothesis: str, reference: str) -> float:
    """chrF of one sentence against its reference (0-100): how well one translation went, e.g. to pick an example."""
    return float(CHRF().sentence_score(hypothesis, [reference]).score)


UNSCORED_SEARCH = ("batch_size", "n_best")  # search settings that do not change the best translation


def search_record(settings: Mapping[str, Any]) -> dict:
    """The search settings a score was translated with (a `SearchConfig`'s fields), less those that do not change
    the translation (batch size, n-best): what is printed and stored with every score."""
    return {name: value for name, value in settings.items() if name not in UNSCORED_SEARCH}


def format_search(settings: Mapping[str, Any]) -> str:
    """One line: "search: beam_size 5, length_penalty 1.0, max_length_ratio 2.0"."""
    return "search: " + ", ".join(f"{name} {value!r}" if isinstance(value, str) else f"{name} {value}"
                                  for name, value in search_record(settings).items())


def source_word_lengths(sources: list[str]) -> list[int]:
    """Length of each source sentence in whitespace-separated words."""
    return [len(sentence.split()) for sentence in sources]


def _bucket_low(length: int, bucket_width: int) -> int:
    """Lower bound of the bucket ``[low, low + bucket_width)`` that holds ``length``."""
    if length < 0:
        raise ValueError(f"source lengths must be >= 0, got {length}")
    return (length // bucket_width) * bucket_width


def bleu_by_length(
    source_lengths: list[int],
    hypotheses: list[str],
    references: list[str],
    bucket_width: int = 10,
    tokenize: str = DEFAULT_TOKENIZER,
) -> list[dict]:
    """Corpus BLEU per source-length bucket ``[0, w), [w, 2w), ...``.

    Each bucket is ``{"bucket": "10-20", "low": 10, "high": 20, "sentences": n, "bleu": score}``,
    where ``bleu`` is the corpus BLEU of that bucket's sentences alone. Only non-empty buckets
    are returned, shortest first.
    """
    if isinstance(bucket_width, bool) or not isinstance(bucket_width, int) or bucket_width < 1:
        raise AttnmtError(f"bucket width must be a whole number >= 1, got {bucket_width!r}")
    _check_same_length(
        **{"source lengths": source_lengths, "hypotheses": hypotheses, "references": references}
    )
    members: dict[int, list[int]] = {}
    for index, length in enumerate(source_lengths):
        members.setdefault(_bucket_low(int(length), bucket_width), []).append(index)

    metric = BLEU(tokenize=check_tokenizer(tokenize, "BLEU tokenizer"))
    buckets = []
    for low in sorted(members):
        indices = members[low]
        high = low + bucket_width
        buckets.append(
            {
                "bucket": f"{low}-{high}",
                "low": low,
                "high": high,
                "sentences": len(indices),
                "bleu": _corpus_bleu(
                    metric, [hypotheses[i] for i in indices], [references[i] for i in indices]
                ),
            }
        )
    return buckets


def _format_cell(value: Any) -> str:
    """Text of one table cell: floats with 2 decimals, integers plain, text with pipes escaped."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        return f"{float(value):.2f}"
    return str(value).replace("\n", " ").replace("|", "\\|")


def _is_numeric(value: Any) -> bool:
    """True for numbers (not booleans), which are right-aligned in a table."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def markdown_table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """A markdown table of ``rows`` with the given ``(key, header)`` columns.

    Floats get 2 decimals, integers are written plainly (no thousands separators), missing
    keys and None give empty cells. Columns whose values are all numbers are right-aligned.
    """
    if not columns:
        raise ValueError("a markdown table needs at least one column")
    header = "| " + " | ".join(_format_cell(title) for _, title in columns) + " |"
    separators = []
    for key, _ in columns:
        values = [row[key] for row in rows if row.get(key) is not None]
        numeric = bool(values) and all(_is_numeric(value) for value in values)
        separators.append("---:" if numeric else "---")
    lines = [header, "| " + " | ".join(separators) + " |"]
    for row in rows:
        lines.append("| " + " | ".join(_format_cell(row.get(key)) for key, _ in columns) + " |")
    return "\n".join(lines)


def format_scores(scores: Mapping[str, Any], search: Mapping[str, Any] | None = None) -> list[str]:
    """BLEU and chrF with their signatures, the number of sentences and (if given) the search settings."""
    lines = [
        f"BLEU = {scores['bleu']:.2f}  ({scores['bleu_signature']})",
        f"chrF = {scores['chrf']:.2f}  ({scores['chrf_signature']})",
        f"sentences: {scores['sentences']}",
    ]
    return lines + ([format_search(search)] if search is not None else [])


def format_report(scores: Mapping[str, Any], buckets: list[dict], unit: str,
                  search: Mapping[str, Any] | None = None) -> str:
    """Human-readable report: BLEU and chrF with signatures (and the search settings, if given), then BLEU by source
    length.

    ``scores`` is what :func:`corpus_scores` returns, ``buckets`` what :func:`bleu_by_length`
    returns, and ``unit`` names how source length was counted (e.g. "words" or "subwords").
    """
    lines = [
        *format_scores(scores, search),
        "",
        f"BLEU by source length ({unit}):",
        "",
    ]
    if buckets:
        columns = [
            ("bucket", f"source length ({unit})"),
            ("sentences", "sentences"),
            ("bleu", "BLEU"),
        ]
        lines.append(markdown_table(buckets, columns))
    else:
        lines.append("(no sentences)")
    return "\n".join(lines) + "\n"
