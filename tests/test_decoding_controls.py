"""Decoding controls (issue 16, the practitioner's loop): a forced target prefix, min_length, no_repeat_ngram_size,
sampling (top_k, top_p, temperature, seed) and the length penalty, in search (on the hand-made Markov model of
test_search.py, whose probabilities are known exactly), through `Translator.translate`, `attnmt translate` and the
server, for both model families; and the schema of POST /translate saying exactly which combinations are accepted.
"""

from __future__ import annotations

import math
import warnings

import jsonschema_rs
import numpy as np
import pytest
import torch

from attnmt.cli import main
from attnmt.config import SearchConfig, parse_config
from attnmt.data import BOS_ID, EOS_ID, pad_sequences
from attnmt.errors import AttnmtError, ConfigError
from attnmt.models.contract import log_probabilities
from attnmt.search import (Controls, RepeatBlocker, Sampling, beam_search, draw, greedy_search, max_output_lengths,
                           sampling_log_probs, sentence_seed)
from attnmt.serve import ServeSettings, create_app
from attnmt.translator import Translator

from conftest import schema_disagreements, tiny_config_dict
from test_browser import browser, page, server_url, translate_in_page  # noqa: F401 - fixtures: the page served
from test_search import V, MarkovModel, random_table, sources

with warnings.catch_warnings():  # starlette ≥ 1.x prefers the httpx2 fork; plain httpx still works
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient


# ---- references written the plain way ------------------------------------------------------------------------------

def banned_by_ngrams(tokens: list[int], n: int) -> set[int]:
    """The tokens that would complete an n-gram `tokens` already holds (fairseq's rule, written out)."""
    if n < 1 or len(tokens) < n:
        return set()
    context = tuple(tokens[len(tokens) - n + 1:]) if n > 1 else ()
    return {tokens[j + n - 1] for j in range(len(tokens) - n + 1) if tuple(tokens[j:j + n - 1]) == context}


def plain_greedy(model: MarkovModel, limit: int, prefix=(), min_length: int = 0, ngram: int = 0) -> list[int]:
    """Greedy search on the Markov model with the controls applied one token at a time, in Python."""
    tokens, prev = [], BOS_ID
    while True:
        scores = model.table[prev].clone()
        if len(tokens) >= limit:
            return tokens
        for token in banned_by_ngrams(tokens, ngram):
            scores[token] = -math.inf
        if len(tokens) < min_length:
            scores[EOS_ID] = -math.inf
        if len(tokens) < len(prefix):
            forced = torch.full_like(scores, -math.inf)
            forced[prefix[len(tokens)]] = model.table[prev, prefix[len(tokens)]]  # the prefix beats the rest
            scores = forced
        prev = int(scores.argmax())
        if prev == EOS_ID:
            return tokens
        tokens.append(prev)


def repeats_an_ngram(tokens: list[int], n: int) -> bool:
    grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    return len(grams) != len(set(grams))


def teacher_forced_log_prob(translator, source: str, target_ids: list[int]) -> float:
    """log p(y | x) by the model's forward pass: Σ_t log p(y_t | y_<t, x) over `target_ids` and EOS."""
    src, src_mask = pad_sequences(translator.tokenizer.encode_source([source]))
    tgt_in = torch.tensor([[BOS_ID, *target_ids]])
    with torch.inference_mode():
        logits, _ = translator.model(src, src_mask, tgt_in)
    log_probs = log_probabilities(logits)[0]  # [T, V]
    return float(sum(log_probs[t, y] for t, y in enumerate([*target_ids, EOS_ID])))


# ---- search: the Markov model ---------------------------------------------------------------------------------------

def test_controls_left_off_change_nothing():
    model = MarkovModel(random_table(5, eos_floor=0.2))
    src, src_mask = sources([3, 5, 2])
    for search in (greedy_search, lambda *a, **k: beam_search(*a, beam_size=3, n_best=3, **k)):
        plain = search(model, src, src_mask)
        off = search(model, src, src_mask, controls=Controls([[], [], []], 0, 0))
        for a, b in zip(plain, off):
            assert [(h.tokens, h.score, h.normalized_score) for h in a] == \
                [(h.tokens, h.score, h.normalized_score) for h in b]
            for x, y in zip(a, b):
                np.testing.assert_array_equal(x.attention, y.attention)


@pytest.mark.parametrize("seed", range(6))
def test_greedy_with_controls_is_the_plain_greedy_with_them(seed):
    """Prefix, min_length and n-gram blocking together and apart, on several sentences of one batch (each with its
    own prefix): the same tokens as `plain_greedy`, and scores that are the model's Σ log p of those tokens."""
    model = MarkovModel(random_table(seed, eos_floor=0.3 * (seed % 3)))
    src, src_mask = sources([2, 4, 3])
    limits = max_output_lengths(src_mask.sum(dim=1), 1.0).tolist()
    prefixes = [[4, 5, 4], [], [9]]
    for prefix_on, min_length, ngram in [(True, 0, 0), (False, 6, 0), (False, 0, 2), (True, 5, 1), (True, 3, 3)]:
        chosen = prefixes if prefix_on else [[], [], []]
        results = greedy_search(model, src, src_mask, 1.0, controls=Controls(chosen, min_length, ngram))
        for [hypothesis], prefix, limit in zip(results, chosen, limits):
            expected = plain_greedy(model, limit + len(prefix), prefix, min_length, ngram)
            assert hypothesis.tokens == expected, (prefix, min_length, ngram)
            assert hypothesis.score == pytest.approx(model.sequence_score(hypothesis.tokens), abs=1e-5)
            assert hypothesis.attention.shape[0] == len(hypothesis.tokens) + 1  # the prefix's steps have attention


@pytest.mark.parametrize("seed", range(4))
def test_beam_with_a_prefix_is_the_beam_of_a_model_that_starts_there(seed):
    """Forcing the first token a is, for a Markov model, the same search as on a model whose BOS row puts all of its
    probability on a: the same hypotheses, each scoring log p(a | BOS) more (α = 0, so ranks are unchanged)."""
    table = random_table(seed, eos_floor=0.2)
    model = MarkovModel(table)
    a = 6
    starts_there = table.clone()
    starts_there[BOS_ID] = 0.0
    starts_there[BOS_ID, a] = 1.0
    src, src_mask = sources([3, 4])
    forced = beam_search(model, src, src_mask, beam_size=4, length_penalty_alpha=0.0, n_best=4,
                         controls=Controls([[a], [a]]))
    free = beam_search(MarkovModel(starts_there), src, src_mask, beam_size=4, length_penalty_alpha=0.0, n_best=4,
                       max_length_ratio=2.0)
    offset = float(model.table[BOS_ID, a])
    for mine, theirs in zip(forced, free):
        assert [h.tokens for h in mine] == [h.tokens for h in theirs]
        for h, g in zip(mine, theirs):
            assert h.tokens[0] == a
            assert h.score == pytest.approx(g.score + offset, abs=1e-5)
            assert h.score == pytest.approx(model.sequence_score(h.tokens), abs=1e-5)


@pytest.mark.parametrize("seed", range(4))
def test_beam_hypotheses_keep_min_length_and_repeat_no_ngram(seed):
    model = MarkovModel(random_table(seed, eos_floor=0.5))
    src, src_mask = sources([3, 2])
    for min_length, ngram in [(6, 0), (0, 2), (4, 1), (5, 3)]:
        results = beam_search(model, src, src_mask, beam_size=5, length_penalty_alpha=0.5, n_best=5,
                              controls=Controls(None, min_length, ngram))
        for hypotheses in results:
            assert len(hypotheses) == 5 and len({tuple(h.tokens) for h in hypotheses}) == 5
            for h in hypotheses:
                assert len(h.tokens) >= min_length
                assert not (ngram and repeats_an_ngram(h.tokens, ngram)), (h.tokens, ngram)
                assert h.score == pytest.approx(model.sequence_score(h.tokens), abs=1e-5)
    # the length limit wins over min_length: a hypothesis at its limit ends
    [[h]] = greedy_search(model, *sources([1]), 1.0, controls=Controls(None, 1000, 0))
    assert len(h.tokens) == max_output_lengths(torch.tensor([1]), 1.0).item()


def test_the_repeat_blocker_bans_what_the_rule_says():
    generator = torch.Generator().manual_seed(0)
    rows = torch.randint(4, 7, (6, 30), generator=generator)  # few distinct tokens: many repeats
    for n in (1, 2, 3, 4, 10):
        blocker = RepeatBlocker(n, rows.size(0), rows.device)
        for t in range(rows.size(1)):
            banned = blocker.ban(torch.zeros(rows.size(0), V))
            for r in range(rows.size(0)):
                expected = banned_by_ngrams(rows[r, :t].tolist(), n)
                assert set(torch.isinf(banned[r]).nonzero().view(-1).tolist()) == expected, (n, t, r)
            blocker.append(rows[:, t])
        blocker.select(torch.tensor([3, 3, 0]))  # rows follow their parents
        assert blocker.tokens.tolist() == rows[[3, 3, 0]].tolist()


# ---- search: sampling -----------------------------------------------------------------------------------------------

def test_sampling_distribution_is_tempered_and_cut_as_defined():
    p = torch.tensor([[0.4, 0.3, 0.15, 0.1, 0.05]]).log()
    q = sampling_log_probs(p, 1.0, 0, 1.0).exp()
    torch.testing.assert_close(q, p.exp().double())
    tempered = sampling_log_probs(p, 0.5, 0, 1.0).exp()  # q ∝ p²
    torch.testing.assert_close(tempered, (p.exp().double() ** 2) / (p.exp().double() ** 2).sum())
    top2 = sampling_log_probs(p, 1.0, 2, 1.0).exp()
    torch.testing.assert_close(top2, torch.tensor([[4 / 7, 3 / 7, 0, 0, 0]], dtype=torch.float64))
    nucleus = sampling_log_probs(p, 1.0, 0, 0.8).exp()  # 0.4 + 0.3 < 0.8 ≤ 0.4 + 0.3 + 0.15
    torch.testing.assert_close(nucleus, torch.tensor([[0.4, 0.3, 0.15, 0, 0]], dtype=torch.float64) / 0.85)
    assert sampling_log_probs(p, 1.0, 0, 1e-9).exp()[0, 0] == 1  # the best token is always in the nucleus
    assert sampling_log_probs(p, 1e-300, 0, 1.0).exp()[0, 0] == 1  # T → 0: the argmax


def test_draws_follow_the_distribution():
    q = torch.tensor([0.5, 0.0, 0.2, 0.3], dtype=torch.float64).log().expand(20000, 4)
    uniforms = torch.rand(20000, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    counts = torch.bincount(draw(q, uniforms), minlength=4).double() / 20000
    assert counts[1] == 0  # probability 0: never drawn
    torch.testing.assert_close(counts, q[0].exp(), atol=0.015, rtol=0)


def test_sampling_with_a_seed_depends_on_the_seed_and_the_sentence_alone():
    model = MarkovModel(random_table(2, eos_floor=0.1))
    src, src_mask = sources([2, 3, 4, 5])
    sampling = Sampling(temperature=1.5, seed=7)
    together = greedy_search(model, src, src_mask, sampling=sampling)
    again = greedy_search(model, src, src_mask, sampling=sampling)
    assert [r[0].tokens for r in together] == [r[0].tokens for r in again]
    alone = greedy_search(model, *sources([4]), sampling=sampling)  # the third sentence, without the others
    assert alone[0][0].tokens == together[2][0].tokens
    others = [greedy_search(model, src, src_mask, sampling=Sampling(temperature=1.5, seed=s)) for s in range(8, 12)]
    assert any([r[0].tokens for r in other] != [r[0].tokens for r in together] for other in others)
    for [h] in together:
        assert h.score == pytest.approx(model.sequence_score(h.tokens), abs=1e-5)  # the model's log p, not q's
    assert sentence_seed(7, [4, 5]) != sentence_seed(7, [4, 6]) != sentence_seed(8, [4, 6])
    cold = greedy_search(model, src, src_mask, sampling=Sampling(temperature=1e-6, seed=3))
    assert [r[0].tokens for r in cold] == [r[0].tokens for r in greedy_search(model, src, src_mask)]


def test_sampling_without_a_seed_follows_torchs_generator():
    model = MarkovModel(random_table(4, eos_floor=0.1))
    src, src_mask = sources([3, 3, 3])
    torch.manual_seed(5)
    first = [r[0].tokens for r in greedy_search(model, src, src_mask, sampling=Sampling())]
    torch.manual_seed(5)
    assert [r[0].tokens for r in greedy_search(model, src, src_mask, sampling=Sampling())] == first


def test_sampling_keeps_the_prefix_and_the_other_controls():
    model = MarkovModel(random_table(6, eos_floor=0.4))
    src, src_mask = sources([3, 4])
    results = greedy_search(model, src, src_mask, controls=Controls([[7, 8], [9]], 5, 2),
                            sampling=Sampling(top_k=3, seed=1))
    for [h], prefix in zip(results, [[7, 8], [9]]):
        assert h.tokens[:len(prefix)] == prefix and len(h.tokens) >= 5 and not repeats_an_ngram(h.tokens, 2)


# ---- the one rule: SearchConfig ------------------------------------------------------------------------------------

@pytest.mark.parametrize("options, message", [
    ({"sampling": True, "beam_size": 4}, "set `beam_size` to 1 (it is 4)"),
    ({"sampling": True, "n_best": 2}, "`n_best` (2) is more than `beam_size` (1)"),
    ({"top_k": 5}, "`top_k` is a sampling option, and sampling is off"),
    ({"seed": 3, "sampling": False}, "`seed` is a sampling option"),
    ({"sampling": True, "top_p": 0.0}, "`top_p`"),
    ({"sampling": True, "temperature": 0.0}, "`temperature`"),
    ({"min_length": -1}, "`min_length`"),
    ({"no_repeat_ngram_size": -2}, "`no_repeat_ngram_size`"),
    ({"length_penalty": 11.0}, "`length_penalty`"),
])
def test_search_config_refuses_what_cannot_be_done(options, message):
    with pytest.raises(ConfigError) as error:
        SearchConfig().resolve(**options)
    assert message in str(error.value)


def test_search_config_sampling_defaults_to_a_beam_of_one():
    assert SearchConfig().resolve(sampling=True).beam_size == 1
    sampler = SearchConfig(sampling=True, top_k=4)
    assert (sampler.beam_size, sampler.resolve().sampling, sampler.resolve(n_best=1).sampling) == (1, True, True)
    # a default of sampling gives way to a beam_size asked for (training's validation, `attnmt attention`)
    assert [(s.sampling, s.beam_size) for s in (sampler.resolve(beam_size=1), sampler.resolve(beam_size=4))] == \
        [(False, 1), (False, 4)]
    with pytest.raises(ConfigError, match="`seed` is a sampling option"):
        sampler.resolve(beam_size=4, seed=1)
    assert SearchConfig(beam_size=5, n_best=3).resolve(sampling=True).n_best == 1
    data = tiny_config_dict(*["x"] * 3, {"search.sampling": True, "search.top_p": 0.9, "search.seed": 4})
    del data["search"]["beam_size"]
    search = parse_config(data).search
    assert (search.beam_size, search.sampling, search.top_p, search.seed) == (1, True, 0.9, 4)
    # a config may keep sampling options for when sampling is switched on
    assert SearchConfig(top_k=5).resolve(sampling=True).top_k == 5
    with pytest.raises(ConfigError, match="`search`: `sampling` draws one translation .* set `beam_size` to 1"):
        parse_config(tiny_config_dict(*["x"] * 3, {"search.sampling": True, "search.beam_size": 4}))


# ---- the Python API, both families ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def translator(family_model):
    return family_model.translator()


def source_of(family_model) -> str:
    return family_model.test_pairs[0][0]


@pytest.mark.parametrize("beam_size", [1, 4])
def test_translate_with_a_prefix(translator, family_model, beam_size):
    """The translation starts with the prefix's pieces (one prefix for all sentences, or one each), its log_prob is
    the model's teacher-forced log p of its tokens, prefix included, and the prefix changes what follows."""
    texts = [pair[0] for pair in family_model.test_pairs[:3]]
    plain = translator.translate(texts, beam_size=beam_size)
    prefix = "j a"
    forced = translator.translate(texts, beam_size=beam_size, prefix=prefix)
    for text, result in zip(texts, forced):
        assert result.tokens[:2] == ["▁j", "▁a"] and result.text.startswith("j a")
        ids = translator.tokenizer.encode_target([result.text])[0]
        assert result.log_prob == pytest.approx(teacher_forced_log_prob(translator, text, ids), abs=1e-4)
    assert [r.text for r in forced] != [r.text for r in plain]
    each = translator.translate(texts, beam_size=beam_size, prefix=["", "j", plain[2].text.split()[0]])
    assert each[0].text == plain[0].text and each[1].tokens[0] == "▁j"
    if beam_size == 1:  # forcing the token greedy would have chosen changes nothing (but a prefix adds room)
        assert each[2].tokens[:len(plain[2].tokens)] == plain[2].tokens
    assert translator.translate([""], prefix="j")[0].text == ""  # an empty text: an empty translation
    with pytest.raises(AttnmtError, match="prefix: give one string for every sentence"):
        translator.translate(texts, prefix=["a", "b"])


@pytest.mark.parametrize("beam_size", [1, 4])
def test_translate_with_min_length_and_no_repeat(translator, family_model, beam_size):
    texts = [pair[0] for pair in family_model.test_pairs[:4]] + ["a a a a a"]
    plain = translator.translate(texts, beam_size=beam_size)
    limits = max_output_lengths(torch.tensor(translator.source_lengths(texts)), 2.0).tolist()
    shortest = min(len(p.tokens) for p in plain)
    longer = translator.translate(texts, beam_size=beam_size, min_length=shortest + 3)
    assert [len(m.tokens) >= min(shortest + 3, limit) for m, limit in zip(longer, limits)] == [True] * len(texts)
    no_repeat = translator.translate(texts, beam_size=beam_size, no_repeat_ngram_size=1)
    assert all(len(set(r.tokens)) == len(r.tokens) for r in no_repeat)
    assert any(len(set(p.tokens)) < len(p.tokens) for p in plain)  # the model repeats unless told not to
    bigrams = translator.translate(texts, beam_size=beam_size, no_repeat_ngram_size=2, n_best=min(beam_size, 3))
    assert all(not repeats_an_ngram(h.tokens, 2) for r in bigrams for h in r.n_best)


def test_translate_by_sampling(translator, family_model):
    texts = [pair[0] for pair in family_model.test_pairs[:6]]
    drawn = translator.translate(texts, sampling=True, temperature=2.0, seed=3)
    assert [r.text for r in translator.translate(texts, sampling=True, temperature=2.0, seed=3)] == \
        [r.text for r in drawn]
    assert translator.translate(texts[2:3], sampling=True, temperature=2.0, seed=3)[0].text == drawn[2].text
    assert any([r.text for r in translator.translate(texts, sampling=True, temperature=2.0, seed=s)] !=
               [r.text for r in drawn] for s in (4, 5, 6))
    for text, result in zip(texts, drawn):
        ids = translator.tokenizer.encode_target([result.text])[0]
        assert result.log_prob == pytest.approx(teacher_forced_log_prob(translator, text, ids), abs=1e-4)
    greedy = translator.translate(texts, beam_size=1)
    top1 = translator.translate(texts, sampling=True, top_k=1, seed=0)
    assert [r.text for r in top1] == [r.text for r in greedy]
    with pytest.raises(ConfigError, match="beam_size"):
        translator.translate(texts, sampling=True, beam_size=3)
    with pytest.raises(ConfigError, match="`top_p` is a sampling option"):
        translator.translate(texts, top_p=0.5)


# ---- the CLI, both families -----------------------------------------------------------------------------------------

def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("flags, options", [
    (["--prefix", "j a", "--beam-size", "3"], {"prefix": "j a", "beam_size": 3}),
    (["--prefix", "j", "--beam-size", "1"], {"prefix": "j", "beam_size": 1}),
    (["--min-length", "10", "--no-repeat-ngram-size", "2", "--beam-size", "2"],
     {"min_length": 10, "no_repeat_ngram_size": 2, "beam_size": 2}),
    (["--sample", "--top-k", "4", "--top-p", "0.9", "--temperature", "1.5", "--seed", "11"],
     {"sampling": True, "top_k": 4, "top_p": 0.9, "temperature": 1.5, "seed": 11}),
    (["--length-penalty", "2.5", "--beam-size", "4"], {"length_penalty": 2.5, "beam_size": 4}),
], ids=["prefix-beam", "prefix-greedy", "min-length-no-repeat", "sample", "length-penalty"])
def test_cli_translate_with_decoding_flags(capsys, tmp_path, family_model, translator, flags, options):
    lines = [pair[0] for pair in family_model.test_pairs[:5]]
    path = tmp_path / "input.txt"
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    code, out, err = run(capsys, "translate", family_model.model_dir, "--input", path, "--device", "cpu", *flags)
    assert code == 0, err
    assert out.splitlines() == [t.text for t in translator.translate(lines, **options)]


def test_cli_evaluate_takes_the_decoding_flags(capsys, tmp_path, family_model, translator):
    pairs = family_model.test_pairs[:6]
    src, ref = tmp_path / "test.src", tmp_path / "test.ref"
    src.write_text("".join(s + "\n" for s, _ in pairs), encoding="utf-8")
    ref.write_text("".join(r + "\n" for _, r in pairs), encoding="utf-8")
    out_file = tmp_path / "hyp.txt"
    code, _, err = run(capsys, "evaluate", family_model.model_dir, "--src", src, "--ref", ref, "--json", "--output",
                       out_file, "--prefix", "j", "--no-repeat-ngram-size", "1", "--beam-size", "2")
    assert code == 0, err
    expected = translator.translate([s for s, _ in pairs], prefix="j", no_repeat_ngram_size=1, beam_size=2)
    assert out_file.read_text(encoding="utf-8").splitlines() == [t.text for t in expected]


@pytest.mark.parametrize("flags, message", [
    (["--top-k", "5"], "`top_k` is a sampling option, and sampling is off"),
    (["--sample", "--beam-size", "5"], "set `beam_size` to 1 (it is 5)"),
    (["--length-penalty", "20"], "`length_penalty`"),
    (["--no-repeat-ngram-size", "-1"], "`no_repeat_ngram_size`"),
])
def test_cli_translate_refuses_bad_decoding_flags(capsys, tmp_path, family_model, flags, message):
    code, out, err = run(capsys, "translate", family_model.model_dir, "--input", tmp_path / "never-read.txt", *flags)
    assert code == 2 and out == "" and message in err and "Traceback" not in err, err


# ---- the server, both families --------------------------------------------------------------------------------------

REQUESTS = [
    ({"prefix": "j a", "beam_size": 3}, {"prefix": "j a", "beam_size": 3}),
    ({"prefix": "j"}, {"prefix": "j"}),
    ({"min_length": 9, "no_repeat_ngram_size": 2}, {"min_length": 9, "no_repeat_ngram_size": 2}),
    ({"min_length": 9, "beam_size": 1}, {"min_length": 9, "beam_size": 1}),
    ({"sampling": True, "top_k": 3, "temperature": 1.7, "seed": 2},
     {"sampling": True, "top_k": 3, "temperature": 1.7, "seed": 2}),
    ({"length_penalty": 3, "beam_size": 4, "n_best": 2}, {"length_penalty": 3.0, "beam_size": 4, "n_best": 2}),
]


def test_serve_applies_the_decoding_controls(family_model, translator):
    texts = [pair[0] for pair in family_model.test_pairs[:4]]
    with TestClient(create_app(translator, ServeSettings(max_wait_ms=1))) as client:
        defaults = client.get("/info").json()["defaults"]
        assert {name: defaults[name] for name in ("prefix", "min_length", "no_repeat_ngram_size", "sampling",
                                                  "top_k", "top_p", "temperature", "seed", "length_penalty")} == \
            {"prefix": "", "min_length": 0, "no_repeat_ngram_size": 0, "sampling": False, "top_k": 0, "top_p": 1.0,
             "temperature": 1.0, "seed": None, "length_penalty": 0.0}
        for body, options in REQUESTS:
            response = client.post("/translate", json={"texts": texts, **body})
            assert response.status_code == 200, (body, response.text)
            expected = translator.translate(texts, **options)
            assert [t["text"] for t in response.json()["translations"]] == [t.text for t in expected], body
            assert response.json()["beam_size"] == (1 if body.get("sampling") else body.get("beam_size", 5))
        for body, field in [({"top_k": 2}, "top_k"), ({"sampling": True, "beam_size": 2}, "sampling, beam_size"),
                            ({"length_penalty": 10.5}, "length_penalty"), ({"temperature": 0}, "temperature"),
                            ({"prefix": 3}, "prefix"), ({"min_length": -1}, "min_length"), ({"top_k": 1.5}, "top_k")]:
            response = client.post("/translate", json={"text": texts[0], **body})
            assert response.status_code == 422 and response.json()["error"].startswith(field), (body, response.text)
        unknown = client.post("/translate", json={"text": "a", "topk": 3}).json()["error"]
        assert unknown.startswith("topk: unknown field") and "no_repeat_ngram_size" in unknown


def test_the_prefix_counts_in_the_work_budget(translator):
    """A prefix's subwords are decoding steps the request asks for: over max_request_work with them, 413."""
    text = "a b c d"
    steps = max_output_lengths(torch.tensor([4]), translator.config.search.max_length_ratio).item()
    settings = ServeSettings(max_request_work=steps + 2, max_wait_ms=1)
    with TestClient(create_app(translator, settings)) as client:
        assert client.post("/translate", json={"text": text, "beam_size": 1, "prefix": "j a"}).status_code == 200
        refused = client.post("/translate", json={"text": text, "beam_size": 1, "prefix": "j a b"})
        assert refused.status_code == 413 and "the prefix's 3" in refused.json()["error"], refused.text


@pytest.mark.parametrize("default_sampling", [False, True], ids=["search-config", "sampling-config"])
def test_the_schema_admits_exactly_the_decoding_options_the_server_accepts(translator, default_sampling):
    """Sampling needs beam_size 1 (its default then) and n_best 1; top_k, top_p, temperature and seed need sampling;
    a model whose config samples by default searches when a request gives a beam_size; each option has its range:
    every body is valid by the OpenAPI schema if and only if the server accepts it."""
    limits = dict(max_text_chars=50, max_texts=2, max_beam_size=4, max_n_best=3, max_wait_ms=1)
    if default_sampling:
        search = SearchConfig(sampling=True, top_k=3, length_penalty=0.0)
        translator = Translator(translator.model, translator.tokenizer,
                                translator.config.model_copy(update={"search": search}))
    with TestClient(create_app(translator, ServeSettings(**limits))) as client:
        schema = jsonschema_rs.Draft202012Validator(
            client.get("/openapi.json").json()["components"]["schemas"]["TranslateRequest"])
        bodies = []
        for sampling in ["absent", None, True, False]:
            for beam in [None, 1, 3]:
                for n_best in [None, 1, 2]:
                    for extra in [{}, {"top_k": 2}, {"top_p": 0.5, "seed": 1}, {"temperature": 0.5},
                                  {"top_k": None, "seed": None}]:
                        body = {"text": "a b", **extra}
                        for name, value in (("sampling", sampling), ("beam_size", beam), ("n_best", n_best)):
                            if value is not None or (name == "sampling" and sampling is None):
                                body[name] = value
                        bodies.append(body)
        bodies += [{"text": "a", "length_penalty": v} for v in (0, 1.5, 10, 10.01, -0.1, "1")]
        bodies += [{"text": "a", "min_length": v} for v in (0, 40, -1, 2.0, 2.5)]
        bodies += [{"text": "a", "no_repeat_ngram_size": v} for v in (0, 3, -1, None)]
        bodies += [{"text": "a", "prefix": v} for v in ("", "j a", "x" * 50, "x" * 51, None, ["j"])]
        bodies += [{"text": "a", "sampling": True, "top_p": v} for v in (1, 0.01, 0, 1.01)]
        bodies += [{"text": "a", "sampling": True, "temperature": v} for v in (0.01, 100, 0, -1)]
        bodies += [{"text": "a", "sampling": True, "top_k": v} for v in (0, 10 ** 6, -1)]
        bodies += [{"text": "a", "sampling": True, "seed": v} for v in (0, 2 ** 70, -1)]
        bodies += [{"text": "a", "sampling": 1}, {"text": "a", "sampling": "true"}]
        assert schema_disagreements(client, schema, bodies) == []
        assert 40 < sum(schema.is_valid(body) for body in bodies) < len(bodies) - 40  # both kinds are there


# ---- the page, both families ----------------------------------------------------------------------------------------

def test_the_page_sends_the_length_penalty_and_the_prefix(page, family_model):
    """The page's Length penalty (the model's default shown) and Start with fields go into the request as
    length_penalty and prefix; the server's refusal of a bad value is shown as it says it."""
    assert float(page.input_value("#length-penalty")) == family_model.translator().config.search.length_penalty
    sent = []
    page.on("request", lambda request: sent.append(request.post_data_json) if request.method == "POST" else None)
    source = family_model.test_pairs[0][0]
    page.fill("#length-penalty", "2.5")
    page.fill("#prefix", "j a")
    translate_in_page(page, source)
    beam = int(page.input_value("#beam-size"))
    expected = family_model.translator().translate([source], beam_size=beam, length_penalty=2.5, prefix="j a")[0]
    assert page.inner_text("#translation") == expected.text and expected.text.startswith("j a")
    assert sent[-1]["length_penalty"] == 2.5 and sent[-1]["prefix"] == "j a"
    page.fill("#length-penalty", "")
    page.fill("#prefix", "")
    translate_in_page(page, source)
    assert "length_penalty" not in sent[-1] and "prefix" not in sent[-1]
    page.fill("#length-penalty", "11")
    translate_in_page(page, source)
    assert page.inner_text("#status").startswith("length_penalty: Input should be less than or equal to 10")
