"""`attnmt translate` and the translator's Python API for practitioners: ensembles of model directories, n-best lines
with the index, rank, ranking score and log-probability, word alignments from the attention (--print-alignment),
streaming through a pipe (--buffer-size, stdin pauses), `attnmt --version` and `from attnmt import Translator`.
Every path runs for both model families (`family_model`), and ensembles mix them (`ensemble_partner`: a Transformer
with the RNN's tokenizer)."""

from __future__ import annotations

import io
import os
import select
import subprocess
import sys
import warnings

import numpy as np
import pytest

from attnmt import __version__
from attnmt.alignment import moses_format, word_alignment
from attnmt.cli import main, stdin_batches
from attnmt.errors import CheckpointError
from attnmt.models.ensemble import Ensemble
from attnmt.search import greedy_search, length_penalty
from attnmt.data.batching import pad_sequences
from attnmt.serve import ServeSettings, create_app
from attnmt.translator import Translator, tokenizer_fingerprints

from conftest import reverse

with warnings.catch_warnings():  # starlette ≥ 1.x prefers the httpx2 fork; plain httpx still works
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def held_out(model, count: int = 6) -> list[str]:
    return [src for src, _ in model.test_pairs[:count]]


def write_lines(path, lines: list[str]):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


# ---- ensembles -------------------------------------------------------------------------------------------------------

def test_an_ensemble_of_one_model_twice_translates_as_the_model(family_model):
    lines = held_out(family_model)
    alone = family_model.translator().translate(lines, beam_size=3, n_best=2)
    twice = Translator.load([family_model.model_dir, family_model.model_dir], device="cpu")
    assert isinstance(twice.model, Ensemble) and twice.describe().family == "ensemble"
    assert not isinstance(Translator.load([family_model.model_dir], device="cpu").model, Ensemble)  # a list of one
    for a, b in zip(alone, twice.translate(lines, beam_size=3, n_best=2), strict=True):
        assert [h.text for h in a.n_best] == [h.text for h in b.n_best]
        assert [h.log_prob for h in a.n_best] == pytest.approx([h.log_prob for h in b.n_best], abs=1e-4)
        assert b.attention_heads.shape[:2] == (1, 1)  # the ensemble's one mean view
        np.testing.assert_allclose(b.attention.sum(axis=1), 1.0, atol=1e-4)


@pytest.mark.parametrize("order", ["rnn first", "transformer first"])
def test_an_rnn_and_a_transformer_decode_as_one_ensemble(reversal_model, ensemble_partner, order):
    dirs = [reversal_model.model_dir, ensemble_partner.model_dir]
    dirs = dirs if order == "rnn first" else dirs[::-1]
    ensemble = Translator.load(dirs, device="cpu")
    first = Translator.load(dirs[0], device="cpu")
    assert ensemble.config == first.config and ensemble.max_source_tokens == first.max_source_tokens
    members = [Translator.load(d, device="cpu").model for d in dirs]
    lines = held_out(reversal_model, 8)
    results = ensemble.translate(lines, beam_size=1)
    ids = ensemble.tokenizer.encode_source(lines)
    for line_ids, result in zip(ids, results):
        src, mask = pad_sequences([line_ids])
        [[expected]] = greedy_search(Ensemble(members), src, mask)  # the mixture, decoded by the one search
        assert result.text == ensemble.tokenizer.decode_target(expected.tokens)
        assert result.log_prob == pytest.approx(expected.score, abs=1e-4)
    beam = ensemble.translate(lines, beam_size=3, n_best=2)
    assert all(len(r.n_best) == 2 for r in beam)


def test_models_with_other_tokenizers_are_refused_by_name(reversal_model, transformer_model):
    assert tokenizer_fingerprints(reversal_model.model_dir) != tokenizer_fingerprints(transformer_model.model_dir)
    with pytest.raises(CheckpointError) as refused:
        Translator.load([reversal_model.model_dir, transformer_model.model_dir], device="cpu")
    message = str(refused.value)
    assert str(reversal_model.model_dir) in message and str(transformer_model.model_dir) in message
    assert "spm.model" in message and "same sentencepiece files" in message


def test_cli_translates_and_evaluates_with_an_ensemble(capsys, tmp_path, reversal_model, ensemble_partner):
    lines = held_out(reversal_model, 6) + [""]
    path = write_lines(tmp_path / "input.txt", lines)
    dirs = [reversal_model.model_dir, ensemble_partner.model_dir]
    code, out, err = run(capsys, "translate", *dirs, "--input", path, "--beam-size", "2", "--device", "cpu")
    assert code == 0, err
    expected = Translator.load(dirs, device="cpu").translate(lines, beam_size=2)
    assert out.split("\n")[:-1] == [t.text for t in expected]
    refs = write_lines(tmp_path / "ref.txt", [reverse(line) for line in lines[:-1]])
    src = write_lines(tmp_path / "src.txt", lines[:-1])
    code, out, err = run(capsys, "evaluate", *dirs, "--src", src, "--ref", refs, "--json", "--beam-size", "2")
    assert code == 0 and '"bleu"' in out, err
    code, out, err = run(capsys, "translate", reversal_model.model_dir, tmp_path / "nowhere", "--input", path)
    assert code == 2 and out == "" and f"{tmp_path / 'nowhere'} is not an attnmt model directory" in err


# ---- n-best lines and blank lines ------------------------------------------------------------------------------------

def test_n_best_lines_carry_index_rank_score_and_log_probability(capsys, tmp_path, family_model):
    lines = held_out(family_model, 4)
    lines.insert(2, "   ")  # a blank line keeps its index
    path = write_lines(tmp_path / "input.txt", lines)
    code, out, err = run(capsys, "translate", family_model.model_dir, "--input", path, "--beam-size", "4",
                         "--n-best", "3", "--length-penalty", "1.0")
    assert code == 0, err
    rows = [row.split("\t") for row in out.split("\n")[:-1]]
    assert all(len(row) == 5 for row in rows)
    expected = family_model.translator().translate(lines, beam_size=4, n_best=3, length_penalty=1.0)
    wanted = []  # (index, rank, text), (score, logprob)
    for index, result in enumerate(expected):
        if not lines[index].strip():
            assert ["2", "1", "0.0000", "0.0000", ""] in rows  # the blank line's one empty hypothesis
            wanted.append(((str(index), "1", ""), (0.0, 0.0)))
            continue
        for rank, h in enumerate(result.n_best, start=1):
            wanted.append(((str(index), str(rank), h.text), (h.score, h.log_prob)))
    assert [(index, rank, text) for index, rank, _, _, text in rows] == [key for key, _ in wanted]
    assert [(float(score), float(log_prob)) for _, _, score, log_prob, _ in rows] == \
        [pytest.approx(numbers, abs=2e-4) for _, numbers in wanted]  # as printed: 4 decimals
    differ = 0
    for result in expected:
        scores = [h.score for h in result.n_best]
        assert scores == sorted(scores, reverse=True)  # ranked by the length-normalized score
        for h in result.n_best:
            assert h.score == pytest.approx(h.log_prob / length_penalty(len(h.tokens) + 1, 1.0))
            differ += h.score != pytest.approx(h.log_prob)
    assert differ  # with α = 1 the two numbers differ


def test_one_line_per_input_line_and_blank_lines_stay(capsys, monkeypatch, family_model):
    lines = ["", held_out(family_model, 1)[0], "  ", ""]
    monkeypatch.setattr("sys.stdin", io.StringIO("".join(line + "\n" for line in lines)))
    code, out, err = run(capsys, "translate", family_model.model_dir, "--beam-size", "1")
    assert code == 0, err
    assert out.split("\n")[:-1] == ["", family_model.translator().translate(lines[1:2], beam_size=1)[0].text, "", ""]


@pytest.mark.parametrize(("options", "named"), [(["--beam-size", "0"], "beam_size"), (["--n-best", "0"], "n_best"),
                                                (["--beam-size", "2", "--n-best", "3"], "n_best"),
                                                (["--buffer-size", "0"], "--buffer-size")])
def test_zero_is_not_the_default_but_an_error(capsys, monkeypatch, family_model, options, named):
    monkeypatch.setattr("sys.stdin", io.StringIO("a b c\n"))
    code, out, err = run(capsys, "translate", family_model.model_dir, *options)
    assert code == 2 and out == "" and err.startswith("attnmt translate: ") and named in err, err


def test_the_server_shows_both_numbers_sorted_by_the_ranking_score(family_model):
    translator = family_model.translator()
    search = translator.config.search.model_copy(update={"length_penalty": 1.0})
    translator.config = translator.config.model_copy(update={"search": search})
    texts = held_out(family_model, 3)
    with TestClient(create_app(translator, ServeSettings(max_wait_ms=1))) as client:
        response = client.post("/translate", json={"texts": texts, "beam_size": 4, "n_best": 3})
    assert response.status_code == 200, response.text
    for out, expected in zip(response.json()["translations"], translator.translate(texts, beam_size=4, n_best=3)):
        assert (out["score"], out["log_prob"]) == pytest.approx((expected.score, expected.log_prob), abs=1e-4)
        assert [(h["text"], h["score"], h["log_prob"]) for h in out["n_best"]] == \
            [(h.text, pytest.approx(h.score, abs=1e-4), pytest.approx(h.log_prob, abs=1e-4)) for h in expected.n_best]
        scores = [h["score"] for h in out["n_best"]]
        assert scores == sorted(scores, reverse=True)


# ---- word alignment from attention -----------------------------------------------------------------------------------

def test_print_alignment_gives_moses_pairs_from_the_attention(capsys, tmp_path, family_model):
    lines = held_out(family_model, 6) + [""]
    path = write_lines(tmp_path / "input.txt", lines)
    code, out, err = run(capsys, "translate", family_model.model_dir, "--input", path, "--beam-size", "2",
                         "--print-alignment")
    assert code == 0, err
    rows = [row.split("\t") for row in out.split("\n")[:-1]]
    expected = family_model.translator().translate(lines, beam_size=2)
    assert len(rows) == len(lines)
    for (text, pairs), line, result in zip(rows, lines, expected, strict=True):
        assert text == result.text
        assert pairs == moses_format(word_alignment(result.attention, result.source_tokens, result.tokens))
        found = [tuple(map(int, pair.split("-"))) for pair in pairs.split()]
        assert [j for _, j in found] == list(range(len(text.split())))  # one pair per target word, in order
        assert all(0 <= i < len(line.split()) for i, _ in found)
    assert rows[-1] == ["", ""]  # the blank line: no text, no pairs


def test_the_reversal_model_aligns_each_word_with_its_mirror(capsys, tmp_path, reversal_model):
    lines = held_out(reversal_model, 20)
    path = write_lines(tmp_path / "input.txt", lines)
    code, out, err = run(capsys, "translate", reversal_model.model_dir, "--input", path, "--print-alignment")
    assert code == 0, err
    mirrored = total = 0
    for line, row in zip(lines, out.split("\n")[:-1]):
        text, pairs = row.split("\t")
        if text != reverse(line):
            continue
        n = len(line.split())
        found = [tuple(map(int, pair.split("-"))) for pair in pairs.split()]
        mirrored += sum(i == n - 1 - j for i, j in found)
        total += len(found)
    assert total > 50 and mirrored / total > 0.8, (mirrored, total)


def test_alignment_layer_and_head_choose_the_view(capsys, tmp_path, family_model):
    layout = family_model.translator().describe()
    lines = held_out(family_model, 3)
    path = write_lines(tmp_path / "input.txt", lines)
    layer, head = layout.attention_layers, layout.attention_heads
    code, out, err = run(capsys, "translate", family_model.model_dir, "--input", path, "--beam-size", "3",
                         "--n-best", "2", "--print-alignment", "--layer", layer, "--head", head)
    assert code == 0, err
    expected = family_model.translator().translate(lines, beam_size=3, n_best=2)
    rows = [row.split("\t") for row in out.split("\n")[:-1]]
    wanted = [moses_format(word_alignment(h.attention_view(layer, head), h.source_tokens, h.tokens))
              for result in expected for h in result.n_best]
    assert [row[5] for row in rows] == wanted and all(len(row) == 6 for row in rows)
    code, out, err = run(capsys, "translate", family_model.model_dir, "--input", path, "--print-alignment",
                         "--layer", layer + 1)
    assert code == 2 and out == "" and f"layer {layer + 1}" in err and f"choose 1..{layer}" in err, err
    code, out, err = run(capsys, "translate", family_model.model_dir, "--input", path, "--head", 1)
    assert code == 2 and out == "" and "add --print-alignment" in err, err


def test_print_alignment_needs_attention(capsys, tmp_path, tiny_config):
    from attnmt.training import Trainer

    config = tiny_config(tmp_path / "plain", {"model.attention": "none"})
    Trainer(config, show_progress=False).train()
    path = write_lines(tmp_path / "input.txt", ["a b c"])
    code, out, err = run(capsys, "translate", tmp_path / "plain", "--input", path, "--print-alignment")
    assert code == 2 and out == "" and "`attention: none`" in err, err


# ---- streaming -------------------------------------------------------------------------------------------------------

def test_translate_streams_through_a_pipe(family_model):
    """The first line's translation comes out while stdin stays open, before the second line is written."""
    first, second = held_out(family_model, 2)
    expected = [t.text for t in family_model.translator().translate([first, second], beam_size=1)]
    process = subprocess.Popen([sys.executable, "-m", "attnmt", "translate", str(family_model.model_dir),
                                "--beam-size", "1", "--device", "cpu"],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        process.stdin.write(first + "\n")
        process.stdin.flush()
        ready, _, _ = select.select([process.stdout], [], [], 180)  # a deadline for a stuck process, not a timing
        assert ready, "no translation of the first line while standard input stays open"
        assert process.stdout.readline() == expected[0] + "\n"
        assert process.poll() is None  # still waiting for more input
        process.stdin.write(second + "\n")
        process.stdin.close()
        assert process.stdout.read() == expected[1] + "\n"
        assert process.wait(timeout=60) == 0, process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_a_reader_that_goes_away_stops_translate_quietly(family_model):
    """`attnmt translate ... | head -1`: once the reader has closed the pipe, the next output ends the command with
    the status of a pipe's writer (141), and nothing on stderr."""
    line = held_out(family_model, 1)[0]
    process = subprocess.Popen([sys.executable, "-m", "attnmt", "translate", str(family_model.model_dir),
                                "--beam-size", "1", "--device", "cpu"],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        process.stdin.write(line + "\n")
        process.stdin.flush()
        assert process.stdout.readline()  # the first translation came
        process.stdout.close()  # the reader goes away
        process.stdin.write(line + "\n")
        process.stdin.close()
        assert process.wait(timeout=120) == 141
        assert process.stderr.read() == ""
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_stdin_batches_keep_order_within_the_buffer_size(monkeypatch):
    lines = [f"line {i}" for i in range(7)]
    monkeypatch.setattr("sys.stdin", io.StringIO("".join(line + "\n" for line in lines)))
    batches = list(stdin_batches(buffer_size=3))
    assert [line for batch in batches for line in batch] == lines
    assert all(1 <= len(batch) <= 3 for batch in batches)


def test_a_long_line_on_stdin_stops_at_its_batch(capsys, monkeypatch, family_model):
    short = held_out(family_model, 1)[0]
    monkeypatch.setattr("sys.stdin", io.StringIO(f"{short}\n{short}\n{short} a b c d e f g h\n"))
    code, out, err = run(capsys, "translate", family_model.model_dir, "--beam-size", "1", "--buffer-size", "1",
                         "--max-source-tokens", len(short.split()))
    assert code == 2 and "stdin line 3:" in err and "--max-source-tokens" in err, err
    assert out.split("\n")[:-1] == [family_model.translator().translate([short], beam_size=1)[0].text] * 2


# ---- small things ----------------------------------------------------------------------------------------------------

def test_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out == f"attnmt {__version__}\n"


def test_translator_is_importable_from_the_package_without_loading_torch_first():
    code = ("import sys, attnmt; light = 'torch' not in sys.modules; from attnmt import Translator; "
            "from attnmt.translator import Translator as T; print(light, Translator is T, 'Translator' in dir(attnmt))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["True", "True", "True"]
    with pytest.raises(AttributeError, match="no attribute 'Translater'"):
        import attnmt

        attnmt.Translater  # noqa: B018


def test_translate_and_score_refuse_a_string(family_model):
    translator = family_model.translator()
    with pytest.raises(TypeError, match=r"translate\(\[sentence\]\)"):
        translator.translate("a b c")
    with pytest.raises(TypeError, match=r"score\(\[source\], \[reference\]\)"):
        translator.score("a b c", "c b a")
