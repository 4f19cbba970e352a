"""The typed configuration: one YAML file, validated into these classes.

Every section forbids unknown keys, and every choice is a `Literal`, so a typo or a bad value is an error that names
the key and the allowed values (see `load_config`). Paths are taken relative to the working directory; a path that
starts with `pkg://` points into the installed attnmt package (the bundled demo corpus).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from attnmt import devices
from attnmt.attention import NORMALIZERS, SCORERS, WINDOWS
from attnmt.attention.scores import ACTIVATIONS
from attnmt.errors import ConfigError

PACKAGE_ROOT = Path(__file__).resolve().parent

# The names a config accepts are the registries' keys: one list each, owned by attnmt/attention.
ScoreName = Literal[tuple(SCORERS)]
NormalizerName = Literal[tuple(NORMALIZERS)]
WindowName = Literal[("none", *WINDOWS)]
ActivationName = Literal[tuple(ACTIVATIONS)]

LENGTH_SLACK = 10  # a hypothesis may have max_length_ratio × source length + LENGTH_SLACK tokens


class Section(BaseModel):
    # allow_inf_nan: `.inf` or `.nan` is no value for any number of a config
    model_config = ConfigDict(extra="forbid", frozen=False, allow_inf_nan=False)


class CorpusConfig(Section):
    """One side-by-side corpus: two aligned text files (`src` + `tgt`) or one TSV file with chosen columns."""

    src: str | None = None
    tgt: str | None = None
    tsv: str | None = None
    src_column: int = Field(0, ge=0, description="0-based TSV column of the source sentence")
    tgt_column: int = Field(1, ge=0, description="0-based TSV column of the target sentence")

    @model_validator(mode="after")
    def _one_format(self) -> "CorpusConfig":
        text_files = self.src is not None or self.tgt is not None
        if self.tsv is not None and text_files:
            raise ValueError("give either `tsv` or `src` + `tgt`, not both")
        if self.tsv is None and (self.src is None or self.tgt is None):
            raise ValueError("give both `src` and `tgt` (two aligned text files), or `tsv` (one file with columns)")
        if self.tsv is not None and self.src_column == self.tgt_column:
            raise ValueError("`src_column` and `tgt_column` must differ")
        return self


class SplitConfig(Section):
    """Held-out parts cut from the training corpus when no dev/test files are given, grouped by target sentence so
    that alternative translations of one sentence never straddle the split."""

    dev_size: int = Field(300, ge=1, description="number of distinct target sentences for dev")
    test_size: int = Field(300, ge=0, description="number of distinct target sentences for test")
    seed: int = 1234


LANGUAGE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")  # a language name is part of file names (dev.ko, test.en)


class DataConfig(Section):
    src_lang: str = Field("src", description="e.g. ko: names the dev/test files a split writes")
    tgt_lang: str = Field("tgt", description="e.g. en: names files, and chooses BLEU's tokenizer "
                                             "(attnmt/evaluation.py)")
    train: CorpusConfig
    dev: CorpusConfig | None = None
    test: CorpusConfig | None = None
    split: SplitConfig | None = None
    max_length: int = Field(80, ge=1, description="pairs longer than this many subwords on either side are dropped")

    @field_validator("src_lang", "tgt_lang")
    @classmethod
    def _language_name(cls, name: str) -> str:
        if not LANGUAGE_NAME.fullmatch(name):
            raise ValueError(f"{name!r} is no language name: use letters, digits, '-' and '_' (e.g. ko, en, zh-Hans); "
                             f"it names files")
        return name

    @model_validator(mode="after")
    def _dev_given_or_split(self) -> "DataConfig":
        if self.dev is None and self.split is None:
            raise ValueError("give a `dev` corpus, or a `split` section to cut dev/test from `train`")
        if self.dev is not None and self.split is not None:
            raise ValueError("give either a `dev` corpus or a `split` section, not both")
        return self


class TokenizerConfig(Section):
    """Subwords from sentencepiece: trained on the training data, or existing model files."""

    joint: bool = Field(True, description="one vocabulary for source and target")
    vocab_size: int = Field(8000, ge=16)
    model_type: Literal["unigram", "bpe", "char", "word"] = "unigram"
    character_coverage: float = Field(1.0, gt=0.0, le=1.0)
    src_model: str | None = Field(None, description="existing sentencepiece model for the source (or joint) side")
    tgt_model: str | None = Field(None, description="existing sentencepiece model for the target side")
    lowercase: bool = False


class AttentionConfig(Section):
    """The attention module (`attnmt.attention.build`): score, normalizer, window, and the scorer's own options.

    The scorer options left unset (None) take the scorer's default; set for a score that does not use them, they are
    an error that names the scores using them.
    """

    score: ScoreName = "dot"
    normalizer: NormalizerName = "softmax"
    temperature: float = Field(1.0, gt=0, description="the normalizer sees energies / temperature")
    window: WindowName = Field("none", description="local attention (Luong et al. 2015) around an aligned position")
    window_size: int = Field(10, ge=1, description="D: a local window covers [p_t - D, p_t + D], sigma = D / 2")
    hidden_size: int | None = Field(None, ge=1, description="hidden layer of concat, additive, deep; default the "
                                                            "decoder state size")
    activation: ActivationName | None = Field(None, description="act of activated_general, concat, additive, deep; "
                                                                "default tanh")
    depth: int | None = Field(None, ge=1, description="layers of the deep scorer's MLP; default 2")
    learn_temperature: bool | None = Field(None, description="similarity: learn the cosine's temperature; default no")
    max_source_length: int | None = Field(None, ge=1, description="location: source positions it scores; default "
                                                                  "data.max_length")


class RNNConfig(Section):
    """`model.type: rnn` (the default): the RNN encoder-decoder of `attnmt.models.rnn`."""

    type: Literal["rnn"] = "rnn"
    cell: Literal["rnn", "lstm", "gru"] = "gru"
    embedding_size: int = Field(256, ge=1)
    hidden_size: int = Field(512, ge=1, description="decoder state size; encoder size per direction, see below")
    encoder_hidden_size: int | None = Field(None, ge=1, description="per direction; default hidden_size")
    encoder_layers: int = Field(1, ge=1)
    decoder_layers: int = Field(1, ge=1)
    bidirectional: bool = False
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="on the embeddings, the decoder's output h̃_t and, see "
                                                            "below, the encoder states")
    encoder_state_dropout: bool = Field(True, description="dropout also on the encoder states h_i that attention "
                                                           "reads (OpenNMT-py leaves them undropped)")
    attention: AttentionConfig | Literal["none"] = Field(default_factory=AttentionConfig)
    decoder_style: Literal["luong", "bahdanau"] = "luong"
    combine: Literal["concat", "add"] = "concat"
    input_feeding: bool = False
    tie_target_embeddings: bool = False

    @model_validator(mode="before")
    @classmethod
    def _attention_shorthand(cls, data: Any) -> Any:
        # `attention: additive` is shorthand for `attention: {score: additive}`.
        if isinstance(data, dict) and isinstance(data.get("attention"), str) and data["attention"] != "none":
            data = {**data, "attention": {"score": data["attention"]}}
        return data

    @property
    def uses_attention(self) -> bool:
        return self.attention != "none"

    @model_validator(mode="after")
    def _consistent(self) -> "RNNConfig":
        if not self.uses_attention and self.input_feeding:
            raise ValueError("`input_feeding` feeds the attentional state back; it needs an attention score, "
                             "not `attention: none`")
        if self.decoder_style == "bahdanau" and self.input_feeding:
            raise ValueError("`input_feeding` belongs to the Luong decoder; the Bahdanau decoder already feeds "
                             "the context into the RNN input")
        return self



class TransformerConfig(Section):
    """`model.type: transformer`: the encoder-decoder Transformer of `attnmt.models.transformer`.

    hidden_size is d_model (the width of every embedding, attention output and residual stream: the same concept as
    the RNN's `hidden_size`), heads is h (d_k = d_model / h), feed_forward_size is d_ff.
    """

    type: Literal["transformer"]
    encoder_layers: int = Field(6, ge=1)
    decoder_layers: int = Field(6, ge=1)
    hidden_size: int = Field(512, ge=1, description="d_model: embeddings, attention outputs, residual stream")
    heads: int = Field(8, ge=1, description="h; hidden_size must be a multiple of it")
    feed_forward_size: int = Field(2048, ge=1, description="d_ff: inner width of the position-wise feed-forward")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="on embeddings, sublayer outputs and the feed-forward")
    attention_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="on the attention weights")
    norm: Literal["pre", "post"] = Field("pre", description="pre: x + F(LN(x)) (stable without long warmup); "
                                                           "post: LN(x + F(x)) as in Vaswani et al. 2017")
    positions: Literal["sinusoidal", "learned"] = "sinusoidal"
    max_positions: int = Field(512, ge=1, description="learned positions: table size; later positions share the "
                                                      "last row")
    share_embeddings: bool = Field(False, description="one embedding matrix for source and target; needs "
                                                      "`tokenizer.joint: true`")
    tie_target_embeddings: bool = Field(False, description="the output layer reuses the target embedding matrix")
    fused_attention: bool = Field(True, description="use torch's scaled_dot_product_attention where no attention "
                                                    "weights are needed")

    @property
    def uses_attention(self) -> bool:
        return True  # cross-attention in every decoder layer

    @model_validator(mode="after")
    def _consistent(self) -> "TransformerConfig":
        if self.hidden_size % self.heads != 0:
            raise ValueError(f"`hidden_size` ({self.hidden_size}) must be a multiple of `heads` ({self.heads}): "
                             f"each head gets hidden_size / heads dimensions")
        if self.positions == "sinusoidal" and self.hidden_size % 2 != 0:
            raise ValueError(f"sinusoidal positions pair sines and cosines: `hidden_size` ({self.hidden_size}) "
                             f"must be even")
        return self


# Keys of the model section that shape training, not the parameters: a fine-tuned run (`training.init_from`) may set
# them anew (every other model key, and the whole tokenizer section, must be the source model's).
TRAINING_ONLY_MODEL_KEYS = ("dropout", "encoder_state_dropout", "attention_dropout", "fused_attention")

# `model.type` picks the section; a model section without `type` is an RNN (see `Config._model_type`).
AnyModelConfig = Annotated[Union[RNNConfig, TransformerConfig], Field(discriminator="type")]


Beta = Annotated[float, Field(ge=0, lt=1)]  # an Adam decay rate of the moment estimates


class TrainingConfig(Section):
    seed: int = Field(1, ge=0, lt=2 ** 63, description="of the random state: initialization, dropout, data order")
    batch_tokens: int = Field(2000, ge=1, description="token budget of one batch (max of source/target length × sentences)")
    batches_per_step: int = Field(1, ge=1, description="batches each process trains on before one optimizer step "
                                                   "(gradient accumulation): a step takes batches_per_step × "
                                                   "processes consecutive batches, and its loss is normalized by "
                                                   "all their target tokens")
    max_steps: int | None = Field(None, ge=1)
    max_epochs: int | None = Field(None, ge=1)
    max_minutes: float | None = Field(None, gt=0, description="wall-clock budget of this run")
    learning_rate: float = Field(1e-3, gt=0, le=1, description="Adam's step size (the peak of the schedule)")
    adam_betas: tuple[Beta, Beta] = (0.9, 0.999)
    weight_decay: float = Field(0.0, ge=0, le=1)
    schedule: Literal["constant", "plateau", "inverse_sqrt"] = Field(
        "plateau", description="inverse_sqrt: lr = base · min(step / warmup, sqrt(warmup / step))")
    warmup_steps: int = Field(0, ge=0)
    plateau_patience: int = Field(2, ge=0, description="validations without improvement before the rate is cut")
    plateau_factor: float = Field(0.5, gt=0, lt=1)
    min_learning_rate: float = Field(1e-5, ge=0, validate_default=True)
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    clip_grad_norm: float | None = Field(1.0, gt=0)
    validate_every: int = Field(500, ge=1, description="steps between validations (loss + BLEU), each followed by a "
                                                       "save of train_state/")
    validation_beam_size: int = Field(1, ge=1)
    early_stopping_patience: int | None = Field(None, ge=1, description="validations without a better dev BLEU")
    save_every_minutes: float | None = Field(
        10.0, gt=0, description="train_state/ is also saved between validations once this many minutes (wall clock) "
                                "have passed since the last save, so that a kill loses at most this much training; "
                                "None: only at validations")
    max_nonfinite_steps: int = Field(
        10, ge=1, description="a step whose loss or gradient norm is not finite (NaN, inf) is skipped without an "
                              "update; this many in a row stop training with an error, the last saved state kept")
    log_every: int = Field(50, ge=1)
    tensorboard: bool = True
    threads: int | None = Field(None, ge=1, description="torch CPU threads; default: what torch picks")
    device: str = Field("auto", description="auto (a GPU if torch sees one, else the CPU) | cpu | cuda | cuda:N; "
                                            "a distributed process on a GPU machine trains on cuda:LOCAL_RANK")
    mixed_precision: Literal["none", "bf16", "fp16"] = Field(
        "none", description="the forward pass under torch.autocast in bfloat16 or float16 (fp16: GPU only, with a "
                            "gradient scaler); parameters, optimizer state and the loss stay float32")
    init_from: str | None = Field(
        None, description="fine-tuning: a model directory whose weights and tokenizer a fresh run starts from (the "
                          "same model and tokenizer sections; optimizer and schedule start anew); --resume ignores it")
    keep_checkpoints: int = Field(0, ge=0, description="keep the parameters of the last N validations in "
                                                        "MODEL_DIR/checkpoints/step_S.safetensors (for `attnmt "
                                                        "average`); 0: none")
    average_last: int = Field(0, ge=0, description="at the end of training, average the last N kept checkpoints and "
                                                    "make the average model.safetensors if its dev BLEU beats the "
                                                    "best model's; 0: off")
    score_test: bool = Field(True, description="at the end of training, score the test set (data.test, or the test "
                                               "part of data.split) with the best model: MODEL_DIR/test_scores.json")

    @field_validator("device")
    @classmethod
    def _device_name(cls, name: str) -> str:
        return devices.check_name(name)

    @field_validator("min_learning_rate")
    @classmethod
    def _floor_below_rate(cls, floor: float, info: ValidationInfo) -> float:
        rate, schedule = info.data.get("learning_rate"), info.data.get("schedule")
        if schedule != "inverse_sqrt" and rate is not None and floor > rate:
            raise ValueError(f"the floor of the rate must not be above `learning_rate` ({rate}); lower it")
        return floor

    @model_validator(mode="after")
    def _some_stop(self) -> "TrainingConfig":
        if self.max_steps is None and self.max_epochs is None and self.max_minutes is None:
            raise ValueError("give at least one of `max_steps`, `max_epochs`, `max_minutes`")
        if self.schedule == "inverse_sqrt" and self.warmup_steps < 1:
            raise ValueError("`schedule: inverse_sqrt` peaks after `warmup_steps`; set `warmup_steps` to at least 1 "
                             "(e.g. 4000)")
        return self

    @model_validator(mode="after")
    def _average_of_kept(self) -> "TrainingConfig":
        if self.average_last == 1:
            raise ValueError("`average_last: 1` would be the last checkpoint alone; set 0 (off) or at least 2")
        if self.average_last > self.keep_checkpoints:
            raise ValueError(f"`average_last` ({self.average_last}) averages the last checkpoints kept: set "
                             f"`keep_checkpoints` to at least {self.average_last}")
        return self


MAX_LENGTH_PENALTY = 10.0  # papers use α of 0.6–2; far above, lp(n)^α overflows a float
SAMPLING_OPTIONS = ("top_k", "top_p", "temperature", "seed")  # what only sampling uses


class SearchConfig(Section):
    """Defaults for translation; the CLI and the API can override each (`resolve`)."""

    beam_size: int = Field(5, ge=1, description="1 = greedy search (and with sampling, which needs 1, its default)")
    length_penalty: float = Field(1.0, ge=0, le=MAX_LENGTH_PENALTY,
                                  description="alpha of ((5 + length) / 6) ** alpha (Wu et al. 2016)")
    max_length_ratio: float = Field(2.0, gt=0, description=f"hypotheses stop at ratio × source length + "
                                                            f"{LENGTH_SLACK} tokens")
    n_best: int = Field(1, ge=1, description="hypotheses returned per sentence, at most beam_size")
    batch_size: int = Field(64, ge=1, description="sentences translated together")
    prefix: str = Field("", description="target text every translation starts with: its subwords are forced first "
                                        "(their log-probabilities count in the score), then decoding goes on freely")
    min_length: int = Field(0, ge=0, description="target subwords (the prefix's included) before the end of the "
                                                 "sentence is allowed; the length limit still ends a hypothesis")
    no_repeat_ngram_size: int = Field(0, ge=0, description="n: a subword that would repeat an n-gram the hypothesis "
                                                           "already holds is never chosen; 0: off")
    sampling: bool = Field(False, description="draw each subword from the model's distribution instead of taking "
                                              "the best (back-translation); needs beam_size 1")
    top_k: int = Field(0, ge=0, description="sampling: draw among the k most probable subwords only; 0: all")
    top_p: float = Field(1.0, gt=0, le=1, description="sampling: draw within the nucleus, the fewest most probable "
                                                      "subwords whose probability sums to at least p; 1: all")
    temperature: float = Field(1.0, gt=0, description="sampling: draw from p ** (1 / temperature); below 1 sharper, "
                                                      "above 1 flatter")
    seed: int | None = Field(None, ge=0, description="sampling: the same seed draws the same translation of the same "
                                                     "sentence; none: a new draw each time")

    @model_validator(mode="before")
    @classmethod
    def _sampling_beam(cls, data: Any) -> Any:
        """With sampling on, beam_size left out is 1."""
        if isinstance(data, dict) and data.get("sampling") is True and "beam_size" not in data:
            data = {**data, "beam_size": 1}
        return data

    @model_validator(mode="after")
    def _n_best_within_beam(self) -> "SearchConfig":
        if self.sampling and self.beam_size != 1:
            raise ValueError(f"`sampling` draws one translation token by token, without a beam: set `beam_size` to 1 "
                             f"(it is {self.beam_size}), or turn sampling off")
        if self.n_best > self.beam_size:
            raise ValueError(f"`n_best` ({self.n_best}) is more than `beam_size` ({self.beam_size}): beam search "
                             f"keeps beam_size hypotheses; ask for a beam_size of at least {self.n_best}")
        return self

    def resolve(self, beam_size: int | None = None, n_best: int | None = None, length_penalty: float | None = None,
                max_length_ratio: float | None = None, batch_size: int | None = None, prefix: str | None = None,
                min_length: int | None = None, no_repeat_ngram_size: int | None = None, sampling: bool | None = None,
                top_k: int | None = None, top_p: float | None = None, temperature: float | None = None,
                seed: int | None = None) -> "SearchConfig":
        """These defaults with the options given (None: the default), validated as a config is: the one rule for
        every caller (translator, CLI, server). A default of `sampling: true` applies to calls that give no
        beam_size (a call that gives one searches); beam_size left unset is 1 when sampling (else the default);
        n_best left unset is min(the default n_best, beam_size). n_best above beam_size, sampling with a beam, a
        sampling option (top_k, top_p, temperature, seed) given while sampling is off, or any value out of range, is
        a `ConfigError` naming the option."""
        given = {"beam_size": beam_size, "n_best": n_best, "length_penalty": length_penalty,
                 "max_length_ratio": max_length_ratio, "batch_size": batch_size, "prefix": prefix,
                 "min_length": min_length, "no_repeat_ngram_size": no_repeat_ngram_size, "sampling": sampling,
                 "top_k": top_k, "top_p": top_p, "temperature": temperature, "seed": seed}
        values = {**self.model_dump(), **{name: value for name, value in given.items() if value is not None}}
        if sampling is None and beam_size is not None:
            values["sampling"] = False  # the default's sampling gives way to a search asked for
        if beam_size is None and values["sampling"] is True:
            values["beam_size"] = 1
        if n_best is None and isinstance(values["beam_size"], int):
            values["n_best"] = max(1, min(self.n_best, values["beam_size"]))
        unused = [name for name in SAMPLING_OPTIONS if given[name] is not None]
        if unused and values["sampling"] is not True:
            raise ConfigError(f"`{unused[0]}` is a sampling option, and sampling is off: turn it on (`sampling: "
                              f"true`, --sample) or leave `{unused[0]}` out")
        try:
            return SearchConfig.model_validate(values)
        except ValidationError as error:
            problems = "; ".join(_describe(e).removeprefix("`(top level)`: ") for e in error.errors())
            raise ConfigError(problems) from None


class Config(Section):
    name: str = "model"
    model_dir: str = "runs/model"
    data: DataConfig
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    model: AnyModelConfig = Field(default_factory=RNNConfig)
    training: TrainingConfig
    search: SearchConfig = Field(default_factory=SearchConfig)

    @model_validator(mode="before")
    @classmethod
    def _model_type(cls, data: Any) -> Any:
        # `type` chooses the model section's class; configs written before the Transformer have none: an RNN.
        if isinstance(data, dict) and isinstance(data.get("model"), dict) and "type" not in data["model"]:
            data = {**data, "model": {"type": "rnn", **data["model"]}}
        return data

    @model_validator(mode="after")
    def _location_length(self) -> "Config":
        # The location score predicts one energy per source position: by default as many as training keeps.
        if not isinstance(self.model, RNNConfig):
            return self
        attention = self.model.attention
        if self.model.uses_attention and attention.score == "location" and attention.max_source_length is None:
            attention.max_source_length = self.data.max_length
        return self

    @model_validator(mode="after")
    def _shared_vocabulary(self) -> "Config":
        if isinstance(self.model, TransformerConfig) and self.model.share_embeddings and not self.tokenizer.joint:
            raise ValueError("`model.share_embeddings` uses one embedding matrix for source and target, so it needs "
                             "one vocabulary: set `tokenizer.joint: true`, or `model.share_embeddings: false`")
        return self

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def resolve_path(path: str) -> Path:
    """`pkg://demo/kor-eng.tsv` → a file inside the installed package; anything else as given."""
    if path.startswith("pkg://"):
        return PACKAGE_ROOT / path[len("pkg://"):]
    return Path(path)


def _is_branch(part: Any) -> bool:
    """A union's branch in an error location (`AttentionConfig`, `literal['none']`), not a key."""
    return isinstance(part, str) and (part[:1].isupper() or part.startswith("literal["))


def _walk(location: tuple) -> tuple[list[str], type[BaseModel] | None]:
    """Follow an error location through the config classes. Returns the keys as the user wrote them (union branches
    and the tags of discriminated unions, like `model`'s `rnn` / `transformer`, left out) and the section class that
    holds the last key (None where the location leaves the config classes)."""
    keys: list[str] = []
    section: type[BaseModel] | None = Config
    holder: type[BaseModel] | None = Config
    tags: dict[str, type[BaseModel]] | None = None  # after a discriminated union's key: its tag comes next
    for part in location:
        if _is_branch(part):
            continue
        if tags is not None:
            section, tags = tags.get(str(part)), None
            continue
        keys.append(str(part))
        holder = section
        field = section.model_fields.get(str(part)) if section is not None else None
        members = [t for t in getattr(field.annotation, "__args__", (field.annotation,))
                   if isinstance(t, type) and issubclass(t, BaseModel)] if field else []
        if field is not None and field.discriminator:
            tags = {get_args(member.model_fields[field.discriminator].annotation)[0]: member for member in members}
        section = members[0] if members else None
    return keys, holder


def _section_keys(location: tuple) -> list[str]:
    """The keys allowed in the section that holds `location` (for 'unknown key' messages)."""
    _, holder = _walk(location)
    return list(holder.model_fields) if holder is not None else []


def _describe(error: dict) -> str:
    where = ".".join(_walk(error["loc"])[0]) or "(top level)"
    kind = error["type"]
    if kind == "extra_forbidden":
        return f"`{where}`: unknown key; allowed here: {', '.join(_section_keys(error['loc']))}"
    if kind == "union_tag_invalid":  # `model.type: transfomer`
        key = error["ctx"]["discriminator"].strip("'")
        return (f"`{where}.{key}`: {error['ctx']['tag']!r} is not allowed; "
                f"choose one of {error['ctx']['expected_tags']}")
    if kind == "literal_error":
        allowed = error.get("ctx", {}).get("expected", "")
        return f"`{where}`: {error['input']!r} is not allowed; choose one of {allowed}"
    if kind == "missing":
        return f"`{where}`: required key is missing"
    if kind == "value_error":  # a check across a section's keys, or of one key: its message says what is wrong
        return f"`{where}`: {error['msg'].removeprefix('Value error, ')}"
    return f"`{where}`: {error['msg']} (got {error.get('input')!r})"


def parse_config(data: Any, origin: str = "config") -> Config:
    """Validate a dict (from YAML) into a `Config`, or raise `ConfigError` naming each bad key."""
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: the top level must be a mapping of sections (data, model, training, ...)")
    try:
        return Config.model_validate(data)
    except ValidationError as error:
        errors = error.errors()
        # `attention: {...} | none`: once the mapping is given, its errors matter, not that it is not `none`
        errors = [e for e in errors
                  if not (isinstance(e["input"], dict) and any(str(p).startswith("literal[") for p in e["loc"]))]
        problems = "\n  ".join(_describe(e) for e in errors)
        raise ConfigError(f"{origin} is not a valid attnmt config:\n  {problems}") from None


def load_config(path: str | Path, overrides: dict | None = None) -> Config:
    """Read and validate a YAML config; `overrides` are merged over it (dotted keys, e.g. {"training.max_steps": 10})."""
    path = resolve_path(str(path))
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 text (byte {error.start}); save the config as UTF-8") from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot be read ({error.strerror}); check its permissions") from None
    for dotted, value in (overrides or {}).items():
        section = data
        *parents, leaf = dotted.split(".")
        for depth in range(len(parents) + 1):
            if not isinstance(section, dict):  # e.g. `model.attention.score` over the shorthand `attention: dot`
                where = f"`{'.'.join(parents[:depth])}`" if depth else "the top level"
                raise ConfigError(f"{path}: cannot set `{dotted}`: {where} is {section!r}, not a section; "
                                  f"set {where} as a whole instead")
            if depth < len(parents):
                section = section.setdefault(parents[depth], {})
        section[leaf] = value
    return parse_config(data, origin=str(path))
