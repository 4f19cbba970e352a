"""A model as a CTranslate2 model specification (`ctranslate2.specs`): each family answers whether and how it can be
exported; `attnmt.export` writes the directory, `attnmt.backends` translates with it.

The Transformer maps one to one (`transformer_spec`):

    attnmt (attnmt.models.transformer)              CTranslate2 (specs.TransformerSpec)
    E[y] · √d_model                                 embeddings.weight, scale_embeddings (√d_model, its default)
    PE(i), sinusoidal or learned                    position_encodings.encodings: the table PE(0..N−1), written out
                                                    (CTranslate2's own sinusoids put the sines first, not interleaved;
                                                    learned positions past max_positions repeat the last row: our clamp)
    Sublayer norm (pre or post)                     pre_norm; each sublayer's layer_norm (γ, β), ε of nn.LayerNorm
    pre-norm's closing LN of each stack             encoder.layer_norm, decoder.layer_norm
    self-attention W_q, W_k, W_v, W_o               self_attention.linear[0] = [W_q; W_k; W_v] fused, linear[1] = W_o
    cross-attention W_q, W_k, W_v, W_o              attention.linear[0] = W_q, linear[1] = [W_k; W_v], linear[2] = W_o
    FFN W_1, b_1, W_2, b_2 (ReLU)                   ffn.linear_0, ffn.linear_1 (Activation.RELU)
    output W_o (tied: the target embedding)         decoder.projection (no bias)
    BOS / EOS / UNK ids 2 / 3 / 1                   the vocabulary's "<s>" / "</s>" / "<unk>" (attnmt.data.tokenizer)

torch's Linear stores W as [out, in], as CTranslate2 does, so weights go over untransposed. The decoder returns as
attention the cross-attention of its last layer averaged over all heads (alignment_layer −1, alignment_heads 0):
our default view, `Translation.attention`.

Other families raise an `ExportError` saying why and what to use instead (`UNSUPPORTED`).
"""

from __future__ import annotations


import numpy as np
import torch

from attnmt.errors import AttnmtError
from attnmt.models.transformer import TransformerSeq2Seq

# `model.type` → why CTranslate2 cannot run it, and what to use instead
UNSUPPORTED = {
    "rnn": "CTranslate2 has no RNN models (it runs Transformers only); to make an RNN faster on the CPU, translate "
           "with the PyTorch backend's int8 weights (`attnmt translate MODEL --quantization int8`)",
}
ALL_HEADS = 0  # CTranslate2's alignment_heads: 0 averages every head of the alignment layer


def import_ctranslate2():
    """The ctranslate2 module, imported on first use (it is an optional dependency of the export and the backend).
    Its matrix library is CTranslate2's own choice (`CT2_USE_MKL` in the environment overrides it; docs/export.md
    has the measurement on an AMD CPU)."""
    import ctranslate2

    return ctranslate2


class ExportError(AttnmtError):
    """A model cannot be exported to the format asked for."""


def _array(tensor: torch.Tensor) -> np.ndarray:
    """A float32 numpy copy of a parameter (the spec is quantized later, by `spec.optimize`)."""
    return tensor.detach().to(torch.float32).cpu().numpy().copy()


def _linear(spec, *layers: torch.nn.Linear) -> None:
    """spec.weight = [W_1; W_2; ...] (rows stacked: the fused projection of several linear maps), bias likewise."""
    spec.weight = np.concatenate([_array(layer.weight) for layer in layers])
    if layers[0].bias is not None:
        spec.bias = np.concatenate([_array(layer.bias) for layer in layers])


def _layer_norm(spec, norm: torch.nn.LayerNorm) -> None:
    spec.gamma, spec.beta = _array(norm.weight), _array(norm.bias)


def _position_table(positions: torch.nn.Module, rows: int) -> np.ndarray:
    """PE(0), ..., PE(rows − 1) as the model computes them (learned: clamped at its last row). [rows, d_model]"""
    with torch.no_grad():
        return _array(positions(torch.arange(rows).unsqueeze(0))[0])


def _self_attention(spec, attention, sublayer) -> None:
    _linear(spec.linear[0], attention.query, attention.key, attention.value)  # [W_q; W_k; W_v]
    _linear(spec.linear[1], attention.output)
    _layer_norm(spec.layer_norm, sublayer.norm)


def _cross_attention(spec, attention, sublayer) -> None:
    _linear(spec.linear[0], attention.query)
    _linear(spec.linear[1], attention.key, attention.value)  # [W_k; W_v]
    _linear(spec.linear[2], attention.output)
    _layer_norm(spec.layer_norm, sublayer.norm)


def _feed_forward(spec, feed_forward, sublayer) -> None:
    _linear(spec.linear_0, feed_forward.inner)
    _linear(spec.linear_1, feed_forward.outer)
    _layer_norm(spec.layer_norm, sublayer.norm)


def transformer_spec(model: TransformerSeq2Seq, positions: int):
    """The `ctranslate2.specs.TransformerSpec` of a Transformer, its position tables `positions` rows long (the
    longest source, and the longest target + 1, it can translate). Vocabularies are the caller's to register."""
    import_ctranslate2()
    from ctranslate2.specs import common_spec, transformer_spec as ct2

    c = model.config
    pre_norm = c.norm == "pre"
    spec = ct2.TransformerSpec.from_config((c.encoder_layers, c.decoder_layers), c.heads, pre_norm=pre_norm,
                                           activation=common_spec.Activation.RELU, alignment_layer=-1,
                                           alignment_heads=ALL_HEADS)
    epsilons = {m.eps for m in model.modules() if isinstance(m, torch.nn.LayerNorm)}
    spec.config.layer_norm_epsilon = float(epsilons.pop())  # torch's default 1e-5 (CTranslate2's is 1e-6)

    encoder, decoder = spec.encoder, spec.decoder
    source_table = model.source_embedding if model.source_embedding is not None else model.target_embedding
    encoder.embeddings[0].weight = _array(source_table.weight)
    encoder.position_encodings.encodings = _position_table(model.source_positions, positions)
    for layer_spec, layer in zip(encoder.layer, model.encoder_layers):
        _self_attention(layer_spec.self_attention, layer.self_attention, layer.attention_sublayer)
        _feed_forward(layer_spec.ffn, layer.feed_forward, layer.feed_forward_sublayer)

    decoder.embeddings.weight = _array(model.target_embedding.weight)
    decoder.position_encodings.encodings = _position_table(model.target_positions, positions)
    for layer_spec, layer in zip(decoder.layer, model.decoder_layers):
        _self_attention(layer_spec.self_attention, layer.self_attention, layer.self_attention_sublayer)
        _cross_attention(layer_spec.attention, layer.cross_attention, layer.cross_attention_sublayer)
        _feed_forward(layer_spec.ffn, layer.feed_forward, layer.feed_forward_sublayer)
    _linear(decoder.projection, model.output)
    if pre_norm:
        _layer_norm(encoder.layer_norm, model.encoder_norm)
        _layer_norm(decoder.layer_norm, model.decoder_norm)
    return spec


def ctranslate2_spec(model: torch.nn.Module, positions: int):
    """The CTranslate2 spec of a model (see the module docstring), or an `ExportError` saying why it has none."""
    if isinstance(model, TransformerSeq2Seq):
        return transformer_spec(model, positions)
    family = model.describe().family
    reason = UNSUPPORTED.get(family, f"CTranslate2 export knows no {family!r} models (an ensemble: export and "
                                     f"translate each member alone)")
    raise ExportError(reason)
