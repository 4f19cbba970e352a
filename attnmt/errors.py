"""Errors a user can cause. Each message says what went wrong and what to do; the CLI prints it without a traceback."""

import errno


class AttnmtError(Exception):
    """Base class of every error attnmt raises for bad input or bad configuration."""


class ConfigError(AttnmtError):
    """The YAML config has an unknown key, a missing key or a bad value."""


class CorpusError(AttnmtError):
    """A corpus file cannot be read: missing, not UTF-8, misaligned, wrong columns."""


class CheckpointError(AttnmtError):
    """A model directory or training state is missing, incomplete, damaged or not the one its manifest describes."""


class DivergenceError(AttnmtError):
    """Training cannot go on: its loss, gradients or parameters stopped being finite numbers."""


class StorageError(AttnmtError):
    """A file cannot be read or written: no permission, no space left, a read-only disk."""

    ADVICE = {errno.ENOSPC: "free some space on its disk, or choose another directory",
              errno.EDQUOT: "free some space within your disk quota, or choose another directory",
              errno.EACCES: "check the permissions of the file and its folder",
              errno.EPERM: "check the permissions of the file and its folder",
              errno.EROFS: "the disk is read-only: choose another directory",
              errno.ENOENT: "check the path"}

    @classmethod
    def from_os_error(cls, error: OSError, doing: str = "access", path=None) -> "StorageError":
        """'cannot <doing> <path>: <the system's reason>; <what to do>'; `path` defaults to the file the error names
        (an error that names none: the reason and what to do)."""
        path = error.filename if path is None else path
        where = "" if path is None else f"cannot {doing} {path}: "
        return cls(f"{where}{error.strerror or error}; {cls.ADVICE.get(error.errno, 'check the path and its disk')}")


class TextTooLong(AttnmtError):
    """A text to translate has more source subwords than the cap it is translated under (`max_source_tokens`; by
    default the model's `data.max_length`, the longest source it was trained on). `index` is its position in the
    list given, so that the caller can name it (an input line, a request field)."""

    def __init__(self, index: int, length: int, limit: int) -> None:
        super().__init__(f"text {index + 1}: {length} subwords, over the limit of {limit} (max_source_tokens; by "
                         f"default the model's data.max_length, the longest source it was trained on); split it into "
                         f"shorter texts")
        self.index, self.length, self.limit = index, length, limit


class BudgetSpent(AttnmtError):
    """A resumed run has nothing left to train: its budget (steps, epochs, minutes) is used up, or it stopped early.
    The message says how to go on; `attnmt train --resume` exits with `exit_status` (3), not 2: nothing failed."""

    exit_status = 3
