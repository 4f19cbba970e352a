"""Subword tokenization with sentencepiece: one joint model, or one model per side.

Every model attnmt uses reserves the same ids for its special pieces (`PAD_ID` ... `EOS_ID`), so batching and
decoding never need to ask the model which id is padding.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from pathlib import Path

import sentencepiece as spm

from attnmt.checkpoint import atomic_write
from attnmt.config import TokenizerConfig, resolve_path
from attnmt.errors import CheckpointError, ConfigError

PAD_ID = 0
UNK_ID = 1
BOS_ID = 2
EOS_ID = 3
PAD_PIECE = "<pad>"
UNK_PIECE = "<unk>"
BOS_PIECE = "<s>"
EOS_PIECE = "</s>"

JOINT_MODEL = "spm.model"
SRC_MODEL = "src.model"
TGT_MODEL = "tgt.model"
TOKENIZER_FILES = (JOINT_MODEL, SRC_MODEL, TGT_MODEL)  # every name a model directory's tokenizer may have

# Training settings that are not in the config: fixed so that the same data always gives the same model.
TRAIN_SEED = 1234
INPUT_SENTENCE_SIZE = 2_000_000
SEED_SENTENCEPIECE_SIZE = 1_000_000
NUM_THREADS = 2

_SPECIAL_IDS = {"pad_id": PAD_ID, "unk_id": UNK_ID, "bos_id": BOS_ID, "eos_id": EOS_ID}


def _load_processor(path: Path) -> spm.SentencePieceProcessor:
    """Load one sentencepiece model file (raises whatever sentencepiece raises for a bad file)."""
    return spm.SentencePieceProcessor(model_file=str(path))


def _special_ids(processor: spm.SentencePieceProcessor) -> dict[str, int]:
    """The ids a model assigns to its special pieces."""
    return {
        "pad_id": processor.pad_id(),
        "unk_id": processor.unk_id(),
        "bos_id": processor.bos_id(),
        "eos_id": processor.eos_id(),
    }


def _check_existing_model(path: Path, key: str) -> None:
    """Raise `ConfigError` (naming `key`) unless `path` is a sentencepiece model with attnmt's special ids."""
    if not path.is_file():
        raise ConfigError(f"`{key}`: sentencepiece model {path} does not exist; fix the path or remove the key to "
                          f"train a new model on the training data")
    try:
        processor = _load_processor(path)
    except (OSError, RuntimeError) as error:
        raise ConfigError(f"`{key}`: {path} is not a sentencepiece model ({error})") from None
    found = _special_ids(processor)
    if found != _SPECIAL_IDS:
        wanted = " ".join(f"--{name}={value}" for name, value in _SPECIAL_IDS.items())
        raise ConfigError(f"`{key}`: {path} has special ids {found}, attnmt needs {_SPECIAL_IDS}; retrain it with "
                          f"`{wanted}`, or remove the key to train a new model")


def _train_options(config: TokenizerConfig) -> dict:
    """Keyword arguments of `SentencePieceTrainer.train` common to every model attnmt trains."""
    return {
        "vocab_size": config.vocab_size,
        "model_type": config.model_type,
        "character_coverage": config.character_coverage,
        "pad_id": PAD_ID,
        "unk_id": UNK_ID,
        "bos_id": BOS_ID,
        "eos_id": EOS_ID,
        "pad_piece": PAD_PIECE,
        "unk_piece": UNK_PIECE,
        "bos_piece": BOS_PIECE,
        "eos_piece": EOS_PIECE,
        "hard_vocab_limit": False,
        "normalization_rule_name": "nmt_nfkc_cf" if config.lowercase else "nmt_nfkc",
        "num_threads": NUM_THREADS,
        "input_sentence_size": INPUT_SENTENCE_SIZE,
        "seed_sentencepiece_size": SEED_SENTENCEPIECE_SIZE,
        "shuffle_input_sentence": True,
        "minloglevel": 2,
    }


def _train_model(config: TokenizerConfig, sentences: Iterable[str], name: str) -> bytes:
    """Train one sentencepiece model (to be called `name`) on `sentences`; its file's bytes. Training writes nothing:
    the caller writes the bytes atomically, so that a failed write (a full disk) is reported as one."""
    spm.set_random_generator_seed(TRAIN_SEED)  # sampling and shuffling of input sentences
    iterator: Iterator[str] = iter(sentences)
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(sentence_iterator=iterator, model_writer=model, **_train_options(config))
    except RuntimeError as error:
        raise ConfigError(
            f"sentencepiece could not train {name}: {error}; check `tokenizer.vocab_size`, "
            f"`tokenizer.model_type` and `tokenizer.character_coverage` against the size of the training data"
        ) from None
    return model.getvalue()


def _remove_models(model_dir: Path) -> None:
    """Delete tokenizer files of an earlier run (and the `.vocab` files older versions wrote beside them), so that
    `load` never picks up a stale joint or separate model."""
    for name in TOKENIZER_FILES:
        for path in (model_dir / name, (model_dir / name).with_suffix(".vocab")):
            path.unlink(missing_ok=True)


class Tokenizer:
    """Sentencepiece models for the source and target sides; one shared model when `joint`."""

    def __init__(self, source: spm.SentencePieceProcessor, target: spm.SentencePieceProcessor | None = None):
        """`target=None` makes a joint tokenizer that uses `source` for both sides."""
        self.joint = target is None
        self._source = source
        self._target = source if target is None else target

    # ---- creation -------------------------------------------------------------------------------------------------

    @classmethod
    def train(cls, config: TokenizerConfig, sources: list[str], targets: list[str], out_dir: Path) -> "Tokenizer":
        """Train new models on the training sentences, or copy the existing ones the config names, into `out_dir`
        (each file written atomically; a failed write is a `StorageError` naming it)."""
        out_dir = Path(out_dir)
        existing = cls._read_existing(config) if config.src_model is not None else None
        if existing is None and config.tgt_model is not None:
            raise ConfigError("`tokenizer.tgt_model` is given without `tokenizer.src_model`; give both existing "
                              "models (with `joint: false`) or neither")
        if existing is not None:
            models = existing
        elif config.joint:
            models = {JOINT_MODEL: _train_model(config, [*sources, *targets], JOINT_MODEL)}
        else:
            models = {SRC_MODEL: _train_model(config, sources, SRC_MODEL),
                      TGT_MODEL: _train_model(config, targets, TGT_MODEL)}
        _remove_models(out_dir)
        for name, content in models.items():
            atomic_write(out_dir / name, content)
        return cls.load(out_dir)

    @staticmethod
    def _read_existing(config: TokenizerConfig) -> dict[str, bytes]:
        """Check the existing model file(s) the config names; their contents by the name they get in the model dir."""
        assert config.src_model is not None
        src_path = resolve_path(config.src_model)
        _check_existing_model(src_path, "tokenizer.src_model")
        if config.joint:
            if config.tgt_model is not None:
                raise ConfigError("`tokenizer.tgt_model` is only used with `joint: false`; remove it, or set "
                                  "`tokenizer.joint: false` to use separate source and target models")
            return {JOINT_MODEL: src_path.read_bytes()}
        if config.tgt_model is None:
            raise ConfigError("`tokenizer.tgt_model` is required when `tokenizer.src_model` is given and "
                              "`tokenizer.joint` is false; give the target-side sentencepiece model too")
        tgt_path = resolve_path(config.tgt_model)
        _check_existing_model(tgt_path, "tokenizer.tgt_model")
        return {SRC_MODEL: src_path.read_bytes(), TGT_MODEL: tgt_path.read_bytes()}

    @classmethod
    def load(cls, model_dir: Path) -> "Tokenizer":
        """Load `spm.model` (joint) or `src.model` + `tgt.model` from a model directory."""
        model_dir = Path(model_dir)
        joint_path, src_path, tgt_path = model_dir / JOINT_MODEL, model_dir / SRC_MODEL, model_dir / TGT_MODEL
        try:
            if joint_path.is_file():
                return cls(_load_processor(joint_path))
            if src_path.is_file() and tgt_path.is_file():
                return cls(_load_processor(src_path), _load_processor(tgt_path))
        except (OSError, RuntimeError) as error:
            raise CheckpointError(f"{model_dir}: a sentencepiece model there cannot be read ({error}); "
                                  f"retrain the model or restore the directory") from None
        raise CheckpointError(f"{model_dir} has no tokenizer: expected {JOINT_MODEL}, or {SRC_MODEL} and "
                              f"{TGT_MODEL}; is this a trained attnmt model directory?")

    # ---- description ----------------------------------------------------------------------------------------------

    @property
    def files(self) -> list[str]:
        """Names of the model files (inside the model directory) that `load` needs."""
        return [JOINT_MODEL] if self.joint else [SRC_MODEL, TGT_MODEL]

    @property
    def src_vocab_size(self) -> int:
        return self._source.get_piece_size()

    @property
    def tgt_vocab_size(self) -> int:
        return self._target.get_piece_size()

    # ---- encoding and decoding ------------------------------------------------------------------------------------

    def encode_source(self, texts: list[str]) -> list[list[int]]:
        """Subword ids of each source sentence (no BOS/EOS)."""
        return self._source.encode(list(texts), out_type=int)

    def encode_target(self, texts: list[str]) -> list[list[int]]:
        """Subword ids of each target sentence (no BOS/EOS)."""
        return self._target.encode(list(texts), out_type=int)

    def decode_target(self, ids: list[int]) -> str:
        """Text of target ids: stops at the first EOS, skips PAD and BOS."""
        kept: list[int] = []
        for token in ids:
            token = int(token)
            if token == EOS_ID:
                break
            if token not in (PAD_ID, BOS_ID):
                kept.append(token)
        return self._target.decode(kept)

    def source_pieces(self, ids: list[int]) -> list[str]:
        """The subword string of each source id, one per id (labels of attention heatmaps)."""
        return [self._source.id_to_piece(int(token)) for token in ids]

    def target_pieces(self, ids: list[int]) -> list[str]:
        """The subword string of each target id, one per id (labels of attention heatmaps)."""
        return [self._target.id_to_piece(int(token)) for token in ids]
