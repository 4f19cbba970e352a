"""fairseq 0.12.2: the pieces binarized once with the joint vocabulary as its (joined) dictionary, then
`fairseq-train` and `fairseq-generate` with command-line options.

fairseq has no GRU and no additive attention: its RNN is `lstm` (bidirectional LSTM encoder, LSTM decoder with input
feeding and a Luong "general"-like attention: a projected query dotted with the encoder states). That is the nearest
it has, and the table says so. Entry points through hooks.py: `fairseq_cli.train:cli_main`,
`fairseq_cli.generate:cli_main`; preprocessing runs as `fairseq_cli.preprocess:cli_main`, once per prepared data.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import tarfile
from pathlib import Path

from common import (MATCHED, Data, DecodeJob, TrainJob, cache_dir, ensure_venv, mark_setup_done, pip, read_lines,
                    run_env, setup_done, pieces_to_text)
from system import System

VERSION = "0.12.2"
DEPENDENCIES = ["cffi", "cython", "numpy", "regex", "sacrebleu", "tqdm", "bitarray", "hydra-core==1.3.2",
                "omegaconf==2.3.0"]
RECIPE = f"torch==2.13.0; {' '.join(DEPENDENCIES)}; patched sdist fairseq=={VERSION} v2"


def patch_fairseq_source(source: Path) -> None:
    """Make the fairseq 0.12.2 sdist installable on Python 3.11 with a CPU torch. Three changes, nothing else:

    1. setup.py: the sdist lacks the C++ sources of its torch extensions (libbase, libnat and the alignment
       operator), so that block of setup.py is skipped as it would be without torch installed. The Cython
       extensions (data_utils_fast, token_block_utils_fast) and libbleu are still built; training and generation
       need only those.
    2. Python 3.11 rejects a dataclass instance as a field default ("mutable default ... use default_factory"); the
       config dataclasses do that, so `x: XConfig = XConfig()` and `field(default=XConfig())` become
       `field(default_factory=XConfig)` (the same default, built anew for each instance).
    3. fairseq/dataclass/initialize.py registers each top-level section with hydra by reading the field's `default`,
       which (after 2.) is MISSING for the sections; it reads the default factory there instead.
    """
    setup_py = source / "setup.py"
    text = setup_py.read_text(encoding="utf-8")
    marker = "    from torch.utils import cpp_extension\n"
    if marker in text:
        text = text.replace(marker, "    raise ImportError  # attnmt-peers: the sdist lacks these C++ sources\n", 1)
        setup_py.write_text(text, encoding="utf-8")

    instance_default = re.compile(r"^(\s+\w+: (\w+)) = (\w+)\(\)\s*$", re.M)
    field_default = re.compile(r"field\(default=(\w+)\(\)\)")
    for path in (source / "fairseq").rglob("*.py"):
        if "examples" in path.relative_to(source).parts:
            continue
        text = path.read_text(encoding="utf-8")
        new = instance_default.sub(
            lambda m: f"{m.group(1)} = field(default_factory={m.group(3)})" if m.group(3).endswith("Config")
            else m.group(0), text)
        new = field_default.sub(lambda m: f"field(default_factory={m.group(1)})", new)
        if new != text:
            if not re.search(r"^from dataclasses import .*\bfield\b", new, re.M):
                new = "from dataclasses import field\n" + new
            path.write_text(new, encoding="utf-8")

    initialize = source / "fairseq" / "dataclass" / "initialize.py"
    text = initialize.read_text(encoding="utf-8")
    old = "        v = FairseqConfig.__dataclass_fields__[k].default\n"
    new = ("        f = FairseqConfig.__dataclass_fields__[k]  # attnmt-peers: a default factory since Python 3.11\n"
           "        v = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()\n")
    if old in text:
        text = text.replace(old, new, 1).replace("import logging\n", "import dataclasses\nimport logging\n", 1)
        initialize.write_text(text, encoding="utf-8")


NEVER = 10 ** 9
# fairseq-generate's subsets: the splits given to --testpref, in this order
TEST_SUBSETS = {"test2016": "test", "test2016.head20": "test1"}


class Fairseq(System):
    name, label, package = "fairseq", "fairseq", "fairseq"
    mapping = {
        "vocabulary": "`fairseq-preprocess --joined-dictionary --srcdict` the joint counts",
        "batch of 3000 tokens": "`--max-tokens 3000`: sentences × longest side (+EOS) ≤ 3000, length-sorted; "
                                "`--required-batch-size-multiple 1`",
        "learning rate (RNN / Transformer)": "`fixed` / `inverse_sqrt`, `--warmup-updates 500 --warmup-init-lr 0`",
        "loss normalization": "per target token (`label_smoothed_cross_entropy`)",
        "timed step": "`Trainer.train_step` (`ntokens`)",
        "end of the budget": "hook sets `max_update`; fairseq saves `checkpoint_last.pt`",
        "output limit": "`--max-len-a 2 --max-len-b 10`",
        "beam length penalty": "`--lenpen 1`: score / n (no GNMT form)",
        "greedy": "`--beam 1`: its beam search with one beam",
    }
    arch_differs = {"rnn": "LSTM, dot attention"}
    arch_notes = {"rnn": "LSTM, not GRU, and its `general`-like dot attention, not additive (fairseq has neither); "
                         "bidirectional LSTM 256 per direction, LSTM decoder 512, input feeding",
                  "transformer": "pre-norm, all embeddings shared; its parameter count includes 2.37M copies of the "
                                 "encoder weights that fairseq 0.12 registers for PyTorch's BetterTransformer path "
                                 "and never trains"}

    def setup(self) -> None:
        if setup_done(self.name, RECIPE):
            return
        python = ensure_venv(self.name)
        # Its dependencies by hand: torchaudio has no CPU build here and is not needed for translation; hydra and
        # omegaconf in the versions that run on Python 3.11.
        pip(python, "install", "-q", *DEPENDENCIES)
        build = cache_dir() / self.name / "build"
        shutil.rmtree(build, ignore_errors=True)
        build.mkdir(parents=True)
        # Only an sdist exists. Its metadata step imports torch, hence no build isolation (which would fetch the
        # newest torch with CUDA).
        pip(python, "download", "-q", "--no-deps", "--no-binary", "fairseq", "--no-build-isolation",
            f"fairseq=={VERSION}", "-d", str(build))
        with tarfile.open(build / f"fairseq-{VERSION}.tar.gz") as archive:
            archive.extractall(build, filter="data")
        source = build / f"fairseq-{VERSION}"
        patch_fairseq_source(source)
        pip(python, "install", "-q", "--no-deps", "--no-build-isolation", str(source))
        subprocess.run([str(python), "-c", "import fairseq_cli.train, fairseq_cli.generate"], check=True,
                       cwd=build)
        mark_setup_done(self.name, RECIPE)

    # ---- data ----------------------------------------------------------------------------------------------------

    def prepare(self, data: Data) -> None:
        self.binarized(data)

    def binarized(self, data: Data) -> Path:
        """fairseq-preprocess once per prepared data: train, val, and the test splits, with the joint vocabulary as
        the joined dictionary (so every system has the same vocabulary)."""
        dest = cache_dir() / self.name / f"data-bin-{data.root.name}"
        if (dest / "done").exists():
            return dest
        shutil.rmtree(dest, ignore_errors=True)
        tests = ",".join(str(data.root / f"{split}.sp") for split in TEST_SUBSETS)
        command = [str(self.python()), "-P", "-c", "from fairseq_cli.preprocess import cli_main; cli_main()",
                   "--source-lang", "de", "--target-lang", "en", "--trainpref", str(data.root / "train.sp"),
                   "--validpref", str(data.root / "val.sp"), "--testpref", tests, "--destdir", str(dest),
                   "--joined-dictionary", "--srcdict", str(data.vocab_counts), "--workers", "1"]
        subprocess.run(command, check=True, env=run_env(), stdout=subprocess.DEVNULL)
        (dest / "done").write_text("")
        return dest

    # ---- training ------------------------------------------------------------------------------------------------

    def train_command(self, job: TrainJob) -> list[str]:
        arch = job.arch
        cli = ["fairseq_cli.train:cli_main", str(self.binarized(job.data)), "--task", "translation",
               "--source-lang", "de", "--target-lang", "en", "--cpu", "--seed", str(job.seed),
               # batches: sentences × longest side (padded, EOS included) ≤ max-tokens; no rounding to multiples of 8
               "--max-tokens", str(MATCHED.batch_tokens), "--required-batch-size-multiple", "1",
               "--num-workers", "0", "--update-freq", "1",
               "--optimizer", "adam", "--adam-betas", f"({arch.adam_betas[0]}, {arch.adam_betas[1]})",
               "--lr", str(arch.learning_rate), "--clip-norm", str(MATCHED.clip_grad_norm),
               "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", str(MATCHED.label_smoothing),
               "--dropout", str(arch.dropout), "--max-update", str(NEVER),
               "--disable-validation", "--save-dir", str(job.work / "model"), "--no-epoch-checkpoints",
               "--save-interval", str(NEVER), "--log-format", "simple", "--log-interval", "100",
               "--no-progress-bar"]
        if arch.warmup_steps:  # linear warmup from 0, then lr · sqrt(warmup / step): attnmt's inverse_sqrt
            cli += ["--lr-scheduler", "inverse_sqrt", "--warmup-updates", str(arch.warmup_steps),
                    "--warmup-init-lr", "0"]
        else:
            cli += ["--lr-scheduler", "fixed"]
        if arch.name == "rnn":
            cli += ["--arch", "lstm", "--encoder-embed-dim", str(arch.embedding_size),
                    "--encoder-hidden-size", str(arch.encoder_hidden_per_direction), "--encoder-layers", "1",
                    "--encoder-bidirectional", "--decoder-embed-dim", str(arch.embedding_size),
                    "--decoder-hidden-size", str(arch.decoder_hidden), "--decoder-layers", "1",
                    "--decoder-out-embed-dim", str(arch.decoder_hidden), "--decoder-attention", "1",
                    "--max-source-positions", "1024", "--max-target-positions", "1024"]
        else:
            cli += ["--arch", "transformer", "--encoder-layers", str(arch.layers), "--decoder-layers",
                    str(arch.layers), "--encoder-embed-dim", str(arch.d_model), "--decoder-embed-dim",
                    str(arch.d_model), "--encoder-ffn-embed-dim", str(arch.feed_forward), "--decoder-ffn-embed-dim",
                    str(arch.feed_forward), "--encoder-attention-heads", str(arch.heads),
                    "--decoder-attention-heads", str(arch.heads), "--encoder-normalize-before",
                    "--decoder-normalize-before", "--share-all-embeddings",
                    "--attention-dropout", str(arch.attention_dropout), "--activation-dropout", str(arch.dropout)]
        return self.hook("train", job, job.step_log, cli)

    # ---- decoding ------------------------------------------------------------------------------------------------

    def decode_command(self, job: DecodeJob) -> list[str]:
        # fairseq's length penalty divides the score by length^lenpen (no GNMT form); max-len-a/b as attnmt.
        cli = ["fairseq_cli.generate:cli_main", str(self.binarized(job.train.data)),
               "--path", str(job.train.work / "model" / "checkpoint_last.pt"), "--task", "translation",
               "--source-lang", "de", "--target-lang", "en", "--gen-subset", TEST_SUBSETS[job.split], "--cpu",
               "--batch-size", str(MATCHED.decode_batch_sentences), "--required-batch-size-multiple", "1",
               "--num-workers", "0", "--beam", str(job.beam), "--lenpen", "1.0",
               "--max-len-a", str(MATCHED.max_len_a), "--max-len-b", str(MATCHED.max_len_b), "--seed",
               str(job.train.seed)]
        return self.hook("decode", job.train, job.time_log, cli, ["--stdout", str(job.output)])

    def hypotheses(self, job: DecodeJob) -> list[str]:
        """fairseq-generate prints `H-<id>\t<score>\t<pieces>` in its own order; put them back in input order."""
        found: dict[int, str] = {}
        for line in read_lines(job.output):
            if line.startswith("H-"):
                head, _score, *text = line.split("\t")
                found[int(head[2:])] = text[0] if text else ""
        count = len(read_lines(job.references))
        return pieces_to_text(job.train.data, [found.get(i, "") for i in range(count)])
