"""Exact per-feature contributions of a compiled model, in its raw (margin) space: the answer to "why?".

Trees: path-dependent TreeSHAP (Lundberg et al. 2018, Algorithm 2) over ``TreeEnsemble``'s arrays. One
leaf's path is the product, over its distinct features, of ``(z + o·t)``: ``z`` is the share of training
rows (``cover``) that the feature's splits on the path keep, ``o`` (0 or 1) whether the row follows
them. From that leaf, feature ``i`` gets ``value · (o_i - z_i) · Σ_s w(s)·c_s``, where ``c_s`` are the
coefficients of the product without ``i`` and ``w(s) = s!(d-1-s)!/d!``: what EXTEND and UNWIND build one
row and one leaf at a time. Here every leaf and every row of the batch go at once: a leaf with ``d``
distinct features has only ``2^d`` answers (``o`` is 0 or 1), tabulated on first use within
``TABLE_BYTES``; the rest are computed per row. Whether a row follows a split is the evaluator's own
rule (``TreeEnsemble.go_right``), so a missing value or a zero takes the split's default direction
exactly as the prediction does.

Linear models: ``coefficient · (value - training mean)``, the training mean being where a centring
scaler sends zero, so a standardised column's contribution is ``coef_j / scale_j · (x_j - mean_j)``.

In both, ``expected_value + Σ contributions`` is the raw score (the margin before the link).
"""

from __future__ import annotations

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
    """The leaves whose paths hold ``d`` distinct features: their data, and their place in a batch."""

    d: int
    features: np.ndarray  # intp [leaves, d]: compact feature of each slot
    zero: np.ndarray  # float64 [leaves, d]: z, the share of cover the slot's splits keep
    value: np.ndarray  # float64 [leaves, width]
    column: np.ndarray  # intp [leaves]: output column (trees of width 1)
    leaves: slice  # their columns in a batch's ``missed`` [rows, leaves]
    target: np.ndarray  # intp [leaves, d]: where each slot's weight adds up in a row's [outputs * features]
    table: np.ndarray | None = None  # [leaves, d, 2^d]: answers by missed pattern, ``value`` folded in if width 1
    reads: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.intp))  # [d + repeats, leaves]
    again_bit: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 1), dtype=np.uint8))  # [repeats, leaves, 1]
    cache: tuple[np.ndarray, np.ndarray] | None = None  # untabulated answers met before: sorted keys, weights


class TreeShap:
    """Path-dependent TreeSHAP of one ensemble, every row and leaf of a batch at once.

    Built by the first explanation: every leaf's path, and the answers of the shallow leaves for each of
    their ``2^d`` patterns (``TABLE_BYTES``). A call then makes one decision per split node, turns
    them into each leaf's pattern (a bit per slot: the row misses one of the slot's splits) with one
    gather and one OR-reduction, and looks the answers up; a deeper leaf's answer is computed once per
    distinct pattern and kept (``CACHE_BYTES``), since rows mostly follow a deep leaf's splits alike.
    """

    def __init__(self, ensemble: TreeEnsemble) -> None:
        if ensemble.cover is None:
            raise NotExplainable("the bundle has no node covers (built before Ferry stored them): rebuild it")
        self.ensemble = ensemble
        self.width = int(ensemble.leaf_value.shape[1])
        self.outputs = ensemble.n_outputs
        self.n_features = max(int(ensemble.features_used.size), 1)
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
        paths = _paths(ensemble)
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
        # on the path reads a row of [go_right | !go_right | 0] (decisions per node, rows-minor). The
        # first split of slot k goes in column k of the group's ``reads``, repeats after the d columns.
        self.nodes = np.unique([n for p in paths for n, _, _ in p[4]]).astype(np.intp)
        row_of = {int(node): row for row, node in enumerate(self.nodes)}
        self.groups: list[_Leaves] = []
        leaf_count = 0
        for d in sorted(groups):
            members = groups[d]
            firsts = np.zeros((len(members), d), dtype=np.intp)
            repeats: list[list[tuple[int, int]]] = []
            for row, index in enumerate(members):
                seen: set[int] = set()
                repeats.append([])
                for node, goes_right, k in paths[index][4]:
                    read = row_of[node] + self.nodes.size * goes_right
                    if k in seen:
                        repeats[-1].append((read, k))
                    else:
                        seen.add(k)
                        firsts[row, k] = read
            extra = max(map(len, repeats))
            again = np.full((len(members), extra), 2 * self.nodes.size, dtype=np.intp)  # the row of zeros
            again_bit = np.zeros((len(members), extra), dtype=self.word)
            for row, found in enumerate(repeats):
                for j, (read, k) in enumerate(found):
                    again[row, j], again_bit[row, j] = read, 1 << k
            slot_features = np.asarray([paths[i][2] for i in members], dtype=np.intp)
            column = np.asarray([column_of[paths[i][0]] for i in members], dtype=np.intp)
            self.groups.append(
                _Leaves(
                    d=d,
                    features=slot_features,
                    zero=np.asarray([paths[i][3] for i in members], dtype=np.float64),
                    value=ensemble.leaf_value[[paths[i][1] for i in members]],
                    column=column,
                    leaves=slice(leaf_count, leaf_count + len(members)),
                    target=(column * self.n_features)[:, None] + slot_features if self.width == 1 else slot_features,
                    reads=np.ascontiguousarray(np.concatenate([firsts, again], axis=1).T),
                    again_bit=np.ascontiguousarray(again_bit.T)[:, :, None],
                )
            )
            leaf_count += len(members)
        self._tabulate()

    def _trees_per_output(self) -> int:
        trees = int(self.ensemble.roots.size)
        return trees // self.outputs if self.width != self.outputs else trees

    def _tabulate(self) -> None:
        """Tables of the shallow leaves' answers, and the slots that read them, grouped by where they add up."""
        budget, tables, tabulated = TABLE_BYTES, [], 0
        for group in self.groups:  # the shallowest first: the most leaves for the bytes
            size = group.zero.shape[0] * (2**group.d) * group.d * 8
            if group.d > TABLE_MAX_FEATURES or size > budget:
                break
            budget -= size
            patterns = 2**group.d
            o = 1.0 - ((np.arange(patterns)[:, None] >> np.arange(group.d)) & 1)  # [patterns, d]
            table = np.empty((group.zero.shape[0], patterns, group.d))
            step = max(1, CHUNK_ELEMENTS // (patterns * (group.d + 1) ** 2))
            for lo in range(0, group.zero.shape[0], step):
                zero = group.zero[lo : lo + step]
                ones = np.broadcast_to(o[:, None, :], (patterns, zero.shape[0], group.d))
                table[lo : lo + step] = shapley(zero, ones).transpose(1, 0, 2)
            if self.width == 1:
                table *= group.value[:, :1, None]
            group.table = np.ascontiguousarray(table.transpose(0, 2, 1))  # [leaves, d, patterns]
            tables.append(group)
            tabulated = group.leaves.stop
        self.tabulated = tabulated  # the tabulated leaves come first in a batch's ``missed``
        self.table = np.concatenate([g.table.ravel() for g in tables if g.table is not None] or [np.zeros(0)])
        # One entry per (leaf, slot, output column): its leaf, where its answers start in ``table``, the
        # leaf value it is multiplied by (width > 1) and where it adds up; sorted by the last, so each
        # row's sums are one ``add.reduceat`` over contiguous runs.
        leaf, start, value, target = [], [], [], []
        offset = 0
        for group in tables:
            leaves, d, patterns = group.zero.shape[0], group.d, 2**group.d
            index = np.arange(group.leaves.start, group.leaves.stop, dtype=np.intp)
            begins = offset + (np.arange(leaves * d, dtype=np.intp) * patterns).reshape(leaves, d)
            offset += leaves * d * patterns
            for column in range(self.width):
                leaf.append(np.repeat(index, d))
                start.append(begins.ravel())
                value.append(np.repeat(group.value[:, column], d))
                target.append((group.target + column * self.n_features).ravel())
        order = np.argsort(np.concatenate(target or [np.zeros(0, dtype=np.intp)]), kind="stable")
        self.entry_leaf = np.concatenate(leaf or [np.zeros(0, dtype=np.intp)])[order]
        self.entry_start = np.concatenate(start or [np.zeros(0, dtype=np.intp)])[order][:, None]
        self.entry_value = np.concatenate(value or [np.zeros(0)])[order][:, None] if self.width > 1 else None
        sorted_target = np.concatenate(target or [np.zeros(0, dtype=np.intp)])[order]
        self.run_start = np.flatnonzero(np.diff(sorted_target, prepend=-1))
        self.run_target = sorted_target[self.run_start]

    def explain_compact(self, x: np.ndarray) -> Contributions:
        """Contributions to the ``features_used`` columns of rows holding just those columns."""
        self._ready()
        x = np.asarray(x, dtype=np.float64)
        rows = x.shape[0]
        size = self.outputs * self.n_features
        total = np.zeros((size, rows))  # [outputs * features, rows]: every array here is rows-minor
        if self.groups:
            go = np.ascontiguousarray(self.ensemble.go_right(x, self.nodes).T, dtype=self.word)
            either = np.concatenate([go, 1 - go, np.zeros((1, rows), dtype=self.word)])
            missed = np.concatenate([self._missed(group, either) for group in self.groups])  # [leaves, rows]
            if self.run_target.size:
                index = missed[: self.tabulated].astype(np.intp).take(self.entry_leaf, axis=0)
                index += self.entry_start
                weights = self.table.take(index)
                if self.entry_value is not None:
                    weights *= self.entry_value
                total[self.run_target] = np.add.reduceat(weights, self.run_start, axis=0)
            flat = total.T.reshape(-1) if rows else total.reshape(-1)
            base = (np.arange(rows, dtype=np.intp) * size)[:, None, None]
            for group in self.groups:
                if group.table is not None:
                    continue
                weights = self._weights(group, missed[group.leaves].T)
                for column in range(self.width):
                    target = (base + column * self.n_features + group.target).ravel()
                    part = weights if self.width == 1 else weights * group.value[:, column][:, None]
                    flat += np.bincount(target, part.ravel(), minlength=flat.size)
            values = flat.reshape(rows, self.outputs, self.n_features)
        else:
            values = total.T.reshape(rows, self.outputs, self.n_features)
        values = values[:, :, : self.ensemble.features_used.size]
        if self.ensemble.average:
            values = values / self._trees_per_output()
        return Contributions(values, self.expected.copy(), self.ensemble.predict_compact(x))

    def _missed(self, group: _Leaves, either: np.ndarray) -> np.ndarray:
        """[leaves, rows]: bit k set where the row goes the other way at one of slot k's splits."""
        missed: np.ndarray = either.take(group.reads[0], axis=0)
        for k in range(1, group.d):
            missed |= either.take(group.reads[k], axis=0) << self.word(k)
        for j in range(group.again_bit.shape[0]):
            missed |= either.take(group.reads[group.d + j], axis=0) * group.again_bit[j]
        return missed

    def _weights(self, group: _Leaves, missed: np.ndarray) -> np.ndarray:
        """[rows, leaves, d]: each slot's share of its leaf (times the leaf's value where the width is 1)."""
        rows, leaves = missed.shape
        d = group.d
        if group.table is not None:
            index = missed.astype(np.intp) + np.arange(leaves, dtype=np.intp) * (2**d)
            weights: np.ndarray = group.table.take(index, axis=0)
            return weights
        # Deeper leaves: answers met before are looked up; one computation per new distinct (leaf, pattern).
        leaf = np.broadcast_to(np.arange(leaves, dtype=np.uint64), (rows, leaves)).ravel()
        pattern = missed.ravel().astype(np.uint64)
        if leaves * 2.0**d >= 2**63:  # too many bits for one key (a pattern of ~64 slots): no cache
            distinct, inverse = np.unique(np.column_stack([leaf, pattern]), axis=0, return_inverse=True)
            answers = self._answers(group, distinct[:, 0].astype(np.intp), distinct[:, 1])
            return answers[inverse.ravel()].reshape(rows, leaves, d)
        key = (leaf << np.uint64(d)) | pattern
        known = group.cache
        found = np.empty((key.size, d))
        new = np.ones(key.size, dtype=bool)
        if known is not None:
            at = np.minimum(np.searchsorted(known[0], key), known[0].size - 1)
            hit = known[0][at] == key
            found[hit] = known[1][at[hit]]
            new = ~hit
        if new.any():
            distinct, inverse = np.unique(key[new], return_inverse=True)
            answers = self._answers(group, (distinct >> np.uint64(d)).astype(np.intp), distinct & np.uint64(2**d - 1))
            found[new] = answers[inverse.ravel()]
            group.cache = _remembered(known, distinct, answers)
        return found.reshape(rows, leaves, d)

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
        """Contributions to every input column of full-width rows (zero for columns no split reads)."""
        self._ready()
        x = np.asarray(x, dtype=np.float64)
        used = self.ensemble.features_used
        compact = self.explain_compact(x[:, used])
        values = np.zeros((x.shape[0], self.outputs, x.shape[1]))
        values[:, :, used] = compact.values
        return Contributions(values, compact.expected_value, compact.score)


_LeafPath = tuple[int, int, list[int], list[float], list[tuple[int, bool, int]]]


def _paths(ensemble: TreeEnsemble) -> list[_LeafPath]:
    """Every leaf's (tree, leaf node, distinct features, their shares z, conditions (node, right, slot))."""
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
            split = int(feature[node])
            for child, goes_right in ((right, True), (left, False)):
                kept = dict(zero)
                share = cover[child] / cover[node] if cover[node] > 0 else 0.0
                kept[split] = kept.get(split, 1.0) * share  # a feature met again: the product of its shares
                stack.append((child, [*conditions, (node, goes_right, split)], kept))
    return paths


def _remembered(
    known: tuple[np.ndarray, np.ndarray] | None, keys: np.ndarray, weights: np.ndarray
) -> tuple[np.ndarray, np.ndarray] | None:
    """The cache with ``keys`` added (sorted); past ``CACHE_BYTES`` it starts over from them, or is dropped."""
    entry = (weights.shape[1] + 1) * 8
    if known is not None and (known[0].size + keys.size) * entry <= CACHE_BYTES:
        keys, weights = np.concatenate([known[0], keys]), np.concatenate([known[1], weights])
        order = np.argsort(keys)
        return keys[order], weights[order]
    return (keys, weights) if keys.size * entry <= CACHE_BYTES else None


def shapley(zero: np.ndarray, ones: np.ndarray) -> np.ndarray:
    """``(o_i - z_i) · Σ_{S ⊆ U - i} |S|!(d-|S|-1)!/d! · Π_S o · Π_{U - S - i} z`` for every slot ``i``.

    ``zero`` [leaves, d], ``ones`` [rows, leaves, d] (0 or 1): [rows, leaves, d]. The polynomial of the
    other slots is the product of the slots before ``i`` (``prefix``) and after it (``suffix``), so no
    division (UNWIND's) is needed; all the terms are positive, so nothing cancels.
    """
    rows, leaves, d = ones.shape
    weight = np.asarray([math.factorial(s) * math.factorial(d - 1 - s) / math.factorial(d) for s in range(d)])
    zero = np.broadcast_to(zero, ones.shape)
    prefix = [np.ones((rows, leaves, 1))]
    for k in range(d - 1):
        prefix.append(_extend(prefix[-1], zero[..., k], ones[..., k]))
    out = np.empty(ones.shape)
    suffix = np.ones((rows, leaves, 1))
    for i in range(d - 1, -1, -1):
        hankel = weight[np.add.outer(np.arange(i + 1), np.arange(d - i))]  # [i + 1, d - i]: w(m + n)
        out[..., i] = ((prefix[i] @ hankel) * suffix).sum(axis=-1)
        suffix = _extend(suffix, zero[..., i], ones[..., i])
    out *= ones - zero
    return out


def _extend(poly: np.ndarray, zero: np.ndarray, one: np.ndarray) -> np.ndarray:
    """``poly · (zero + one·t)``, coefficients along the last axis."""
    out = np.zeros((*poly.shape[:-1], poly.shape[-1] + 1))
    out[..., :-1] = poly * zero[..., None]
    out[..., 1:] += poly * one[..., None]
    return out


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
                "or build it with ferry.build(..., training_data=...)"
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
