"""CLIP's byte-level BPE tokenizer (lower-cased, ftfy + HTML unescape + whitespace clean-up)."""

from __future__ import annotations

import functools
import gzip
import html
from importlib import resources
from typing import Sequence

import ftfy
import numpy as np
import regex

from .constants import CONTEXT_LENGTH

BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
BPE_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
START_TOKEN = 49406
END_TOKEN = 49407
_N_MERGES = 49152 - 256 - 2

_PATTERN = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)


@functools.lru_cache
def byte_to_unicode() -> dict[int, str]:
    """A reversible map from bytes to printable unicode characters (GPT-2's)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def clean(text: str) -> str:
    """ftfy fix, double HTML unescape, collapse whitespace, lower-case."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return regex.sub(r"\s+", " ", text).strip().lower()


class BPETokenizer:
    def __init__(self, merges: list[tuple[str, str]]):
        symbols = list(byte_to_unicode().values())
        vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
        vocab += ["<|startoftext|>", "<|endoftext|>"]
        self.encoder = {token: i for i, token in enumerate(vocab)}
        self.ranks = {merge: i for i, merge in enumerate(merges)}
        self._cache: dict[str, list[str]] = {}

    @classmethod
    def from_package(cls) -> BPETokenizer:
        with resources.files(__package__).joinpath(BPE_FILE).open("rb") as f:
            lines = gzip.decompress(f.read()).decode("utf-8").split("\n")
        return cls([tuple(line.split()) for line in lines[1:_N_MERGES + 1]])

    def _bpe(self, word: str) -> list[str]:
        cached = self._cache.get(word)
        if cached is not None:
            return cached
        parts = [*word[:-1], word[-1] + "</w>"]
        while len(parts) > 1:
            pairs = set(zip(parts, parts[1:]))
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(parts):
                if i < len(parts) - 1 and (parts[i], parts[i + 1]) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        self._cache[word] = parts
        return parts

    def encode(self, text: str) -> list[int]:
        """BPE ids of ``text`` without start and end tokens."""
        byte_map = byte_to_unicode()
        ids: list[int] = []
        for piece in _PATTERN.findall(clean(text)):
            word = "".join(byte_map[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[token] for token in self._bpe(word))
        return ids


@functools.lru_cache
def get_tokenizer() -> BPETokenizer:
    return BPETokenizer.from_package()


def token_ids(texts: str | Sequence[str], context_length: int = CONTEXT_LENGTH, truncate: bool = False) -> np.ndarray:
    """CLIP tokens ``int64 [N, context_length]`` as numpy: start token, BPE ids, end token, zero padding.

    Needs no torch (``text_encoder.onnx`` takes these). A text whose tokens do not fit raises
    ``ValueError`` naming it, unless ``truncate`` is set (then it is cut and still ends with the
    end token).
    """
    if isinstance(texts, str):
        texts = [texts]
    tokenizer = get_tokenizer()
    out = np.zeros((len(texts), context_length), dtype=np.int64)
    for row, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValueError(f"texts must be strings, got {type(text).__name__}: {text!r}")
        ids = [START_TOKEN, *tokenizer.encode(text), END_TOKEN]
        if len(ids) > context_length:
            if not truncate:
                raise ValueError(
                    f"text is {len(ids)} tokens, longer than the context of {context_length}: {text[:60]!r}...; "
                    "shorten it or pass truncate=True")
            ids = ids[:context_length]
            ids[-1] = END_TOKEN
        out[row, :len(ids)] = ids
    return out


def tokenize(texts: str | Sequence[str], context_length: int = CONTEXT_LENGTH, truncate: bool = False):
    """:func:`token_ids` as a ``torch.int64`` tensor, for the PyTorch model."""
    import torch

    return torch.from_numpy(token_ids(texts, context_length, truncate))
