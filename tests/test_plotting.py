"""Tests of attnmt.plotting: heatmaps with Hangul labels, grids and line plots as PNG files."""

import warnings

import numpy as np
import pytest
from matplotlib import rc_context
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from attnmt.plotting import hangul_font, plot_attention, plot_attention_grid, plot_lines

SOURCE = ["▁나는", "▁학생", "▁이다", "."]
TARGET = ["▁I", "▁am", "▁a", "▁student", "."]


def _weights(rows: int, columns: int, seed: int = 0) -> np.ndarray:
    """Random attention weights whose rows sum to one."""
    weights = np.random.default_rng(seed).random((rows, columns))
    return weights / weights.sum(axis=1, keepdims=True)


def _missing_glyph_messages(caught) -> list[str]:
    """The recorded warnings that report a glyph missing from a font."""
    return [str(warning.message) for warning in caught if "missing from font" in str(warning.message)]


def test_plot_attention_writes_png_with_hangul_and_no_missing_glyphs(tmp_path):
    path = tmp_path / "nested" / "dir" / "attention.png"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        written = plot_attention(_weights(5, 4), SOURCE, TARGET, path, title="나는 학생 이다 → I am a student")
    assert _missing_glyph_messages(caught) == []
    assert written == path
    assert path.stat().st_size > 1000
    with Image.open(path) as image:
        assert image.format == "PNG"
        width, height = image.size
    assert 300 <= width <= 3000
    assert 200 <= height <= 3000


def test_missing_glyph_check_detects_a_font_without_hangul(tmp_path):
    """The warning the test above looks for really appears when Hangul is drawn without NanumGothic."""
    with rc_context({"font.family": ["DejaVu Sans"]}), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        figure = Figure(figsize=(2, 1))
        figure.text(0.1, 0.5, "학생")
        FigureCanvasAgg(figure)
        figure.savefig(tmp_path / "dejavu.png")
    assert _missing_glyph_messages(caught)


def test_hangul_font_lists_nanum_gothic_first():
    assert hangul_font().get_family()[0] == "NanumGothic"


def test_long_sentences_get_larger_images(tmp_path):
    short = plot_attention(_weights(5, 4), SOURCE, TARGET, tmp_path / "short.png")
    source = [f"▁단어{i}" for i in range(30)]
    target = [f"▁word{i}" for i in range(25)]
    long = plot_attention(_weights(25, 30), source, target, tmp_path / "long.png")
    with Image.open(short) as small, Image.open(long) as large:
        assert large.size[0] > small.size[0]
        assert large.size[1] > small.size[1]


def test_plot_attention_rejects_wrong_shape(tmp_path):
    with pytest.raises(ValueError) as error:
        plot_attention(_weights(4, 5), SOURCE, TARGET, tmp_path / "bad.png")
    assert "(4, 5)" in str(error.value)
    assert "(5, 4)" in str(error.value)
    assert not (tmp_path / "bad.png").exists()


def test_plot_attention_grid_writes_file(tmp_path):
    matrices = [_weights(5, 4, seed) for seed in range(6)]
    path = plot_attention_grid(matrices, [f"head {i}" for i in range(6)], SOURCE, TARGET, tmp_path / "grid.png")
    assert path.stat().st_size > 1000


def test_plot_attention_grid_rejects_wrong_shape_and_title_count(tmp_path):
    with pytest.raises(ValueError, match="shape"):
        plot_attention_grid([_weights(5, 4), _weights(4, 4)], ["a", "b"], SOURCE, TARGET, tmp_path / "g.png")
    with pytest.raises(ValueError, match="titles"):
        plot_attention_grid([_weights(5, 4)], ["a", "b"], SOURCE, TARGET, tmp_path / "g.png")


def test_plot_lines_writes_file(tmp_path):
    series = {"bahdanau": [(5.0, 30.0), (15.0, 25.0)], "luong 일반": [(5.0, 28.0), (15.0, 26.0)]}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = plot_lines(series, "source length (words)", "BLEU", "BLEU by source length", tmp_path / "l.png")
    assert _missing_glyph_messages(caught) == []
    assert path.stat().st_size > 1000


def test_word_start_marker_is_drawn_as_a_light_mark():
    from attnmt import plotting

    assert plotting._display_token("▁학생") == "·학생" and plotting._display_token("생") == "생"
    assert plotting._marks_words(["▁a"], ["b"]) and not plotting._marks_words(["a"], ["b"])


def test_source_labels_stay_horizontal_and_alternate_lines_when_crowded():
    """No 90° rotation: columns widen to fit the widest label; past MAX_WIDTH_INCHES, labels take two lines."""
    from attnmt import plotting

    few = ["·나는", "·학생", "이다", "."]
    width, stagger = plotting._column_layout(few, 11.0, 11.0 / 72 * 2)
    assert not stagger and width >= plotting._label_inches("·학생", 11.0)
    assert plotting._label_inches("학생", 11.0) > plotting._label_inches("ab", 11.0)  # Hangul is wide
    many = ["·데이터베이스를"] * 40
    width, stagger = plotting._column_layout(many, 8.0, 8.0 / 72 * 2)
    assert stagger and width < plotting._label_inches(many[0], 8.0)
    assert plotting._staggered(["a", "b", "c"]) == ["a", "\nb", "c"]


def test_plotting_leaves_global_font_settings_alone(tmp_path):
    import sys

    import matplotlib

    before = list(matplotlib.rcParams["font.family"])
    plot_attention(_weights(5, 4), SOURCE, TARGET, tmp_path / "a.png")
    assert list(matplotlib.rcParams["font.family"]) == before
    assert "koreanize_matplotlib" not in sys.modules
