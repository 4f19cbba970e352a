"""Scoring references by teacher forcing: `Translator.score` and `attnmt score`, for both model families and for
ensembles. The log-probability a search reports for its own output is the one teacher forcing gives that output, so
each family is checked against its own translations."""

from __future__ import annotations

import json
import math

import pytest

from attnmt.cli import main
from attnmt.errors import AttnmtError, ConfigError
from attnmt.translator import ReferenceScore, Translator, perplexity

from conftest import reverse


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def write_lines(path, lines: list[str]):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def sources(reversal_model) -> list[str]:
    return [src for src, _ in reversal_model.test_pairs[:10]]


def test_a_translation_scores_what_the_search_said(family_model, sources):
    translator = family_model.translator()
    for beam_size in (1, 3):
        translations = translator.translate(sources, beam_size=beam_size, attention=False)
        scores = translator.score(sources, [t.text for t in translations], batch_size=3)
        for translation, score in zip(translations, scores, strict=True):
            assert score.tokens == len(translation.tokens) + 1  # EOS counted
            assert score.log_prob == pytest.approx(translation.log_prob, abs=1e-4)


def test_scores_do_not_depend_on_the_batch(family_model, sources):
    translator = family_model.translator()
    references = [reverse(s) for s in sources] + [""]
    pairs = sources + [sources[0]]
    alone = [translator.score([s], [r])[0] for s, r in zip(pairs, references)]
    together = translator.score(pairs, references, batch_size=4)
    assert [s.tokens for s in together] == [s.tokens for s in alone]
    assert [s.log_prob for s in together] == pytest.approx([s.log_prob for s in alone], abs=1e-4)
    assert together[-1].tokens == 1 and together[-1].log_prob < 0  # an empty reference is EOS alone
    good = translator.score(sources, [reverse(s) for s in sources])
    shuffled = translator.score(sources, [reverse(s) for s in sources[1:] + sources[:1]])
    assert sum(s.log_prob for s in good) > sum(s.log_prob for s in shuffled)  # the references it was trained on win


def test_perplexity_is_exp_of_the_mean_negative_log_probability():
    scores = [ReferenceScore(-2.0, 2), ReferenceScore(-4.0, 4)]
    assert perplexity(scores) == pytest.approx(math.exp(6.0 / 6))
    assert math.isnan(perplexity([]))
    assert perplexity([ReferenceScore(-1e6, 1)]) == math.inf


def test_bad_pairs_are_clear_errors(family_model, sources):
    translator = family_model.translator()
    with pytest.raises(AttnmtError, match="2 sources and 1 references"):
        translator.score(sources[:2], ["a"])
    with pytest.raises(AttnmtError, match="pair 2: the source is empty"):
        translator.score([sources[0], "  "], ["a", "b"])
    with pytest.raises(ConfigError, match="batch_size"):
        translator.score(sources[:1], ["a"], batch_size=0)


def test_an_ensemble_scores_with_its_mixture(reversal_model, ensemble_partner, sources):
    dirs = [reversal_model.model_dir, ensemble_partner.model_dir]
    ensemble = Translator.load(dirs, device="cpu")
    references = [reverse(s) for s in sources]
    mixed = ensemble.score(sources, references)
    members = [Translator.load(d, device="cpu").score(sources, references) for d in dirs]
    for score, rnn, transformer in zip(mixed, *members):
        # Σ_t log((p1 + p2) / 2) ≥ Σ_t (log p1 + log p2) / 2, token by token (log is concave)
        assert score.log_prob >= (rnn.log_prob + transformer.log_prob) / 2 - 1e-6
        assert score.log_prob != pytest.approx(rnn.log_prob) and score.log_prob != pytest.approx(transformer.log_prob)
    translations = ensemble.translate(sources, beam_size=1, attention=False)
    own = ensemble.score(sources, [t.text for t in translations])
    assert [s.log_prob for s in own] == pytest.approx([t.log_prob for t in translations], abs=1e-4)


def test_cli_score_prints_a_line_per_pair_and_the_perplexity(capsys, tmp_path, family_model, sources):
    references = [reverse(s) for s in sources]
    src, ref = write_lines(tmp_path / "src.txt", sources), write_lines(tmp_path / "ref.txt", references)
    code, out, err = run(capsys, "score", family_model.model_dir, "--src", src, "--ref", ref, "--batch-size", "4")
    assert code == 0, err
    expected = family_model.translator().score(sources, references)
    rows = [row.split("\t") for row in out.split("\n")[:-1]]
    assert [(int(i), int(tokens)) for i, _, tokens in rows] == [(i, s.tokens) for i, s in enumerate(expected)]
    assert [float(log_prob) for _, log_prob, _ in rows] == pytest.approx([s.log_prob for s in expected], abs=2e-4)
    assert f"perplexity {perplexity(expected):.4f}" in err and f"{len(sources)} pairs" in err
    code, out, err = run(capsys, "score", family_model.model_dir, "--src", src, "--ref", ref, "--json")
    assert code == 0, err
    report = json.loads(out)
    assert [p["index"] for p in report["pairs"]] == list(range(len(sources)))
    assert report["tokens"] == sum(s.tokens for s in expected)
    assert report["perplexity"] == pytest.approx(perplexity(expected), rel=1e-4)
    assert report["perplexity"] == pytest.approx(math.exp(-report["log_prob"] / report["tokens"]))


def test_cli_score_with_an_ensemble(capsys, tmp_path, reversal_model, ensemble_partner, sources):
    references = [reverse(s) for s in sources]
    src, ref = write_lines(tmp_path / "src.txt", sources), write_lines(tmp_path / "ref.txt", references)
    dirs = [reversal_model.model_dir, ensemble_partner.model_dir]
    code, out, err = run(capsys, "score", *dirs, "--src", src, "--ref", ref, "--json")
    assert code == 0, err
    expected = Translator.load(dirs, device="cpu").score(sources, references)
    assert [p["log_prob"] for p in json.loads(out)["pairs"]] == pytest.approx([s.log_prob for s in expected],
                                                                               abs=1e-4)


def test_cli_score_names_the_bad_line(capsys, tmp_path, family_model, sources):
    src = write_lines(tmp_path / "src.txt", [sources[0], "", sources[1]])
    ref = write_lines(tmp_path / "ref.txt", ["a", "b", "c"])
    code, out, err = run(capsys, "score", family_model.model_dir, "--src", src, "--ref", ref)
    assert code == 2 and out == "" and f"{src} line 2: the source is empty" in err, err
    short = write_lines(tmp_path / "short.txt", ["a"])
    code, out, err = run(capsys, "score", family_model.model_dir, "--src", src, "--ref", short)
    assert code == 2 and out == "" and err.startswith("attnmt score: ") and str(short) in err, err
    code, out, err = run(capsys, "score", family_model.model_dir, "--src", src, "--ref", ref, "--batch-size", "0")
    assert code == 2 and out == "" and "batch_size" in err, err
