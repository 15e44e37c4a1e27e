"""Text augmentation: seeded, label-preserving edits of training texts (EDA-style).

:class:`TextAugmenter` deletes, swaps, inserts and replaces words. Replacements and
insertions come from a :class:`NeighbourTable`: the nearest whole words of each word in the
backbone's own input-embedding space, so nothing is downloaded and the substitutes are
words the backbone already knows.

A caution for sentiment and similar tasks: embedding neighbours are words used in the same
contexts, which includes antonyms. In MiniLM's embeddings "good" is close to "bad" and
"boring" to "exciting", so ``"replace"`` and ``"insert"`` can flip the meaning of a text.
Inspect :meth:`NeighbourTable.neighbours` for the words your labels hinge on, raise
``min_similarity``, or use only ``"delete"`` and ``"swap"``.

Everything is deterministic for a given seed; nothing here reads or changes global random
state.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from tunesmith.errors import ArtifactError, ConfigError, DataError

if TYPE_CHECKING:
    from tunesmith.backbones.text import TextBackbone

VALID_OPS = ("delete", "swap", "insert", "replace")
"""Augmentation operations, in the order :class:`TextAugmenter` applies them by default."""

# Ops that draw substitute words; "insert" falls back to the sentence's own words without a
# table, "replace" has nothing to fall back to.
_NEEDS_NEIGHBOURS = ("replace",)

# Rows of the similarity matrix computed at once: 2048 rows x 22k words of float32 is about
# 180 MB, small enough for a laptop and large enough to keep the matrix product efficient.
CHUNK_ROWS = 2048

# augment_many tries this many more times when an edit leaves a text unchanged (for example
# a one-word text with only "swap"), because an unchanged copy adds nothing but weight.
MAX_RETRIES = 3

# Leading punctuation, the word, trailing punctuation. The word keeps inner punctuation
# ("don't", "e-mail"), which then simply has no neighbours.
_TOKEN_RE = re.compile(r"^(\W*)(.*?)(\W*)$", re.DOTALL)


def split_token(token: str) -> tuple[str, str, str]:
    """Split a whitespace token into ``(leading punctuation, word, trailing punctuation)``."""
    match = _TOKEN_RE.match(token)
    assert match is not None  # the pattern matches every string
    return match.group(1), match.group(2), match.group(3)


def words_in(texts: Iterable[str]) -> set[str]:
    """The lower-case words of ``texts``, punctuation stripped: a ``vocabulary`` for
    :meth:`NeighbourTable.from_backbone` that covers exactly the words augmentation will see."""
    words: set[str] = set()
    for text in texts:
        for token in str(text).split():
            word = split_token(token)[1].lower()
            if word:
                words.add(word)
    return words


def _is_whole_word(token: str, special: set[str]) -> bool:
    # Lower-case only: lookups are lower-case and capitalisation is restored from the word
    # being replaced, and in cased vocabularies capitalised tokens are mostly proper nouns,
    # which make poor substitutes.
    return (
        token not in special
        and not token.startswith("##")
        and len(token) >= 2
        and token.isalpha()
        and token == token.lower()
    )


class NeighbourTable:
    """Nearest whole-word neighbours of words in a backbone's input-embedding space.

    Build one with :meth:`from_backbone`; save and load it with :meth:`to_dict` and
    :meth:`from_dict`. Words are lower-case; :meth:`neighbours` of an unknown word is ``()``.

    Parameters
    ----------
    table:
        Word -> its neighbours, most similar first.
    k, min_similarity:
        The settings the table was built with (kept for run records).
    backbone:
        Name of the backbone the embeddings came from, or ``None``.
    """

    def __init__(
        self,
        table: Mapping[str, Sequence[str]],
        *,
        k: int | None = None,
        min_similarity: float | None = None,
        backbone: str | None = None,
    ) -> None:
        self._table: dict[str, tuple[str, ...]] = {
            str(word): tuple(str(n) for n in nbrs) for word, nbrs in table.items() if len(nbrs) > 0
        }
        self.k = k
        self.min_similarity = min_similarity
        self.backbone = backbone

    @classmethod
    def from_backbone(
        cls,
        backbone: TextBackbone | str,
        k: int = 5,
        min_similarity: float = 0.5,
        vocabulary: Iterable[str] | None = None,
    ) -> NeighbourTable:
        """Find the ``k`` nearest whole words of each whole word of the backbone's vocabulary.

        Similarity is the cosine between rows of ``model.get_input_embeddings().weight``.
        A whole word is a vocabulary token that is not a special token, not a WordPiece
        continuation (``##...``), alphabetic, lower-case and at least two letters long.
        Neighbours must reach ``min_similarity``; a word with none is left out.

        Parameters
        ----------
        backbone:
            A :class:`~tunesmith.backbones.text.TextBackbone` or a registered backbone name.
        k:
            Most neighbours kept per word.
        min_similarity:
            Least cosine similarity, in ``[-1, 1]``, for a word to count as a neighbour.
        vocabulary:
            Words to find neighbours for (case is ignored), such as :func:`words_in` of the
            training texts; ``None`` for every whole word. Neighbours are still drawn from
            the whole vocabulary. A restricted table is much faster to build.
        """
        import torch

        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError(f"must be a whole number >= 1, got {k!r}", key="k")
        if (
            isinstance(min_similarity, bool)
            or not isinstance(min_similarity, (int, float))
            or not -1.0 <= float(min_similarity) <= 1.0
        ):
            raise ConfigError(f"must be a number in [-1, 1], got {min_similarity!r}", key="min_similarity")
        if isinstance(vocabulary, str):
            raise ConfigError("must be a collection of words, not one string", key="vocabulary")
        if isinstance(backbone, str):
            from tunesmith.backbones import create_backbone

            backbone = create_backbone(backbone)

        tokenizer = backbone.tokenizer
        special = set(tokenizer.all_special_tokens)
        by_id = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
        model: Any = backbone.model  # typed as nn.Module; HF models (and peft wrappers) have this method
        weight = model.get_input_embeddings().weight
        # A tokenizer can list ids past the embedding matrix (added tokens without rows).
        pairs = [(tok, idx) for tok, idx in by_id if idx < weight.shape[0] and _is_whole_word(tok, special)]
        words = [tok for tok, _ in pairs]
        ids = torch.tensor([idx for _, idx in pairs], dtype=torch.long)
        table: dict[str, tuple[str, ...]] = {}
        if len(words) < 2:
            return cls(table, k=k, min_similarity=float(min_similarity), backbone=backbone.name)

        with torch.no_grad():
            emb = weight.detach()[ids.to(weight.device)].float()
            emb = torch.nn.functional.normalize(emb, dim=1)
            if vocabulary is None:
                sources = np.arange(len(words))
            else:
                wanted = {str(w).lower() for w in vocabulary}
                sources = np.array([i for i, w in enumerate(words) if w in wanted], dtype=np.int64)
            take = min(k, len(words) - 1)
            for start in range(0, len(sources), CHUNK_ROWS):
                rows = torch.as_tensor(sources[start : start + CHUNK_ROWS], device=emb.device)
                sims = emb[rows] @ emb.T
                # A word is always its own nearest neighbour; rule it out before top-k.
                sims[torch.arange(len(rows), device=emb.device), rows] = -float("inf")
                values, indices = sims.topk(take, dim=1)
                values_np, indices_np = values.cpu().numpy(), indices.cpu().numpy()
                for row, src in enumerate(rows.tolist()):
                    keep = values_np[row] >= min_similarity
                    if keep.any():
                        table[words[src]] = tuple(words[j] for j in indices_np[row][keep])
        return cls(table, k=k, min_similarity=float(min_similarity), backbone=backbone.name)

    def neighbours(self, word: str) -> tuple[str, ...]:
        """Neighbours of ``word`` (looked up lower-case), most similar first; ``()`` if none."""
        return self._table.get(word.lower(), ())

    def __len__(self) -> int:
        return len(self._table)

    def __contains__(self, word: object) -> bool:
        return isinstance(word, str) and word.lower() in self._table

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict that :meth:`from_dict` turns back into an equal table."""
        return {
            "k": self.k,
            "min_similarity": self.min_similarity,
            "backbone": self.backbone,
            "neighbours": {word: list(nbrs) for word, nbrs in self._table.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NeighbourTable:
        """Rebuild a table saved by :meth:`to_dict`."""
        table = data.get("neighbours") if isinstance(data, Mapping) else None
        if not isinstance(table, Mapping) or not all(
            isinstance(w, str) and isinstance(n, (list, tuple)) and all(isinstance(x, str) for x in n)
            for w, n in table.items()
        ):
            raise ArtifactError(
                "neighbour table is malformed: 'neighbours' must map words to lists of words",
                hint="Give a dict written by NeighbourTable.to_dict()",
            )
        return cls(table, k=data.get("k"), min_similarity=data.get("min_similarity"), backbone=data.get("backbone"))

    def describe(self) -> dict[str, Any]:
        """Size and settings of the table, for run records."""
        return {"words": len(self), "k": self.k, "min_similarity": self.min_similarity, "backbone": self.backbone}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NeighbourTable) and self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]  # mutable-looking container; equality is by content

    def __repr__(self) -> str:
        return f"NeighbourTable({len(self)} words, k={self.k}, min_similarity={self.min_similarity})"


def _match_case(new: str, old: str) -> str:
    """``new`` written in the case of ``old``: all capitals stay all capitals, a capital first letter stays."""
    if len(old) > 1 and old.isupper():
        return new.upper()
    if old[:1].isupper():
        return new[:1].upper() + new[1:]
    return new


class TextAugmenter:
    """Seeded EDA-style text augmentation: random deletion, swap, insertion and replacement.

    Texts are split on whitespace, so punctuation stays attached to its word; words are
    looked up in the neighbour table lower-case with outer punctuation stripped, and the
    punctuation is put back. The augmented text is joined with single spaces.

    Operations run in the order given in ``ops``:

    ``"delete"``
        drops each token with probability ``p``, never leaving fewer than ``min_tokens``.
    ``"swap"``
        swaps ``max(1, round(p * n))`` random pairs of tokens (``n`` tokens).
    ``"insert"``
        for each token, with probability ``p``, inserts a neighbour of a random word of the
        text at a random position. Without a neighbour table it inserts a copy of a random
        word of the text instead (punctuation stripped): weaker, but it needs no backbone.
    ``"replace"``
        replaces each word that has neighbours, with probability ``p``, by a random one of
        them, keeping a capital first letter (or all capitals). Needs ``neighbours``.

    Parameters
    ----------
    ops:
        Operations to apply, from ``"delete"``, ``"swap"``, ``"insert"``, ``"replace"``.
    p:
        Per-token probability of an edit, in ``(0, 1]``.
    neighbours:
        A :class:`NeighbourTable` (or a plain word -> neighbours mapping).
    min_tokens:
        Fewest tokens deletion may leave (at least 1, so no text is ever emptied).
    """

    def __init__(
        self,
        ops: Sequence[str] = VALID_OPS,
        p: float = 0.1,
        neighbours: NeighbourTable | Mapping[str, Sequence[str]] | None = None,
        min_tokens: int = 1,
    ) -> None:
        if isinstance(ops, str):
            ops = (ops,)
        ops = tuple(ops)
        if not ops:
            raise ConfigError("is empty", key="ops", hint=f"Give one or more of {', '.join(VALID_OPS)}")
        for op in ops:
            if op not in VALID_OPS:
                raise ConfigError(
                    f"unknown augmentation {op!r}", key="ops", hint=f"Valid operations: {', '.join(VALID_OPS)}"
                )
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 < float(p) <= 1.0:
            raise ConfigError(f"must be a probability in (0, 1], got {p!r}", key="p")
        if isinstance(min_tokens, bool) or not isinstance(min_tokens, int) or min_tokens < 1:
            raise ConfigError(f"must be a whole number >= 1, got {min_tokens!r}", key="min_tokens")
        if neighbours is not None and not isinstance(neighbours, NeighbourTable):
            neighbours = NeighbourTable(neighbours)
        missing = [op for op in ops if op in _NEEDS_NEIGHBOURS]
        if missing and neighbours is None:
            raise ConfigError(
                f"augmentation {missing[0]!r} needs a neighbour table",
                key="neighbours",
                hint=f"Pass neighbours=NeighbourTable.from_backbone(...) or drop {missing[0]!r} from ops",
            )
        self.ops: tuple[str, ...] = ops
        self.p = float(p)
        self.neighbours: NeighbourTable | None = neighbours
        self.min_tokens = min_tokens
        self.last_stats: dict[str, int] = {}
        """Counts from the last :meth:`augment_many`: ``originals``, ``augmented``, ``unchanged``."""

    # --- single text ---------------------------------------------------------------------

    def augment(self, text: str, rng: np.random.Generator) -> str:
        """One augmented version of ``text``, drawing all randomness from ``rng``.

        May equal the (whitespace-normalised) input when no edit happened to fire.
        """
        tokens = text.split()
        if not tokens:
            return text
        for op in self.ops:
            if op == "delete":
                tokens = self._delete(tokens, rng)
            elif op == "swap":
                tokens = self._swap(tokens, rng)
            elif op == "insert":
                tokens = self._insert(tokens, rng)
            else:
                tokens = self._replace(tokens, rng)
        return " ".join(tokens)

    def _delete(self, tokens: list[str], rng: np.random.Generator) -> list[str]:
        n = len(tokens)
        if n <= self.min_tokens:
            return tokens
        keep = rng.random(n) >= self.p
        short = self.min_tokens - int(keep.sum())
        if short > 0:
            # Put back randomly chosen deleted tokens rather than the first ones, so the
            # survivors of a heavy deletion are not biased to the start of the text.
            keep[rng.choice(np.flatnonzero(~keep), size=short, replace=False)] = True
        return [tok for tok, kept in zip(tokens, keep, strict=True) if kept]

    def _swap(self, tokens: list[str], rng: np.random.Generator) -> list[str]:
        n = len(tokens)
        if n < 2:
            return tokens
        out = list(tokens)
        for _ in range(max(1, round(self.p * n))):
            i, j = rng.choice(n, size=2, replace=False)
            out[i], out[j] = out[j], out[i]
        return out

    def _insert(self, tokens: list[str], rng: np.random.Generator) -> list[str]:
        count = int(rng.binomial(len(tokens), self.p))
        if count == 0:
            return tokens
        words = [split_token(tok)[1] for tok in tokens]
        pools: list[tuple[str, ...]]
        if self.neighbours is None:
            pools = [(w.lower(),) for w in words if w]
        else:
            pools = [self.neighbours.neighbours(w) for w in words if w]
            pools = [pool for pool in pools if pool]
        if not pools:
            return tokens
        out = list(tokens)
        for _ in range(count):
            pool = pools[rng.integers(len(pools))]
            out.insert(int(rng.integers(len(out) + 1)), pool[rng.integers(len(pool))])
        return out

    def _replace(self, tokens: list[str], rng: np.random.Generator) -> list[str]:
        assert self.neighbours is not None  # checked in __init__
        # Draw for every token, eligible or not, so whether one word is in the table does
        # not shift the random choices for the words after it.
        fire = rng.random(len(tokens)) < self.p
        out = list(tokens)
        for i, tok in enumerate(tokens):
            if not fire[i]:
                continue
            lead, word, trail = split_token(tok)
            pool = self.neighbours.neighbours(word) if word else ()
            if pool:
                out[i] = lead + _match_case(pool[rng.integers(len(pool))], word) + trail
        return out

    # --- data sets -----------------------------------------------------------------------

    def augment_many(
        self, texts: Sequence[str], labels: Sequence[Any], copies: int = 1, seed: int = 0
    ) -> tuple[list[str], list[Any]]:
        """The original texts followed by ``copies`` augmented copies of each, with labels.

        The result is ``texts + copy_1 + ... + copy_copies`` where each copy block has one
        augmented version of every text in order, and labels repeat the same way. Copy
        ``c`` of text ``i`` draws from its own generator seeded with ``(seed, c, i)``, so it
        does not change when other texts are added, removed or edited. When an augmented
        copy equals its (whitespace-normalised) original, it is drawn again up to
        ``MAX_RETRIES`` times; a copy still unchanged after that is kept, and counted in
        :attr:`last_stats` ``["unchanged"]``.
        """
        if len(texts) != len(labels):
            raise DataError(f"texts and labels differ in length: {len(texts)} texts, {len(labels)} labels")
        if isinstance(copies, bool) or not isinstance(copies, int) or copies < 0:
            raise ConfigError(f"must be a whole number >= 0, got {copies!r}", key="copies")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ConfigError(f"must be a whole number >= 0, got {seed!r}", key="seed")
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise DataError(f"text is {type(text).__name__}, not a string", row=i + 1)

        out_texts = list(texts)
        unchanged = 0
        for c in range(1, copies + 1):
            for i, text in enumerate(texts):
                rng = np.random.default_rng([int(seed), c, i])
                original = " ".join(text.split())
                for _ in range(1 + MAX_RETRIES):
                    new = self.augment(text, rng)
                    if new != original:
                        break
                else:
                    unchanged += 1
                out_texts.append(new)
        self.last_stats = {"originals": len(texts), "augmented": copies * len(texts), "unchanged": unchanged}
        return out_texts, list(labels) * (copies + 1)

    def describe(self) -> dict[str, Any]:
        """Settings as a JSON-safe dict, for run records."""
        return {
            "ops": list(self.ops),
            "p": self.p,
            "min_tokens": self.min_tokens,
            "insert_source": "neighbours" if self.neighbours is not None else "sentence",
            "neighbours": self.neighbours.describe() if self.neighbours is not None else None,
        }

    def __repr__(self) -> str:
        return f"TextAugmenter(ops={self.ops!r}, p={self.p}, min_tokens={self.min_tokens})"


__all__ = ["VALID_OPS", "NeighbourTable", "TextAugmenter", "split_token", "words_in"]
