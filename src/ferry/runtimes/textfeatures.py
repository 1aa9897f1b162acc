"""Hashed character n-grams, as scikit-learn's ``HashingVectorizer(analyzer="char_wb")`` computes them.

The serving side of a compiled text bundle: it needs ``mmh3`` (MurmurHash3, the hash scikit-learn uses)
and numpy, not scikit-learn and scipy. Only the columns the model reads are materialised, but each
row's L2 norm counts every n-gram, so the values are scikit-learn's exactly (the build checks that).
"""

from __future__ import annotations

import math
import operator
from collections import Counter
from itertools import chain
from typing import Any

import mmh3
import numpy as np

_INT_MIN = -(2**31)
_CACHE_LIMIT = 1 << 18  # n-gram -> column entries kept between batches (bounded: cleared when full)


class Unsupported(ValueError):
    """A featurizer spec this module does not reproduce."""


class HashedCharNgrams:
    def __init__(self, spec: dict[str, Any], columns: np.ndarray) -> None:
        """``columns``: the hashed feature indices the model reads, in the order it wants them."""
        if spec.get("type") != "char_ngrams" or spec.get("analyzer", "char_wb") != "char_wb":
            raise Unsupported(f"featurizer {spec.get('type')!r} / {spec.get('analyzer')!r}")
        if spec.get("alternate_sign", False) or spec.get("norm", "l2") not in ("l2", None):
            raise Unsupported("alternate_sign or a norm other than l2")
        low, high = spec.get("ngram_range", [1, 3])
        self.low, self.high = int(low), int(high)
        self.n_features = int(spec.get("n_features", 2**14))
        self.lowercase = bool(spec.get("lowercase", True))
        self.l2 = spec.get("norm", "l2") == "l2"
        self.width = int(columns.size)
        self.position = np.full(self.n_features, -1, dtype=np.int64)  # hashed index -> model column
        self.position[np.asarray(columns, dtype=np.int64)] = np.arange(self.width)
        self._column = {int(hashed): i for i, hashed in enumerate(np.asarray(columns, dtype=np.int64))}
        self._wanted = frozenset(self._column)
        self._index = _HashCache(self)

    def transform(self, texts: list[str]) -> np.ndarray:
        """[rows, columns] float64: the model's columns of the normalised n-gram counts.

        Python makes the n-grams (C-level slicing and ``map``) and looks up their columns (a dict in
        front of MurmurHash3); numpy then counts, normalises and scatters the whole batch at once.
        """
        if len(texts) == 1:  # a dozen numpy calls cost more than counting one text in Python
            return self._one(texts[0])
        out = np.zeros((len(texts), self.width))
        grams = [self._ngrams(text) for text in texts]
        lengths = list(map(len, grams))
        total = sum(lengths)
        if not total:
            return out
        found = np.fromiter(map(self._index.__getitem__, chain.from_iterable(grams)), dtype=np.int64, count=total)
        rows = np.repeat(np.arange(len(texts), dtype=np.int64), lengths)
        keys, counts = np.unique(rows * self.n_features + found, return_counts=True)
        row, column = np.divmod(keys, self.n_features)
        values = counts.astype(np.float64)
        if self.l2:  # counts are integers, so the sums of squares are exact in any order
            values /= np.sqrt(np.bincount(row, weights=values * values, minlength=len(texts)))[row]
        where = self.position[column]
        kept = where >= 0
        out[row[kept], where[kept]] = values[kept]
        return out

    def grams_by_column(self, text: str) -> dict[int, list[str]]:
        """The model columns the text's n-grams land in, each with those n-grams (hashing may put several in one)."""
        found: dict[int, list[str]] = {}
        for gram in dict.fromkeys(self._ngrams(text)):
            column = self._column.get(self._index[gram])
            if column is not None:
                found.setdefault(column, []).append(gram)
        return found

    def _one(self, text: str) -> np.ndarray:
        """``transform([text])`` with C-level dict and set calls: Counter, then only the held columns."""
        out = np.zeros((1, self.width))
        counts = Counter(map(self._index.__getitem__, self._ngrams(text)))
        held = self._wanted.intersection(counts)  # a lookup per distinct n-gram
        if held:
            norm = 1.0
            if self.l2:  # integer counts: the sum of squares is exact, as in the batch path
                every = list(counts.values())
                norm = math.sqrt(sum(map(operator.mul, every, every)))
            values = list(map(norm.__rtruediv__, map(counts.__getitem__, held)))  # count / norm
            out[0, list(map(self._column.__getitem__, held))] = values
        return out

    def _ngrams(self, text: str) -> list[str]:
        """The text's n-grams as scikit-learn's _char_wb_ngrams makes them: each whitespace-separated
        word, padded with one space; a word shorter than n is counted once, at its shortest n."""
        if self.lowercase:
            text = text.lower()
        grams: list[str] = []
        for word in text.split():
            padded = f" {word} "
            length = len(padded)
            shorter: str | list[str] = padded  # the (n-1)-grams, to extend by one character
            for n in range(self.low, self.high + 1):
                if length <= n:
                    grams.append(padded)
                    break
                if n == 1:
                    shorter = padded
                elif n == self.low:
                    shorter = list(map(padded.__getitem__, map(slice, range(length - n + 1), range(n, length + 1))))
                else:
                    shorter = list(map(operator.add, shorter, padded[n - 1 :]))
                grams.extend(shorter)
        return grams


class _HashCache(dict[str, int]):
    """n-gram -> hashed column, as scikit-learn computes it; a miss hashes (bounded: cleared when full)."""

    def __init__(self, featurizer: HashedCharNgrams) -> None:
        super().__init__()
        self.n_features = featurizer.n_features

    def __missing__(self, gram: str) -> int:
        h = mmh3.hash(gram, 0, signed=True)
        # abs(INT_MIN) overflows in C; scikit-learn defines it as below.
        index = (2**31 - 1 - (self.n_features - 1)) % self.n_features if h == _INT_MIN else abs(h) % self.n_features
        if len(self) >= _CACHE_LIMIT:
            self.clear()
        self[gram] = index
        return index
