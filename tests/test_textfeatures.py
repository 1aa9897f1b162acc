"""The numpy-free-of-scikit-learn text featurizer against scikit-learn's HashingVectorizer, value for value.

Texts mix scripts, case, every kind of whitespace, words shorter than the n-grams, and repeats; specs
vary the n-gram range, the case folding, the norm and the width (a narrow one makes n-grams collide,
so counts merge by column as scikit-learn merges them). Values must be identical, not close.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from ferry.runtimes.lightgbm import make_featurizer
from ferry.runtimes.textfeatures import HashedCharNgrams

ALPHABET = [*"abcXYZ019 .,!?ÀÉßǅİ映画最高でした", " ", "\t", "\n", "\r\n", "\u3000", "\u00a0", "  "]
texts = st.lists(st.lists(st.sampled_from(ALPHABET), max_size=30).map("".join), min_size=1, max_size=12)
specs = st.fixed_dictionaries(
    {
        "type": st.just("char_ngrams"),
        "ngram_range": st.sampled_from([[1, 1], [1, 3], [2, 4], [3, 5]]),
        "n_features": st.sampled_from([16, 2**10, 2**14]),
        "lowercase": st.booleans(),
        "norm": st.sampled_from(["l2", None]),
    }
)


@settings(max_examples=150, deadline=None)
@given(batch=texts, spec=specs, seed=st.integers(0, 2**16))
def test_values_are_scikit_learns_exactly(batch: list[str], spec: dict[str, Any], seed: int) -> None:
    reference = make_featurizer(spec).transform(batch).toarray()
    n = spec["n_features"]
    everything = HashedCharNgrams(spec, np.arange(n))
    np.testing.assert_array_equal(everything.transform(batch), reference)
    # The columns a model reads, in its own order: the norm still counts every n-gram.
    columns = np.random.default_rng(seed).permutation(n)[: max(1, n // 3)]
    np.testing.assert_array_equal(HashedCharNgrams(spec, columns).transform(batch), reference[:, columns])
    np.testing.assert_array_equal(everything.transform(batch), reference)  # again, from the n-gram cache
    one_by_one = np.concatenate([everything.transform([text]) for text in batch])  # a single text has its own path
    np.testing.assert_array_equal(one_by_one, reference)
    np.testing.assert_array_equal(HashedCharNgrams(spec, columns).transform(batch[:1]), reference[:1, columns])


def test_the_review_example_text_matches() -> None:
    spec = {"type": "char_ngrams", "ngram_range": [1, 3], "n_features": 2**14, "norm": "l2", "lowercase": True}
    batch = ["最高の映画でした！", "", "   ", "a", "Ab AB ab", "最高の映画でした！もう一度観たいです。"]
    reference = make_featurizer(spec).transform(batch).toarray()
    featurizer = HashedCharNgrams(spec, np.arange(2**14))
    np.testing.assert_array_equal(featurizer.transform(batch), reference)
    np.testing.assert_array_equal(np.concatenate([featurizer.transform([text]) for text in batch]), reference)
