"""The corpus of ``fused-mup transfer``: real text, no download, as bytes or BPE tokens.

By default the Python standard library's own ``*.py`` sources, which every machine has. The
``bpe-<N>`` tokenizers are byte-level BPE models (HF ``tokenizers``) trained offline on the
training split of the same corpus, so no validation text shapes the vocabulary.
"""

from __future__ import annotations

import hashlib
import os
import sysconfig
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = ["Corpus", "load_corpus", "parse_tokenizer"]

BYTES = "bytes"


@dataclass(frozen=True)
class Corpus:
    """A token corpus split into train and validation streams.

    Attributes:
        train: integer tensor, the training token stream.
        val: integer tensor, the held-out token stream.
        vocab: vocabulary size (256 for bytes).
        fingerprint: short sha256 of (tokenizer, train, val); part of every run key.
        source: human-readable description of where the text came from.
        bytes_per_token: training bytes / training tokens (1 for bytes); converts a loss in
            nats/token into nats/byte, the unit that compares across tokenizers.
    """

    train: torch.Tensor
    val: torch.Tensor
    vocab: int
    fingerprint: str
    source: str
    bytes_per_token: float = 1.0


_CACHE: dict[tuple[str | None, int, str], Corpus] = {}


def parse_tokenizer(name: str) -> int | None:
    """Vocabulary size of a tokenizer name: ``"bytes"`` -> None, ``"bpe-4096"`` -> 4096."""
    if name == BYTES:
        return None
    head, _, n = name.partition("-")
    if head != "bpe" or not n.isdigit() or int(n) <= 256:
        raise ValueError(f"tokenizer must be 'bytes' or 'bpe-<N>' with N > 256, got {name!r}")
    return int(n)


def _stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for p in sorted(root.rglob("*.py")):
        rel = p.relative_to(root).as_posix()
        # Third-party code and the (huge, repetitive) test suites are not "the stdlib's source".
        if rel.startswith(("site-packages/", "dist-packages/", "test/", "idlelib/idle_test/")):
            continue
        files.append(p)
    return files


def _read(text: str | Path | None, max_bytes: int) -> tuple[list[bytes], list[bytes], str]:
    train: list[bytes] = []
    val: list[bytes] = []
    if text is None:
        total = 0
        for i, path in enumerate(_stdlib_files()):
            try:
                data = path.read_bytes()
            except OSError:
                continue
            data = data[: max_bytes - total]
            (val if i % 10 == 9 else train).append(data)
            total += len(data)
            if total >= max_bytes:
                break
        return train, val, f"python{sysconfig.get_python_version()} stdlib *.py ({total} bytes)"
    data = Path(text).read_bytes()[:max_bytes]
    cut = int(len(data) * 0.9)
    return [data[:cut]], [data[cut:]], f"{Path(text).name} ({len(data)} bytes)"


def _bpe(train: list[bytes], val: list[bytes], vocab: int) -> tuple[np.ndarray, np.ndarray, int]:
    try:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    except ImportError as e:
        raise ImportError("the bpe tokenizers need HF tokenizers: pip install tokenizers") from e
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    texts = [b.decode("utf-8", "replace") for b in train]
    tok.train_from_iterator(texts, trainer)

    def encode(parts: list[bytes]) -> np.ndarray:
        enc = tok.encode_batch([b.decode("utf-8", "replace") for b in parts])
        return np.concatenate([np.asarray(e.ids, dtype=np.int32) for e in enc])

    return encode(train), encode(val), tok.get_vocab_size()


def _bpe_cached(
    train: list[bytes], val: list[bytes], vocab: int, raw: bytes
) -> tuple[np.ndarray, np.ndarray, int]:
    # Training a BPE model takes seconds to minutes; the sweep's worker processes would each
    # repeat it, so the token streams are cached on disk, keyed by the text and the size.
    name = hashlib.sha256(raw + f"|bpe-{vocab}".encode()).hexdigest()[:20]
    path = Path(tempfile.gettempdir()) / "fused_mup_corpus" / f"{name}.npz"
    if path.exists():
        try:
            z = np.load(path)
            return z["train"], z["val"], int(z["vocab"])
        except (OSError, ValueError, KeyError):
            pass  # a torn or foreign file: rebuild it
    tr, va, n = _bpe(train, val, vocab)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
    np.savez(tmp, train=tr, val=va, vocab=n)
    os.replace(tmp, path)  # atomic: a concurrent reader sees the old or the whole new file
    return tr, va, n


def load_corpus(
    text: str | Path | None = None, max_bytes: int = 4_000_000, tokenizer: str = BYTES
) -> Corpus:
    """Load the corpus, split it deterministically and tokenize it.

    Default (``text=None``): the standard library's ``*.py`` files in sorted path order,
    concatenated until ``max_bytes``; every 10th file goes to validation (a file-level split,
    so no validation text is seen in training). With ``text``: the file's bytes (first
    ``max_bytes``), the last 10% held out.

    Args:
        text: optional path to a user corpus, read as bytes.
        max_bytes: cap on the total bytes read (keeps loading fast).
        tokenizer: ``"bytes"`` or ``"bpe-<N>"`` (byte-level BPE with N tokens, trained here
            on the training split; needs ``tokenizers``).

    Returns:
        The :class:`Corpus`, cached per process.
    """
    key = (None if text is None else str(Path(text).resolve()), int(max_bytes), tokenizer)
    if key in _CACHE:
        return _CACHE[key]
    vocab_req = parse_tokenizer(tokenizer)
    train_parts, val_parts, source = _read(text, max_bytes)
    train_b, val_b = b"".join(train_parts), b"".join(val_parts)
    if len(train_b) < 4096 or len(val_b) < 1024:
        raise ValueError(f"corpus too small: {len(train_b)} train / {len(val_b)} val bytes")
    if vocab_req is None:
        train = torch.frombuffer(bytearray(train_b), dtype=torch.uint8)
        val = torch.frombuffer(bytearray(val_b), dtype=torch.uint8)
        vocab, digest = 256, train_b + b"\0|\0" + val_b
    else:
        tr, va, vocab = _bpe_cached(train_parts, val_parts, vocab_req, train_b + b"\0|\0" + val_b)
        train, val = torch.from_numpy(tr), torch.from_numpy(va)
        digest = tokenizer.encode() + tr.tobytes() + b"\0|\0" + va.tobytes()
        source += f", {tokenizer} ({vocab} tokens, {len(train_b) / len(tr):.2f} bytes/token)"
    corpus = Corpus(
        train=train,
        val=val,
        vocab=vocab,
        fingerprint=hashlib.sha256(digest).hexdigest()[:12],
        source=source,
        bytes_per_token=len(train_b) / len(train),
    )
    _CACHE[key] = corpus
    return corpus
