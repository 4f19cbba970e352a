"""What every benchmark report shares: the machine it ran on, and its own section of docs/benchmarks.md."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

HEADER = "# Benchmarks\n\nEvery number here comes from a command in this repository; rerun it to check.\n"


def machine() -> str:
    """CPU model, visible cores, Python and torch versions, OS and architecture."""
    cpu = "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return (f"{cpu}, {os.cpu_count()} cores visible, Python {platform.python_version()}, "
            f"torch {torch.__version__}, {platform.system()} {platform.machine()}")


def replace_section(path: Path, begin: str, end: str, section: str) -> None:
    """Put `section` (which starts with `begin` and ends with `end`) into the file, replacing the old one; other
    sections are kept."""
    text = path.read_text(encoding="utf-8") if path.exists() else HEADER
    if begin in text and end in text:
        before, rest = text.split(begin, 1)
        text = before + section + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
