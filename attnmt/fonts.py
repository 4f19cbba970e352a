"""Where the Hangul font comes from: NanumGothic (SIL OFL), shipped by the koreanize-matplotlib package (a dependency).

The heatmaps (plotting.py) draw with it and the server (serve/app.py) sends it to the page. Its folder is found
without importing koreanize_matplotlib, which would change matplotlib's global settings.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

HANGUL_FAMILY = "NanumGothic"
HANGUL_FONT_FILE = "NanumGothic.ttf"  # the regular weight: the one the page loads


def hangul_fonts_dir() -> Path | None:
    """The folder of koreanize-matplotlib's .ttf files, or None when the package (or its folder) is missing."""
    try:
        spec = importlib.util.find_spec("koreanize_matplotlib")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin:
        return None
    folder = Path(spec.origin).parent / "fonts"
    return folder if folder.is_dir() else None


def hangul_font_files() -> list[Path]:
    """Every NanumGothic weight there is (regular, bold, ...), for matplotlib to register."""
    folder = hangul_fonts_dir()
    return sorted(folder.glob(f"{HANGUL_FAMILY}*.ttf")) if folder else []


def hangul_font_file() -> Path | None:
    """The regular NanumGothic .ttf, or None."""
    folder = hangul_fonts_dir()
    path = folder / HANGUL_FONT_FILE if folder else None
    return path if path is not None and path.is_file() else None
