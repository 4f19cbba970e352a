"""Tests of the Transformer: multi-head attention against torch's, cached decoding against recomputing every prefix,
the causal mask, source padding, the variants (pre/post-norm, positions, shared and tied embeddings), the inverse
square-root schedule, the config, save → load, and the per-head heatmaps of `attnmt attention`."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from attnmt import checkpoint
from attnmt.cli import main
from attnmt.config import TrainingConfig, TransformerConfig, load_config, parse_config
from attnmt.data import BOS_ID, pad_sequences
from attnmt.errors import ConfigError
from attnmt.models import TransformerSeq2Seq, build_model
from attnmt.models.multihead import MultiHeadAttention, causal_mask
from attnmt.models.transformer import Positions
from attnmt.search import beam_search, greedy_search, max_lengths
from attnmt.training import LearningRateSchedule, Trainer
from attnmt.translator import Translator

from conftest import TINY_TRANSFORMER, reversal_pairs, tiny_config_dict, write_tsv

REPO = Path(__file__).resolve().parent.parent
VOCAB = 24
PNG = b"\x89PNG\r\n\x1a\n"


def transformer_config(**options) -> TransformerConfig:
    settings = dict(type="transformer", encoder_layers=2, decoder_layers=2, hidden_size=16, heads=4,
                    feed_forward_size=32, dropout=0.0)
    return TransformerConfig(**{**settings, **options})


def random_model(seed: int = 0, **options) -> TransformerSeq2Seq:
    torch.manual_seed(seed)
    return build_model(transformer_config(**options), VOCAB, VOCAB).eval()


def random_batch(lengths: list[int], seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return pad_sequences([torch.randint(4, VOCAB, (n,), generator=generator).tolist() for n in lengths])


# ---- multi-head attention ------------------------------------------------------------------------------------------


def paired_attention(d: int = 16, heads: int = 4, seed: int = 0):
    """Our module and torch.nn.MultiheadAttention with the same weights: W_q, W_k, W_v are the row blocks of torch's
    in_proj_weight, W_o its out_proj."""
    torch.manual_seed(seed)
    reference = torch.nn.MultiheadAttention(d, heads, batch_first=True).eval()
    with torch.no_grad():  # torch zero-initializes the biases: make them count
        reference.in_proj_bias.normal_()
        reference.out_proj.bias.normal_()
    ours = MultiHeadAttention(d, heads).eval()
    with torch.no_grad():
        for i, projection in enumerate((ours.query, ours.key, ours.value)):
            projection.weight.copy_(reference.in_proj_weight[i * d:(i + 1) * d])
            projection.bias.copy_(reference.in_proj_bias[i * d:(i + 1) * d])
        ours.output.weight.copy_(reference.out_proj.weight)
        ours.output.bias.copy_(reference.out_proj.bias)
    return ours, reference


@pytest.mark.parametrize("kind", ["self", "self+padding", "causal", "cross+padding"])
def test_multihead_attention_equals_torch(kind):
    ours, reference = paired_attention()
    torch.manual_seed(1)
    x = torch.randn(3, 5, 16)
    y = torch.randn(3, 7, 16) if kind.startswith("cross") else x
    mask = torch.ones(3, y.size(1), dtype=torch.bool)  # True = real token
    mask[1, -2:] = False
    mask[2, 1:] = False
    key_mask = mask if "padding" in kind else None
    causal = kind == "causal"
    with torch.no_grad():
        expected, expected_weights = reference(
            x, y, y, key_padding_mask=None if key_mask is None else ~key_mask,  # torch: True = ignore
            attn_mask=~causal_mask(5, 5) if causal else None, need_weights=True, average_attn_weights=False)
        output, weights = ours(x, y, key_mask=key_mask, causal=causal, need_weights=True)
        fused, no_weights = ours(x, y, key_mask=key_mask, causal=causal)
    assert weights.shape == (3, 4, 5, y.size(1)) and no_weights is None
    torch.testing.assert_close(output, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(weights, expected_weights, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fused, expected, rtol=1e-5, atol=1e-6)
    if key_mask is not None:
        assert not weights.masked_select(~key_mask[:, None, None, :].expand_as(weights)).any()  # padding gets 0


def test_fused_path_equals_unfused_with_a_cache_offset():
    """Three new queries against five cached keys plus their own: query i sits at key position 5 + i."""
    torch.manual_seed(0)
    attention = MultiHeadAttention(16, 4).eval()
    q, k, v = torch.randn(2, 4, 3, 4), torch.randn(2, 4, 8, 4), torch.randn(2, 4, 8, 4)
    key_mask = torch.tensor([[True] * 8, [True] * 6 + [False] * 2])
    for causal in (False, True):
        unfused, weights = attention.attend(q, k, v, key_mask, causal, need_weights=True)
        fused, _ = attention.attend(q, k, v, key_mask, causal)
        torch.testing.assert_close(fused, unfused, rtol=1e-5, atol=1e-6)
    allowed = causal_mask(3, 8)
    assert allowed.tolist() == [[j <= 5 + i for j in range(8)] for i in range(3)]
    assert not weights[:, :, ~allowed].any()  # no query reads a key after its own position


def test_attention_dropout_only_while_training():
    torch.manual_seed(0)
    attention = MultiHeadAttention(16, 4, dropout=0.5, fused=False)
    x = torch.randn(2, 6, 16)
    attention.train()
    assert not torch.equal(attention(x)[0], attention(x)[0])
    attention.eval()
    assert torch.equal(attention(x)[0], attention(x)[0])


# ---- decoding: cached = uncached -----------------------------------------------------------------------------------


class Uncached:
    """The same model decoding without any cache: every step runs teacher forcing (encoder included) over the whole
    prefix and keeps the last position."""

    def __init__(self, model: TransformerSeq2Seq) -> None:
        self.model = model

    def encode(self, src, src_mask):
        return {"src": src, "src_mask": src_mask}

    def start_state(self, memory):
        return {"prefix": memory["src"].new_zeros(memory["src"].size(0), 0)}

    def step(self, prev, state, memory, need_weights=True):
        prefix = torch.cat([state["prefix"], prev.unsqueeze(1)], dim=1)  # [B, t]
        logits, attention = self.model(memory["src"], memory["src_mask"], prefix, return_attention=True)
        return torch.log_softmax(logits[:, -1], dim=-1), {"prefix": prefix}, attention[:, -1]


def assert_same_hypotheses(results, expected):
    for mine, theirs in zip(results, expected, strict=True):
        assert len(mine) == len(theirs)
        for a, b in zip(mine, theirs):
            assert a.tokens == b.tokens
            assert a.score == pytest.approx(b.score, abs=1e-4)
            np.testing.assert_allclose(a.attention, b.attention, atol=1e-5)


VARIANTS = {
    "pre-sinusoidal": {},
    "post-learned": dict(norm="post", positions="learned"),
    "pre-learned-shared-tied": dict(positions="learned", share_embeddings=True, tie_target_embeddings=True),
    "post-sinusoidal-unfused-3+1": dict(norm="post", fused_attention=False, encoder_layers=3, decoder_layers=1),
}


@pytest.mark.parametrize("options", VARIANTS.values(), ids=VARIANTS.keys())
def test_cached_decoding_equals_recomputing_every_prefix(options):
    model = random_model(**options)
    src, src_mask = random_batch([7, 3, 5, 6])
    greedy = greedy_search(model, src, src_mask, max_length_ratio=1.0)
    assert_same_hypotheses(greedy, greedy_search(Uncached(model), src, src_mask, max_length_ratio=1.0))
    beam = beam_search(model, src, src_mask, beam_size=3, max_length_ratio=1.0, n_best=3)
    assert_same_hypotheses(beam, beam_search(Uncached(model), src, src_mask, beam_size=3, max_length_ratio=1.0,
                                             n_best=3))
    for hypotheses, length in zip(greedy + beam, [7, 3, 5, 6] * 2):
        for h in hypotheses:  # every layer and head, each row a distribution over the real source positions
            assert h.attention.shape == (len(h.tokens) + 1, 2 if "decoder_layers" not in options else 1, 4, length)
            np.testing.assert_allclose(h.attention.sum(axis=-1), 1.0, atol=1e-5)


def test_each_step_projects_one_new_position_and_the_source_once():
    """Cross-attention keys/values: projected once per sentence (in `encode`). Self-attention: each step projects
    the one new position, and the cache grows by one."""
    model = random_model()
    src, src_mask = random_batch([6, 4])
    calls: dict[str, list[tuple]] = {"cross": [], "self": []}
    for layer in model.decoder_layers:
        layer.cross_attention.key.register_forward_hook(lambda m, i, o: calls["cross"].append(tuple(i[0].shape)))
        layer.self_attention.key.register_forward_hook(lambda m, i, o: calls["self"].append(tuple(i[0].shape)))
    results = beam_search(model, src, src_mask, beam_size=3, max_length_ratio=1.0)
    assert calls["cross"] == [(2, 6, 16)] * 2  # one call per decoder layer, for the two sentences before the beam
    assert calls["self"] and {shape[1:] for shape in calls["self"]} == {(1, 16)}  # one new position per step
    assert calls["self"][0][0] == 6 and {shape[0] for shape in calls["self"]} <= {3, 6}  # B·k rows, fewer when done
    memory = model.encode(src, src_mask)
    state = model.start_state(memory)
    assert state["self_keys_0"].shape == (2, 4, 0, 4) and state["position"].tolist() == [0, 0]
    for t in range(3):
        _, state, attention = model.step(torch.full((2,), BOS_ID), state, memory)
    assert state["self_keys_1"].shape == (2, 4, 3, 4) and state["position"].tolist() == [3, 3]
    assert attention.shape == (2, 2, 4, 6)  # [B, L, H, S]
    assert results[0][0].attention.shape[1:] == (2, 4, 6)


# ---- teacher forcing: causality and padding ------------------------------------------------------------------------


@pytest.mark.parametrize("options", VARIANTS.values(), ids=VARIANTS.keys())
def test_a_future_target_token_changes_no_earlier_output(options):
    model = random_model(**options)
    src, src_mask = random_batch([6, 4])
    tgt_in = torch.randint(4, VOCAB, (2, 8), generator=torch.Generator().manual_seed(3))
    tgt_in[:, 0] = BOS_ID
    with torch.no_grad():
        logits, attention = model(src, src_mask, tgt_in, return_attention=True)
        for t in range(1, 8):
            changed = tgt_in.clone()
            changed[:, t] = (changed[:, t] - 4 + 1) % (VOCAB - 4) + 4
            other_logits, other_attention = model(src, src_mask, changed, return_attention=True)
            torch.testing.assert_close(other_logits[:, :t], logits[:, :t], rtol=0, atol=1e-6)
            torch.testing.assert_close(other_attention[:, :t], attention[:, :t], rtol=0, atol=1e-6)
            assert not torch.allclose(other_logits[:, t], logits[:, t])


@pytest.mark.parametrize("options", VARIANTS.values(), ids=VARIANTS.keys())
def test_source_padding_changes_nothing(options):
    """A padded batch gives each sentence what it gets alone: logits, attention and search results."""
    model = random_model(**options)
    lengths = [7, 2, 5]
    src, src_mask = random_batch(lengths)
    tgt_in = torch.randint(4, VOCAB, (3, 6), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        logits, attention = model(src, src_mask, tgt_in, return_attention=True)
        for i, n in enumerate(lengths):
            alone, alone_attention = model(src[i:i + 1, :n], src_mask[i:i + 1, :n], tgt_in[i:i + 1],
                                           return_attention=True)
            torch.testing.assert_close(logits[i:i + 1], alone, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(attention[i:i + 1, ..., :n], alone_attention, rtol=1e-5, atol=1e-6)
            assert not attention[i, ..., n:].any()
    batched = beam_search(model, src, src_mask, beam_size=2, max_length_ratio=1.0)
    for i, n in enumerate(lengths):
        assert_same_hypotheses(batched[i:i + 1], beam_search(model, src[i:i + 1, :n], src_mask[i:i + 1, :n],
                                                             beam_size=2, max_length_ratio=1.0))


# ---- the pieces ----------------------------------------------------------------------------------------------------


def test_sinusoidal_and_learned_positions():
    d = 8
    positions = torch.tensor([[0, 1, 5, 700]])
    pe = Positions("sinusoidal", d, max_positions=10)(positions)  # no limit: computed, not looked up
    for column, position in enumerate([0, 1, 5, 700]):
        for j in range(d // 2):
            angle = position / 10000 ** (2 * j / d)
            assert pe[0, column, 2 * j].item() == pytest.approx(math.sin(angle), abs=1e-5)
            assert pe[0, column, 2 * j + 1].item() == pytest.approx(math.cos(angle), abs=1e-5)
    learned = Positions("learned", d, max_positions=10)
    table = learned.table.weight
    torch.testing.assert_close(learned(positions)[0], table[[0, 1, 5, 9]])  # past the table: its last row


def test_shared_and_tied_embeddings_are_one_matrix():
    model = random_model(share_embeddings=True, tie_target_embeddings=True)
    assert model.source_embedding is None and model.output.weight is model.target_embedding.weight
    separate = random_model()
    shared_count = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in separate.parameters()) - shared_count == 2 * VOCAB * 16
    with pytest.raises(ConfigError, match="share_embeddings"):
        build_model(transformer_config(share_embeddings=True), VOCAB, VOCAB + 1)


def test_shared_embeddings_need_a_joint_vocabulary():
    base = {"data": {"train": {"tsv": "t"}, "split": {"dev_size": 5}}, "training": {"max_steps": 1}}
    model = {"type": "transformer", "share_embeddings": True}
    assert parse_config({**base, "model": model}).model.share_embeddings
    with pytest.raises(ConfigError, match=r"tokenizer\.joint: true"):
        parse_config({**base, "model": model, "tokenizer": {"joint": False}})


def test_post_norm_and_pre_norm_differ_and_both_train():
    src, src_mask = random_batch([5, 3])
    tgt_in = torch.randint(4, VOCAB, (2, 4), generator=torch.Generator().manual_seed(2))
    outputs = {}
    for norm in ("pre", "post"):
        model = random_model(norm=norm, dropout=0.1).train()
        logits, attention = model(src, src_mask, tgt_in)
        assert attention is None  # only with return_attention=True
        logits.logsumexp(-1).sum().backward()
        assert all(p.grad is not None for p in model.parameters())
        outputs[norm] = logits.detach()
        assert (norm == "pre") == isinstance(model.encoder_norm, torch.nn.LayerNorm)
    assert not torch.allclose(outputs["pre"], outputs["post"])


# ---- config and schedule -------------------------------------------------------------------------------------------


def test_config_type_switches_the_model_section():
    base = {"data": {"train": {"tsv": "t"}, "split": {"dev_size": 5}}, "training": {"max_steps": 1}}
    assert parse_config(base).model.type == "rnn"  # no model section, or no type: the RNN
    assert parse_config({**base, "model": {"cell": "lstm"}}).model.cell == "lstm"
    config = parse_config({**base, "model": {"type": "transformer", "heads": 2, "hidden_size": 8}})
    assert isinstance(config.model, TransformerConfig) and config.model.norm == "pre"
    assert isinstance(build_model(config.model, 10, 10), TransformerSeq2Seq)
    assert parse_config(yaml.safe_load(config.to_yaml())) == config  # what a model directory saves loads back
    with pytest.raises(ConfigError, match=r"`model\.cell`: unknown key; allowed here: type, encoder_layers") as e:
        parse_config({**base, "model": {"type": "transformer", "cell": "gru"}})
    assert "feed_forward_size" in str(e.value) and "embedding_size" not in str(e.value)
    with pytest.raises(ConfigError, match=r"`model\.type`: 'transfomer' is not allowed; choose one of 'rnn', "
                                          r"'transformer'"):
        parse_config({**base, "model": {"type": "transfomer"}})
    with pytest.raises(ConfigError, match=r"`model\.norm`: 'mid' is not allowed"):
        parse_config({**base, "model": {"type": "transformer", "norm": "mid"}})
    with pytest.raises(ConfigError, match=r"multiple of `heads`"):
        parse_config({**base, "model": {"type": "transformer", "hidden_size": 10, "heads": 4}})


def test_shipped_transformer_config():
    config = load_config(REPO / "configs" / "multi30k_de_en_transformer.yaml")
    assert isinstance(config.model, TransformerConfig) and config.tokenizer.joint
    assert (config.model.encoder_layers, config.model.decoder_layers, config.model.hidden_size,
            config.model.heads, config.model.feed_forward_size) == (3, 3, 256, 4, 1024)
    assert config.training.schedule == "inverse_sqrt"
    rnn = load_config(REPO / "configs" / "multi30k_de_en_rnn.yaml")
    assert (config.data, config.tokenizer) == (rnn.data, rnn.tokenizer)  # the same data and vocabulary


def test_inverse_sqrt_schedule():
    settings = TrainingConfig(max_steps=10, learning_rate=0.002, schedule="inverse_sqrt", warmup_steps=100)
    schedule = LearningRateSchedule(settings)
    for step in (1, 10, 50, 100, 101, 400, 10_000):
        expected = 0.002 * min(step / 100, math.sqrt(100 / step))  # lr = base · min(step/warmup, √(warmup/step))
        assert schedule.rate(step) == pytest.approx(expected, rel=1e-12)
    assert schedule.rate(100) == pytest.approx(0.002)  # the peak
    assert schedule.rate(400) == pytest.approx(0.001)  # four times the warmup: half the peak
    schedule.after_validation(5.0)
    schedule.after_validation(6.0)  # a dev loss plateau changes nothing here
    assert schedule.rate(400) == pytest.approx(0.001)
    with pytest.raises(ConfigError, match="warmup_steps"):
        parse_config({"data": {"train": {"tsv": "t"}, "split": {"dev_size": 5}},
                      "training": {"max_steps": 1, "schedule": "inverse_sqrt"}})


# ---- training, save → load, translator, CLI ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_transformer(transformer_model) -> Trainer:
    return transformer_model.trainer


def test_save_and_load_give_identical_translations(trained_transformer):
    trainer = trained_transformer
    model_dir = trainer.model_dir
    stored = load_file(str(model_dir / checkpoint.MODEL_FILE))
    assert "target_embedding.weight" in stored and "output.weight" not in stored  # the shared matrix, once
    assert not any(name.startswith("source_embedding") for name in stored)
    loaded = Translator.load(model_dir)
    assert isinstance(loaded.model, TransformerSeq2Seq)
    assert loaded.model.output.weight is loaded.model.target_embedding.weight
    in_memory = Translator(trainer.model, trainer.tokenizer, trainer.config)
    sentences = [src for src, _ in reversal_pairs(6, seed=23)]
    for beam in (1, 3):
        for a, b in zip(loaded.translate(sentences, beam_size=beam), in_memory.translate(sentences, beam_size=beam)):
            assert (a.text, a.tokens) == (b.text, b.tokens)
            assert a.score == b.score
            np.testing.assert_array_equal(a.attention_heads, b.attention_heads)


def test_cached_decoding_of_a_trained_model_equals_recomputing(trained_transformer):
    """The same check as above on a model that has learned something, so that hypotheses end by choosing EOS."""
    model = trained_transformer.model.eval()
    ids = trained_transformer.tokenizer.encode_source([src for src, _ in reversal_pairs(8, seed=24)])
    src, src_mask = pad_sequences(ids)
    greedy = greedy_search(model, src, src_mask)
    assert_same_hypotheses(greedy, greedy_search(Uncached(model), src, src_mask))
    beam = beam_search(model, src, src_mask, beam_size=4, n_best=2)
    assert_same_hypotheses(beam, beam_search(Uncached(model), src, src_mask, beam_size=4, n_best=2))
    limits = max_lengths(src_mask, 2.0).tolist()
    assert any(len(h[0].tokens) < limit for h, limit in zip(greedy, limits))  # some stop at EOS, not at the limit


def test_text_only_decoding_takes_the_fused_path_and_finds_the_same_hypotheses(trained_transformer):
    """need_weights=False lets cross-attention run through scaled_dot_product_attention; the search finds the same
    hypotheses with the same scores (to float rounding), without attention."""
    model = trained_transformer.model.eval()
    ids = trained_transformer.tokenizer.encode_source([src for src, _ in reversal_pairs(8, seed=25)])
    src, src_mask = pad_sequences(ids)
    for search in (greedy_search, lambda *a, **o: beam_search(*a, beam_size=4, n_best=2, **o)):
        kept, text_only = search(model, src, src_mask), search(model, src, src_mask, keep_attention=False)
        for mine, theirs in zip(text_only, kept, strict=True):
            assert [h.tokens for h in mine] == [h.tokens for h in theirs]
            assert [h.score for h in mine] == pytest.approx([h.score for h in theirs], abs=1e-4)
            assert all(h.attention is None for h in mine)
    with torch.inference_mode():
        memory = model.encode(src, src_mask)
        _, _, weights = model.step(torch.full((src.size(0),), BOS_ID), model.start_state(memory), memory, need_weights=False)
    assert weights is None


def test_translation_carries_every_head_and_averages_the_last_layer(trained_transformer):
    translator = Translator(trained_transformer.model, trained_transformer.tokenizer, trained_transformer.config)
    result = translator.translate(["a b c d"], beam_size=2)[0]
    rows, columns = len(result.target_tokens_with_eos), len(result.source_tokens)
    assert result.attention_heads.shape == (2, 4, rows, columns)  # [L, H, T + 1, S]
    np.testing.assert_allclose(result.attention, result.attention_heads[-1].mean(axis=0), atol=1e-7)
    assert result.attention.shape == (rows, columns)
    np.testing.assert_allclose(result.attention.sum(axis=1), 1.0, atol=1e-5)


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("options", [[], ["--layer", "1"], ["--layer", "2", "--head", "4"], ["--head", "1"],
                                     ["--all-heads"], ["--all-heads", "--layer", "1"]],
                         ids=["default", "layer", "layer+head", "head", "all-heads", "all-heads-of-layer"])
def test_cli_attention_draws_layers_and_heads(capsys, tmp_path, trained_transformer, options):
    path = tmp_path / "map.png"
    code, out, err = run(capsys, "attention", trained_transformer.model_dir, "a b c", "-o", path, *options)
    assert code == 0, err
    assert path.read_bytes()[:8] == PNG and str(path) in out


@pytest.mark.parametrize("options, message", [
    (["--layer", "3"], "layer 3: the model has 2 attention layers; choose 1..2"),
    (["--layer", "0"], "layer 0: the model has 2 attention layers; choose 1..2"),
    (["--head", "5"], "head 5: the model has 4 heads per layer; choose 1..4"),
    (["--all-heads", "--head", "1"], "either --all-heads or --head"),
])
def test_cli_attention_bad_layer_or_head(capsys, tmp_path, trained_transformer, options, message):
    path = tmp_path / "map.png"
    code, _, err = run(capsys, "attention", trained_transformer.model_dir, "a b c", "-o", path, *options)
    assert code == 2 and err.startswith("attnmt attention: ") and message in err, err
    assert "Traceback" not in err and not path.exists()


def test_cli_attention_an_rnn_has_one_layer_of_one_head(capsys, tmp_path, tiny_config):
    config = tiny_config(tmp_path / "rnn", {"training.max_steps": 2})
    Trainer(config, show_progress=False).train()
    for options in (["--layer", "1"], ["--head", "1"], ["--all-heads"], []):
        code, _, err = run(capsys, "attention", tmp_path / "rnn", "a b c", "-o", tmp_path / "x.png", *options)
        assert code == 0, err
    for options, message in ((["--layer", "2"], "layer 2: the model has 1 attention layer; choose 1..1"),
                             (["--head", "2"], "head 2: the model has 1 head per layer; choose 1..1")):
        code, _, err = run(capsys, "attention", tmp_path / "rnn", "a b c", "-o", tmp_path / "y.png", *options)
        assert code == 2 and message in err, err
    result = Translator.load(tmp_path / "rnn").translate(["a b c"])[0]
    assert result.attention_heads.shape == (1, 1, len(result.tokens) + 1, len(result.source_tokens))
    np.testing.assert_array_equal(result.attention, result.attention_heads[0, 0])


def test_a_tiny_transformer_learns_to_reverse(tmp_path):
    """The whole path with one config switch: a small Transformer masters the reversal task of conftest."""
    train = write_tsv(tmp_path / "train.tsv", reversal_pairs(3000, seed=1))
    dev = write_tsv(tmp_path / "dev.tsv", reversal_pairs(50, seed=2))
    data = tiny_config_dict(train, dev, tmp_path / "model", {"training.max_steps": 400,
                                                             "training.validate_every": 1000,
                                                             "training.schedule": "inverse_sqrt",
                                                             "training.warmup_steps": 50,
                                                             "training.learning_rate": 0.003})
    data["model"] = {**TINY_TRANSFORMER, "dropout": 0.0, "hidden_size": 64, "feed_forward_size": 128}
    trainer = Trainer(parse_config(data), show_progress=False)
    trainer.train()
    seen = {src for src, _ in reversal_pairs(3000, seed=1)}
    test = [pair for pair in reversal_pairs(300, seed=3) if pair[0] not in seen][:100]
    translations = Translator.load(tmp_path / "model").translate([src for src, _ in test], beam_size=1)
    correct = sum(t.text == reference for t, (_, reference) in zip(translations, test))
    assert correct >= 85, correct
