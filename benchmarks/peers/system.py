"""The one interface every system of the side-by-side benchmark implements (attnmt and each peer toolkit).

A system installs itself into its own virtual environment (`setup`), writes its own configs for an `Arch` and the
`MATCHED` settings (`train_command`), and decodes with the model it trained (`decode_command`). Every command it
returns runs through `hooks.py` inside its environment, which times the training steps and the decoding batches the
same way for everyone; `run.py` runs the commands, polls their memory and scores their output.
"""

from __future__ import annotations

from pathlib import Path

from common import HOOKS, Arch, DecodeJob, TrainJob, pieces_to_text, read_lines, venv_python


class System:
    """Base class: subclasses set the class attributes and implement the three methods that raise here."""

    name = ""  # the id used on the command line and in results
    hook_name = ""  # the toolkit's entry in hooks.py, if not `name` (a variant of a toolkit shares its hooks)
    label = ""  # as printed in the table
    package = ""  # the pip distribution whose version is reported
    # arch name -> None if the system builds it, else the reason it cannot (shown as "n/a: reason")
    unsupported: dict[str, str] = {}
    # what the system builds per arch (listed under the table), and a short mark where it differs from the brief
    arch_notes: dict[str, str] = {}
    arch_differs: dict[str, str] = {}
    wants_pieces = True  # reads pre-segmented pieces (and writes pieces); attnmt reads raw text
    # how the system maps each matched setting (rows of the mapping table in docs/benchmarks.md)
    mapping: dict[str, str] = {}

    # ---- installation ----------------------------------------------------------------------------------------------

    def python(self) -> Path:
        return venv_python(self.name)

    def setup(self) -> None:
        """Install into `self.python()`'s environment; idempotent."""
        raise NotImplementedError

    def version(self) -> str | None:
        from common import pip_version
        return pip_version(self.python(), self.package)

    def prepare(self, data) -> None:
        """Once per prepared data, before anything is timed (e.g. fairseq's binarization); default nothing."""

    # ---- training --------------------------------------------------------------------------------------------------

    def supports(self, arch: Arch) -> bool:
        return arch.name not in self.unsupported

    def train_command(self, job: TrainJob) -> list[str]:
        """Write the configs for `job` into `job.work` and return the command that trains (through the hook)."""
        raise NotImplementedError

    def hook(self, mode: str, job: TrainJob, log: Path, cli: list[str], extra: list[str] | None = None,
             hook_system: str | None = None) -> list[str]:
        """The command that runs the toolkit's own command line `cli` (entry point name first) inside hooks.py;
        `hook_system` times another library's batches (CTranslate2's) instead of the toolkit's."""
        command = [str(job.python), "-P", str(HOOKS), mode, "--system", hook_system or self.hook_name or self.name,
                   "--log", str(log)]
        if mode == "train":
            if job.stop_after_steps is not None:
                command += ["--stop-after-steps", str(job.stop_after_steps)]
            if job.budget_seconds is not None:
                command += ["--budget-seconds", str(job.budget_seconds)]
            if job.save_at_step is not None:
                command += ["--save-at-step", str(job.save_at_step)]
        return command + (extra or []) + ["--", *cli]

    # ---- decoding --------------------------------------------------------------------------------------------------

    def decode_variants(self, arch: Arch) -> dict[str, str]:
        """The decoding paths of this system for `arch` (fastdecode mode): variant → how the table names it.
        Every system has its PyTorch float32 path; a fast path (int8, CTranslate2) is added by the system."""
        return {"float32": f"{self.label}, PyTorch float32"}

    def prepare_variant(self, job: TrainJob, variant: str) -> None:
        """What a decoding path needs before it is timed (a conversion of the trained model); default nothing."""

    def decode_command(self, job: DecodeJob) -> list[str]:
        """The command that translates `job.source_*` into `job.output` (through the hook), on `job.variant`'s
        path."""
        raise NotImplementedError

    def hypotheses(self, job: DecodeJob) -> list[str]:
        """Detokenized translations, one per source line: pieces are joined by the shared sentencepiece model."""
        lines = read_lines(job.output)
        return pieces_to_text(job.train.data, lines) if self.wants_pieces else lines
