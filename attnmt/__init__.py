"""attnmt: sequence-to-sequence learning with attention, translation first.

    >>> from attnmt import Translator           # the same as attnmt.translator.Translator
    >>> Translator.load("runs/demo").translate(["나는 학생이에요."])[0].text

`import attnmt` alone stays light (no torch): `Translator` is imported on first use (PEP 562 module __getattr__).
"""

__version__ = "0.1.0"
__all__ = ["Translator", "__version__"]


def __getattr__(name: str):
    if name == "Translator":
        from attnmt.translator import Translator

        return Translator
    raise AttributeError(f"module 'attnmt' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
