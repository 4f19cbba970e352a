"""Headless figures: attention heatmaps (single and grid) and line plots, saved as PNG.

Figures are built with :class:`matplotlib.figure.Figure` and the Agg canvas, so no global
pyplot state is touched and no display is needed. Text is drawn with NanumGothic (shipped
by the koreanize-matplotlib package) for Hangul and Latin, falling back per glyph to
DejaVu Sans for other scripts and symbols.
"""

from __future__ import annotations

import functools
import math
import os
import unicodedata
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib import font_manager, rc_context
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from attnmt import fonts

__all__ = ["hangul_font", "plot_attention", "plot_attention_grid", "plot_lines"]

FALLBACK_FAMILY = "DejaVu Sans"
WORD_START = "\u2581"  # sentencepiece's word-start marker "▁"
WORD_START_MARK = "\u00b7"  # drawn instead: a light "·" before a token that starts a word
WORD_START_NOTE = "· marks the start of a word"
MAX_WIDTH_INCHES = 24.0  # wider than this, source labels alternate between two lines instead
DPI = 150
COLOUR_MAP = "viridis"


@functools.cache
def _font_families() -> tuple[str, ...]:
    """Register the NanumGothic fonts once and return the font family list to draw text with."""
    font_files = fonts.hangul_font_files()
    if not font_files:
        warnings.warn(
            "NanumGothic fonts not found (install koreanize-matplotlib); "
            "Hangul text in plots will not render",
            stacklevel=3,
        )
        return (FALLBACK_FAMILY,)
    for font_file in font_files:
        font_manager.fontManager.addfont(str(font_file))
    return (fonts.HANGUL_FAMILY, FALLBACK_FAMILY)


def hangul_font() -> font_manager.FontProperties:
    """Font properties that render Latin, Hangul and (through DejaVu Sans) other scripts."""
    return font_manager.FontProperties(family=list(_font_families()))


def _display_token(token: str) -> str:
    """Token text as drawn: sentencepiece's heavy "▁" becomes a light "·" word-start mark."""
    return token.replace(WORD_START, WORD_START_MARK)


def _marks_words(*token_lists: Sequence[str]) -> bool:
    """Whether any token carries sentencepiece's word-start marker (then the figure says what "·" means)."""
    return any(WORD_START in token for tokens in token_lists for token in tokens)


def _text_style() -> dict:
    """rc settings under which every figure is built and saved."""
    return {"font.family": list(_font_families()), "axes.unicode_minus": False}


def _label_font_size(token_count: int) -> float:
    """Tick-label font size in points: 11 for short sentences, shrinking to 5 for long ones."""
    return float(min(11.0, max(5.0, 13.0 - token_count / 6.0)))


def _output_path(path: str | os.PathLike) -> Path:
    """The path as a Path, with its parent directories created."""
    output = Path(path)
    output.parent.mkdir(parents=True, exist_ok=True)
    return output


def _save(figure: Figure, path: str | os.PathLike) -> Path:
    """Render the figure with the Agg canvas to a PNG at ``path`` and return the path."""
    output = _output_path(path)
    FigureCanvasAgg(figure)
    figure.savefig(output, dpi=DPI, format="png", bbox_inches="tight")
    return output


def _as_matrix(weights: np.ndarray, source_tokens: Sequence[str], target_tokens: Sequence[str]) -> np.ndarray:
    """The weights as a float matrix; ValueError unless its shape is [targets, sources]."""
    matrix = np.asarray(weights, dtype=float)
    expected = (len(target_tokens), len(source_tokens))
    if matrix.shape != expected:
        raise ValueError(
            f"attention weights have shape {tuple(matrix.shape)}, expected {expected} "
            f"= [len(target_tokens), len(source_tokens)]"
        )
    if 0 in expected:
        raise ValueError("cannot plot attention: source and target tokens must not be empty")
    return matrix


def _label_inches(label: str, font_size: float) -> float:
    """About how wide a label is drawn: wide (Hangul, CJK) characters take 1 em, others about 0.6 em."""
    ems = sum(1.0 if unicodedata.east_asian_width(c) in ("W", "F") else 0.6 for c in label)
    return ems * font_size / 72.0


def _column_layout(labels: Sequence[str], font_size: float, cell_inches: float) -> tuple[float, bool]:
    """(column width in inches, stagger): columns are as wide as the widest source label, so labels stay horizontal
    (no 90° rotation: Hangul read sideways is hard to read); when that would make the heatmap wider than
    MAX_WIDTH_INCHES, labels alternate between two lines and a column needs only half the width."""
    widest = max((_label_inches(label, font_size) for label in labels), default=0.0) + 0.08
    if len(labels) * max(cell_inches, widest) <= MAX_WIDTH_INCHES:
        return max(cell_inches, widest), False
    return max(cell_inches, widest / 2), True


def _staggered(labels: Sequence[str]) -> list[str]:
    """Every second label one line lower, so that neighbours never overlap."""
    return [label if index % 2 == 0 else "\n" + label for index, label in enumerate(labels)]


def _draw_heatmap(
    axes,
    matrix: np.ndarray,
    source_labels: Sequence[str] | None,
    target_labels: Sequence[str] | None,
    font_size: float,
    stagger: bool,
):
    """Draw one heatmap on ``axes``: sources along the top (horizontal, on two alternating lines with ``stagger``),
    targets down the side; return the image."""
    image = axes.imshow(matrix, cmap=COLOUR_MAP, vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest")
    axes.xaxis.tick_top()
    axes.xaxis.set_label_position("top")
    axes.set_xticks(range(matrix.shape[1]))
    axes.set_yticks(range(matrix.shape[0]))
    if source_labels is None:
        axes.tick_params(axis="x", labeltop=False)
    else:
        axes.set_xticklabels(_staggered(source_labels) if stagger else source_labels, fontsize=font_size,
                             verticalalignment="bottom")
    if target_labels is None:
        axes.tick_params(axis="y", labelleft=False)
    else:
        axes.set_yticklabels(target_labels, fontsize=font_size)
    axes.tick_params(length=0)
    return image


def plot_attention(
    weights: np.ndarray,
    source_tokens: list[str],
    target_tokens: list[str],
    path: str | os.PathLike,
    title: str | None = None,
) -> Path:
    """Save an attention heatmap as PNG and return its path.

    ``weights`` has shape [len(target_tokens), len(source_tokens)] with values in 0..1;
    source tokens run along the top, target tokens down the left side.
    """
    matrix = _as_matrix(weights, source_tokens, target_tokens)
    with rc_context(_text_style()):
        source_labels = [_display_token(token) for token in source_tokens]
        target_labels = [_display_token(token) for token in target_tokens]
        font_size = _label_font_size(max(matrix.shape))
        cell = font_size / 72.0 * 2.0
        column, stagger = _column_layout(source_labels, font_size, cell)
        label_width = max((_label_inches(label, font_size) for label in target_labels), default=0.0)
        width = min(40.0, max(4.0, matrix.shape[1] * column + label_width + 2.0))
        height = min(40.0, max(3.0, matrix.shape[0] * cell + 1.5))
        figure = Figure(figsize=(width, height))
        axes = figure.add_subplot()
        image = _draw_heatmap(axes, matrix, source_labels, target_labels, font_size, stagger)
        colour_bar = figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
        colour_bar.set_label("attention weight")
        axes.set_xlabel(f"source ({WORD_START_NOTE})" if _marks_words(source_tokens, target_tokens) else "source")
        axes.set_ylabel("target")
        if title:
            axes.set_title(title, pad=12)
        figure.tight_layout()
        return _save(figure, path)


def plot_attention_grid(
    matrices: list[np.ndarray],
    titles: list[str],
    source_tokens: list[str],
    target_tokens: list[str],
    path: str | os.PathLike,
    columns: int = 4,
) -> Path:
    """Save several heatmaps (e.g. one per attention head) with one shared 0..1 colour scale.

    Every matrix has shape [len(target_tokens), len(source_tokens)]; target labels appear
    on the first column, source labels on the top row.
    """
    if not matrices:
        raise ValueError("plot_attention_grid needs at least one matrix")
    if len(titles) != len(matrices):
        raise ValueError(f"got {len(matrices)} matrices but {len(titles)} titles")
    if columns < 1:
        raise ValueError(f"columns must be >= 1, got {columns}")
    checked = [_as_matrix(matrix, source_tokens, target_tokens) for matrix in matrices]
    with rc_context(_text_style()):
        source_labels = [_display_token(token) for token in source_tokens]
        target_labels = [_display_token(token) for token in target_tokens]
        columns = min(columns, len(checked))
        rows = math.ceil(len(checked) / columns)
        font_size = _label_font_size(max(checked[0].shape)) * 0.8
        cell = font_size / 72.0 * 2.0
        column, stagger = _column_layout(source_labels, font_size, cell)
        panel_width = max(2.0, len(source_tokens) * column + 1.2)
        panel_height = max(1.6, len(target_tokens) * cell + 1.2)
        figure = Figure(figsize=(min(60.0, columns * panel_width + 1.0), min(60.0, rows * panel_height)))
        grid = figure.subplots(rows, columns, squeeze=False)
        image = None
        for index, axes in enumerate(grid.flat):
            if index >= len(checked):
                axes.set_visible(False)
                continue
            row, column = divmod(index, columns)
            image = _draw_heatmap(
                axes,
                checked[index],
                source_labels if row == 0 else None,
                target_labels if column == 0 else None,
                font_size,
                stagger,
            )
            axes.set_title(titles[index], fontsize=font_size + 1, pad=8)
        if _marks_words(source_tokens, target_tokens):
            figure.suptitle(WORD_START_NOTE, fontsize=font_size)
        figure.tight_layout()
        colour_bar = figure.colorbar(image, ax=list(grid.flat), fraction=0.02, pad=0.02)
        colour_bar.set_label("attention weight")
        return _save(figure, path)


def plot_lines(
    series: dict[str, list[tuple[float, float]]],
    xlabel: str,
    ylabel: str,
    title: str,
    path: str | os.PathLike,
) -> Path:
    """Save a line plot with one marked line per named series of (x, y) points; return the path."""
    if not series:
        raise ValueError("plot_lines needs at least one series")
    with rc_context(_text_style()):
        figure = Figure(figsize=(7.0, 4.5))
        axes = figure.add_subplot()
        for name, points in series.items():
            xs = [float(x) for x, _ in points]
            ys = [float(y) for _, y in points]
            axes.plot(xs, ys, marker="o", label=name)
        axes.set_xlabel(xlabel)
        axes.set_ylabel(ylabel)
        axes.set_title(title)
        axes.grid(True, alpha=0.3)
        axes.legend()
        figure.tight_layout()
        return _save(figure, path)
