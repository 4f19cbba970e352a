"""Dynamic int8 quantization of a loaded model, for faster decoding on the CPU (`Translator.load(..., quantization=
"int8")`, `--quantization int8`).

Dynamic quantization stores each chosen weight matrix W in int8 with one float scale per output row, and quantizes
each input x to int8 on the fly with one scale per call:

    W_q = round(W / s_W),  s_W = max|W_row| / 127          once, when the model loads
    x_q = round(x / s_x) + z_x                               per call (uint8 with a zero point z_x, its min/max)
    y   = s_x s_W (x_q − z_x) W_qᵀ + b                       int8 × int8 products summed in int32, then float32

so every output is float32 again: search sums float32 log-probabilities and attention weights are computed as
before. Which modules quantize is each family's answer (`model.int8_modules()`, qualified module names, in
attnmt/models/): a GRU or LSTM quantizes whole (its input and recurrent matrices), a Linear layer alone.

The route: `torch.ao.quantization.quantize_dynamic` on the x86 (fbgemm, AVX2/AVX-512 VNNI) or ARM (qnnpack) CPU
kernels. torch 2.13 marks `torch.ao.quantization` deprecated in favour of torchao's `quantize_`; torchao 0.18's
`Int8DynamicActivationInt8WeightConfig` runs on the CPU but, in eager mode, no faster than float32 (its int8 kernels
need `torch.compile`, which compiles for each new batch shape: many times over in a beam search), and it has no int8
GRU or LSTM. So this module uses `quantize_dynamic`, which still works in the pinned torch 2.13, silences its
deprecation warning, and says so in docs/translate.md; a torch without it gives a `QuantizationError`.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from attnmt.errors import AttnmtError

QUANTIZATIONS = ("none", "int8")  # the choices of `quantization=` and `--quantization`; none: float32 as trained
DEFAULT_QUANTIZATION = "none"

# what torch 2.13 says when quantize_dynamic runs; the docs carry the note instead (module docstring)
_DEPRECATION_MESSAGES = (r"torch\.ao\.quantization is deprecated", r"torch\.quantize_per_tensor, torch\.quantize_per")


class QuantizationError(AttnmtError):
    """A quantization that is unknown, unavailable in this torch, or asked for where it cannot run."""


def check_quantization(name: str, option: str = "quantization") -> str:
    """`name` if it is one of `QUANTIZATIONS`, else a `QuantizationError` naming `option` and the choices."""
    if name not in QUANTIZATIONS:
        raise QuantizationError(f"{option} {name!r} is unknown: choose one of {', '.join(QUANTIZATIONS)} (int8: "
                                f"dynamic int8 weights and activations on the CPU; none: float32 as trained)")
    return name


def device_option(quantization: str, device: str) -> str:
    """The device to load on: int8 kernels run on the CPU only, so `auto` means `cpu` under int8."""
    return "cpu" if quantization != "none" and device == "auto" else device


def check_placement(quantization: str, device: torch.device, mixed_precision: str) -> None:
    """int8 runs on the CPU and in its own precision: a GPU, or mixed precision on top of it, is a
    `QuantizationError` saying which option to change."""
    if quantization == "none":
        return
    if device.type != "cpu":
        raise QuantizationError(f"quantization {quantization} runs on the CPU, not on {device}: use --device cpu "
                                f"(or auto), or translate on the GPU without --quantization (--mixed-precision bf16 or "
                                f"fp16 is the GPU's faster path)")
    if mixed_precision != "none":
        raise QuantizationError(f"quantization {quantization} and mixed precision {mixed_precision} both set the "
                                f"precision of the matrix products: choose one (--quantization or --mixed-precision)")


def _check_engine() -> None:
    """A CPU quantized engine (x86/fbgemm, qnnpack, onednn) must be in this torch build."""
    engine = torch.backends.quantized.engine
    if engine == "none" or not hasattr(torch.ao.quantization, "quantize_dynamic"):
        raise QuantizationError(f"quantization int8 is unavailable in this torch ({torch.__version__}: quantized "
                                f"engine {engine!r}, engines {torch.backends.quantized.supported_engines}); translate "
                                f"without --quantization, or install the torch version pyproject.toml pins")


def quantize(model: nn.Module, quantization: str) -> nn.Module:
    """The model with dynamic int8 weights in the modules its family names (`model.int8_modules()`), in place and
    in eval mode; `none` returns it unchanged. A `QuantizationError` for an unknown name, a model that does not say
    which of its modules quantize, or a torch without the int8 kernels."""
    check_quantization(quantization)
    if quantization == "none":
        return model
    if not hasattr(model, "int8_modules"):
        raise QuantizationError(f"{type(model).__name__} does not say which of its modules quantize (int8_modules); "
                                f"translate it without --quantization")
    _check_engine()
    names = set(model.int8_modules())
    model.eval()
    with warnings.catch_warnings():
        for message in _DEPRECATION_MESSAGES:
            warnings.filterwarnings("ignore", message=message)
        return torch.ao.quantization.quantize_dynamic(model, names, dtype=torch.qint8, inplace=True)


def is_int8(module: nn.Module) -> bool:
    """Whether `module` computes with int8 weights: a dynamic quantized Linear, GRU or LSTM."""
    dynamic = torch.ao.nn.quantized.dynamic
    return isinstance(module, (dynamic.Linear, dynamic.GRU, dynamic.LSTM))


def int8_layers(model: nn.Module) -> list[str]:
    """The qualified names of the modules of `model` that compute with int8 weights."""
    return [name for name, module in model.named_modules() if is_int8(module)]
