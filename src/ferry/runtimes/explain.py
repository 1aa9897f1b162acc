"""Exact per-feature contributions of a compiled model, in its raw (margin) space: the answer to "why?".

Trees: path-dependent TreeSHAP (Lundberg et al. 2018, Algorithm 2) over ``TreeEnsemble``'s arrays. One
leaf's path is the product, over its distinct features, of ``(z + o·t)``: ``z`` is the share of training
rows (``cover``) that the feature's splits on the path keep, ``o`` (0 or 1) whether the row follows
them. From that leaf, feature ``i`` gets ``value · (o_i - z_i) · Σ_s w(s)·c_s``, where ``c_s`` are the
coefficients of the product without ``i`` and ``w(s) = s!(d-1-s)!/d!``: what EXTEND and UNWIND build one
row and one leaf at a time. Here every leaf and every row of the batch go at once: a leaf with ``d``
distinct features has only ``2^d`` answers (``o`` is 0 or 1), tabulated on first use within
``TABLE_BYTES`` (the per-path formulation of Fast TreeSHAP v2 and GPUTreeShap: a feature met twice on a
path is one slot whose condition is both splits', its ``z`` the product of their shares); deeper leaves'
answers are computed per distinct (leaf, pattern) and kept. A row adds only the leaves whose pattern
differs from a reference row's (``TreeShap``). Whether a row follows a split is the evaluator's own
rule (``TreeEnsemble.go_right``), so a missing value or a zero takes the split's default direction
exactly as the prediction does.

Linear models: ``coefficient · (value - training mean)``, the training mean being where a centring
scaler sends zero, so a standardised column's contribution is ``coef_j / scale_j · (x_j - mean_j)``.

In both, ``expected_value + Σ contributions`` is the raw score (the margin before the link).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ferry.runtimes.trees import TreeEnsemble

# Tabulated leaves: at most 2^TABLE_MAX_FEATURES patterns a leaf, and this many bytes in all (per model).
TABLE_BYTES = 64 * 2**20
TABLE_MAX_FEATURES = 12
CHUNK_ELEMENTS = 2**22  # elements of the working polynomials per numpy call, to bound memory
SHAPLEY_ELEMENTS = 2**18  # elements of the working polynomials per chunk: they stay in cache
CHUNK_ADDS = 2**15  # (row, slot) additions per lookup and bincount: arrays that stay in cache
DEEP_ADDS = 2**19  # the same for untabulated leaves, whose new answers are computed per chunk
# Deeper leaves' answers kept once computed, per group of leaves (sorted keys and weights).
CACHE_BYTES = 16 * 2**20

# The link from the raw score to what the model answers, named as SHAP names it, by compiled transform.
LINKS = {
    "identity": "identity",
    "probabilities": "identity",  # forests' class probabilities are their raw (averaged) score
    "exp": "log",
    "sigmoid": "logit",
    "logistic": "logit",
    "softmax": "softmax",
}


class NotExplainable(ValueError):
    """The model has no exact explanation here; the message says why."""


@dataclass
class Contributions:
    """``values`` [rows, outputs, features]; ``expected_value`` [outputs]; ``score`` [rows, outputs]."""

    values: np.ndarray
    expected_value: np.ndarray
    score: np.ndarray


# -- trees -----------------------------------------------------------------------------------------------
@dataclass
class _Leaves:
    """The leaves whose paths hold ``d`` distinct features: their data, and their rows in a batch's ``missed``."""

    d: int
    zero: np.ndarray  # float64 [leaves, d]: z, the share of cover the slot's splits keep
    value: np.ndarray  # float64 [leaves, width]
    start: int  # their first row in ``missed`` [leaves, rows]
    target: np.ndarray  # intp [leaves, d * width]: where each (slot, column) adds up in a row's [outputs * features]
    reference: np.ndarray  # [leaves]: the pattern of the reference row (``TreeShap``)
    base: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))  # [leaves, d * width]: at ``reference``
    table: np.ndarray | None = None  # [leaves * 2^d, d * width or d]: answers by pattern less the reference's
    cache: _Kept | None = None  # untabulated answers met before


class TreeShap:
    """Path-dependent TreeSHAP of one ensemble, every row and leaf of a batch at once.

    Built by the first explanation: every leaf's path, and the answers of the shallow leaves for each of
    their ``2^d`` patterns (``TABLE_BYTES``). A call makes one decision per split node and turns them into
    each leaf's pattern (a bit per slot: the row misses one of the slot's splits) with one gather and
    shift-OR per slot. Answers are counted from a reference row that takes the larger-cover side of
    every split (the training rows' usual path): its contributions are summed once, and a leaf adds
    only where a row's pattern differs from the reference's (a table of differences, looked up and
    added per feature with one ``bincount``), which skips most leaves of sparse rows (a text's absent
    n-grams) and many of dense ones. A deeper leaf's answer is computed once per distinct pattern and
    kept (``CACHE_BYTES``), since rows mostly follow a deep leaf alike.
    """

    def __init__(self, ensemble: TreeEnsemble, players: np.ndarray | None = None) -> None:
        """``players``: for each input column, the player it belongs to (0..n-1): the columns one input was
        encoded into (a one-hot encoding's) play as one, and the answers are per player. Else each column."""
        if ensemble.cover is None:
            raise NotExplainable("the bundle has no node covers (built before Ferry stored them): rebuild it")
        self.ensemble = ensemble
        self.width = int(ensemble.leaf_value.shape[1])
        self.outputs = ensemble.n_outputs
        used = ensemble.features_used
        self.player = np.arange(used.size) if players is None else np.asarray(players, dtype=np.intp)[used]
        self.players = None if players is None else int(np.max(players)) + 1
        self.n_features = max(int(used.size) if players is None else int(np.max(players)) + 1, 1)
        self._built = False
        self._building = threading.Lock()

    def _ready(self) -> None:
        """Paths and tables, built by the first explanation (0.2-1 s and up to ``TABLE_BYTES``), not at load:
        a server's start-up and its memory budget pay nothing for models nobody asks to explain."""
        if self._built:
            return
        with self._building:
            if not self._built:
                self._build()
                self._built = True

    def _build(self) -> None:
        ensemble = self.ensemble
        paths = _paths(ensemble, self.player)
        column_of = ensemble.tree_column if self.width == 1 else np.zeros(ensemble.roots.size, dtype=np.int32)
        expected = np.zeros(self.outputs)
        groups: dict[int, list[int]] = {}
        for index, (tree, leaf, features, zero, _) in enumerate(paths):
            value = ensemble.leaf_value[leaf] * math.prod(zero)
            if self.width == 1:
                expected[column_of[tree]] += value[0]
            else:
                expected += value
            if features:
                groups.setdefault(len(features), []).append(index)
        self.expected = (ensemble.init + expected) / (self._trees_per_output() if ensemble.average else 1)
        if groups and max(groups) > 64:
            raise NotExplainable("a leaf's path splits on more than 64 distinct features")
        self.word = next(
            t for t in (np.uint8, np.uint16, np.uint32, np.uint64) if np.iinfo(t).bits >= max(groups, default=1)
        )

        # A leaf's slot is missed when the row goes the other way at one of the slot's splits: each split
        # on the path reads a row of ``either`` = [go_right | !go_right | 0] (decisions per node, rows-minor).
        # Leaves go deepest first, so slot k's first splits are read by a prefix of them (``reads[k]``);
        # a feature's later splits on the same path are ORed in by ``again``. The reference row goes to
        # the child with the larger cover at every split.
        self.nodes = np.unique([n for p in paths for n, _, _ in p[4]]).astype(np.intp)
        row_of = {int(node): row for row, node in enumerate(self.nodes)}
        cover, children = np.asarray(ensemble.cover, dtype=np.float64), ensemble.children
        usual_right = cover[children[:, 1]] > cover[children[:, 0]]
        order = [index for d in sorted(groups, reverse=True) for index in groups[d]]
        reads: list[list[int]] = [[] for _ in range(max(groups, default=0))]
        again: list[list[tuple[int, int, int]]] = []
        reference = np.zeros(len(order), dtype=self.word)
        for position, index in enumerate(order):
            seen: set[int] = set()
            repeats = 0
            for node, goes_right, k in paths[index][4]:
                read = row_of[node] + self.nodes.size * goes_right
                if goes_right != usual_right[node]:
                    reference[position] |= self.word(1 << k)
                if k not in seen:
                    seen.add(k)
                    reads[k].append(read)
                    continue
                if len(again) <= repeats:
                    again.append([])
                again[repeats].append((position, read, 1 << k))
                repeats += 1
        self.reads = [np.asarray(r, dtype=np.intp) for r in reads]  # reads[k]: the first len(reads[k]) leaves'
        self.again = [
            (
                np.asarray([a for a, _, _ in found], dtype=np.intp),
                np.asarray([r for _, r, _ in found], dtype=np.intp),
                np.asarray([b for _, _, b in found], dtype=self.word)[:, None],
            )
            for found in again
        ]
        self.reference = reference
        # Groups of the shallow leaves that fit the table budget (shallowest first); every deeper leaf in one
        # group whose paths are padded to the deepest with followed slots of cover share 1: a feature that
        # never changes the game (a null player) takes nothing and changes no other share.
        # Several output columns (a forest's classes) fold their leaf values into the tables where all of them
        # then fit; otherwise the tables hold the slots' shares, multiplied by the values after the lookup.
        budget, tabulated = TABLE_BYTES, set[int]()
        for d in sorted(groups):
            size = len(groups[d]) * (2**d) * d * 8
            if d > TABLE_MAX_FEATURES or size > budget:
                break
            budget, tabulated = budget - size, tabulated | {d}
        # Class probabilities add up to the same total in every leaf, so the last class's contributions are
        # minus the others' (those of a constant are zero): it is derived, not computed (half a binary forest).
        sums = ensemble.leaf_value[ensemble.children[:, 0] == np.arange(ensemble.children.shape[0])].sum(axis=1)
        derived = self.width > 1 and bool(np.allclose(sums, sums[0], rtol=0, atol=1e-12))
        self.columns = self.width - derived  # the columns computed
        self.folded = self.width == 1 or (TABLE_BYTES - budget) * self.columns <= TABLE_BYTES
        deep = [index for d in sorted(groups, reverse=True) if d not in tabulated for index in groups[d]]
        parts = [(max(groups), deep)] if deep else []
        parts += [(d, groups[d]) for d in sorted(tabulated, reverse=True)]
        self.groups: list[_Leaves] = []
        start = 0
        columns = np.arange(self.columns, dtype=np.intp) * self.n_features
        for d, members in parts:
            slot_features = np.zeros((len(members), d), dtype=np.intp)
            shares = np.ones((len(members), d))
            for row, index in enumerate(members):
                slot_features[row, : len(paths[index][2])] = paths[index][2]
                shares[row, : len(paths[index][3])] = paths[index][3]
            column = np.asarray([column_of[paths[i][0]] for i in members], dtype=np.intp)
            if self.width == 1:
                target = (column * self.n_features)[:, None] + slot_features
            else:
                target = (slot_features[:, :, None] + columns).reshape(len(members), d * self.columns)
            self.groups.append(
                _Leaves(
                    d=d,
                    zero=shares,
                    value=ensemble.leaf_value[[paths[i][1] for i in members], : self.columns],
                    start=start,
                    target=target,
                    reference=reference[start : start + len(members)],
                )
            )
            start += len(members)
        self.starts = np.asarray([g.start for g in self.groups] + [start], dtype=np.intp)
        for group in self.groups:
            if group.d in tabulated and group.start >= len(deep):
                self._tabulate(group)
            else:
                which = np.arange(group.zero.shape[0], dtype=np.intp)
                group.base = self._spread(group, self._answers(group, which, group.reference.astype(np.uint64)))
                group.cache = _Kept(group.d * self.columns)
                slots = np.asarray([len(paths[i][2]) for i in deep])
                self._seed(group, slots, TABLE_BYTES - (TABLE_BYTES - budget) * (self.columns if self.folded else 1))
        # The reference row's contributions, to which each row adds its differences.
        size = self.outputs * self.n_features
        found = np.zeros(size)
        for group in self.groups:
            found += np.bincount(group.target.ravel(), group.base.ravel(), minlength=size)
        self.reference_values = found

    def _trees_per_output(self) -> int:
        trees = int(self.ensemble.roots.size)
        return trees // self.outputs if self.width != self.outputs else trees

    def _tabulate(self, group: _Leaves) -> None:
        """The group's answers for each of the ``2^d`` patterns, less the reference's (``base``)."""
        leaves, d = group.zero.shape
        patterns = 2**d
        o = 1.0 - ((np.arange(patterns)[:, None] >> np.arange(d)) & 1)  # [patterns, d]
        table = np.empty((leaves, patterns, d))
        step = max(1, CHUNK_ELEMENTS // (patterns * (d + 1) ** 2))
        for lo in range(0, leaves, step):
            zero = group.zero[lo : lo + step]
            ones = np.broadcast_to(o[:, None, :], (patterns, zero.shape[0], d))
            table[lo : lo + step] = shapley(zero, ones).transpose(1, 0, 2)
        if self.width == 1:
            table *= group.value[:, :1, None]
        elif self.folded:  # each (slot, column) times the leaf's value in that column
            table = (table[:, :, :, None] * group.value[:, None, None, :]).reshape(leaves, patterns, -1)
        base = table[np.arange(leaves), group.reference.astype(np.intp)]
        table -= base[:, None, :]
        group.table = table.reshape(leaves * patterns, -1)
        group.base = base if self.folded else self._spread(group, base)

    def _seed(self, group: _Leaves, slots: np.ndarray, budget: int) -> None:
        """The untabulated leaves' answers for the patterns one or two slots away from the reference's, within
        ``budget`` bytes: most rows differ from the reference in a slot or two of a deep leaf (97% of the
        reviews model's pairs), so a row never seen before mostly finds its answers kept."""
        leaves, d = group.zero.shape
        if leaves * 2.0**d >= 2**63:
            return
        one = np.uint64(1) << np.arange(d, dtype=np.uint64)
        two = (one[:, None] | one[None, :])[np.triu_indices(d, 1)]
        limit = np.uint64(1) << slots.astype(np.uint64)  # a leaf's patterns lie below 2^slots
        for masks in (np.concatenate([one, two]), one):
            valid = masks[None, :] < limit[:, None]
            if int(valid.sum()) * (group.target.shape[1] + 1) * 8 <= budget:
                break
        else:
            return
        which, at = np.nonzero(valid)  # by leaf: its slots' single flips, then its pairs in row order
        pattern = group.reference.astype(np.uint64)[which] ^ masks[at]
        answers = self._spread(group, self._answers(group, which, pattern), which)
        counts = valid.sum(axis=1)
        assert group.cache is not None
        group.cache.seed = _Seed(answers, np.cumsum(counts) - counts, slots.astype(np.intp), masks.size > d)

    def _spread(self, group: _Leaves, weights: np.ndarray, which: np.ndarray | None = None) -> np.ndarray:
        """[n, d * width]: slot weights of the group's leaves ``which`` (all) times their values per column."""
        if self.width == 1:
            return weights
        value = group.value if which is None else group.value.take(which, axis=0)
        spread = np.empty((weights.shape[0], weights.shape[1], self.columns))
        for column in range(self.columns):
            np.multiply(weights, value[:, column : column + 1], out=spread[:, :, column])
        return spread.reshape(weights.shape[0], -1)

    def explain_compact(self, x: np.ndarray) -> Contributions:
        """Contributions to the ``features_used`` columns of rows holding just those columns."""
        self._ready()
        x = np.asarray(x, dtype=np.float64)
        rows = x.shape[0]
        size = self.outputs * self.n_features
        flat = np.zeros(rows * size)
        if self.groups and rows:
            missed = self._missed(x)
            # Only the (leaf, row) pairs whose pattern differs from the reference's add anything.
            pair = np.flatnonzero(missed != self.reference[:, None])
            leaf = pair // rows
            offset = (pair - leaf * rows) * size
            pattern = missed.ravel().take(pair)
            bounds = np.searchsorted(leaf, self.starts)
            for group, lo, hi in zip(self.groups, bounds[:-1], bounds[1:], strict=True):
                # In chunks of ~CHUNK_ADDS elements: their arrays stay in cache, and nothing is concatenated;
                # deep leaves in larger ones, as each computes its new answers in one go.
                step = max(1, (CHUNK_ADDS if group.table is not None else DEEP_ADDS) // group.target.shape[1])
                for at in range(lo, hi, step):
                    end = min(at + step, hi)
                    which = leaf[at:end] - group.start
                    if group.table is not None:
                        found = group.table.take(which * (2**group.d) + pattern[at:end], axis=0)
                        if not self.folded:
                            found = self._spread(group, found, which)
                    else:
                        found = self._deep(group, which, pattern[at:end].astype(np.uint64))
                        found -= group.base.take(which, axis=0)
                    target = group.target.take(which, axis=0)
                    target += offset[at:end, None]
                    # Added one by one in (leaf, slot) order: a row's sums are the same whatever rows share its
                    # batch (chunks of a bincount each would round where the batch put their bounds).
                    np.add.at(flat, target.ravel(), found.ravel())
        values = flat.reshape(rows, self.outputs, self.n_features)
        if self.groups:
            values += self.reference_values.reshape(self.outputs, self.n_features)
        if self.columns < self.width:
            values[:, -1] = -values[:, :-1].sum(axis=1)
        if self.players is None:
            values = values[:, :, : self.ensemble.features_used.size]
        if self.ensemble.average:
            values = values / self._trees_per_output()
        return Contributions(values, self.expected.copy(), self.ensemble.predict_compact(x))

    def _missed(self, x: np.ndarray) -> np.ndarray:
        """[leaves, rows]: bit k set where the row goes the other way at one of slot k's splits."""
        rows = x.shape[0]
        go = np.ascontiguousarray(self.ensemble.go_right(x, self.nodes).T, dtype=self.word)
        either = np.concatenate([go, 1 - go, np.zeros((1, rows), dtype=self.word)])
        missed: np.ndarray = either.take(self.reads[0], axis=0)
        for k in range(1, len(self.reads)):
            missed[: self.reads[k].size] |= either.take(self.reads[k], axis=0) << self.word(k)
        for position, read, bit in self.again:
            missed[position] |= either.take(read, axis=0) * bit
        return missed

    def _deep(self, group: _Leaves, which: np.ndarray, pattern: np.ndarray) -> np.ndarray:
        """[n, d * width]: the answers of untabulated leaves ``which`` for their ``pattern``s (uint64),
        computed once per distinct (leaf, pattern) and kept for later calls (``_Kept``)."""
        d = group.d
        leaves = group.zero.shape[0]
        if leaves * 2.0**d >= 2**63:  # too many bits for one key (a pattern of ~64 slots): nothing kept
            pairs = np.column_stack([which.astype(np.uint64), pattern])
            distinct, inverse = np.unique(pairs, axis=0, return_inverse=True)
            leaf = distinct[:, 0].astype(np.intp)
            answers = self._spread(group, self._answers(group, leaf, distinct[:, 1]), leaf)
            return answers[inverse.ravel()]
        key = (which.astype(np.uint64) << np.uint64(d)) | pattern
        found = np.empty((key.size, group.target.shape[1]))
        assert group.cache is not None
        new = None
        if group.cache.seed is not None:
            new = group.cache.seed.find(which, pattern ^ group.reference.astype(np.uint64)[which], found)
        new = group.cache.find(key, found, new)
        if new.any():
            distinct, inverse = np.unique(key[new], return_inverse=True)
            leaf = (distinct >> np.uint64(d)).astype(np.intp)
            answers = self._spread(group, self._answers(group, leaf, distinct & np.uint64(2**d - 1)), leaf)
            found[new] = answers[inverse.ravel()]
            group.cache.add(distinct, answers)
        return found

    def _answers(self, group: _Leaves, which: np.ndarray, pattern: np.ndarray) -> np.ndarray:
        """[n, d]: the answers of the group's leaves ``which`` for the missed ``pattern``s (uint64)."""
        d = group.d
        ones = 1.0 - ((pattern[:, None] >> np.arange(d, dtype=np.uint64)) & np.uint64(1)).astype(np.float64)
        step = max(1, CHUNK_ELEMENTS // ((d + 1) ** 2))
        answers = np.concatenate(
            [
                shapley(group.zero[which[lo : lo + step]][None], ones[None, lo : lo + step])[0]
                for lo in range(0, which.shape[0], step)
            ]
            or [np.zeros((0, d))]
        )
        if self.width == 1:
            answers *= group.value[which, :1]
        return answers

    def explain(self, x: np.ndarray) -> Contributions:
        """Contributions to every input column of full-width rows (zero for columns no split reads), or to
        every player."""
        self._ready()
        x = np.asarray(x, dtype=np.float64)
        used = self.ensemble.features_used
        compact = self.explain_compact(x[:, used])
        if self.players is not None:  # already one column per player
            return compact
        values = np.zeros((x.shape[0], self.outputs, x.shape[1]))
        values[:, :, used] = compact.values
        return Contributions(values, compact.expected_value, compact.score)


_LeafPath = tuple[int, int, list[int], list[float], list[tuple[int, bool, int]]]


def _paths(ensemble: TreeEnsemble, player: np.ndarray) -> list[_LeafPath]:
    """Every leaf's (tree, leaf node, distinct players, their shares z, conditions (node, right, slot))."""
    children, feature = ensemble.children, ensemble.feature
    cover = np.asarray(ensemble.cover, dtype=np.float64)
    paths: list[_LeafPath] = []
    for tree, root in enumerate(ensemble.roots):
        stack: list[tuple[int, list[tuple[int, bool, int]], dict[int, float]]] = [(int(root), [], {})]
        while stack:
            node, conditions, zero = stack.pop()
            left, right = int(children[node, 0]), int(children[node, 1])
            if left == node:
                slots = {f: k for k, f in enumerate(zero)}
                paths.append(
                    (tree, node, list(zero), list(zero.values()), [(n, r, slots[f]) for n, r, f in conditions])
                )
                continue
            split = int(player[feature[node]])
            for child, goes_right in ((right, True), (left, False)):
                kept = dict(zero)
                share = cover[child] / cover[node] if cover[node] > 0 else 0.0
                kept[split] = kept.get(split, 1.0) * share  # a feature met again: the product of its shares
                stack.append((child, [*conditions, (node, goes_right, split)], kept))
    return paths


class _Kept:
    """Answers of (leaf, pattern) keys met before, within ``CACHE_BYTES``: a large sorted level and a small
    one that new keys join, merged into the large one once it outgrows an eighth of it, so a call copies
    the small level and a key is copied a bounded number of times on average. Past the bound it starts
    over from the new keys (or holds nothing). ``seed`` holds answers computed with the tables (``_seed``)."""

    def __init__(self, width: int) -> None:
        self.entry = (width + 1) * 8  # bytes: a key and its answers
        self.levels: list[tuple[np.ndarray, np.ndarray]] = []
        self.seed: _Seed | None = None  # computed with the tables, never dropped

    def clear(self) -> None:
        self.levels = []

    @property
    def entries(self) -> int:
        return sum(keys.size for keys, _ in self.levels)

    def find(self, key: np.ndarray, out: np.ndarray, new: np.ndarray | None = None) -> np.ndarray:
        """Fills ``out`` where ``key`` is kept (of those ``new`` marks, else all); returns the mask of those
        that are not."""
        new = np.ones(key.size, dtype=bool) if new is None else new
        for keys, answers in self.levels:
            ask = np.flatnonzero(new)
            if not ask.size:
                break
            at = np.minimum(np.searchsorted(keys, key[ask]), keys.size - 1)
            hit = keys[at] == key[ask]
            out[ask[hit]] = answers[at[hit]]
            new[ask[hit]] = False
        return new

    def add(self, keys: np.ndarray, answers: np.ndarray) -> None:
        """Keeps sorted, distinct ``keys`` not kept yet, with their answers."""
        if (self.entries + keys.size) * self.entry > CACHE_BYTES:
            self.levels = [(keys, answers)] if keys.size * self.entry <= CACHE_BYTES else []
            return
        levels = [*self.levels, (keys, answers)]
        # Merge the newest level into the one before while it is over an eighth of that one's size.
        while len(levels) > 1 and levels[-1][0].size * 8 > levels[-2][0].size:
            (low, low_answers), (high, high_answers) = levels[-2], levels[-1]
            merged = np.concatenate([low, high])
            order = np.argsort(merged, kind="stable")  # two sorted runs: a linear merge
            levels[-2:] = [(merged[order], np.concatenate([low_answers, high_answers])[order])]
        self.levels = levels


@dataclass
class _Seed:
    """Untabulated leaves' answers for the patterns one or two slots from the reference's, by leaf: its
    ``slots`` single flips, then (``pairs``) its pairs j < k in row order; found by arithmetic, not search."""

    answers: np.ndarray  # [entries, d * width]
    start: np.ndarray  # intp [leaves]: each leaf's first entry
    slots: np.ndarray  # intp [leaves]
    pairs: bool

    def find(self, which: np.ndarray, flipped: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Fills ``out`` where the leaves ``which`` differ from the reference in one or two slots (``flipped``,
        uint64 bits); returns the mask of the others."""
        one = np.uint64(1)
        rest = flipped & (flipped - one)  # without the lowest bit
        hit = (flipped != 0) & (rest == 0)
        if self.pairs:
            hit |= (rest != 0) & ((rest & (rest - one)) == 0)
        at = np.flatnonzero(hit)
        if at.size:
            high, leaf = rest[at], which[at]
            j = np.log2((flipped[at] ^ high).astype(np.float64)).astype(np.intp)  # a power of two's bit
            k = np.log2(np.maximum(high, one).astype(np.float64)).astype(np.intp)
            slots = self.slots[leaf]
            pair = slots + j * slots - j * (j + 1) // 2 + (k - j - 1)
            out[at] = self.answers[self.start[leaf] + np.where(high != 0, pair, j)]
        missing: np.ndarray = ~hit
        return missing


def shapley(zero: np.ndarray, ones: np.ndarray) -> np.ndarray:
    """``(o_i - z_i) · Σ_{S ⊆ U - i} |S|!(d-|S|-1)!/d! · Π_S o · Π_{U - S - i} z`` for every slot ``i``.

    ``zero`` [leaves, d], ``ones`` [rows, leaves, d] (0 or 1): [rows, leaves, d]. The polynomial of the
    other slots is the product of the slots before ``i`` (``prefix``) and after it (``suffix``), so no
    division (UNWIND's) is needed; all the terms are positive, so nothing cancels.
    """
    rows, leaves, d = ones.shape
    z = np.broadcast_to(zero, ones.shape).reshape(-1, d)
    o = ones.reshape(-1, d)
    out = np.empty((z.shape[0], d))
    step = max(1, SHAPLEY_ELEMENTS // (2 * d * d))
    for lo in range(0, z.shape[0], step):
        out[lo : lo + step] = _shapley(z[lo : lo + step], o[lo : lo + step])
    return out.reshape(rows, leaves, d)


def _shapley(z: np.ndarray, o: np.ndarray) -> np.ndarray:
    """``shapley`` of [n, d] items: every slot's prefix and suffix products grown side by side, d - 1 steps."""
    n, d = z.shape
    # both[0, k]: the product of the slots before k; both[1, j]: of the last j slots (coefficients by degree).
    both = np.zeros((2, d, n, d))
    both[:, 0, :, 0] = 1.0
    zz = np.stack([z, z[:, ::-1]])[..., None]  # [2, n, d, 1]: slot k forward, slot d - 1 - k backward
    oo = np.stack([o, o[:, ::-1]])[..., None]
    for k in range(d - 1):
        np.multiply(both[:, k], zz[:, :, k], out=both[:, k + 1])
        both[:, k + 1, :, 1:] += both[:, k, :, :-1] * oo[:, :, k]
    # Slot i: Σ_{m, j} prefix_i[m] · w(m + j) · suffix_i[j], the suffix of slot i being both[1, d - 1 - i]:
    # one product over all slots for few items (fewer calls), else per slot over its degrees (d/6 the work).
    hankel = _hankel(d)
    if n * d < 2**12:
        found = ((both[0] @ hankel) * both[1, ::-1]).sum(axis=-1)  # [d, n]
    else:
        found = np.empty((d, n))
        for i in range(d):
            prefix, suffix = both[0, i, :, : i + 1], both[1, d - 1 - i, :, : d - i]
            found[i] = ((prefix @ hankel[: i + 1, : d - i]) * suffix).sum(axis=-1)
    out: np.ndarray = found.T * (o - z)
    return out


@functools.cache
def _hankel(d: int) -> np.ndarray:
    """[d, d]: ``w(m + j)``, the Shapley weight of a coalition of ``m + j`` of the other ``d - 1`` (0 past them)."""
    weight = [math.factorial(s) * math.factorial(d - 1 - s) / math.factorial(d) for s in range(d)] + [0.0] * d
    hankel: np.ndarray = np.asarray(weight)[np.add.outer(np.arange(d), np.arange(d))]
    return hankel


# -- linear models ------------------------------------------------------------------------------------------
def linear(scaled: np.ndarray, coef: np.ndarray, intercept: np.ndarray, baseline: np.ndarray) -> Contributions:
    """``coef · (scaled - baseline)`` per column; ``baseline`` is the training mean in the linear step's units."""
    coef = np.atleast_2d(np.asarray(coef, dtype=np.float64))  # [outputs, features]
    intercept = np.atleast_1d(np.asarray(intercept, dtype=np.float64))
    values = (scaled - baseline)[:, None, :] * coef[None, :, :]
    expected = baseline @ coef.T + intercept
    score = scaled @ coef.T + intercept
    return Contributions(values, expected, score)


# -- a compiled program ------------------------------------------------------------------------------------
@dataclass
class Explanation:
    """Contributions of a batch to the model's raw score, with what a reader needs to interpret them.

    ``contributions`` [rows, outputs, features] in the raw (margin) space; ``expected_value`` [outputs]
    and ``score`` [rows, outputs] (the model's own raw score: ``expected_value + Σ contributions``).
    ``outputs`` names the score's columns (class labels) where there are several; a binary model's one
    score is for class ``positive``.
    """

    contributions: np.ndarray
    expected_value: np.ndarray
    score: np.ndarray
    features: list[str]
    method: str
    link: str
    outputs: list[Any] | None = None
    positive: Any = None
    row_features: list[dict[int, str]] | None = None  # text models: each row's own names of its columns
    prediction: Any = None  # the model's answer for the same rows, where serving adds it
    standard_error: np.ndarray | None = None  # an estimate's (``sampled``), shaped as ``contributions``


def split_explanation(explanation: Explanation, sizes: list[int]) -> list[Explanation]:
    """The explanation of a batch cut into consecutive parts of ``sizes`` rows, one per request batched in it:
    each row's contributions, score and names are its own, so every part adds up as the whole did."""
    if len(sizes) == 1:
        return [explanation]
    parts, start = [], 0
    names, errors = explanation.row_features, explanation.standard_error
    for size in sizes:
        rows = slice(start, start + size)
        parts.append(
            dataclasses.replace(
                explanation,
                contributions=explanation.contributions[rows],
                score=explanation.score[rows],
                row_features=names[rows] if names is not None else None,
                prediction=None,
                standard_error=errors[rows] if errors is not None else None,
            )
        )
        start += size
    return parts


class ProgramExplainer:
    """Exact contributions to a compiled program's input columns: scalers, then trees or a linear step.

    A scaler maps each column to itself, so a tree's contributions to its scaled columns are the input
    columns' own; a linear step's coefficients are divided by the scales, and its baseline is the
    training mean (where a centring scaler sends zero, else the build's ``training_stats`` means).
    """

    def __init__(self, steps: list[Any], transform: str, means: np.ndarray | None = None) -> None:
        *scalers, last = steps or [None]
        if any(not hasattr(s, "scale") for s in scalers):
            raise NotExplainable("a step other than a scaler precedes the model")
        self.scalers = scalers
        self.link = LINKS.get(transform, transform)
        if hasattr(last, "ensemble"):
            self.method = "tree_shap"
            self.trees = TreeShap(last.ensemble)
            return
        if not hasattr(last, "coef_t"):
            raise NotExplainable("only tree ensembles and linear models have exact contributions")
        self.method = "linear"
        self.coef = np.asarray(last.coef_t).T
        self.intercept = np.asarray(last.intercept)
        centring = [i for i, s in enumerate(scalers) if s.mean is not None]
        if centring:  # the training mean goes to zero there; later steps may only rescale it
            self.baseline = _scaled(np.zeros((1, self.coef.shape[1])), scalers[centring[-1] + 1 :])[0]
        elif means is not None:
            self.baseline = _scaled(np.asarray(means, dtype=np.float64)[None, :], scalers)[0]
        else:
            raise NotExplainable(
                "a linear model needs its training mean: put a StandardScaler before it, "
                "or build it with --training-data FILE (ferry.build(..., training_data=...))"
            )

    def __call__(self, x: np.ndarray) -> Contributions:
        scaled = _scaled(np.asarray(x, dtype=np.float64), self.scalers)
        if self.method == "tree_shap":
            return self.trees.explain(scaled)
        return linear(scaled, self.coef, self.intercept, self.baseline)

    def explain_compact(self, x: np.ndarray) -> Contributions:
        """Trees only, rows of the columns they read (a text model's featurizer writes just those)."""
        return self.trees.explain_compact(x)


def _scaled(x: np.ndarray, scalers: list[Any]) -> np.ndarray:
    for scaler in scalers:
        x = scaler(x)
    return x


# -- what serving asks -------------------------------------------------------------------------------------
EXPLAINABLE = (
    "compiled tree ensembles (LightGBM; XGBoost; CatBoost; scikit-learn trees, forests and gradient boosting) "
    "and linear "
    "models (after a StandardScaler, or built with training_data)"
)


def explanation_of(runtime: Any, runtime_name: str = "") -> dict[str, str]:
    """``{method, link}`` where the runtime explains its predictions, else ``{unavailable: why}``."""
    describe = getattr(runtime, "explanation", None)
    if describe is None:
        kind = f"the {runtime_name} runtime" if runtime_name else "this runtime"
        return {"unavailable": f"{kind} has no exact explanation; Ferry explains {EXPLAINABLE}"}
    found: dict[str, str] = describe()
    return found
