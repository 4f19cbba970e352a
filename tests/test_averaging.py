"""Tests of attnmt.averaging: θ̄ = (1/N) Σ_i θ_i over safetensors checkpoints, and the checkpoints it refuses."""

from __future__ import annotations

import re

import pytest
import torch
from safetensors.torch import load_file, save_file

from attnmt import checkpoint
from attnmt.averaging import average_tensors, write_average
from attnmt.config import RNNConfig
from attnmt.errors import CheckpointError
from attnmt.models import build_model


def random_checkpoint(seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {"weight": torch.randn(4, 3, generator=generator),
            "half": torch.randn(5, generator=generator).to(torch.bfloat16),
            "double": torch.randn(2, 2, generator=generator, dtype=torch.float64),
            "steps": torch.tensor([7, 8], dtype=torch.int64)}


def write(path, tensors: dict[str, torch.Tensor]):
    save_file(tensors, str(path))
    return path


def test_two_checkpoints_average_elementwise(tmp_path):
    a, b = random_checkpoint(1), random_checkpoint(2)
    average = average_tensors([write(tmp_path / "a.safetensors", a), write(tmp_path / "b.safetensors", b)])
    assert average.keys() == a.keys()
    for name in ("weight", "half", "double"):
        expected = ((a[name].double() + b[name].double()) / 2).to(a[name].dtype)
        assert average[name].dtype == a[name].dtype
        torch.testing.assert_close(average[name], expected, atol=0, rtol=0)
        assert not torch.equal(average[name], a[name])
    assert torch.equal(average["steps"], a["steps"])


def test_one_checkpoint_averages_to_itself_bit_for_bit(tmp_path):
    tensors = random_checkpoint(3)
    average = average_tensors([write(tmp_path / "a.safetensors", tensors)])
    for name, tensor in tensors.items():
        assert average[name].dtype == tensor.dtype
        assert torch.equal(average[name].view(torch.uint8), tensor.view(torch.uint8))  # the same bytes


def test_write_average_gives_a_checkpoint_the_model_loads(tmp_path):
    config = RNNConfig(embedding_size=8, hidden_size=16, dropout=0.0, attention="additive")
    paths = []
    for seed in (1, 2, 3):
        torch.manual_seed(seed)
        paths.append(tmp_path / f"model_{seed}.safetensors")
        checkpoint.save_model(paths[-1], build_model(config, 12, 14))
    write_average(paths, tmp_path / "average.safetensors")
    written = load_file(str(tmp_path / "average.safetensors"))
    members = [load_file(str(path)) for path in paths]
    for name, tensor in written.items():
        expected = (sum(member[name].double() for member in members) / 3).float()
        torch.testing.assert_close(tensor, expected, atol=0, rtol=0)
    model = build_model(config, 12, 14)
    checkpoint.load_model_weights(tmp_path / "average.safetensors", model)
    torch.testing.assert_close(model.decoder.output.weight, written["decoder.output.weight"], atol=0, rtol=0)


@pytest.mark.parametrize("change, key, says", [
    (lambda t: t.pop("double"), "double", "lacks"),
    (lambda t: t.update(extra=torch.zeros(1)), "extra", "has"),
    (lambda t: t.update(weight=torch.zeros(3, 4)), "weight", "[3, 4]"),
    (lambda t: t.update(weight=t["weight"].double()), "weight", "torch.float64"),
    (lambda t: t.update(steps=torch.tensor([7, 9])), "steps", "integers"),
])
def test_checkpoints_that_differ_are_refused_naming_the_first_that_differs_and_the_key(tmp_path, change, key, says):
    reference = random_checkpoint(4)
    unlike, also_unlike = random_checkpoint(5), random_checkpoint(6)
    change(unlike)
    change(also_unlike)
    paths = [write(tmp_path / "a.safetensors", reference), write(tmp_path / "b.safetensors", random_checkpoint(7)),
             write(tmp_path / "c.safetensors", unlike), write(tmp_path / "d.safetensors", also_unlike)]
    with pytest.raises(CheckpointError) as raised:
        average_tensors(paths)
    message = str(raised.value)
    assert message.startswith(str(tmp_path / "c.safetensors")) and "d.safetensors" not in message
    assert f"'{key}'" in message and says in message and "one model" in message


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_checkpoint_is_refused(tmp_path, bad):
    broken = random_checkpoint(8)
    broken["weight"][2, 1] = bad
    paths = [write(tmp_path / "a.safetensors", random_checkpoint(9)), write(tmp_path / "b.safetensors", broken)]
    with pytest.raises(CheckpointError, match=re.escape(f"{paths[1]}: 'weight' holds NaN or infinite values")):
        average_tensors(paths)
    with pytest.raises(CheckpointError, match="leave this checkpoint out"):
        write_average(paths, tmp_path / "average.safetensors")
    assert not (tmp_path / "average.safetensors").exists()


def test_missing_unreadable_or_no_files_are_errors(tmp_path):
    good = write(tmp_path / "a.safetensors", random_checkpoint(10))
    with pytest.raises(CheckpointError, match=re.escape(f"{tmp_path / 'gone.safetensors'} is missing")):
        average_tensors([good, tmp_path / "gone.safetensors"])
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=re.escape(f"{tmp_path / 'junk.safetensors'} cannot be read")):
        average_tensors([good, tmp_path / "junk.safetensors"])
    with pytest.raises(CheckpointError, match="no checkpoints"):
        average_tensors([])
