"""attnmt: sequence-to-sequence learning with attention, translation first."""

__version__ = "0.1.0"
