import hashlib
import json

import numpy as np
import pytest
import torch

from charsearch.core.data import (
    UNK,
    Batches,
    Vocab,
    cache_paths,
    check_fits,
    check_val,
    fetch,
    load_corpus,
    read_text,
    split_bounds,
)
from charsearch.core.errors import UsageError


def write(tmp_path, name, content: bytes | str):
    p = tmp_path / name
    p.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return p


def test_vocab_is_sorted_and_encoding_round_trips(tmp_path):
    text = "hello world\nthe quick brown fox"
    corpus = load_corpus(write(tmp_path, "a.txt", text))
    assert list(corpus.vocab.chars) == sorted(set(text))
    assert corpus.vocab.decode(corpus.ids.tolist()) == text
    assert corpus.vocab.unk is None
    assert corpus.ids.dtype == np.uint8


def test_chinese_text_min_freq_maps_rare_characters_to_one_unknown_symbol(tmp_path):
    text = "春眠不觉晓，处处闻啼鸟。" * 3 + "夜来风雨声，花落知多少。"
    corpus = load_corpus(write(tmp_path, "poem.txt", text), min_freq=2)
    v = corpus.vocab
    assert v.unk is not None and v.chars[v.unk] == UNK
    kept = {c for c in set(text) if text.count(c) >= 2}
    assert set(v.chars) == kept | {UNK}
    decoded = v.decode(corpus.ids.tolist())
    assert decoded == "".join(c if c in kept else UNK for c in text)
    # without pruning every character keeps its own id
    full = load_corpus(tmp_path / "poem.txt", min_freq=0)
    assert full.vocab.unk is None and len(full.vocab) == len(set(text))


def test_dtype_grows_with_the_vocabulary(tmp_path):
    many = "".join(chr(0x4E00 + i) for i in range(300))  # 300 distinct CJK characters
    corpus = load_corpus(write(tmp_path, "big.txt", many * 2))
    assert len(corpus.vocab) == 300 and corpus.ids.dtype == np.int16
    assert corpus.vocab.decode(corpus.ids[:300].tolist()) == many


def test_cache_is_reused_and_rebuilt_when_the_input_changes(tmp_path):
    p = write(tmp_path, "c.txt", "abcabcabc")
    first = load_corpus(p)
    npy, meta = cache_paths(p, first.sha256, 0)
    assert npy.is_file() and meta.is_file()
    assert isinstance(load_corpus(p).ids, np.memmap)  # second load maps the cache
    assert not [f for f in npy.parent.iterdir() if f.name.endswith(".tmp")]  # atomic writes leave no temp files
    p.write_text("xyzxyz", encoding="utf-8")
    second = load_corpus(p)
    assert second.sha256 != first.sha256
    assert second.vocab.decode(second.ids.tolist()) == "xyzxyz"
    pruned = load_corpus(p, min_freq=3)  # keyed by min_freq too: every character is rarer than 3 here
    assert pruned.vocab.chars == (UNK,) and second.vocab.chars == tuple("xyz")


def edit_meta(change):
    def damage(npy, meta):
        info = json.loads(meta.read_text())
        change(info)
        meta.write_text(json.dumps(info))
    return damage


def shift_ids(npy, meta):
    ids = np.load(npy)
    np.save(npy, ids + 50)  # indices past the vocabulary: an embedding lookup would fail mid-training


@pytest.mark.parametrize("damage", [
    lambda npy, meta: npy.write_bytes(b"garbage"),
    lambda npy, meta: npy.write_bytes(npy.read_bytes()[:-3]),  # truncated
    lambda npy, meta: meta.write_text("[" * 100_000 + "]" * 100_000),
    lambda npy, meta: meta.write_text("{"),
    edit_meta(lambda i: i.update(chars=[1, 2])),
    edit_meta(lambda i: i.update(chars=list("eeeeh o"))),  # not distinct
    edit_meta(lambda i: i.update(unk=99)),
    edit_meta(lambda i: i.update(length=3)),
    edit_meta(lambda i: i.update(sha256="0" * 64)),
    edit_meta(lambda i: i.pop("chars")),
    shift_ids,
])
def test_a_damaged_or_edited_cache_is_rebuilt(tmp_path, damage):
    p = write(tmp_path, "d.txt", "hello hello")
    c = load_corpus(p)
    npy, meta = cache_paths(p, c.sha256, 0)
    damage(npy, meta)
    again = load_corpus(p)
    assert again.vocab.decode(np.asarray(again.ids).tolist()) == "hello hello"
    assert load_corpus(p).vocab == again.vocab  # and the rebuilt cache is used again


def test_default_split_matches_nanogpt_on_tiny_shakespeare(shakespeare):
    n = 1_115_394
    assert split_bounds(n, 0.9, 0.1) == (1_003_854, n)  # nanoGPT: train 1,003,854 / val 111,540
    assert split_bounds(n, 0.8, 0.1) == (892_315, 1_003_854)


def test_split_is_contiguous_views(tmp_path):
    corpus = load_corpus(write(tmp_path, "s.txt", "abcdefghij" * 10))
    train, val, test = corpus.split(0.8, 0.1)
    assert (len(train), len(val), len(test)) == (80, 10, 10)
    assert np.concatenate([train, val, test]).tolist() == np.asarray(corpus.ids).tolist()


def test_batches_are_contiguous_streams_with_shifted_targets():
    ids = np.arange(1, 102, dtype=np.int16)  # 101 chars -> 100 (x, y) pairs
    b = Batches(ids, batch_size=4, seq_length=5, device=torch.device("cpu"))
    assert len(b) == 5
    x0, y0 = b.get(0)
    x1, _ = b.get(1)
    assert x0.dtype == torch.long and x0.shape == (4, 5)
    assert torch.equal(y0[:, :-1], x0[:, 1:])  # target is the next character
    assert x0[0].tolist() == [1, 2, 3, 4, 5] and x1[0].tolist() == [6, 7, 8, 9, 10]  # stream 0 continues
    assert x0[1, 0].item() == 26  # stream 1 starts a quarter in


@pytest.mark.parametrize("content, match", [
    (b"", "empty"),
    (b"abc\x00\x01\x02def", "binary file \\(NUL byte at offset 3\\)"),
    (b"good text \xff\xfe more", "not UTF-8 .*byte offset 10"),
])
def test_bad_files_give_one_clear_error(tmp_path, content, match):
    with pytest.raises(UsageError, match=match):
        load_corpus(write(tmp_path, "bad.txt", content))


def test_missing_path_and_unfetched_dataset(tmp_path):
    with pytest.raises(UsageError, match="no such file"):
        load_corpus(tmp_path / "nope.txt")
    with pytest.raises(UsageError, match="charsearch data fetch tinyshakespeare"):
        load_corpus("tinyshakespeare", data_root=tmp_path)


def test_bom_is_not_content(tmp_path):
    text, _ = read_text(write(tmp_path, "bom.txt", "\ufeffabc"))
    assert text == "abc"


def test_too_short_split_suggests_a_batch_that_fits():
    with pytest.raises(UsageError, match=r"train split has 900 characters.*batch_size 50 x seq_length 50 \(2,501 needed\)"
                                         r".*--batch-size 17 --seq-length 50"):
        check_fits(900, 50, 50, "x.txt")
    check_fits(2501, 50, 50, "x.txt")  # exactly one batch fits


def test_validation_needs_two_characters_not_a_batch():
    check_val(2, 0.1, "x.txt")
    with pytest.raises(UsageError, match="val split has 1 characters; validation needs at least 2"):
        check_val(1, 0.1, "x.txt")


def test_fetch_from_local_copy_checks_sha256(tmp_path, shakespeare):
    dest = fetch("tinyshakespeare", tmp_path / "data", str(shakespeare))
    assert hashlib.sha256(dest.read_bytes()).hexdigest().startswith("86c4e6aa")
    wrong = write(tmp_path, "wrong.txt", "not shakespeare")
    with pytest.raises(UsageError, match="does not match"):
        fetch("tinyshakespeare", tmp_path / "data2", str(wrong))
    assert not (tmp_path / "data2" / "tinyshakespeare" / "input.txt").exists()
    with pytest.raises(UsageError, match="unknown dataset"):
        fetch("nosuch", tmp_path)


def test_fetch_offline_says_how_to_provide_the_file(tmp_path, monkeypatch):
    import urllib.request

    def offline(*a, **k):
        raise OSError("network is unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(UsageError, match="--from FILE"):
        fetch("tinyshakespeare", tmp_path)


def test_vocab_encode_names_missing_characters():
    v = Vocab(tuple("abc"))
    with pytest.raises(UsageError, match="'x', 'y'"):
        v.encode("axyb")
    assert Vocab(tuple("ab" + UNK), unk=2).encode("axb") == [0, 2, 1]


def test_a_binary_or_oversized_corpus_is_refused_before_it_is_read(tmp_path):
    """A sparse file larger than the machine's memory: refused from its first bytes (NUL) or its size,
    in bounded time, without reading the rest."""
    import time

    from charsearch.core.devices import total_bytes
    huge = total_bytes(torch.device("cpu")) * 2
    binary = tmp_path / "binary.txt"
    with open(binary, "wb") as f:
        f.truncate(huge)  # all NUL, no disk used
    text = tmp_path / "text.txt"
    with open(text, "wb") as f:
        f.write(b"plain text\n" * 7000)  # more than the first block read
        f.truncate(huge)
    t0 = time.monotonic()
    with pytest.raises(UsageError, match="looks like a binary file \\(NUL byte at offset 0\\)"):
        read_text(binary)
    with pytest.raises(UsageError, match="reading and encoding it takes about .* more than the .* this machine can "
                                         "give now"):
        read_text(text)
    assert time.monotonic() - t0 < 5


def test_a_misspelt_corpus_name_gets_the_closest_one(tmp_path):
    from charsearch.core.data import resolve_path
    (tmp_path / "data" / "tinyshakespeare").mkdir(parents=True)
    (tmp_path / "data" / "tinyshakespeare" / "input.txt").write_text("x")
    with pytest.raises(UsageError, match="tinyshakespear: no such file \\(did you mean 'tinyshakespeare'\\?\\)"):
        resolve_path("tinyshakespear", tmp_path / "data")
    with pytest.raises(UsageError, match="did you mean 'tinyshakespeare'"):  # the built-in name, not fetched yet
        resolve_path("tinyshakespere", tmp_path / "nothing")


def test_a_loss_near_the_unigram_baseline_is_said_in_one_line(tmp_path, capsys):
    from charsearch.cli import main
    from charsearch.core.data import unigram_baseline, unigram_note

    from .conftest import make_text
    path = write(tmp_path, "u.txt", make_text(20_000))
    corpus = load_corpus(path)
    baseline = unigram_baseline(corpus, 0.9, 0.1).cross_entropy
    assert "near the unigram baseline" in unigram_note(baseline, corpus, 0.9, 0.1)
    assert unigram_note(0.5 * baseline, corpus, 0.9, 0.1) == ""
    # a run far too short to learn anything says so after its summary
    assert main(["train", "--data", str(path), "--rnn-size", "16", "--num-layers", "1", "--max-epochs", "0.02",
                 "--batch-size", "8", "--seq-length", "16", "--checkpoint-dir", str(tmp_path / "cv"), "--quiet"]) == 0
    assert "near the unigram baseline" in capsys.readouterr().err
