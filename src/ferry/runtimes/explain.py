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
from dataclasses import dataclass
from typing import Any

import numpy as np

from ferry.runtimes.trees import TreeEnsemble

# Tabulated leaves: at most 2^TABLE_MAX_FEATURES patterns a leaf, and this many bytes in all (per model).
TABLE_BYTES = 64 * 2**20
TABLE_MAX_FEATURES = 12
CHUNK_ELEMENTS = 2**22  # elements of the working polynomials per numpy call, to bound memory

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
    """The leaves whose paths hold ``d`` distinct features: their data, and their slots' place in a batch."""

    d: int
    features: np.ndarray  # intp [leaves, d]: compact feature of each slot
    zero: np.ndarray  # float64 [leaves, d]: z, the share of cover the slot's splits keep
    value: np.ndarray  # float64 [leaves, width]
    column: np.ndarray  # intp [leaves]: output column (trees of width 1)
    slots: slice  # their slots' columns in ``follows``
    table: np.ndarray | None = None  # [leaves * 2^d, d]: answers by pattern, ``value`` folded in if width 1


class TreeShap:
    """Path-dependent TreeSHAP of one ensemble, every row and leaf of a batch at once."""

    def __init__(self, ensemble: TreeEnsemble) -> None:
        if ensemble.cover is None:
            raise NotExplainable("the bundle has no node covers (built before Ferry stored them): rebuild it")
        self.ensemble = ensemble
        self.width = int(ensemble.leaf_value.shape[1])
        self.outputs = ensemble.n_outputs
        self.n_features = max(int(ensemble.features_used.size), 1)
        self._built = False  # the paths and tables are made on first use: a model never explained pays nothing

    def _build(self) -> None:
        ensemble = self.ensemble
        children, feature = ensemble.children, ensemble.feature
        cover = np.asarray(ensemble.cover, dtype=np.float64)
        paths: list[tuple[int, int, list[int], list[float], list[tuple[int, bool, int]]]] = []

        def walk(tree: int, node: int, conditions: list[tuple[int, bool, int]], zero: dict[int, float]) -> None:
            left, right = int(children[node, 0]), int(children[node, 1])
            if left == node:
                slots = {f: k for k, f in enumerate(zero)}
                paths.append(
                    (tree, node, list(zero), list(zero.values()), [(n, r, slots[f]) for n, r, f in conditions])
                )
                return
            split = int(feature[node])
            for child, goes_right in ((left, False), (right, True)):
                kept = dict(zero)
                share = cover[child] / cover[node] if cover[node] > 0 else 0.0
                kept[split] = kept.get(split, 1.0) * share  # a feature met again: the product of its shares
                walk(tree, child, [*conditions, (node, goes_right, split)], kept)

        for tree, root in enumerate(ensemble.roots):
            walk(tree, int(root), [], {})
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

        nodes: list[int] = []
        goes: list[bool] = []
        slot_of: list[int] = []
        self.groups: list[_Leaves] = []
        slot = 0
        for d in sorted(groups):
            members = groups[d]
            for index in members:
                for node, goes_right, k in sorted(paths[index][4], key=lambda c: c[2]):
                    nodes.append(node)
                    goes.append(goes_right)
                    slot_of.append(slot + k)
                slot += d
            self.groups.append(
                _Leaves(
                    d=d,
                    features=np.asarray([paths[i][2] for i in members], dtype=np.intp),
                    zero=np.asarray([paths[i][3] for i in members], dtype=np.float64),
                    value=ensemble.leaf_value[[paths[i][1] for i in members]],
                    column=np.asarray([column_of[paths[i][0]] for i in members], dtype=np.intp),
                    slots=slice(slot - d * len(members), slot),
                )
            )
        # One decision per split node, then one column per (leaf, split) condition, AND-ed per slot.
        self.nodes, self.node_column = np.unique(np.asarray(nodes, dtype=np.intp), return_inverse=True)
        self.goes_right = np.asarray(goes, dtype=bool)
        self.slot_start = np.flatnonzero(np.diff(np.asarray(slot_of, dtype=np.intp), prepend=-1))
        self._tabulate()
        self._built = True

    def _trees_per_output(self) -> int:
        trees = int(self.ensemble.roots.size)
        return trees // self.outputs if self.width != self.outputs else trees

    def _tabulate(self) -> None:
        budget = TABLE_BYTES
        for group in self.groups:  # the shallowest first: the most leaves for the bytes
            size = group.zero.shape[0] * (2**group.d) * group.d * 8
            if group.d > TABLE_MAX_FEATURES or size > budget:
                break
            budget -= size
            patterns = 2**group.d
            o = ((np.arange(patterns)[:, None] >> np.arange(group.d)) & 1).astype(np.float64)  # [patterns, d]
            table = np.empty((group.zero.shape[0], patterns, group.d))
            step = max(1, CHUNK_ELEMENTS // (patterns * (group.d + 1) ** 2))
            for lo in range(0, group.zero.shape[0], step):
                zero = group.zero[lo : lo + step]
                ones = np.broadcast_to(o[:, None, :], (patterns, zero.shape[0], group.d))
                table[lo : lo + step] = shapley(zero, ones).transpose(1, 0, 2)
            if self.width == 1:
                table *= group.value[:, :1, None]
            group.table = table.reshape(-1, group.d)

    def explain_compact(self, x: np.ndarray) -> Contributions:
        """Contributions to the ``features_used`` columns of rows holding just those columns."""
        if not self._built:
            self._build()
        x = np.asarray(x, dtype=np.float64)
        rows = x.shape[0]
        size = self.outputs * self.n_features
        total = np.zeros(rows * size)
        if self.groups:
            agree = self.ensemble.go_right(x, self.nodes)[:, self.node_column] == self.goes_right
            follows = np.logical_and.reduceat(agree, self.slot_start, axis=1)  # [rows, slots]
            base = (np.arange(rows, dtype=np.intp) * size)[:, None, None]
            for group in self.groups:
                o = follows[:, group.slots].reshape(rows, -1, group.d)
                weights = self._weights(group, o)
                if self.width == 1:
                    target = base + (group.column * self.n_features)[:, None] + group.features
                    total += np.bincount(target.ravel(), weights.ravel(), minlength=total.size)
                    continue
                for column in range(self.width):
                    target = base + column * self.n_features + group.features
                    part = weights * group.value[:, column][:, None]
                    total += np.bincount(target.ravel(), part.ravel(), minlength=total.size)
        values = total.reshape(rows, self.outputs, self.n_features)[:, :, : self.ensemble.features_used.size]
        if self.ensemble.average:
            values /= self._trees_per_output()
        return Contributions(values, self.expected.copy(), self.ensemble.predict_compact(x))

    def _weights(self, group: _Leaves, o: np.ndarray) -> np.ndarray:
        """[rows, leaves, d]: each slot's share of its leaf (times the leaf's value where the width is 1)."""
        if group.table is not None:
            pattern = o.astype(np.intp) @ (np.intp(1) << np.arange(group.d, dtype=np.intp))
            pattern += np.arange(o.shape[1], dtype=np.intp) * (2**group.d)
            weights: np.ndarray = group.table.take(pattern, axis=0)
            return weights
        # Rows of a batch mostly follow a leaf's splits the same way: one computation per distinct pattern.
        rows, leaves, d = o.shape
        leaf = np.broadcast_to(np.arange(leaves, dtype=np.intp), (rows, leaves)).ravel()
        flat = o.reshape(-1, d)
        if leaves * 2.0**d < 2**62:
            key = leaf.astype(np.int64) << d | (flat.astype(np.int64) @ (np.int64(1) << np.arange(d, dtype=np.int64)))
            _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
        else:  # too many bits for one integer key
            _, first, inverse = np.unique(np.column_stack([leaf, flat]), axis=0, return_index=True, return_inverse=True)
        distinct_leaf, distinct = leaf[first], flat[first].astype(np.float64)
        step = max(1, CHUNK_ELEMENTS // ((d + 1) ** 2))
        weights = np.concatenate(
            [
                shapley(group.zero[distinct_leaf[lo : lo + step]][None], distinct[None, lo : lo + step])[0]
                for lo in range(0, distinct.shape[0], step)
            ]
        )
        if self.width == 1:
            weights *= group.value[distinct_leaf, :1]
        found: np.ndarray = weights[inverse.ravel()].reshape(rows, leaves, d)
        return found

    def explain(self, x: np.ndarray) -> Contributions:
        """Contributions to every input column of full-width rows (zero for columns no split reads)."""
        x = np.asarray(x, dtype=np.float64)
        used = self.ensemble.features_used
        compact = self.explain_compact(x[:, used])
        values = np.zeros((x.shape[0], self.outputs, x.shape[1]))
        values[:, :, used] = compact.values
        return Contributions(values, compact.expected_value, compact.score)


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
    "compiled tree ensembles (LightGBM; scikit-learn trees, forests and gradient boosting) and linear "
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
