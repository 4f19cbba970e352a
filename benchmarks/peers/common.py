"""What every system of the side-by-side benchmark shares: the cache folder, the matched settings, virtual
environments, the prepared data, monitored subprocesses and scoring.

Nothing here runs inside a peer's virtual environment (that is `hooks.py`); this module runs in attnmt's own
environment, the one `run.py` is started with.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository
PEERS_DIR = Path(__file__).resolve().parent
HOOKS = PEERS_DIR / "hooks.py"
DATA = ROOT.parent / "shared" / "data" / "multi30k"
TORCH_VERSION = "2.13.0"


def cache_dir() -> Path:
    """Where virtual environments, prepared data and runs go: never inside the repository."""
    path = Path(os.environ.get("ATTNMT_PEERS_CACHE", "~/.cache/attnmt-peers")).expanduser().resolve()
    if path == ROOT or ROOT in path.parents:
        sys.exit(f"ATTNMT_PEERS_CACHE={path} is inside the repository; choose a folder outside {ROOT}")
    return path


# ---- matched settings --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Arch:
    """One architecture as every system is asked to build it, and how it is trained."""

    name: str  # "rnn" | "transformer"
    dropout: float
    learning_rate: float  # Adam; the peak rate where there is warmup
    adam_betas: tuple[float, float]
    warmup_steps: int  # 0: constant rate; else linear warmup, then lr · sqrt(warmup / step)
    # RNN
    embedding_size: int = 256
    encoder_hidden_per_direction: int = 256
    decoder_hidden: int = 512
    attention_hidden: int = 256
    # Transformer
    layers: int = 3
    d_model: int = 256
    heads: int = 4
    feed_forward: int = 1024
    attention_dropout: float = 0.1


ARCHS = {
    "rnn": Arch("rnn", dropout=0.3, learning_rate=1e-3, adam_betas=(0.9, 0.999), warmup_steps=0),
    "transformer": Arch("transformer", dropout=0.1, learning_rate=1e-3, adam_betas=(0.9, 0.98), warmup_steps=500),
}


@dataclass(frozen=True)
class Matched:
    """Settings that are the same for every system and both architectures."""

    vocab_size: int = 8000  # one joint sentencepiece unigram model for everyone
    batch_tokens: int = 3000  # each toolkit's own token batching; see docs/benchmarks.md for how each counts
    max_length: int = 60  # subwords per side; longer training pairs are dropped before any system sees them
    label_smoothing: float = 0.1
    clip_grad_norm: float = 1.0
    threads: int = 2
    seed: int = 1  # the default of run.py's --seed
    decode_batch_sentences: int = 64
    beam_size: int = 5
    # Search stops at max_len_a · source length + max_len_b target tokens where a toolkit allows it.
    max_len_a: float = 2.0
    max_len_b: int = 10


MATCHED = Matched()


def inverse_sqrt_noam_factor(arch: Arch) -> float:
    """The `noam` schedule (OpenNMT-py, JoeyNMT) is factor · d^-0.5 · min(step^-0.5, step · warmup^-1.5); this
    factor makes it the same curve as lr · min(step / warmup, sqrt(warmup / step)), peaking at `learning_rate`."""
    return arch.learning_rate * (arch.d_model ** 0.5) * (arch.warmup_steps ** 0.5)


# ---- the runs ------------------------------------------------------------------------------------------------------

@dataclass
class Data:
    """The prepared data every system reads: one sentencepiece model, raw and pre-segmented text."""

    root: Path

    @property
    def spm_model(self) -> Path:
        return self.root / "spm.model"

    @property
    def vocab_list(self) -> Path:
        """The joint vocabulary: every piece of the training set (both sides), most frequent first, one a line."""
        return self.root / "vocab.joint.txt"

    @property
    def vocab_counts(self) -> Path:
        """The same as 'piece count' lines (the format of OpenNMT-py's and fairseq's vocabulary files)."""
        return self.root / "vocab.joint.counts"

    def raw(self, split: str, lang: str) -> Path:
        """Raw text: train is the length-filtered training set; val and test2016 as distributed."""
        return self.root / f"{split}.{lang}"

    def pieces(self, split: str, lang: str) -> Path:
        """Sentencepiece pieces separated by spaces, one sentence a line."""
        return self.root / f"{split}.sp.{lang}"


@dataclass
class TrainJob:
    """One training run of one system on one architecture."""

    system: str
    arch: Arch
    data: Data
    work: Path  # a fresh folder for this run: configs, logs, model
    python: Path  # the interpreter of the system's virtual environment
    seed: int  # the training seed: run.py's --seed, MATCHED.seed unless given
    stop_after_steps: int | None = None  # speed mode: the hook ends the process at the start of this step
    budget_seconds: float | None = None  # bleu mode: wall clock from the first step
    save_at_step: int | None = None  # fastdecode mode: the toolkit saves its model and stops at this step
    step_log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.step_log = self.work / "steps.jsonl"


@dataclass
class DecodeJob:
    """Decode a source file (pre-segmented or raw, as the system wants) with the model a TrainJob left."""

    train: TrainJob
    beam: int
    split: str  # "test2016", or "test2016.head20" for smoke tests
    output: Path  # what the toolkit writes
    time_log: Path  # what the hook writes: when the first batch started and the last ended
    variant: str = "float32"  # the decoding path: a key of the system's `decode_variants`

    @property
    def source_raw(self) -> Path:
        return self.train.data.raw(self.split, "de")

    @property
    def source_pieces(self) -> Path:
        return self.train.data.pieces(self.split, "de")

    @property
    def references(self) -> Path:
        return self.train.data.raw(self.split, "en")


# ---- virtual environments ------------------------------------------------------------------------------------------

def venv_python(name: str) -> Path:
    return cache_dir() / name / "venv" / "bin" / "python"


def ensure_venv(name: str) -> Path:
    """Create the peer's virtual environment (if missing) with torch 2.13.0 in it, first: the local CPU wheel, so
    that nothing installed later pulls a CUDA build of torch. Returns its python."""
    python = venv_python(name)
    if not python.exists():
        python.parent.parent.parent.mkdir(parents=True, exist_ok=True)
        base = getattr(sys, "_base_executable", sys.executable)
        subprocess.run([base, "-m", "venv", str(python.parent.parent)], check=True)
        pip(python, "install", "-q", "--upgrade", "pip")
    if subprocess.run([str(python), "-c", f"import torch; assert torch.__version__.startswith('{TORCH_VERSION}')"],
                      capture_output=True).returncode != 0:
        pip(python, "install", "-q", f"torch=={TORCH_VERSION}")
    return python


def pip(python: Path, *args: str) -> None:
    print(f"  pip {' '.join(args)}", flush=True)
    subprocess.run([str(python), "-m", "pip", *args], check=True)


def setup_done(name: str, recipe: str) -> bool:
    """Whether the peer was installed with exactly this recipe (a changed recipe installs again)."""
    marker = cache_dir() / name / "setup-done.json"
    return marker.exists() and json.loads(marker.read_text()).get("recipe") == recipe


def mark_setup_done(name: str, recipe: str) -> None:
    (cache_dir() / name / "setup-done.json").write_text(json.dumps({"recipe": recipe, "date": utc_now()}))


def pip_version(python: Path, package: str) -> str | None:
    result = subprocess.run([str(python), "-m", "pip", "show", package], capture_output=True, text=True)
    match = re.search(r"^Version: (.+)$", result.stdout, re.M)
    return match.group(1).strip() if match else None


def utc_now() -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())


# ---- monitored subprocesses ----------------------------------------------------------------------------------------

def run_env() -> dict[str, str]:
    """The environment of every measured command: the same threads for everyone, and the switches the peers need."""
    env = dict(os.environ)
    threads = str(MATCHED.threads)
    env.update({
        "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
        "ATTNMT_PEERS_THREADS": threads,  # hooks.py calls torch.set_num_threads with it, in every system
        "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1",  # OpenNMT-py and fairseq checkpoints hold more than weights
        "PYTHONHASHSEED": "0",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONWARNINGS": "ignore",
    })
    return env


def _children(pid: int) -> list[int]:
    """Direct children of a process, from /proc (Linux)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(child) for child in (task / "children").read_text().split()]
        except OSError:
            pass
    return found


def _tree_rss_kib(pid: int) -> int:
    """Resident memory of a process and all its descendants, summed (KiB)."""
    total, stack = 0, [pid]
    while stack:
        current = stack.pop()
        try:
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
                    break
        except OSError:
            continue
        stack += _children(current)
    return total


@dataclass
class Finished:
    returncode: int
    wall_seconds: float
    peak_rss_mib: float  # max over time of the summed RSS of the process tree, polled every 0.2 s
    log: Path


def run_monitored(argv: list[str], cwd: Path, log: Path, timeout: float | None = None) -> Finished:
    """Run a command with stdout and stderr into `log`, polling the resident memory of its process tree."""
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    peak = 0
    with open(log, "w", encoding="utf-8") as out:
        out.write("$ " + " ".join(map(str, argv)) + "\n")
        out.flush()
        process = subprocess.Popen([str(a) for a in argv], cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                   env=run_env(), stdin=subprocess.DEVNULL)
        while process.poll() is None:
            peak = max(peak, _tree_rss_kib(process.pid))
            if timeout is not None and time.perf_counter() - started > timeout:
                process.kill()
                process.wait()
                break
            time.sleep(0.2)
    return Finished(process.returncode, time.perf_counter() - started, peak / 1024, log)


def tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# ---- data ----------------------------------------------------------------------------------------------------------

def prepared_data() -> Data:
    """Where `prepare_data` puts the data (whether or not it has run)."""
    return Data(cache_dir() / "data" / f"multi30k_spm{MATCHED.vocab_size // 1000}k_len{MATCHED.max_length}")


def prepare_data() -> Data:
    """Once: the length-filtered training set, one joint sentencepiece model trained on it (attnmt's special ids, so
    attnmt can load it as `tokenizer.src_model`), and every split written as pieces. Idempotent."""
    import sentencepiece as spm

    data = prepared_data()
    done = data.root / "done.json"
    if done.exists():
        return data
    if not DATA.is_dir():
        sys.exit(f"Multi30k not found at {DATA}: this benchmark reads ../shared/data/multi30k beside the repository")
    from attnmt.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID, TRAIN_SEED

    data.root.mkdir(parents=True, exist_ok=True)
    read = lambda path: path.read_text(encoding="utf-8").rstrip("\n").split("\n")  # noqa: E731
    train_de, train_en = read(DATA / "train.de"), read(DATA / "train.en")
    spm.set_random_generator_seed(TRAIN_SEED)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(train_de + train_en), model_prefix=str(data.root / "spm"),
        vocab_size=MATCHED.vocab_size, model_type="unigram", character_coverage=1.0,
        pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID, pad_piece="<pad>", unk_piece="<unk>",
        bos_piece="<s>", eos_piece="</s>", hard_vocab_limit=False, normalization_rule_name="nmt_nfkc",
        num_threads=MATCHED.threads, minloglevel=2)
    sp = spm.SentencePieceProcessor(model_file=str(data.spm_model))
    kept = [(de, en) for de, en in zip(train_de, train_en)
            if de.strip() and en.strip()
            and len(sp.encode(de)) <= MATCHED.max_length and len(sp.encode(en)) <= MATCHED.max_length]
    splits = {"train": kept,
              "val": list(zip(read(DATA / "val.de"), read(DATA / "val.en"))),
              "test2016": list(zip(read(DATA / "test2016.de"), read(DATA / "test2016.en")))}
    splits["test2016.head20"] = splits["test2016"][:20]
    counts: Counter[str] = Counter()
    for split, pairs in splits.items():
        for index, lang in enumerate(("de", "en")):
            lines = [pair[index] for pair in pairs]
            pieces = sp.encode(lines, out_type=str)
            if split == "train":
                counts.update(piece for sentence in pieces for piece in sentence)
            data.raw(split, lang).write_text("\n".join(lines) + "\n", encoding="utf-8")
            data.pieces(split, lang).write_text("\n".join(" ".join(s) for s in pieces) + "\n", encoding="utf-8")
    # The joint vocabulary every peer uses: the pieces of the training set (both sides), most frequent first.
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    data.vocab_list.write_text("".join(f"{piece}\n" for piece, _ in ranked), encoding="utf-8")
    data.vocab_counts.write_text("".join(f"{piece} {count}\n" for piece, count in ranked), encoding="utf-8")
    done.write_text(json.dumps({"train_pairs": len(kept), "dropped": len(train_de) - len(kept),
                                "vocab": sp.get_piece_size(), "date": utc_now()}))
    return data


def pieces_to_text(data: Data, lines: list[str]) -> list[str]:
    """Join pieces back into text with the same sentencepiece model, for every system alike."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(data.spm_model))
    return [sp.decode_pieces(line.split()) for line in lines]


def read_lines(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    return text[:-1].split("\n") if text.endswith("\n") else text.split("\n")


def bleu(hypotheses: list[str], references: list[str]) -> tuple[float, str]:
    """Detokenized, cased sacreBLEU (13a), the same call for every system; (score, signature)."""
    import sacrebleu

    metric = sacrebleu.metrics.BLEU()
    score = metric.corpus_score(hypotheses, [references])
    return score.score, str(metric.get_signature())


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
