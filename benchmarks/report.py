"""What every benchmark report shares: the machine it ran on, its results JSON and its own section of
docs/benchmarks.md."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

SHARED_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"  # the corpora beside the repository
SHARED_FOLDERS = {"tatoeba-kor-eng": "tatoeba", "tatoeba-eng-fra": "tatoeba"}  # `attnmt data` name → folder there

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


def shared_data_overrides(config_path: str | Path) -> dict[str, str]:
    """Config overrides that read the corpora from ../shared/data beside the repository instead of data/, where the
    shipped configs expect `attnmt data NAME data` to have put them (data/multi30k/train.de →
    ../shared/data/multi30k/train.de)."""
    from attnmt.config import resolve_path

    data = (yaml.safe_load(resolve_path(str(config_path)).read_text(encoding="utf-8")) or {}).get("data", {})
    overrides = {}
    for split in ("train", "dev", "test"):
        for key, value in (data.get(split) or {}).items():
            if isinstance(value, str) and value.startswith("data/"):
                name, _, rest = value[len("data/"):].partition("/")
                overrides[f"data.{split}.{key}"] = str(SHARED_DATA / SHARED_FOLDERS.get(name, name) / rest)
    return overrides


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


def publish(results: dict, json_path: str | Path, marker: str, title: str, table: str) -> None:
    """Write `results` as JSON to `json_path`, put `table` under `## title` into docs/benchmarks.md between the
    markers `<!-- marker:begin -->` and `<!-- marker:end -->`, and print the table."""
    Path(json_path).write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    begin, end = f"<!-- {marker}:begin -->", f"<!-- {marker}:end -->"
    docs = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
    replace_section(docs, begin, end, f"{begin}\n## {title}\n\n{table}\n{end}")
    print(table)


def merged_rows(json_path: Path, new_rows: list[dict], key: str = "config") -> list[dict]:
    """The rows of `json_path` with `new_rows` put in: earlier rows of other configs are kept, so configs can be
    measured in separate runs; a config measured again replaces its row."""
    old = json.loads(Path(json_path).read_text(encoding="utf-8"))["rows"] if Path(json_path).exists() else []
    measured = {row[key] for row in new_rows}
    return [row for row in old if row[key] not in measured] + new_rows


def run_each_config(script: str, configs: list[str], minutes: float, work_dir: str | Path, json_path: str | Path,
                    extra: list[str] | None = None) -> dict:
    """Train and measure each config for `minutes` in a process of its own, one after the other (so its peak memory
    is its own and no two share the cores): `python SCRIPT --one CONFIG --minutes M --work-dir DIR/STEM [extra]`,
    which prints its row as JSON last. Returns {"machine", "rows"} with the rows merged into `json_path`'s and
    written there."""
    command = "python " + " ".join([f"benchmarks/{Path(script).name}"] + sys.argv[1:])
    rows = []
    for config in configs:
        model_dir = Path(work_dir) / Path(config).stem
        if model_dir.exists():
            sys.exit(f"{model_dir} exists: remove it or pass another --work-dir (nothing was overwritten)")
        print(f"training {config} for {minutes} minutes into {model_dir} ...", flush=True)
        output = subprocess.run([sys.executable, script, "--one", config, "--minutes", str(minutes),
                                 "--work-dir", str(model_dir), *(extra or [])],
                                check=True, capture_output=True, text=True).stdout
        row = json.loads(output.strip().splitlines()[-1])
        rows.append({**row, "command": command, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())})
        print(json.dumps(rows[-1], ensure_ascii=False), flush=True)
    results = {"machine": machine(), "rows": merged_rows(json_path, rows)}
    Path(json_path).parent.mkdir(parents=True, exist_ok=True)
    Path(json_path).write_text(json.dumps(results, indent=1, ensure_ascii=False), encoding="utf-8")
    return results


def budget_parser(doc: str, configs: list[str], work_dir: str, json_path: str) -> argparse.ArgumentParser:
    """The options of a benchmark that trains each config for a budget (`run_each_config`)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=configs)
    parser.add_argument("--minutes", type=float, default=30.0, help="training budget per config")
    parser.add_argument("--work-dir", default=work_dir)
    parser.add_argument("--json", default=json_path)
    parser.add_argument("--markdown", default="docs/benchmarks.md")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one config in this process
    return parser
