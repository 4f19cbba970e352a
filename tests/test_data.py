"""Tests of attnmt.data: corpus reading and splitting, sentencepiece tokenization, batching."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from attnmt.config import CorpusConfig, TokenizerConfig
from attnmt.data import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    UNK_ID,
    Batch,
    ParallelData,
    Tokenizer,
    collate,
    drop_empty_pairs,
    pad_sequences,
    read_corpus,
    split_by_target,
    token_batches,
)
from attnmt.errors import CheckpointError, ConfigError, CorpusError

# ---- helpers ---------------------------------------------------------------------------------------------------------

ENGLISH = [
    "the cat sat on the mat",
    "the dog sat on the log",
    "a cat and a dog",
    "the mat is red",
    "the log is brown",
    "a red cat sat",
    "a brown dog ran",
    "the cat ran to the dog",
    "dogs and cats are friends",
    "the friends sat on a log",
]
GERMAN = [
    "die katze sass auf der matte",
    "der hund sass auf dem holz",
    "eine katze und ein hund",
    "die matte ist rot",
    "das holz ist braun",
    "eine rote katze sass",
    "ein brauner hund rannte",
    "die katze rannte zum hund",
    "hunde und katzen sind freunde",
    "die freunde sassen auf dem holz",
]
KOREAN = [
    "고양이가 앉았다",
    "개가 앉았다",
    "고양이와 개",
    "개가 달렸다",
    "고양이가 달렸다",
    "고양이와 개가 친구다",
    "친구가 앉았다",
    "친구가 달렸다",
]


def write_bytes(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


def write_lines(path: Path, lines: list[str], ending: str = "\n") -> Path:
    path.write_bytes("".join(line + ending for line in lines).encode("utf-8"))
    return path


def train_tokenizer(out_dir: Path, sources=ENGLISH, targets=GERMAN, **options) -> Tokenizer:
    config = TokenizerConfig(vocab_size=options.pop("vocab_size", 60), **options)
    return Tokenizer.train(config, list(sources), list(targets), out_dir)


@pytest.fixture(scope="module")
def joint_tokenizer(tmp_path_factory) -> Tokenizer:
    return train_tokenizer(tmp_path_factory.mktemp("joint"))


# ---- read_corpus -----------------------------------------------------------------------------------------------------


def test_text_files_strip_whitespace_and_crlf(tmp_path):
    src = write_bytes(tmp_path / "a.en", b"  Hello there. \r\nSecond\t\r\nlast line without newline")
    tgt = write_bytes(tmp_path / "a.de", "\ufeffHallo.\r\n Zweite \r\nletzte".encode("utf-8"))
    pairs = read_corpus(CorpusConfig(src=str(src), tgt=str(tgt)))
    assert pairs == [("Hello there.", "Hallo."), ("Second", "Zweite"), ("last line without newline", "letzte")]


def test_unicode_line_separator_does_not_split_a_line(tmp_path):
    src = write_lines(tmp_path / "a.src", ["one\u2028still one", "two"])
    tgt = write_lines(tmp_path / "a.tgt", ["eins", "zwei"])
    pairs = read_corpus(CorpusConfig(src=str(src), tgt=str(tgt)))
    assert [tgt for _, tgt in pairs] == ["eins", "zwei"]
    assert pairs[0][0] == "one\u2028still one"


def test_tsv_columns_chosen(tmp_path):
    tsv = write_lines(tmp_path / "c.tsv", ["id1\tGo.\t가.\tnote", "id2\t Hi. \t안녕.\tnote"], ending="\r\n")
    assert read_corpus(CorpusConfig(tsv=str(tsv), src_column=1, tgt_column=2)) == [("Go.", "가."), ("Hi.", "안녕.")]
    assert read_corpus(CorpusConfig(tsv=str(tsv), src_column=2, tgt_column=0)) == [("가.", "id1"), ("안녕.", "id2")]


def test_tsv_blank_line_gives_empty_pair(tmp_path):
    tsv = write_lines(tmp_path / "c.tsv", ["Go.\t가.", "", "Hi.\t안녕."])
    pairs = read_corpus(CorpusConfig(tsv=str(tsv)))
    assert pairs == [("Go.", "가."), ("", ""), ("Hi.", "안녕.")]


def test_bundled_demo_corpus_reads():
    pairs = read_corpus(CorpusConfig(tsv="pkg://demo/kor-eng.tsv"))
    assert len(pairs) > 1000
    assert pairs[0] == ("Go.", "가.")


def test_missing_file_is_named(tmp_path):
    tgt = write_lines(tmp_path / "b.tgt", ["x"])
    with pytest.raises(CorpusError, match="nope.src") as error:
        read_corpus(CorpusConfig(src=str(tmp_path / "nope.src"), tgt=str(tgt)))
    assert "does not exist" in str(error.value)
    with pytest.raises(CorpusError, match="missing.tsv"):
        read_corpus(CorpusConfig(tsv=str(tmp_path / "missing.tsv")))


def test_invalid_utf8_names_file_line_and_byte(tmp_path):
    src = write_bytes(tmp_path / "bad.src", b"fine\nalso fine\nab\xff\xfecd\n")
    tgt = write_lines(tmp_path / "ok.tgt", ["a", "b", "c"])
    with pytest.raises(CorpusError) as error:
        read_corpus(CorpusConfig(src=str(src), tgt=str(tgt)))
    message = str(error.value)
    assert "bad.src" in message
    assert "line 3" in message
    assert "byte 2 of the line" in message
    assert "byte 17 of the file" in message  # 5 + 10 bytes of lines 1-2, then 2
    assert "iconv" in message


def test_invalid_utf8_in_tsv(tmp_path):
    tsv = write_bytes(tmp_path / "latin.tsv", "Go.\t가.\n".encode() + "café\tx\n".encode("latin-1"))
    with pytest.raises(CorpusError, match=r"latin\.tsv, line 2: byte 3 of the line"):
        read_corpus(CorpusConfig(tsv=str(tsv)))


def test_line_count_mismatch_names_both_files_and_counts(tmp_path):
    src = write_lines(tmp_path / "long.src", ["a", "b", "c"])
    tgt = write_lines(tmp_path / "short.tgt", ["a", "b"])
    with pytest.raises(CorpusError) as error:
        read_corpus(CorpusConfig(src=str(src), tgt=str(tgt)))
    message = str(error.value)
    assert "long.src" in message and "short.tgt" in message
    assert "has 3 lines" in message and "has 2 lines" in message


def test_tsv_too_few_columns(tmp_path):
    tsv = write_lines(tmp_path / "cols.tsv", ["a\tb\tc", "a\tb\tc", "only\ttwo"])
    with pytest.raises(CorpusError) as error:
        read_corpus(CorpusConfig(tsv=str(tsv), src_column=0, tgt_column=2))
    message = str(error.value)
    assert "cols.tsv" in message and "line 3" in message
    assert "found 2" in message and "need at least 3" in message


# ---- drop_empty_pairs / split_by_target ------------------------------------------------------------------------------


def test_drop_empty_pairs_counts():
    pairs = [("a", "b"), ("", "b"), ("a", ""), ("", ""), ("c", "d")]
    kept, dropped = drop_empty_pairs(pairs)
    assert kept == [("a", "b"), ("c", "d")]
    assert dropped == 3


def _grouped_corpus() -> list[tuple[str, str]]:
    """40 distinct targets, some with several alternative sources."""
    pairs = []
    for target in range(40):
        for alternative in range(1 + target % 3):
            pairs.append((f"source {target}.{alternative}", f"target {target}"))
    return pairs


def test_split_by_target_groups_sizes_and_determinism():
    pairs = _grouped_corpus()
    train, dev, test = split_by_target(pairs, dev_size=5, test_size=7, seed=3)
    targets = [{tgt for _, tgt in part} for part in (train, dev, test)]
    assert len(targets[1]) == 5 and len(targets[2]) == 7 and len(targets[0]) == 40 - 12
    assert not (targets[0] & targets[1]) and not (targets[0] & targets[2]) and not (targets[1] & targets[2])
    assert sorted(train + dev + test) == sorted(pairs)
    # every alternative of a target is in the same part as the target
    for part, names in zip((train, dev, test), targets):
        assert sum(1 for _, tgt in pairs if tgt in names) == len(part)
    assert split_by_target(pairs, 5, 7, seed=3) == (train, dev, test)
    assert split_by_target(pairs, 5, 7, seed=4)[1] != dev


def test_split_by_target_needs_enough_targets():
    pairs = [(f"s{i}", f"t{i % 4}") for i in range(20)]  # 4 distinct targets
    split_by_target(pairs, dev_size=2, test_size=1, seed=0)  # leaves one for train
    with pytest.raises(CorpusError, match="only 4 distinct target sentences"):
        split_by_target(pairs, dev_size=2, test_size=2, seed=0)


# ---- Tokenizer -------------------------------------------------------------------------------------------------------


def test_special_ids_and_pieces(joint_tokenizer):
    assert (PAD_ID, UNK_ID, BOS_ID, EOS_ID) == (0, 1, 2, 3)
    assert joint_tokenizer.target_pieces([0, 1, 2, 3]) == ["<pad>", "<unk>", "<s>", "</s>"]
    assert joint_tokenizer.source_pieces([0, 1, 2, 3]) == ["<pad>", "<unk>", "<s>", "</s>"]


def test_encode_decode_round_trip(joint_tokenizer):
    for text in ["the cat sat on the mat", "die katze sass auf der matte", "a red dog"]:
        ids = joint_tokenizer.encode_target([text])[0]
        assert BOS_ID not in ids and EOS_ID not in ids
        assert joint_tokenizer.decode_target(ids) == text
    source_ids = joint_tokenizer.encode_source(["the cat"])[0]
    assert "".join(joint_tokenizer.source_pieces(source_ids)).replace("\u2581", " ").strip() == "the cat"


def test_decode_skips_specials_and_stops_at_eos(joint_tokenizer):
    ids = joint_tokenizer.encode_target(["the dog"])[0]
    other = joint_tokenizer.encode_target(["a cat"])[0]
    assert joint_tokenizer.decode_target([BOS_ID, *ids, EOS_ID, *other, PAD_ID]) == "the dog"
    assert joint_tokenizer.decode_target([BOS_ID, *ids, PAD_ID, PAD_ID]) == "the dog"


def test_save_load_round_trip_gives_same_ids(tmp_path, joint_tokenizer):
    tokenizer = train_tokenizer(tmp_path)
    loaded = Tokenizer.load(tmp_path)
    texts = ENGLISH + GERMAN + ["an unseen sentence with xyz"]
    assert loaded.encode_source(texts) == tokenizer.encode_source(texts)
    assert loaded.encode_target(texts) == tokenizer.encode_target(texts)
    assert loaded.src_vocab_size == tokenizer.src_vocab_size
    # training is deterministic: the module fixture trained on the same data
    assert joint_tokenizer.encode_target(texts) == tokenizer.encode_target(texts)


def test_joint_and_separate_files(tmp_path):
    joint = train_tokenizer(tmp_path / "joint")
    assert joint.joint and joint.files == ["spm.model"]
    assert (tmp_path / "joint" / "spm.model").is_file()
    assert joint.src_vocab_size == joint.tgt_vocab_size

    separate = train_tokenizer(tmp_path / "separate", joint=False)
    assert not separate.joint and separate.files == ["src.model", "tgt.model"]
    assert all((tmp_path / "separate" / name).is_file() for name in separate.files)
    assert not (tmp_path / "separate" / "spm.model").exists()
    # the source model never saw German: "katze" splits into more pieces on the source side
    assert len(separate.encode_source(["katze"])[0]) > len(separate.encode_target(["katze"])[0])
    assert not Tokenizer.load(tmp_path / "separate").joint


def test_retraining_replaces_the_other_kind_of_model(tmp_path):
    train_tokenizer(tmp_path)
    separate = train_tokenizer(tmp_path, joint=False)
    assert not (tmp_path / "spm.model").exists()
    assert not Tokenizer.load(tmp_path).joint and not separate.joint


def test_lowercase_option(tmp_path):
    mixed = [text.capitalize() for text in ENGLISH]
    cased = train_tokenizer(tmp_path / "cased", sources=mixed)
    lower = train_tokenizer(tmp_path / "lower", sources=mixed, lowercase=True)
    assert lower.decode_target(lower.encode_target(["The Cat SAT"])[0]) == "the cat sat"
    assert cased.decode_target(cased.encode_target(["The cat"])[0]) == "The cat"


def test_korean_round_trip(tmp_path):
    tokenizer = train_tokenizer(tmp_path, sources=ENGLISH[:8], targets=KOREAN, joint=False, vocab_size=80)
    for text in KOREAN + ["개와 고양이가 친구다"]:
        ids = tokenizer.encode_target([text])[0]
        assert UNK_ID not in ids
        assert tokenizer.decode_target(ids) == text
    pieces = tokenizer.target_pieces(tokenizer.encode_target(["고양이가 앉았다"])[0])
    assert "".join(pieces).replace("\u2581", " ").strip() == "고양이가 앉았다"


def test_too_small_vocab_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="tokenizer.vocab_size"):
        train_tokenizer(tmp_path, targets=KOREAN + GERMAN, vocab_size=16)


def test_existing_models_are_copied(tmp_path):
    trained = train_tokenizer(tmp_path / "trained", joint=False)
    config = TokenizerConfig(joint=False, src_model=str(tmp_path / "trained" / "src.model"),
                             tgt_model=str(tmp_path / "trained" / "tgt.model"))
    copied = Tokenizer.train(config, [], [], tmp_path / "copy")
    assert sorted(path.name for path in (tmp_path / "copy").iterdir()) == ["src.model", "tgt.model"]
    assert copied.encode_target(GERMAN) == trained.encode_target(GERMAN)

    joint_config = TokenizerConfig(src_model=str(tmp_path / "trained" / "tgt.model"))
    joint = Tokenizer.train(joint_config, [], [], tmp_path / "joint")
    assert joint.files == ["spm.model"] and joint.encode_source(GERMAN) == trained.encode_target(GERMAN)


def test_existing_model_errors_name_the_key(tmp_path):
    train_tokenizer(tmp_path / "trained")
    model = str(tmp_path / "trained" / "spm.model")
    with pytest.raises(ConfigError, match="tokenizer.tgt_model"):
        Tokenizer.train(TokenizerConfig(joint=False, src_model=model), [], [], tmp_path / "out")
    with pytest.raises(ConfigError, match="tokenizer.src_model") as error:
        Tokenizer.train(TokenizerConfig(src_model=str(tmp_path / "none.model")), [], [], tmp_path / "out")
    assert "none.model" in str(error.value)
    with pytest.raises(ConfigError, match="tokenizer.tgt_model"):
        Tokenizer.train(TokenizerConfig(joint=False, src_model=model, tgt_model=str(tmp_path / "no.model")),
                        [], [], tmp_path / "out")


def test_existing_model_with_other_special_ids_is_rejected(tmp_path):
    import sentencepiece

    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(ENGLISH), model_prefix=str(tmp_path / "foreign"), vocab_size=40,
        hard_vocab_limit=False, minloglevel=2,  # sentencepiece's defaults: unk=0, bos=1, eos=2, no pad
    )
    with pytest.raises(ConfigError, match="special ids"):
        Tokenizer.train(TokenizerConfig(src_model=str(tmp_path / "foreign.model")), [], [], tmp_path / "out")


def test_load_without_models_names_directory(tmp_path):
    with pytest.raises(CheckpointError, match=str(tmp_path / "empty")):
        Tokenizer.load(tmp_path / "empty")


# ---- batching --------------------------------------------------------------------------------------------------------


def test_pad_sequences():
    ids, mask = pad_sequences([[5, 6, 7], [8]])
    assert ids.dtype == torch.long and mask.dtype == torch.bool
    assert ids.tolist() == [[5, 6, 7], [8, PAD_ID, PAD_ID]]
    assert mask.tolist() == [[True, True, True], [True, False, False]]
    assert pad_sequences([[4]], pad_id=9)[0].tolist() == [[4]]
    with pytest.raises(ValueError):
        pad_sequences([])


def test_collate_shifts_targets_and_masks():
    batch = collate([[10, 11, 12], [13]], [[20, 21], [22, 23, 24]], indices=[7, 3])
    assert batch.src.tolist() == [[10, 11, 12], [13, 0, 0]]
    assert batch.src_mask.tolist() == [[True, True, True], [True, False, False]]
    assert batch.tgt_in.tolist() == [[BOS_ID, 20, 21, PAD_ID], [BOS_ID, 22, 23, 24]]
    assert batch.tgt_out.tolist() == [[20, 21, EOS_ID, PAD_ID], [22, 23, 24, EOS_ID]]
    assert batch.tgt_mask.tolist() == [[True, True, True, False], [True, True, True, True]]
    assert batch.indices == [7, 3]
    assert batch.num_tgt_tokens == 7
    moved = batch.to("cpu")
    assert isinstance(moved, Batch) and torch.equal(moved.tgt_out, batch.tgt_out) and moved.indices == [7, 3]


def _mixed_lengths(count: int = 600, seed: int = 0) -> tuple[list[int], list[int]]:
    rng = random.Random(seed)
    src = [rng.randint(1, 60) for _ in range(count)]
    tgt = [max(1, length + rng.randint(-5, 5)) for length in src]
    return src, tgt


def _padding_fraction(batches: list[list[int]], src: list[int], tgt: list[int]) -> float:
    real = padded = 0
    for batch in batches:
        real += sum(src[i] for i in batch) + sum(tgt[i] + 1 for i in batch)
        padded += len(batch) * (max(src[i] for i in batch) + max(tgt[i] + 1 for i in batch))
    return 1 - real / padded


def test_token_batches_cover_every_index_once_within_budget():
    src, tgt = _mixed_lengths()
    src[5], tgt[5] = 500, 10  # longer than the budget on its own
    budget = 400
    batches = token_batches(src, tgt, budget, shuffle=True, seed=1)
    assert sorted(i for batch in batches for i in batch) == list(range(len(src)))
    assert [5] in batches
    for batch in batches:
        if len(batch) > 1:
            assert len(batch) * max(max(src[i] for i in batch), max(tgt[i] + 1 for i in batch)) <= budget
    assert sum(len(batch) > 1 for batch in batches) > len(batches) // 2


def test_token_batches_deterministic_and_seeded():
    src, tgt = _mixed_lengths()
    first = token_batches(src, tgt, 500, shuffle=True, seed=7)
    assert token_batches(src, tgt, 500, shuffle=True, seed=7) == first
    assert token_batches(src, tgt, 500, shuffle=True, seed=8) != first
    ordered = token_batches(src, tgt, 500, shuffle=False, seed=7)
    assert ordered == token_batches(src, tgt, 500, shuffle=False, seed=8)
    lengths = [tgt[batch[0]] for batch in ordered]
    assert lengths == sorted(lengths)


def test_token_batches_shuffle_batch_order_and_ties():
    src, tgt = _mixed_lengths()
    shuffled = token_batches(src, tgt, 500, shuffle=True, seed=3)
    lengths = [tgt[batch[0]] for batch in shuffled]
    assert lengths != sorted(lengths)  # the batches come in random order
    same = [4] * 40  # all ties: which sentences share a batch is random, not runs of consecutive indices
    tied = token_batches(same, same, 20, shuffle=True, seed=3)
    assert any(sorted(batch) != list(range(min(batch), min(batch) + len(batch))) for batch in tied)
    assert token_batches(same, same, 20, shuffle=False, seed=3) == [list(range(i, i + 4)) for i in range(0, 40, 4)]


def test_token_batches_are_length_homogeneous():
    src, tgt = _mixed_lengths()
    batches = token_batches(src, tgt, 600, shuffle=True, seed=2)
    order = list(range(len(src)))
    random.Random(2).shuffle(order)
    random_batches, start = [], 0
    for batch in batches:  # random batches of the same sizes
        random_batches.append(order[start:start + len(batch)])
        start += len(batch)
    bucketed, unsorted = _padding_fraction(batches, src, tgt), _padding_fraction(random_batches, src, tgt)
    assert unsorted > 0.3
    assert bucketed < 0.15 and bucketed < unsorted / 3


def test_parallel_data_from_pairs_drops_long_pairs(joint_tokenizer):
    pairs = [("the cat", "die katze"), ("the cat sat on the mat " * 5, "kurz"), ("a dog", "der hund " * 8),
             ("a red cat sat", "eine rote katze sass")]
    data, dropped = ParallelData.from_pairs(pairs, joint_tokenizer, max_length=12)
    assert dropped == 2 and len(data) == 2
    assert data.tgt_ids[0] == joint_tokenizer.encode_target(["die katze"])[0]
    assert all(len(ids) <= 12 for ids in data.src_ids + data.tgt_ids)
    batches = data.batches(batch_tokens=1000, shuffle=False, seed=0)
    assert sorted(i for batch in batches for i in batch) == [0, 1]
    batch = data.batch([1, 0])
    assert batch.indices == [1, 0]
    assert joint_tokenizer.decode_target(batch.tgt_out[0].tolist()) == "eine rote katze sass"
    assert batch.src_mask.sum().item() == sum(len(ids) for ids in data.src_ids)
