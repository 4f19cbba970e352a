"""A full disk while training: saving fails with one clear message, and the checkpoint before it stays intact.

    python benchmarks/reliability/disk_full.py   → benchmarks/results/reliability_disk_full.json

Mounts a small tmpfs (`mount -t tmpfs -o size=...`: root only; otherwise the results say "skipped: <reason>"), trains
a tiny model into it (`attnmt train`, in this process), fills what is left of the filesystem but a few KiB, and
continues training (`attnmt train --resume`) until a save fails. It checks that the failure is one line on stderr
(exit status 2) naming a file of the model directory and the full disk, with no traceback; that the model directory is
as it was (same bytes, manifest verified, the model loads and translates, train_state/ still at its step, no
temporary file left); that once space is freed the run resumes; and that a new run into the full disk fails at the
tokenizer's write with the same kind of message, not as a damaged model. tests/test_model_dir.py simulates the same
ENOSPC on any machine.
"""

from __future__ import annotations

import io
import json
import os
import random
import subprocess
import sys
import tempfile
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import torch
import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from report import machine  # noqa: E402

from attnmt import checkpoint, cli, manifest  # noqa: E402
from attnmt.translator import Translator  # noqa: E402

ROOT = HERE.parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "reliability_disk_full.json"
FILESYSTEM_BYTES = 4 << 20  # the tmpfs: room for the tiny model directory and its training state, twice
LEFT_FREE_BYTES = 16 << 10  # after filling: enough for a log line, not for a checkpoint
STEPS = 20
MODEL_FILES_CHECKED = (checkpoint.CONFIG_FILE, checkpoint.MODEL_FILE, "spm.model", checkpoint.EXAMPLES_FILE,
                       manifest.MANIFEST_FILE, f"{checkpoint.TRAIN_STATE}/state.json",
                       f"{checkpoint.TRAIN_STATE}/{checkpoint.MODEL_FILE}")


def _attnmt(*argv) -> tuple[int | None, str]:
    """`attnmt ARGV` in this process: exit status (None if an exception escaped) and stderr."""
    stderr = io.StringIO()
    try:
        with redirect_stderr(stderr), redirect_stdout(io.StringIO()):
            code = cli.main([str(arg) for arg in argv])
    except BaseException as error:  # what this benchmark exists to catch
        stderr.write(f"Traceback: {type(error).__name__}: {error}\n")
        code = None
    return code, stderr.getvalue()


def _config(folder: Path) -> Path:
    rng = random.Random(1)
    pairs = []
    for _ in range(300):
        words = [rng.choice("abcdefghij") for _ in range(rng.randint(3, 8))]
        pairs.append(f"{' '.join(words)}\t{' '.join(reversed(words))}\n")
    (folder / "train.tsv").write_text("".join(pairs), encoding="utf-8")
    (folder / "dev.tsv").write_text("".join(pairs[:8]), encoding="utf-8")
    config = {"name": "disk_full", "data": {"train": {"tsv": str(folder / "train.tsv")},
                                            "dev": {"tsv": str(folder / "dev.tsv")}},
              "tokenizer": {"vocab_size": 16, "model_type": "word"},
              "model": {"cell": "gru", "embedding_size": 16, "hidden_size": 32, "encoder_hidden_size": 16,
                        "bidirectional": True, "attention": "additive"},
              "training": {"seed": 1, "max_steps": STEPS, "batch_tokens": 400, "validate_every": 10,
                           "tensorboard": False, "threads": 1, "device": "cpu"}}
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def _fill(mount: Path, leave: int) -> Path:
    """A file taking all the free space of the filesystem at `mount` but `leave` bytes."""
    stats = os.statvfs(mount)
    filler = mount / "filler"
    with open(filler, "wb") as handle:
        handle.write(b"\0" * max(0, stats.f_bavail * stats.f_frsize - leave))
    return filler


def _snapshot(model_dir: Path) -> dict[str, bytes]:
    return {name: (model_dir / name).read_bytes() for name in MODEL_FILES_CHECKED if (model_dir / name).is_file()}


def _one_line_naming(code: int | None, stderr: str, folder: Path) -> bool:
    lines = stderr.strip().splitlines()
    return (code == 2 and len(lines) == 1 and "Traceback" not in stderr and str(folder) in lines[0]
            and "No space left on device" in lines[0])


def _on_full_disk(mount: Path) -> dict:
    config = _config(mount.parent)
    model_dir = mount / "model"
    code, stderr = _attnmt("train", config, "--model-dir", model_dir, "--quiet")
    if code != 0:
        return {"passed": False, "error": f"the first training run failed: {stderr.strip()}"}
    before = _snapshot(model_dir)
    step_before = json.loads(before[f"{checkpoint.TRAIN_STATE}/state.json"])["progress"]["step"]
    filler = _fill(mount, LEFT_FREE_BYTES)
    code, stderr = _attnmt("train", config, "--model-dir", model_dir, "--quiet", "--resume",
                           "--set", f"training.max_steps={2 * STEPS}")
    failure = {"exit_status": code, "stderr": stderr.strip(), "one_line_naming_the_file": _one_line_naming(
        code, stderr, model_dir)}
    after = _snapshot(model_dir)
    translator = Translator.load(model_dir, device="cpu")
    intact = {
        "same_bytes": after == before,
        "manifest_verified": all(check.problem is None for check in manifest.verify(model_dir)),
        "translates": bool(translator.translate(["c a j"], beam_size=1)[0].text),
        "train_state_step": json.loads(after[f"{checkpoint.TRAIN_STATE}/state.json"])["progress"]["step"],
        "temporary_files_left": sorted(str(p.relative_to(model_dir)) for p in model_dir.rglob(".*.tmp")),
        "other_entries_left": sorted(p.name for p in model_dir.iterdir()
                                     if p.name not in {*before, checkpoint.TRAIN_STATE, "validations.jsonl"}),
    }
    fresh_code, fresh_stderr = _attnmt("train", config, "--model-dir", mount / "fresh", "--quiet")
    fresh = {"exit_status": fresh_code, "stderr": fresh_stderr.strip(),
             "names_the_tokenizer": _one_line_naming(fresh_code, fresh_stderr, mount / "fresh")
             and "spm.model" in fresh_stderr}
    filler.unlink()
    resumed_code, resumed_stderr = _attnmt("train", config, "--model-dir", model_dir, "--quiet", "--resume",
                                           "--set", f"training.max_steps={2 * STEPS}")
    resumed = {"exit_status": resumed_code, "stderr": resumed_stderr.strip()}
    passed = (failure["one_line_naming_the_file"] and intact["same_bytes"] and intact["manifest_verified"]
              and intact["translates"] and intact["train_state_step"] == step_before
              and not intact["temporary_files_left"] and fresh["names_the_tokenizer"] and resumed_code == 0)
    return {"passed": passed, "save_failure": failure, "previous_checkpoint": intact, "fresh_run": fresh,
            "resumed_after_freeing_space": resumed}


def run() -> dict:
    """Train into a small tmpfs until saving fails; what was checked, or why it was skipped."""
    torch.set_num_threads(1)
    results = {"machine": machine(), "command": "python benchmarks/reliability/disk_full.py",
               "filesystem": f"tmpfs of {FILESYSTEM_BYTES >> 20} MiB, filled to {LEFT_FREE_BYTES >> 10} KiB free"}
    if os.geteuid() != 0:
        return {**results, "skipped": "skipped: mounting a tmpfs needs root, and this process is not"}
    with tempfile.TemporaryDirectory() as scratch:
        mount = Path(scratch) / "disk"
        mount.mkdir()
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={FILESYSTEM_BYTES}", "tmpfs", str(mount)],
                                 capture_output=True, text=True)
        if mounted.returncode != 0:
            return {**results, "skipped": f"skipped: mount -t tmpfs failed ({mounted.stderr.strip()})"}
        try:
            return {**results, **_on_full_disk(mount)}
        finally:
            subprocess.run(["umount", str(mount)], check=True)


def main() -> None:
    results = run()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(results.get("skipped") or ("passed" if results["passed"] else "FAILED"), f"→ {RESULTS}")


if __name__ == "__main__":
    main()
