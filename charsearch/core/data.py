"""Corpora: reading UTF-8 text, the character vocabulary, the encoded cache, splits and batches.

A corpus is encoded once per (content, min_freq) and cached beside the input file as a .npy array
(uint8 / int16 / int32 by vocabulary size) plus a JSON vocabulary, both written atomically. Later
loads memory-map the array, so a trial starts without re-reading or re-encoding the text.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import math
import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from charsearch.core.errors import UsageError
from charsearch.core.files import atomic_write, not_a_file

CACHE_VERSION = 1
UNK = "\ufffd"  # Unicode's replacement character stands for every pruned character
_CHUNK = 1 << 24  # characters per encoding pass: bounds the temporary UTF-32 buffer to 64 MB

DATASETS = {
    "tinyshakespeare": {
        "url": "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
        "sha256": "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
    },
}


@dataclass(frozen=True)
class Vocab:
    chars: tuple[str, ...]  # sorted by code point; index = id
    unk: int | None = None  # id of the unknown symbol, when min_freq pruned characters

    def __len__(self) -> int:
        return len(self.chars)

    @property
    def index(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.chars)}

    def missing(self, text: str) -> list[str]:
        """Characters of `text` that have no id of their own, in order of first appearance."""
        index = self.index
        return list(dict.fromkeys(c for c in text if c not in index))

    def encode(self, text: str, what: str = "text") -> list[int]:
        index = self.index
        missing = self.missing(text)
        if missing and self.unk is None:
            shown = ", ".join(repr(c) for c in missing[:10])
            raise UsageError(f"{what} has characters the model's vocabulary lacks: {shown}"
                             f"{' ...' if len(missing) > 10 else ''} (the model has no unknown symbol to map them to)")
        return [index.get(c, self.unk) for c in text]

    def decode(self, ids) -> str:
        return "".join(self.chars[i] for i in ids)

    @property
    def dtype(self) -> np.dtype:
        n = len(self.chars)
        return np.dtype(np.uint8 if n <= 256 else np.int16 if n <= 32768 else np.int32)


@dataclass
class Corpus:
    path: Path
    sha256: str
    vocab: Vocab
    ids: np.ndarray  # the whole corpus encoded, usually a read-only memory map
    min_freq: int = 0

    def split(self, train_frac: float, val_frac: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Contiguous train / val / test views (no copies): train first, then val, test last."""
        return split_bounds_apply(self.ids, train_frac, val_frac)


def split_bounds(n: int, train_frac: float, val_frac: float) -> tuple[int, int]:
    if not (0 <= train_frac <= 1 and 0 <= val_frac <= 1 and train_frac + val_frac <= 1 + 1e-9):
        raise UsageError(f"train_frac {train_frac} and val_frac {val_frac}: each must be in [0, 1] and together "
                         f"at most 1 (the test split is what is left)")
    train_end = int(n * train_frac + 1e-9)
    val_end = min(n, int(n * (train_frac + val_frac) + 1e-9))
    return train_end, val_end


def split_bounds_apply(ids: np.ndarray, train_frac: float, val_frac: float):
    a, b = split_bounds(len(ids), train_frac, val_frac)
    return ids[:a], ids[a:b], ids[b:]


# ---------------------------------------------------------------------------------------------
# finding and reading a corpus


def resolve_path(data: str, data_root: str | Path = "data") -> Path:
    """`data` may be a file, a folder holding input.txt, or a name under data/ (char-rnn's layout)."""
    if not data:
        raise UsageError("no corpus given: pass --data FILE (a UTF-8 text file, a folder with input.txt, "
                         "or a name under data/)")
    p = Path(data).expanduser()
    if p.is_dir():
        p = p / "input.txt"
    if p.is_file():
        return p
    named = Path(data_root) / data / "input.txt"
    if "/" not in data and named.is_file():
        return named
    if data in DATASETS:
        raise UsageError(f"corpus {data!r} is not downloaded yet: run `charsearch data fetch {data}`")
    raise UsageError(f"{data}: {not_a_file(p)}{did_you_mean(data, data_root)} (expected a text file, a folder "
                     f"with input.txt, or a name under {data_root}/)")


def did_you_mean(data: str, data_root: str | Path) -> str:
    """' (did you mean ...?)' for a corpus name close to one under data/ or a built-in one."""
    import difflib
    root = Path(data_root)
    names = {d.name for d in root.iterdir() if (d / "input.txt").is_file()} if root.is_dir() else set()
    close = difflib.get_close_matches(data, sorted(names | set(DATASETS)), n=1) if len(data) <= 100 else []
    return f" (did you mean {close[0]!r}?)" if close else ""


HEAD_BYTES = 1 << 16  # read first: a binary file is refused before the rest is read


def read_text(path: Path) -> tuple[str | None, bytes]:
    """Return the decoded text (None for pure ASCII, whose bytes are its code points) and the raw bytes,
    with clear errors for empty, binary, too large and non-UTF-8 files."""
    try:
        with open(path, "rb") as f:
            head = f.read(HEAD_BYTES)
            check_head(path, head)
            check_memory(path, os.fstat(f.fileno()).st_size, head.isascii())
            f.seek(0)
            raw = f.read()
    except OSError as e:
        raise UsageError(f"{path}: cannot read ({e.strerror})") from None
    nul = raw.find(b"\x00")
    if nul >= 0:
        raise UsageError(f"{path}: looks like a binary file (NUL byte at offset {nul}); a corpus must be UTF-8 text")
    if raw.isascii():
        return None, raw
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(f"{path}: not UTF-8 text (invalid byte 0x{raw[e.start]:02x} at byte offset {e.start}); "
                         f"convert it, e.g. iconv -f latin1 -t utf-8") from None
    if text.startswith("\ufeff"):  # a byte-order mark is not content
        text = text[1:]
    if not text:
        raise UsageError(f"{path}: the file holds no text")
    return text, raw


def check_head(path: Path, head: bytes) -> None:
    if not head:
        raise UsageError(f"{path}: the file is empty; a corpus needs text")
    nul = head.find(b"\x00")
    if nul >= 0:
        raise UsageError(f"{path}: looks like a binary file (NUL byte at offset {nul}); a corpus must be UTF-8 text")


def check_memory(path: Path, size: int, ascii_head: bool) -> None:
    """Reading and encoding a corpus holds its bytes, the decoded text (up to 4 bytes a character) and the
    encoded ids at once: about 2x the file for ASCII, up to 6x otherwise. Refused when that exceeds what
    the machine can give now (devices.HEADROOM of its free memory)."""
    from charsearch.core.devices import admissible_bytes
    from charsearch.core.units import human_bytes
    need = size * (2 if ascii_head else 6)
    limit = admissible_bytes(torch.device("cpu"))
    if need > limit:
        raise UsageError(f"{path}: {human_bytes(size)}; reading and encoding it takes about {human_bytes(need)}, more "
                         f"than the {human_bytes(limit)} this machine can give now; use a part of it")


def _codepoints(text: str | None, raw: bytes):
    """Yield the text's code points in chunks, as numpy arrays (pure ASCII needs no decoding)."""
    if text is None:
        data = np.frombuffer(raw, dtype=np.uint8)
        for i in range(0, len(data), _CHUNK):
            yield data[i:i + _CHUNK]
        return
    for i in range(0, len(text), _CHUNK):
        yield np.frombuffer(text[i:i + _CHUNK].encode("utf-32-le"), dtype=np.uint32)


def build_vocab(text: str | None, raw: bytes, min_freq: int = 0) -> tuple[Vocab, np.ndarray]:
    """Count characters; those seen fewer than min_freq times become the unknown symbol."""
    counts = np.zeros(0x110000, dtype=np.int64)
    for cp in _codepoints(text, raw):
        c = np.bincount(cp)
        counts[: len(c)] += c
    present = np.flatnonzero(counts)
    kept = present[counts[present] >= max(min_freq, 1)]
    pruned = len(kept) < len(present)
    chars = [chr(c) for c in kept]
    if pruned and UNK not in chars:
        chars = sorted(chars + [UNK])
    vocab = Vocab(tuple(chars), chars.index(UNK) if pruned else None)
    # code point -> id; every code point present is either kept or pruned to unk
    lut = np.full(0x110000, vocab.unk or 0, dtype=vocab.dtype)
    lut[[ord(c) for c in chars]] = np.arange(len(chars))
    return vocab, lut


def encode_corpus(text: str | None, raw: bytes, lut: np.ndarray, out: np.ndarray) -> None:
    pos = 0
    for cp in _codepoints(text, raw):
        out[pos:pos + len(cp)] = lut[cp]
        pos += len(cp)


# ---------------------------------------------------------------------------------------------
# the cache


def cache_paths(path: Path, sha256: str, min_freq: int) -> tuple[Path, Path]:
    d = path.parent / ".charsearch"
    stem = f"{path.name}.{sha256[:16]}.mf{min_freq}.v{CACHE_VERSION}"
    return d / f"{stem}.npy", d / f"{stem}.json"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def load_corpus(data: str | Path, min_freq: int = 0, data_root: str | Path = "data", cache: bool = True) -> Corpus:
    """Read (or reuse the cached encoding of) a corpus. Rebuilt whenever the file's content changes."""
    path = resolve_path(str(data), data_root)
    if min_freq < 0:
        raise UsageError(f"min_freq must be >= 0; got {min_freq}")
    try:
        with open(path, "rb") as f:  # refused before the whole file is hashed
            head = f.read(HEAD_BYTES)
            check_head(path, head)
            check_memory(path, os.fstat(f.fileno()).st_size, head.isascii())
        sha = file_sha256(path)
    except OSError as e:
        raise UsageError(f"{path}: cannot read ({e.strerror})") from None
    npy, meta = cache_paths(path, sha, min_freq)
    cached = read_cache(npy, meta, sha) if cache else None
    if cached is not None:
        return Corpus(path, sha, *cached, min_freq)
    text, raw = read_text(path)
    vocab, lut = build_vocab(text, raw, min_freq)
    ids = np.empty(len(raw) if text is None else len(text), dtype=vocab.dtype)
    encode_corpus(text, raw, lut, ids)
    del text, raw, lut
    if cache:
        try:
            atomic_write(npy, lambda f: np.save(f, ids))
            info = {"chars": list(vocab.chars), "unk": vocab.unk, "length": len(ids), "sha256": sha,
                    "min_freq": min_freq, "source": path.name}
            atomic_write(meta, lambda f: f.write(json.dumps(info, ensure_ascii=False).encode("utf-8")))
        except OSError:
            pass  # a read-only data folder: work from memory
    return Corpus(path, sha, vocab, ids, min_freq)


def read_cache(npy: Path, meta: Path, sha: str) -> tuple[Vocab, np.ndarray] | None:
    """The cached encoding of a corpus, checked before use: its record names this content's hash and a
    vocabulary of distinct characters, and the ids are that many, of the vocabulary's type, each an index
    into it. Anything else (truncated, hand-edited, another version's) is None: the cache is rebuilt."""
    if not (npy.is_file() and meta.is_file()) or meta.stat().st_size > 64 * 2 ** 20:
        return None
    try:
        info = json.loads(meta.read_text(encoding="utf-8"))
        chars, unk = info["chars"], info["unk"]
        if info["sha256"] != sha or not isinstance(chars, list) or len(set(chars)) != len(chars) or not all(
                isinstance(c, str) and len(c) == 1 for c in chars) or not (
                unk is None or (isinstance(unk, int) and 0 <= unk < len(chars))):
            return None
        vocab = Vocab(tuple(chars), unk)
        ids = np.load(npy, mmap_mode="r")
        if ids.ndim != 1 or ids.dtype != vocab.dtype or len(ids) != info["length"] or not len(ids):
            return None
        if max(int(ids[i:i + _CHUNK].max()) for i in range(0, len(ids), _CHUNK)) >= len(vocab):
            return None
        return vocab, ids
    except (OSError, ValueError, KeyError, TypeError, RecursionError, EOFError):
        return None


def encode_with(path: Path, vocab: Vocab) -> np.ndarray:
    """Encode any text file with an existing model's vocabulary (for `charsearch eval`)."""
    text, raw = read_text(path)
    return np.asarray(vocab.encode(raw.decode("ascii") if text is None else text, what=str(path)), dtype=vocab.dtype)


# ---------------------------------------------------------------------------------------------
# batches for truncated BPTT


MIN_EVAL_CHARS = 2  # a split is scored by predicting each character from the ones before it


def check_val(n_chars: int, val_frac: float, path: Path | str) -> None:
    """Fair validation reads its own streams whatever the training batch: it needs MIN_EVAL_CHARS."""
    if n_chars < MIN_EVAL_CHARS:
        raise UsageError(f"{path}: the val split has {n_chars} characters; validation needs at least "
                         f"{MIN_EVAL_CHARS} (raise val_frac, now {val_frac})")


@dataclass
class Baseline:
    cross_entropy: float  # nats/char of the val split under the train split's unigram distribution
    unseen: int  # val characters that never occur in the train split


def char_counts(ids: np.ndarray, vocab_size: int) -> np.ndarray:
    """How often each id occurs, counted a chunk at a time: np.bincount widens what it counts to 8 bytes a
    character, 8 GB for a 1 GB corpus at once."""
    counts = np.zeros(vocab_size, dtype=np.int64)
    for i in range(0, len(ids), _CHUNK):
        counts += np.bincount(np.asarray(ids[i:i + _CHUNK]), minlength=vocab_size)
    return counts


def unigram_baseline(corpus: Corpus, train_frac: float, val_frac: float) -> Baseline:
    """The bar any model can be held to: each val character scored by its frequency in the train split
    (add-one smoothed, so a character train never shows costs log(train + vocabulary), not infinity)."""
    train, val, _ = corpus.split(train_frac, val_frac)
    v = len(corpus.vocab)
    in_train = char_counts(train, v).astype(np.float64)
    in_val = char_counts(val, v).astype(np.float64)
    log_p = np.log((in_train + 1) / (len(train) + v))
    return Baseline(float(-(in_val * log_p).sum() / max(1, len(val))), int(in_val[in_train == 0].sum()))


NEAR_UNIGRAM = 0.95  # a val loss above this share of the unigram baseline has learned little beyond frequencies


def unigram_note(loss: float, corpus: Corpus, train_frac: float, val_frac: float) -> str:
    """One line when a model's val loss is near the unigram baseline (it learned little more than which
    characters are frequent), else ''."""
    baseline = unigram_baseline(corpus, train_frac, val_frac).cross_entropy
    if loss < NEAR_UNIGRAM * baseline:
        return ""
    return (f"note: val loss {loss:.4f} is near the unigram baseline {baseline:.4f} (the train split's character "
            f"frequencies alone): the model learned little more; give it more time, or run where the machine is "
            f"not busy with other work")


# characters: lzma's ratio settles by then (tiny-shakespeare: 1.97 nats/char at its start, 2.03 spread, 1.82 on all)
INFO_SAMPLE = 200_000
INFO_PIECES = 8  # a larger train split is sampled in this many pieces spread over it


def compressed_nats(corpus: Corpus, train_frac: float, val_frac: float) -> float:
    """Information per character, model-free: lzma's compressed size of INFO_SAMPLE characters of the train
    split, in nats per character (a trained char-rnn ends 10-25% below it). A larger split is read in
    INFO_PIECES pieces spread evenly over it: its start alone (a preface, a licence header, one file of
    many) can differ from the rest."""
    train = corpus.split(train_frac, val_frac)[0]
    size, step = INFO_SAMPLE // INFO_PIECES, len(train) / INFO_PIECES
    pieces = [train] if len(train) <= INFO_SAMPLE else [train[int(i * step):int(i * step) + size]
                                                         for i in range(INFO_PIECES)]
    text = "".join(corpus.vocab.decode(piece) for piece in pieces)
    return len(lzma.compress(text.encode("utf-8"), preset=6)) * 8 * math.log(2) / max(1, len(text))


def check_fits(n_chars: int, batch_size: int, seq_length: int, path: Path | str) -> None:
    """The train split must hold at least one batch of batch_size streams x seq_length (+1 for the target)."""
    need = batch_size * seq_length + 1
    if n_chars >= need:
        return
    fits = []
    for s in (seq_length, 100, 50, 25, 16, 8):
        b = (n_chars - 1) // s
        if b >= 1:
            fits.append(f"--batch-size {min(b, batch_size)} --seq-length {s}")
            break
    hint = f"; e.g. {fits[0]} fits" if fits else ""
    raise UsageError(f"{path}: the train split has {n_chars:,} characters, too few for one batch of batch_size "
                     f"{batch_size} x seq_length {seq_length} ({need:,} needed){hint}, or use a larger corpus or "
                     f"train_frac")


def iters_per_epoch(n_chars: int, batch_size: int, seq_length: int) -> int:
    """Whole batches of batch_size streams x seq_length in a split (the targets need one character more)."""
    return (n_chars - 1) // (batch_size * seq_length)


class Batches:
    """The training split as `batch_size` contiguous streams on the device, read in seq_length chunks.

    As char-rnn: stream b holds characters [b*T, (b+1)*T); batch i is columns [i*S, (i+1)*S) of every
    stream, so the hidden state of batch i carries over to batch i+1. The tail that does not fill a
    whole batch is dropped.
    """

    def __init__(self, ids: np.ndarray, batch_size: int, seq_length: int, device: torch.device):
        self.batch_size, self.seq_length = batch_size, seq_length
        self.num_batches = iters_per_epoch(len(ids), batch_size, seq_length)
        n = self.num_batches * batch_size * seq_length
        data = torch.from_numpy(np.array(ids[: n + 1])).to(device)
        self.x = data[:n].view(batch_size, -1)
        self.y = data[1:].view(batch_size, -1)

    def __len__(self) -> int:
        return self.num_batches

    def get(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        s = slice(i * self.seq_length, (i + 1) * self.seq_length)
        return self.x[:, s].long(), self.y[:, s].long()


# ---------------------------------------------------------------------------------------------
# built-in datasets


def fetch(name: str, data_root: str | Path = "data", source: str | None = None) -> Path:
    """Install a built-in corpus as data/<name>/input.txt: downloaded, or copied from `source`; sha256 checked."""
    if name not in DATASETS:
        raise UsageError(f"unknown dataset {name!r}; available: {', '.join(DATASETS)}")
    spec = DATASETS[name]
    dest = Path(data_root) / name / "input.txt"
    if source:
        try:
            content = Path(source).expanduser().read_bytes()
        except OSError as e:
            raise UsageError(f"{source}: cannot read ({e.strerror})") from None
    else:
        try:
            with urllib.request.urlopen(spec["url"], timeout=30) as r:
                content = r.read()
        except OSError as e:
            reason = getattr(e, "reason", e)
            raise UsageError(f"could not download {spec['url']} ({reason}); download it on a machine with internet "
                             f"and run `charsearch data fetch {name} --from FILE`") from None
    sha = hashlib.sha256(content).hexdigest()
    if sha != spec["sha256"]:
        raise UsageError(f"{source or spec['url']}: sha256 {sha} does not match the expected {spec['sha256']} "
                         f"for {name}")
    atomic_write(dest, lambda f: f.write(content))
    return dest
