"""Tests of devices and mixed precision (attnmt/devices.py), on the CPU only: no test here needs a GPU.

Where a GPU would be, the tests either mock what torch reports (device choice) or stand a marked CPU tensor in for a
tensor left on the host (`HostTensor`): every tensor that reaches the model must have been moved with `.to(device)`,
and every tensor the model or the search makes from nothing (torch.full, zeros, arange, ...) must be given its
device. That is what a model on a GPU needs, and what a plain CPU run could never show.
"""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file
from torch.overrides import TorchFunctionMode

import attnmt.translator
from attnmt import checkpoint, devices
from attnmt.cli import main
from attnmt.config import parse_config
from attnmt.data import batching
from attnmt.errors import AttnmtError, ConfigError
from attnmt.models import RNNSeq2Seq, TransformerSeq2Seq
from attnmt.training import Trainer, train
from attnmt.translator import Translator

from conftest import reversal_pairs, tiny_config_dict, write_tsv

SENTENCES = ["a b c", "d e f g", "", "h i"]
TRANSFORMER = {"model": {"type": "transformer", "encoder_layers": 1, "decoder_layers": 1, "hidden_size": 16,
                         "heads": 2, "feed_forward_size": 32, "dropout": 0.0}}


def minimal(**training) -> dict:
    return {"data": {"train": {"tsv": "train.tsv"}, "split": {"dev_size": 5}},
            "training": {"max_steps": 10, **training}}


@pytest.fixture
def no_gpu(monkeypatch):
    """torch sees no GPU, whatever machine runs the tests."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def two_gpus(monkeypatch):
    """torch reports two GPUs, the current one cuda:0 (only `devices.choose` is run under this)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    """A tiny RNN trained for 3 steps (validated at step 3, so model.safetensors is written)."""
    work = tmp_path_factory.mktemp("devices")
    data = tiny_config_dict(write_tsv(work / "train.tsv", reversal_pairs(200, seed=11)),
                            write_tsv(work / "dev.tsv", reversal_pairs(12, seed=12)), work / "model",
                            {"model.embedding_size": 16, "model.hidden_size": 32, "model.encoder_hidden_size": 16,
                             "training.batch_tokens": 200, "training.max_steps": 3, "training.validate_every": 3})
    train(parse_config(data), show_progress=False)
    return work / "model"


# ---- the config and the choice of device ----------------------------------------------------------------------------


def test_device_and_mixed_precision_are_validated_with_their_choices():
    assert parse_config(minimal()).training.device == "auto"
    assert parse_config(minimal()).training.mixed_precision == "none"
    for name in ("auto", "cpu", "cuda", "cuda:1"):
        assert parse_config(minimal(device=name)).training.device == name
    for bad in ("gpu", "cuda:", "cuda:x", "CPU", "mps"):
        with pytest.raises(ConfigError) as caught:
            parse_config(minimal(device=bad))
        assert "`training.device`" in str(caught.value) and "auto, cpu, cuda, cuda:N" in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        parse_config(minimal(mixed_precision="fp32"))
    assert "`training.mixed_precision`" in str(caught.value)
    assert all(choice in str(caught.value) for choice in ("'none'", "'bf16'", "'fp16'"))


def test_without_a_gpu_auto_is_the_cpu_and_a_gpu_is_a_user_error(no_gpu):
    assert devices.choose("auto") == devices.choose("cpu") == torch.device("cpu")
    assert devices.choose("cpu", local_rank=1) == torch.device("cpu")
    for name in ("cuda", "cuda:0"):
        with pytest.raises(AttnmtError, match="--device .*no GPU"):
            devices.choose(name, option="--device")
    with pytest.raises(AttnmtError, match="`training.device`: 'gpu' is not a device"):
        devices.choose("gpu", option="`training.device`")


def test_with_gpus_auto_takes_one_and_a_distributed_process_takes_its_local_rank(two_gpus):
    assert devices.choose("auto") == devices.choose("cuda") == torch.device("cuda", 0)
    assert devices.choose("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(AttnmtError, match="2 GPU"):
        devices.choose("cuda:2")
    for name in ("auto", "cuda", "cuda:0"):
        assert devices.choose(name, local_rank=1) == torch.device("cuda", 1)
    assert devices.choose("cpu", local_rank=1) == torch.device("cpu")
    with pytest.raises(AttnmtError, match="LOCAL_RANK 2"):
        devices.choose("auto", local_rank=2)


def test_fp16_on_the_cpu_is_a_config_error(tiny_config, tmp_path, no_gpu):
    for device in ("cpu", "auto"):
        with pytest.raises(ConfigError, match="`training.mixed_precision`: fp16 needs a GPU"):
            Trainer(tiny_config(tmp_path / device, {"training.device": device, "training.mixed_precision": "fp16"}),
                    show_progress=False)
        assert not (tmp_path / device).exists()  # refused before anything was written


def test_a_gpu_the_machine_lacks_is_a_user_error_naming_the_key(tiny_config, tmp_path, no_gpu):
    with pytest.raises(AttnmtError, match="`training.device` 'cuda'"):
        Trainer(tiny_config(tmp_path / "run", {"training.device": "cuda"}), show_progress=False)


# ---- training -------------------------------------------------------------------------------------------------------


def test_device_cpu_trains_exactly_like_the_default(tiny_config, tmp_path, no_gpu):
    for folder, overrides in (("default", {"training.device": "auto"}), ("cpu", {"training.device": "cpu"})):
        train(tiny_config(tmp_path / folder, {"training.max_steps": 3, **overrides}), show_progress=False)
    for name in ("model.safetensors", "optimizer.safetensors", "rng.safetensors"):
        first = load_file(str(tmp_path / "default" / "train_state" / name))
        second = load_file(str(tmp_path / "cpu" / "train_state" / name))
        assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first), name


def test_bf16_autocast_trains_on_the_cpu_close_to_float32(tiny_config, tmp_path):
    """The same batches from the same initial parameters: the bf16 run's losses stay finite and within 2% of the
    float32 run's; the logits really were computed in bfloat16, and the parameters stay float32."""
    losses, logit_types = {}, set()
    for precision in ("none", "bf16"):
        trainer = Trainer(tiny_config(tmp_path / precision, {"training.mixed_precision": precision}),
                          show_progress=False)
        order = trainer.train_data.batches(trainer.settings.batch_tokens, shuffle=False, seed=0)[:4]
        if precision == "bf16":
            trainer.model.register_forward_hook(lambda module, inputs, output: logit_types.add(output[0].dtype))
        losses[precision] = [trainer.train_step(trainer.train_data.batch(indices)) for indices in order]
        losses[precision].append(trainer.dev_loss())
        assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    assert logit_types == {torch.bfloat16}
    assert all(math.isfinite(loss) for loss in losses["bf16"])
    for exact, mixed in zip(losses["none"], losses["bf16"]):
        assert mixed == pytest.approx(exact, rel=0.02)


# ---- every tensor that reaches the model is on its device -----------------------------------------------------------


class HostTensor(torch.Tensor):
    """A CPU tensor that stands for one still on the host while the model is on a GPU. `.to(device)` moves it (a
    plain tensor comes back); everything else computed from it stays a HostTensor, as it would stay on the host."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.to and torch._C._nn._parse_to(*args[1:], **kwargs)[0] is not None:
            with torch._C.DisableTorchFunctionSubclass():
                return func(*args, **kwargs).as_subclass(torch.Tensor)
        return super().__torch_function__(func, types, args, kwargs)


def on_host(function):
    """`function` (one that builds tensors on the CPU), returning HostTensors."""
    def wrapped(*args, **kwargs):
        return tuple(tensor.as_subclass(HostTensor) for tensor in function(*args, **kwargs))
    return wrapped


FACTORIES = {torch.full, torch.zeros, torch.ones, torch.empty, torch.arange, torch.tensor, torch.eye, torch.linspace,
             torch.rand, torch.randn, torch.randint}


class FactoriesNameTheirDevice(TorchFunctionMode):
    """Inside the model and the search: a tensor made from nothing (torch.full, zeros, arange, ...) must be given its
    device, or it would be made on the CPU while the model is on a GPU."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        assert func not in FACTORIES or kwargs.get("device") is not None, f"torch.{func.__name__} without a device"
        return func(*args, **kwargs)


def tensors_in(values):
    """The tensors among `values`, and inside the dicts among them (states, memories)."""
    for value in values:
        if isinstance(value, torch.Tensor):
            yield value
        elif isinstance(value, dict):
            yield from tensors_in(value.values())


def checked(method, calls: list[str]):
    """`method` of a model, asserting first that every tensor argument (and in dicts: states, memories) was moved
    to the model's device, and then that every tensor it makes from nothing is given its device."""
    def wrapped(model, *args, **kwargs):
        for tensor in tensors_in([*args, *kwargs.values()]):
            assert not isinstance(tensor, HostTensor), f"{method.__name__} got a tensor that was never moved"
            assert tensor.device == devices.model_device(model)
        calls.append(method.__name__)
        with FactoriesNameTheirDevice():
            return method(model, *args, **kwargs)
    return wrapped


def made_on_the_device(search):
    """A search function whose tensors made from nothing must be given their device."""
    def wrapped(*args, **kwargs):
        with FactoriesNameTheirDevice():
            return search(*args, **kwargs)
    return wrapped


@pytest.fixture
def model_calls(monkeypatch) -> list[str]:
    """Batches are built as HostTensors, every model entry point checks its inputs, and the model and the search
    make no tensor without naming its device; returns the model calls made."""
    calls: list[str] = []
    for module in (batching, attnmt.translator):  # training's batches, and the translator's
        monkeypatch.setattr(module, "pad_sequences", on_host(module.pad_sequences))
    for name in ("greedy_search", "beam_search"):
        monkeypatch.setattr(attnmt.translator, name, made_on_the_device(getattr(attnmt.translator, name)))
    for model_class in (RNNSeq2Seq, TransformerSeq2Seq):
        for name in ("forward", "encode", "start_state", "step"):
            monkeypatch.setattr(model_class, name, checked(getattr(model_class, name), calls))
    return calls


def test_the_check_catches_a_tensor_left_on_the_host(model_calls, tiny_config, tmp_path):
    src, src_mask = batching.pad_sequences([[4, 5, 6]])
    assert isinstance(src, HostTensor) and isinstance(src.sum(), HostTensor)
    assert type(src.to("cpu")) is torch.Tensor and isinstance(src.to(torch.float32), HostTensor)
    model = Trainer(tiny_config(tmp_path / "run"), show_progress=False).model
    with pytest.raises(AssertionError, match="never moved"):
        model.encode(src, src_mask)
    with pytest.raises(AssertionError, match="never moved"):
        model(src.to("cpu"), src_mask, src)
    with FactoriesNameTheirDevice(), pytest.raises(AssertionError, match="torch.zeros without a device"):
        torch.zeros(3)


@pytest.mark.parametrize("overrides", [{}, TRANSFORMER], ids=["rnn", "transformer"])
def test_training_validation_and_search_move_every_tensor_to_the_model(model_calls, tiny_config, tmp_path, overrides):
    """Training steps, dev loss, validation (greedy) and beam search, with every batch built on the host."""
    config = tiny_config(tmp_path / "run", {"training.max_steps": 2, "training.validate_every": 1})
    config = parse_config({**config.model_dump(mode="json"), **overrides}) if overrides else config
    trainer = Trainer(config, show_progress=False)
    trainer.train()
    assert {"forward", "encode", "start_state", "step"} <= set(model_calls)
    model_calls.clear()
    results = Translator(trainer.model, trainer.tokenizer, trainer.config).translate(SENTENCES, beam_size=3, n_best=2)
    assert len(results) == len(SENTENCES) and "step" in model_calls


def test_resume_puts_the_optimizer_state_on_the_models_device(tiny_config, tmp_path, monkeypatch):
    """train_state/ loads as host tensors; after resuming, parameters and the Adam moments are on the model's
    device (torch keeps Adam's step counter on the CPU by design)."""
    train(tiny_config(tmp_path / "run", {"training.max_steps": 2}), show_progress=False)
    monkeypatch.setattr(checkpoint, "load_file",
                        lambda path: {k: v.as_subclass(HostTensor) for k, v in load_file(path).items()})
    trainer = Trainer(tiny_config(tmp_path / "run", {"training.max_steps": 3}), resume=True, show_progress=False)
    assert not any(isinstance(p, HostTensor) for p in trainer.model.parameters())
    moments = [value for state in trainer.optimizer.state.values() for name, value in state.items() if name != "step"]
    assert moments and not any(isinstance(value, HostTensor) for value in moments)
    assert all(value.device == devices.model_device(trainer.model) for value in moments)


# ---- translation ----------------------------------------------------------------------------------------------------


def test_translator_on_cpu_equals_the_default(tiny_model_dir, no_gpu):
    default, cpu = Translator.load(tiny_model_dir), Translator.load(tiny_model_dir, device="cpu")
    assert cpu.device == torch.device("cpu")
    for beam_size in (1, 3):
        for first, second in zip(default.translate(SENTENCES, beam_size=beam_size),
                                 cpu.translate(SENTENCES, beam_size=beam_size)):
            assert (first.text, first.tokens, first.score) == (second.text, second.tokens, second.score)
            assert (first.attention == second.attention).all()


def test_translator_rejects_a_bad_or_missing_device(tiny_model_dir, no_gpu):
    with pytest.raises(AttnmtError, match="'gpu' is not a device"):
        Translator.load(tiny_model_dir, device="gpu")
    with pytest.raises(AttnmtError, match="no GPU"):
        Translator.load(tiny_model_dir, device="cuda")


def test_cli_device_option(capsys, tiny_model_dir, tmp_path, no_gpu):
    source = tmp_path / "input.txt"
    source.write_text("a b c\nd e\n", encoding="utf-8")
    outputs = []
    for extra in ([], ["--device", "cpu"], ["--device", "auto"]):
        assert main(["translate", str(tiny_model_dir), "--input", str(source), *extra]) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1] == outputs[2] and outputs[0].count("\n") == 2
    assert main(["translate", str(tiny_model_dir), "--input", str(source), "--device", "cuda"]) == 2
    assert "attnmt translate: device 'cuda': torch sees no GPU" in capsys.readouterr().err
    for command in (["translate"], ["evaluate", "--src", "x", "--ref", "y"], ["attention", "a"], ["serve"]):
        with pytest.raises(SystemExit) as exit_:
            main([command[0], str(tiny_model_dir), *command[1:], "--device", "gpu"])
        assert exit_.value.code == 2
        assert "--device: 'gpu' is not a device; choose one of auto, cpu, cuda, cuda:N" in capsys.readouterr().err


def test_bf16_translation_on_the_cpu_agrees_with_float32(reversal_model, capsys, tmp_path):
    """Under bf16 autocast the matrix products lose precision, the log-probabilities are float32: the trained
    reversal model translates (almost) every held-out sentence as in float32, with close scores."""
    sentences = [src for src, _ in reversal_model.test_pairs[:100]]
    float32 = Translator.load(reversal_model.model_dir, device="cpu")
    bf16 = Translator.load(reversal_model.model_dir, device="cpu", mixed_precision="bf16")
    for beam_size in (1, 4):
        expected = float32.translate(sentences, beam_size=beam_size)
        got = bf16.translate(sentences, beam_size=beam_size)
        same = [a.text == b.text for a, b in zip(expected, got, strict=True)]
        assert sum(same) >= 95
        assert all(isinstance(b.score, float) and b.score <= 0 for b in got)
        assert max(abs(a.score - b.score) for a, b, s in zip(expected, got, same) if s) < 0.1
        assert got[0].attention.dtype == expected[0].attention.dtype  # weights come back as float32 numpy
    source = tmp_path / "input.txt"
    source.write_text("\n".join(sentences[:5]) + "\n", encoding="utf-8")
    assert main(["translate", str(reversal_model.model_dir), "--input", str(source), "--mixed-precision", "bf16"]) == 0
    assert capsys.readouterr().out.count("\n") == 5


def test_fp16_translation_on_the_cpu_is_a_config_error(tiny_model_dir, capsys, no_gpu):
    with pytest.raises(ConfigError, match="mixed_precision: fp16 needs a GPU"):
        Translator.load(tiny_model_dir, device="cpu", mixed_precision="fp16")
    assert main(["translate", str(tiny_model_dir), "--mixed-precision", "fp16"]) == 2
    assert "fp16 needs a GPU" in capsys.readouterr().err
