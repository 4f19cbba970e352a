"""Errors a user can cause. Each message says what went wrong and what to do; the CLI prints it without a traceback."""


class AttnmtError(Exception):
    """Base class of every error attnmt raises for bad input or bad configuration."""


class ConfigError(AttnmtError):
    """The YAML config has an unknown key, a missing key or a bad value."""


class CorpusError(AttnmtError):
    """A corpus file cannot be read: missing, not UTF-8, misaligned, wrong columns."""


class CheckpointError(AttnmtError):
    """A model directory or training state is missing or incomplete."""
