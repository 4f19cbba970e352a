"""Export a model directory to CTranslate2 (`attnmt export MODEL_DIR --to ctranslate2`), for fast CPU/GPU decoding.

    MODEL_DIR/ctranslate2[-QUANT]/      the default place (QUANT: int8, int8_float32; float32 has no suffix)
        model.bin                       CTranslate2's weights (quantized with QUANT)
        config.json                     CTranslate2's settings (BOS/EOS/UNK pieces, layer-norm ε, ...)
        source_vocabulary.txt,          one sentencepiece piece per line, line i = id i (a joint tokenizer:
        target_vocabulary.txt           shared_vocabulary.txt)
        attnmt_export.json              which attnmt model it came from: the SHA-256 of its model.safetensors and
                                        tokenizer files, the quantization and the position-table length

The mapping is the model family's own (`attnmt.models.ctranslate2_spec`); a family CTranslate2 cannot run (the RNN)
is an `ExportError` saying what to use instead. The directory is written whole into a temporary folder beside it,
then renamed into place (an older export there is replaced only once the new one is complete).
`attnmt.backends` refuses an export whose source SHA-256 is not the model's (`check_export`): a stale export is never
used silently.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from pathlib import Path

import torch

from attnmt import checkpoint, manifest
from attnmt.config import load_config
from attnmt.errors import CheckpointError, StorageError
from attnmt.search import max_output_lengths
from attnmt.translator import Translator, tokenizer_fingerprints

FORMATS = ("ctranslate2",)
QUANTIZATIONS = ("float32", "int8", "int8_float32")  # CTranslate2 weight types that run on any CPU
DEFAULT_QUANTIZATION = "float32"
EXPORT_INFO = "attnmt_export.json"
INFO_FORMAT = 1
MIN_POSITIONS = 1024  # rows of the exported position tables, at least (sinusoids are cheap: 1024 × d_model floats)


def default_output(model_dir: Path, quantization: str = DEFAULT_QUANTIZATION) -> Path:
    """MODEL_DIR/ctranslate2, or MODEL_DIR/ctranslate2-QUANT for a quantized export."""
    suffix = "" if quantization == DEFAULT_QUANTIZATION else f"-{quantization}"
    return Path(model_dir) / f"ctranslate2{suffix}"


def default_positions(model_dir: Path) -> int:
    """Position rows an export gets: room for the longest source the model was trained on (data.max_length) and for
    its longest translation under the config's max_length_ratio (+ 1: the decoder reads BOS first); MIN_POSITIONS at
    least."""
    config = load_config(Path(model_dir) / checkpoint.CONFIG_FILE)
    longest = int(max_output_lengths(torch.tensor([config.data.max_length]), config.search.max_length_ratio)[0])
    return max(MIN_POSITIONS, config.data.max_length, longest + 1)


def source_fingerprints(model_dir: Path) -> dict[str, str]:
    """The SHA-256 of the files an export is made from (model.safetensors and the tokenizer), by file name: from the
    manifest when the directory has one (it was checked on load), else computed."""
    model_dir = Path(model_dir)
    listed = manifest.read(model_dir) or {}
    names = [checkpoint.MODEL_FILE, *tokenizer_fingerprints(model_dir)]
    return {name: listed[name]["sha256"] if name in listed else manifest.fingerprint(model_dir / name)["sha256"]
            for name in names}


def _check_choice(option: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise CheckpointError(f"{option} {value!r}: choose one of {', '.join(choices)}")


def _write_directory(out: Path, fill) -> None:
    """Make directory `out` atomically: `fill(temporary)` writes a temporary folder beside it, which then takes its
    place (an existing `out` is moved aside first and removed after). A failed write is a `StorageError`."""
    out.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(6)
    temporary, old = out.with_name(f".{out.name}.{token}.tmp"), out.with_name(f".{out.name}.{token}.old")
    try:
        temporary.mkdir()
        fill(temporary)
        if out.exists():
            os.replace(out, old)
        os.replace(temporary, out)
    except OSError as error:
        raise StorageError.from_os_error(error, "write", out) from None
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def export_ctranslate2(model_dir: str | Path, out: str | Path | None = None,
                       quantization: str = DEFAULT_QUANTIZATION, positions: int | None = None) -> Path:
    """Write the CTranslate2 directory of a model (see the module docstring); returns where. `quantization` is one of
    QUANTIZATIONS; `positions` the rows of its position tables (default `default_positions`)."""
    from attnmt.models.ctranslate2_spec import ctranslate2_spec

    _check_choice("--quantization", quantization, QUANTIZATIONS)
    model_dir = Path(model_dir)
    translator = Translator.load(model_dir, device="cpu")  # the manifest checked, the weights read and verified
    positions = default_positions(model_dir) if positions is None else positions
    if positions < 1:
        raise CheckpointError(f"--positions {positions}: give a number of positions, at least 1")
    spec = ctranslate2_spec(translator.model, positions)
    tokenizer = translator.tokenizer
    spec.register_source_vocabulary(tokenizer.source_pieces(list(range(tokenizer.src_vocab_size))))
    spec.register_target_vocabulary(tokenizer.target_pieces(list(range(tokenizer.tgt_vocab_size))))
    spec.validate()
    spec.optimize(quantization=quantization)
    info = {"format": INFO_FORMAT, "attnmt_model": str(model_dir.resolve()), "source": source_fingerprints(model_dir),
            "quantization": quantization, "positions": positions}

    def fill(folder: Path) -> None:
        spec.save(str(folder))
        (folder / EXPORT_INFO).write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")

    out = default_output(model_dir, quantization) if out is None else Path(out)
    _write_directory(out, fill)
    return out


def read_export_info(export_dir: Path) -> dict:
    """attnmt_export.json of an export, or a `CheckpointError` saying how to make one."""
    path = Path(export_dir) / EXPORT_INFO
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{export_dir} is not a CTranslate2 export of attnmt ({EXPORT_INFO} is missing); "
                              f"write one with `attnmt export MODEL_DIR --to ctranslate2`") from None
    except OSError as error:
        raise StorageError.from_os_error(error, "read", path) from None
    except ValueError as error:
        raise CheckpointError(f"{path} is damaged ({error}); export again with `attnmt export MODEL_DIR --to "
                              f"ctranslate2`") from None
    if not isinstance(info, dict) or info.get("format") != INFO_FORMAT or not isinstance(info.get("source"), dict) \
            or not isinstance(info.get("positions"), int):
        raise CheckpointError(f"{path} is not an export record of format {INFO_FORMAT}; export again with "
                              f"`attnmt export MODEL_DIR --to ctranslate2`")
    return info


def check_export(export_dir: Path, model_dir: Path) -> dict:
    """The export's record, if it was made from the model directory's files as they are now; else a
    `CheckpointError` naming the file that changed and the command that exports again."""
    info = read_export_info(export_dir)
    current = source_fingerprints(model_dir)
    changed = sorted(name for name in current.keys() | info["source"].keys()
                     if current.get(name) != info["source"].get(name))
    if changed:
        quantization = info.get("quantization", DEFAULT_QUANTIZATION)
        raise CheckpointError(f"{export_dir} is stale: it was exported from another {', '.join(changed)} than "
                              f"{model_dir} holds now (SHA-256 compared); export again with `attnmt export "
                              f"{model_dir} --to ctranslate2 --quantization {quantization} -o {export_dir}`")
    return info
