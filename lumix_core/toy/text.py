"""The toy's text encoder: one learned vector per caption word plus one per position.

Why so small: the captions come from a tiny grammar (:func:`lumix_core.world.caption_vocabulary`,
31 words), so there is nothing for CLIP or T5 to understand that a word table cannot hold.
It produces what FLUX consumes: a sequence ``txt [N, Lt, ctx]`` (T5's role; word + position
embedding, padded with a learned pad vector to ``max_tokens``) and a pooled ``y [N, ctx]``
(CLIP's role; the mean of the caption's word vectors, zeros for the empty caption, which is
what classifier-free guidance feeds as the negative prompt). It is trained jointly with the
backbone in stage 1 and frozen afterwards.

A prompt with a word outside the vocabulary is refused with the known words and the
closest matches -- guessing an embedding for it would silently produce an arbitrary image.
"""
from __future__ import annotations

import difflib
import json
import os
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from ..io.safetensors_io import CheckpointError, atomic_save, load_tensors, read_header
from ..world.scene import caption_tokens, caption_vocabulary
from .rng import seeded

#: Longest caption the grammar can write, in words: three two-colour patterned objects
#: (6 words each, plus "and"), a patterned floor (7), a patterned wall (9) and the light (4).
MAX_TOKENS = 40
#: Width of the text features (``context_in_dim`` and ``vec_in_dim`` of the toy FLUX).
TEXT_DIM = 64
PAD = 0  # token id of padding; word k of the vocabulary has id k + 1

META_FORMAT = "lumix.toy_text_format"
META_VOCAB = "lumix.toy_vocabulary"
META_MAX_TOKENS = "lumix.toy_max_tokens"
FORMAT_VERSION = "1"


class PromptError(ValueError):
    """A prompt the toy text encoder cannot read (unknown words, too long)."""


class ToyTextEncoder(nn.Module):
    """Captions -> ``(txt [N, max_tokens, dim], y [N, dim])``."""

    def __init__(self, vocabulary: Optional[Sequence[str]] = None, max_tokens: int = MAX_TOKENS,
                 dim: int = TEXT_DIM, seed: Optional[int] = None) -> None:
        """``seed``: draw the initial tables from this seed, leaving the global RNG untouched (a
        stage-1 run is then fixed by its own settings whatever ran before it); None: the global RNG."""
        super().__init__()
        self.vocabulary: tuple[str, ...] = tuple(vocabulary if vocabulary is not None else caption_vocabulary())
        if len(set(self.vocabulary)) != len(self.vocabulary):
            raise ValueError("the vocabulary has duplicate words")
        self.max_tokens, self.dim = int(max_tokens), int(dim)
        self._ids = {w: i + 1 for i, w in enumerate(self.vocabulary)}
        with seeded(seed):
            self.words = nn.Embedding(len(self.vocabulary) + 1, self.dim)
            self.positions = nn.Parameter(torch.randn(self.max_tokens, self.dim) * 0.1)

    # -- tokens --------------------------------------------------------------------------
    def check_prompt(self, prompt: str) -> list[str]:
        """The prompt's words, or a :class:`PromptError` naming every unknown word."""
        words = caption_tokens(prompt)
        unknown = [w for w in dict.fromkeys(words) if w not in self._ids]
        if unknown:
            hints = []
            for w in unknown:
                close = difflib.get_close_matches(w, self.vocabulary, n=3, cutoff=0.6)
                hints.append(f"'{w}'" + (f" (did you mean {' / '.join(close)}?)" if close else ""))
            raise PromptError(
                f"the toy model knows only the {len(self.vocabulary)} words of the synthetic world's captions; "
                f"unknown: {', '.join(hints)}.\nKnown words: {' '.join(self.vocabulary)}.\n"
                "Example: \"a red sphere and a blue box on a gray floor, light from the left\"")
        if len(words) > self.max_tokens:
            raise PromptError(f"the prompt has {len(words)} words; the toy model reads at most {self.max_tokens}")
        return words

    def tokenize(self, captions: Sequence[str]) -> Tensor:
        """``[N, max_tokens]`` word ids, padded with :data:`PAD`."""
        out = torch.full((len(captions), self.max_tokens), PAD, dtype=torch.long)
        for n, text in enumerate(captions):
            ids = [self._ids[w] for w in self.check_prompt(text)]
            out[n, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out

    # -- features ------------------------------------------------------------------------
    def forward(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        vectors = self.words(tokens)  # [N, Lt, dim]
        txt = vectors + self.positions[: tokens.shape[1]]
        mask = (tokens != PAD).unsqueeze(-1).to(vectors.dtype)
        y = (vectors * mask).sum(1) / mask.sum(1).clamp_min(1.0)  # empty caption -> zeros
        return txt, y

    def encode(self, captions: Sequence[str]) -> tuple[Tensor, Tensor]:
        device = self.positions.device
        return self(self.tokenize(captions).to(device))

    # -- files ---------------------------------------------------------------------------
    def save(self, path: "str | os.PathLike[str]", *, overwrite: bool = False) -> Path:
        meta = {META_FORMAT: FORMAT_VERSION, META_VOCAB: json.dumps(list(self.vocabulary)),
                META_MAX_TOKENS: str(self.max_tokens)}
        return atomic_save(self.state_dict(), path, meta, overwrite=overwrite)

    @classmethod
    def load(cls, path: "str | os.PathLike[str]") -> "ToyTextEncoder":
        header = read_header(path)
        meta = header.metadata
        if meta.get(META_FORMAT) != FORMAT_VERSION:
            raise CheckpointError(f"{Path(path).name}: not a toy text encoder file (format "
                                  f"{meta.get(META_FORMAT)!r}, expected {FORMAT_VERSION!r})")
        tensors = load_tensors(header, "cpu")
        dim = int(tensors["words.weight"].shape[1])
        encoder = cls(json.loads(meta[META_VOCAB]), int(meta[META_MAX_TOKENS]), dim)
        encoder.load_state_dict(tensors, strict=True)
        return encoder
