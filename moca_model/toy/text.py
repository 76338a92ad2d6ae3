"""The toy text encoder: a caption -> Wan-shaped token states [L, 4096], with no network at all.

Wan conditions on umT5-XXL states, one 4096-d vector per token plus an end token, padded with zeros to
512. The toy world's captions are short sentences from a small vocabulary ("a person nods, in front of
a striped wall, in warm evening light"), and what a caption means is which words it has. So the
simplest encoder that works is a fixed table: each lower-cased word maps to its own random unit-scale
vector, drawn from a generator seeded by the word's SHA-256, and an end vector closes the sequence
(so the empty prompt is one token, as with umT5). Nothing is trained or stored; any word, even one the
world never uses, gets a vector, so every prompt runs - but only the world's words mean anything to the
toy backbone, which learns them from the captions it is trained on.

Word order is not encoded (a bag of words): the world's captions never need it. The toy backbone and
adapter were trained on states zero-padded to TEXT_LEN = 32 tokens, so inference pads the same way
(`pad_text`, `ToyTextEncoder.__call__`).
"""
from __future__ import annotations

import hashlib
import re
from functools import lru_cache

import torch

TEXT_DIM = 4096          # Wan's text width (umT5-XXL)
MAX_TOKENS = 512         # Wan's text length
TEXT_LEN = 32            # the toy models' padded length (toy captions are < 32 words; Wan pads to 512)
END_TOKEN = "</s>"
_WORD = re.compile(r"[a-z0-9]+")


def tokenize(text: str) -> list[str]:
    """Lower-cased words, digits kept, punctuation dropped; the end token is appended by `encode`."""
    return _WORD.findall(text.lower())


@lru_cache(maxsize=4096)
def word_vector(word: str, dim: int = TEXT_DIM) -> torch.Tensor:
    """A fixed N(0, 1) vector for `word` ([dim] float32), the same on every machine and torch version
    that keeps torch.Generator's CPU stream (a test pins a few values)."""
    seed = int.from_bytes(hashlib.sha256(word.encode("utf-8")).digest()[:8], "little") & ((1 << 63) - 1)
    return torch.randn(dim, generator=torch.Generator().manual_seed(seed))


class ToyTextEncoder:
    """Implements the cache's TextEncoder interface: `encode(texts) -> [[L_i, 4096]]` (unpadded)."""

    dim = TEXT_DIM

    def encode(self, texts: list[str]) -> list[torch.Tensor]:
        out = []
        for text in texts:
            words = tokenize(text)[: MAX_TOKENS - 1] + [END_TOKEN]
            out.append(torch.stack([word_vector(w, self.dim) for w in words]))          # [L, 4096]
        return out

    def __call__(self, text: str) -> torch.Tensor:
        """One prompt -> [1, TEXT_LEN, 4096], zero-padded as the toy models were trained (batch of one)."""
        return pad_text(self.encode([text])[0])[None]


def pad_text(t: torch.Tensor, length: int = TEXT_LEN) -> torch.Tensor:
    """[L, D] -> [length, D], zero-padded (or cut) as Wan pads umT5 states."""
    out = t.new_zeros(length, t.shape[-1])
    out[: min(length, t.shape[0])] = t[:length]
    return out
