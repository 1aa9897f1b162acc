"""Decision-tree ensembles as plain arrays, evaluated level by level over the whole batch in numpy.

Every tree of a LightGBM booster or a scikit-learn tree, forest or gradient-boosting model becomes rows
of one node table. A leaf is a node whose children are itself, so ``depth`` rounds of "go left or right"
leave every (row, tree) pair on its leaf with no masks. Leaf outputs are then summed tree by tree in the
framework's own order (``cumsum`` is sequential), so the sums are bit-for-bit the framework's.

The exporters (``from_lightgbm``, ``from_sklearn``) read fitted models at build time; evaluation needs
numpy only. A model this module cannot match exactly (categorical splits, linear trees, unknown
objectives) is refused with ``Unsupported`` and keeps its original runtime.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

# LightGBM treats |x| <= kZeroThreshold (1e-35f) as zero, both when reading rows and in "Zero" splits.
LIGHTGBM_ZERO = float(np.float32(1e-35))
LIGHTGBM_INF = 1e300  # what Booster.dump_model() writes for an infinite threshold (the build check probes it)
MISSING_NONE, MISSING_ZERO, MISSING_NAN = 0, 1, 2
# QuickScorer takes a batch this many rows at a time: its [rows, splits] arrays then stay in the cache.
# Reviews model (200 trees of 15 leaves), CPU us per row, 20/100/1000 rows: QuickScorer in chunks of 32
# 31/33/16, whole 31/73/31, level by level 65/52/56 (bench/trees.py; a busy 2-core VM: ratios only).
QUICKSCORER_ROWS = 32
# Which walk a batch takes is a cost estimate (``_quickscorer_wins``), fitted on three models (bench/trees.py):
# the reviews booster takes QuickScorer at every size; a 100-tree depth-6 forest (63 splits a tree, 6
# levels) only below ~3 rows; 200 depth-3 boosting trees below ~15. ``WALK`` forces one (tests, bench).
CALL_COST = 2000
WALK: str | None = None  # "quickscorer" or "levels"

ARRAY_NAMES = (
    "feature",
    "threshold",
    "children",
    "default_left",
    "missing",
    "leaf_value",
    "roots",
    "tree_column",
    "init",
    "features_used",
)
# Arrays a bundle may lack (built before they existed): the ensemble evaluates without them.
# ``cover``: the training rows (LightGBM's counts, scikit-learn's weighted counts, XGBoost's summed
# hessians, CatBoost's leaf weights summed up the tree) that reached each node, which path-dependent
# TreeSHAP (``ferry.runtimes.explain``) weighs the unseen branches by.
OPTIONAL_ARRAY_NAMES = ("cover",)


class Unsupported(ValueError):
    """The model has a construct the evaluator cannot reproduce exactly."""


@dataclass
class TreeEnsemble:
    """The node table of every tree and how their leaves add up.

    ``feature`` indexes ``features_used`` (the input columns any split reads); ``children`` is
    [node, (left, right)]; ``leaf_value`` is [node, width] (zero for inner nodes); tree ``t`` adds its
    leaf's ``width`` values to output columns ``tree_column[t]``...; the sum starts at ``init``.
    """

    feature: np.ndarray  # int32 [nodes]
    threshold: np.ndarray  # float64 [nodes]
    children: np.ndarray  # int32 [nodes, 2]
    default_left: np.ndarray  # bool [nodes]
    missing: np.ndarray  # uint8 [nodes]: MISSING_*
    leaf_value: np.ndarray  # float64 [nodes, width]
    roots: np.ndarray  # int32 [trees]
    tree_column: np.ndarray  # int32 [trees]
    init: np.ndarray  # float64 [outputs]
    features_used: np.ndarray  # int64 [used]: input column of each compact feature
    depth: int
    float32_input: bool  # scikit-learn compares float32(x) <= threshold
    zero_clamp: bool  # LightGBM: |x| <= 1e-35 reads as 0
    average: bool  # forests: the sum divided by the number of trees
    cover: np.ndarray | None = None  # float64 [nodes]: training rows through each node (OPTIONAL_ARRAY_NAMES)
    float32_sum: bool = False  # XGBoost: leaf values added up in float32, from the base margin on

    def __post_init__(self) -> None:
        # Mapped arrays lose numpy.memmap's Python-level hooks (a cost on every gather); the data stays mapped.
        for name in ARRAY_NAMES:
            setattr(self, name, np.asarray(getattr(self, name)))
        if self.cover is not None:
            self.cover = np.asarray(self.cover)
        self._zero_splits = bool((self.missing == MISSING_ZERO).any())
        # Reading |x| <= 1e-35 as 0 changes a "<=" split only if its threshold lies in [-1e-35, 1e-35).
        self._clamp = self.zero_clamp and bool(
            ((self.threshold >= -LIGHTGBM_ZERO) & (self.threshold < LIGHTGBM_ZERO)).any()
        )
        self._quickscorer: _QuickScorer | bool | None = False  # built on first use: see _QuickScorer

    @property
    def n_outputs(self) -> int:
        return int(self.init.shape[0])

    def arrays(self) -> dict[str, np.ndarray]:
        arrays = {name: getattr(self, name) for name in ARRAY_NAMES}
        if self.cover is not None:
            arrays["cover"] = self.cover
        return arrays

    def params(self) -> dict[str, Any]:
        return {
            "depth": self.depth,
            "float32_input": self.float32_input,
            "zero_clamp": self.zero_clamp,
            "average": self.average,
            **({"float32_sum": True} if self.float32_sum else {}),
        }

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], params: dict[str, Any]) -> TreeEnsemble:
        return cls(
            **{name: arrays[name] for name in ARRAY_NAMES},
            depth=int(params["depth"]),
            float32_input=bool(params["float32_input"]),
            zero_clamp=bool(params["zero_clamp"]),
            average=bool(params["average"]),
            cover=arrays.get("cover"),
            float32_sum=bool(params.get("float32_sum", False)),
        )

    # -- evaluation ---------------------------------------------------------------------------------
    def predict_raw(self, x: np.ndarray) -> np.ndarray:
        """Raw scores [rows, outputs] for full-width rows ``x``."""
        return self.predict_compact(np.asarray(x, dtype=np.float64)[:, self.features_used])

    def predict_compact(self, x: np.ndarray) -> np.ndarray:
        """Raw scores for rows holding only the ``features_used`` columns, in that order."""
        x = self._prepared(x)
        # Without NaN in the rows and "Zero" splits in the model, every split is just "x > threshold".
        # (A sum is NaN if a value is, or if it adds +inf and -inf: then the exact rule runs, harmlessly.)
        plain = not (self._zero_splits or math.isnan(x.sum()))
        if self._quickscorer is False:
            self._quickscorer = _QuickScorer.of(self)
        scorer = self._quickscorer
        if not isinstance(scorer, _QuickScorer) or not self._quickscorer_wins(scorer, x.shape[0]):
            return self._sum(self._leaves(x, plain))
        step = QUICKSCORER_ROWS
        if x.shape[0] <= step:
            return scorer.scores(self, x, plain)
        return np.concatenate([scorer.scores(self, x[i : i + step], plain) for i in range(0, x.shape[0], step)])

    def go_right(self, x: np.ndarray, nodes: np.ndarray) -> np.ndarray:
        """Whether each row of ``x`` (``features_used`` columns) goes right at each inner node of ``nodes``:
        [rows, nodes], by the rule the evaluator walks (missing values, zeros, float32 inputs)."""
        x = self._prepared(x)
        value = x.take(self.feature[nodes], axis=1)
        if not (self._zero_splits or math.isnan(x.sum())):  # as in predict_compact: no rule but the threshold
            plain: np.ndarray = value > self.threshold[nodes]
            return plain
        return _go_right(value, self.threshold[nodes], self.missing[nodes], self.default_left[nodes])

    def _quickscorer_wins(self, scorer: _QuickScorer, rows: int) -> bool:
        """QuickScorer works per split and makes ~15 numpy calls; the level walk works per tree and level,
        ~6 calls a level. Costs in element-operations, a numpy call counted as ``CALL_COST`` of them."""
        if WALK is not None:
            return WALK == "quickscorer"
        levels = rows * self.roots.size * self.depth * 6 + (6 * self.depth + 6) * CALL_COST
        return rows * scorer.row_cost + 15 * CALL_COST <= levels

    def _prepared(self, x: np.ndarray) -> np.ndarray:
        if self.float32_input:
            x = x.astype(np.float32).astype(np.float64)
        if self._clamp:
            x = np.where(np.abs(x) <= LIGHTGBM_ZERO, 0.0, x)
        if x.shape[1] == 0:  # every tree is a single leaf; give the gathers a column to read
            x = np.zeros((x.shape[0], 1))
        return np.ascontiguousarray(x, dtype=np.float64)

    def _leaves(self, x: np.ndarray, plain: bool) -> np.ndarray:
        """The leaf of every (row, tree), level by level: ``depth`` rounds over all trees at once."""
        rows, width = x.shape
        flat = x.ravel()
        base = (np.arange(rows, dtype=np.int64) * width)[:, None]
        node = np.broadcast_to(self.roots, (rows, self.roots.size)).astype(np.int64)
        children = self.children.ravel()
        for _ in range(self.depth):
            value = flat[base + self.feature[node]]
            if plain:
                go_right = value > self.threshold[node]
            else:
                go_right = _go_right(value, self.threshold[node], self.missing[node], self.default_left[node])
            node = children[node * 2 + go_right]
        return node

    def _sum(self, leaves: np.ndarray) -> np.ndarray:
        rows, trees = leaves.shape
        width = self.leaf_value.shape[1]
        values = self.leaf_value.take(leaves, axis=0)  # [rows, trees, width]
        outputs = self.n_outputs
        total = np.empty((rows, outputs))
        if width == outputs:  # every tree adds to every column: forests, scikit-learn trees
            total[:] = _sequential_sum(self.init, values, self.float32_sum)
        else:  # one column per tree, in rounds: LightGBM multiclass, scikit-learn gradient boosting
            per_column = values[:, :, 0].reshape(rows, trees // outputs, outputs)
            for column in range(outputs):
                total[:, column] = _sequential_sum(
                    self.init[column : column + 1], per_column[:, :, column : column + 1], self.float32_sum
                )[:, 0]
        if self.average:
            total /= trees // (outputs if width != outputs else 1)
        return total


class _QuickScorer:
    """QuickScorer (Lucchese et al., SIGIR 2015) in numpy, for ensembles whose trees have at most 64 leaves.

    Number each tree's leaves left to right. A split that sends a row right rules out the leaves of its
    left subtree, a contiguous run of bits; OR-ing those runs over the splits a row sends right leaves
    its exit leaf as the lowest bit still clear. Every split of every tree is one compare over the
    batch, then about ten numpy calls in all, whatever the depth: no per-level loop.

    Everything a call reads is laid out per split (feature, threshold, ...) or per (tree, leaf bit)
    (the leaf's value), so a call gathers nothing but the batch's own columns. The sum's start,
    ``init``, is one leaf-only tree per output in front, so one ``cumsum`` adds it in the frameworks'
    order.
    """

    def __init__(
        self,
        ensemble: TreeEnsemble,
        nodes: list[int],
        excluded: list[int],
        starts: list[int],
        leaf_of: np.ndarray,
        leaf_count: int,
    ) -> None:
        split = np.asarray(nodes, dtype=np.intp)
        self.feature = ensemble.feature[split].astype(np.intp)
        self.threshold = np.ascontiguousarray(ensemble.threshold[split])
        self.missing = ensemble.missing[split]
        self.default_left = ensemble.default_left[split]
        words = next(t for t in (np.uint8, np.uint16, np.uint32, np.uint64) if np.iinfo(t).bits >= leaf_count)
        self.excluded = np.asarray(excluded, dtype=words)  # the bits of the split's left subtree
        self.starts = np.asarray(starts, dtype=np.intp)  # each tree's first split, for reduceat
        trees, outputs = leaf_of.shape[0], ensemble.n_outputs
        width = ensemble.leaf_value.shape[1]
        fronts = outputs if width == 1 else 1  # leaf-only trees holding ``init``, one per output column
        values = np.zeros((fronts + trees, leaf_count, width))
        values[:fronts, 0, :] = ensemble.init.reshape(fronts, width)
        values[fronts:] = ensemble.leaf_value[leaf_of[:, :leaf_count]]
        # [tree, trailing ones + 1] -> leaf value: ``_exit_bit`` counts one more than the exit leaf's index.
        self.values = values.reshape(-1, width)
        self.offset = np.arange(fronts + trees, dtype=np.intp) * leaf_count - 1
        self.trees_per_output = trees // (outputs if width == 1 else 1)
        # take, compare, multiply and reduceat per split, the wider the word the dearer; then per tree.
        self.row_cost = float(split.size * (3 + np.dtype(words).itemsize / 2) + (fronts + trees) * 5)

    @classmethod
    def of(cls, ensemble: TreeEnsemble) -> _QuickScorer | None:
        if not ensemble.roots.size:
            return None
        nodes: list[int] = []
        excluded: list[int] = []
        starts: list[int] = []
        leaf_of = np.zeros((ensemble.roots.size, 64), dtype=np.intp)
        leaf_count = 1
        children = ensemble.children
        for tree, root in enumerate(ensemble.roots):
            leaves: list[int] = []
            splits: list[tuple[int, int, int]] = []  # node, first and end leaf of its left subtree

            def walk(node: int, leaves: list[int] = leaves, splits: list[tuple[int, int, int]] = splits) -> None:
                left, right = int(children[node, 0]), int(children[node, 1])
                if left == node:
                    leaves.append(node)
                    return
                first = len(leaves)
                walk(left)
                splits.append((node, first, len(leaves)))
                walk(right)

            walk(int(root))
            if len(leaves) > 64:
                return None
            leaf_count = max(leaf_count, len(leaves))
            leaf_of[tree, : len(leaves)] = leaves
            starts.append(len(nodes))
            # A leaf-only tree gets one split that rules nothing out, so every tree has a reduceat run.
            for node, first, end in splits or [(int(root), 0, 0)]:
                nodes.append(node)
                excluded.append(((1 << (end - first)) - 1) << first)
        fronts = ensemble.n_outputs if ensemble.leaf_value.shape[1] == 1 else 1
        starts = [0] * fronts + [start + fronts for start in starts]
        nodes = [int(ensemble.roots[0])] * fronts + nodes  # any node: these splits rule nothing out
        excluded = [0] * fronts + excluded
        return cls(ensemble, nodes, excluded, starts, leaf_of, leaf_count)

    def scores(self, ensemble: TreeEnsemble, x: np.ndarray, plain: bool) -> np.ndarray:
        """Summed leaf values [rows, outputs] of prepared rows ``x``."""
        value = x.take(self.feature, axis=1)
        right = value > self.threshold if plain else _go_right(value, self.threshold, self.missing, self.default_left)
        ruled_out = np.bitwise_or.reduceat(right * self.excluded, self.starts, axis=1)
        leaf = _exit_bit(ruled_out) + self.offset
        values = self.values.take(leaf, axis=0)  # [rows, trees, width] (take: ~50x faster than [leaf] here)
        rows = x.shape[0]
        dtype = np.float32 if ensemble.float32_sum else np.float64
        summed: np.ndarray = np.cumsum(values.reshape(rows, -1, ensemble.n_outputs), axis=1, dtype=dtype)[:, -1, :]
        if ensemble.average:
            summed /= self.trees_per_output
        return summed


def _exit_bit_counted(ruled_out: np.ndarray) -> np.ndarray:
    """1 + the index of each word's lowest clear bit (1 + its trailing ones): numpy >= 2.0."""
    count: np.ndarray = np.bitwise_count(ruled_out ^ (ruled_out + ruled_out.dtype.type(1)))
    return count


def _exit_bit_frexp(ruled_out: np.ndarray) -> np.ndarray:
    """The same for numpy 1.x: the lowest clear bit alone is a power of two, exact as a float64."""
    lowest = (ruled_out + ruled_out.dtype.type(1)) & ~ruled_out
    exponent: np.ndarray = np.frexp(lowest.astype(np.float64))[1]
    return exponent


_exit_bit = _exit_bit_counted if hasattr(np, "bitwise_count") else _exit_bit_frexp


def _go_right(value: np.ndarray, threshold: np.ndarray, missing: np.ndarray, default_left: np.ndarray) -> np.ndarray:
    """LightGBM's NumericalDecision, per split (scikit-learn's NaN rule is its MISSING_NAN case)."""
    nan = np.isnan(value)
    value = np.where(nan & (missing != MISSING_NAN), 0.0, value)
    zero = (value >= -LIGHTGBM_ZERO) & (value <= LIGHTGBM_ZERO)
    special = ((missing == MISSING_ZERO) & zero) | ((missing == MISSING_NAN) & nan)
    right: np.ndarray = np.where(special, ~default_left, ~(value <= threshold))
    return right


def _sequential_sum(init: np.ndarray, values: np.ndarray, float32: bool = False) -> np.ndarray:
    """``init + v[0] + v[1] + ...`` added in that order, as the frameworks' loops do (XGBoost's in float32)."""
    dtype = np.float32 if float32 else np.float64
    if not init.any():
        summed: np.ndarray = np.cumsum(values, axis=1, dtype=dtype)[:, -1, :]
        return summed
    start = np.broadcast_to(init, (values.shape[0], 1, values.shape[2]))
    summed = np.cumsum(np.concatenate([start, values], axis=1), axis=1, dtype=dtype)[:, -1, :]
    return summed


# -- building the node table ------------------------------------------------------------------------
class _Table:
    """Collects nodes tree by tree; leaves point at themselves."""

    def __init__(self, width: int) -> None:
        self.width = width
        self.feature: list[int] = []
        self.threshold: list[float] = []
        self.children: list[tuple[int, int]] = []
        self.default_left: list[bool] = []
        self.missing: list[int] = []
        self.leaf_value: list[np.ndarray] = []
        self.cover: list[float] = []  # NaN where the model does not say

    def add(self, feature: int, threshold: float, default_left: bool, missing: int, cover: float = math.nan) -> int:
        index = len(self.feature)
        self.cover.append(cover)
        self.feature.append(feature)
        self.threshold.append(threshold)
        self.children.append((index, index))
        self.default_left.append(default_left)
        self.missing.append(missing)
        self.leaf_value.append(np.zeros(self.width))
        return index

    def leaf(self, value: np.ndarray, cover: float = math.nan) -> int:
        index = self.add(0, np.inf, True, MISSING_NONE, cover)
        self.leaf_value[index] = np.asarray(value, dtype=np.float64).reshape(self.width)
        return index

    def ensemble(
        self, roots: list[int], tree_column: list[int], init: np.ndarray, depth: int, **params: Any
    ) -> TreeEnsemble:
        features = np.asarray(self.feature, dtype=np.int64)
        inner = np.asarray([c != (i, i) for i, c in enumerate(self.children)], dtype=bool)
        used = np.unique(features[inner]) if inner.any() else np.zeros(0, dtype=np.int64)
        compact = np.searchsorted(used, features).astype(np.int32)
        compact[~inner] = 0
        return TreeEnsemble(
            feature=compact,
            threshold=np.asarray(self.threshold, dtype=np.float64),
            children=np.asarray(self.children, dtype=np.int32).reshape(-1, 2),
            default_left=np.asarray(self.default_left, dtype=bool),
            missing=np.asarray(self.missing, dtype=np.uint8),
            leaf_value=np.vstack(self.leaf_value) if self.leaf_value else np.zeros((0, self.width)),
            roots=np.asarray(roots, dtype=np.int32),
            tree_column=np.asarray(tree_column, dtype=np.int32),
            init=np.asarray(init, dtype=np.float64),
            features_used=used.astype(np.int64),
            depth=depth,
            cover=_known_cover(self.cover, np.asarray(self.children, dtype=np.int64).reshape(-1, 2), inner),
            **params,
        )


def _known_cover(cover: list[float], children: np.ndarray, inner: np.ndarray) -> np.ndarray | None:
    """The node covers, if every split and its children have one (a single-leaf tree needs none), else None."""
    array = np.asarray(cover, dtype=np.float64)
    needed = np.concatenate([np.flatnonzero(inner), children[inner].ravel()])
    return array if np.isfinite(array[needed]).all() else None


# -- LightGBM ----------------------------------------------------------------------------------------
_LIGHTGBM_MISSING = {"None": MISSING_NONE, "Zero": MISSING_ZERO, "NaN": MISSING_NAN}
LIGHTGBM_TRANSFORMS = {
    "regression": "identity",
    "regression_l1": "identity",
    "huber": "identity",
    "fair": "identity",
    "quantile": "identity",
    "mape": "identity",
    "lambdarank": "identity",
    "rank_xendcg": "identity",
    "poisson": "exp",
    "gamma": "exp",
    "tweedie": "exp",
    "binary": "sigmoid",
    "multiclass": "softmax",
}


def from_lightgbm(dump: dict[str, Any]) -> tuple[TreeEnsemble, dict[str, Any]]:
    """The ensemble of a ``Booster.dump_model()`` and its output transform (``objective`` head)."""
    objective = str(dump.get("objective", "")).split()
    name = objective[0] if objective else ""
    if name not in LIGHTGBM_TRANSFORMS:
        raise Unsupported(f"LightGBM objective {name!r}")
    head: dict[str, Any] = {"transform": LIGHTGBM_TRANSFORMS[name]}
    for part in objective[1:]:
        key, _, value = part.partition(":")
        if key == "sigmoid":
            head["sigmoid"] = float(value)
    outputs = int(dump["num_tree_per_iteration"])
    table = _Table(width=1)
    roots, depth = [], 0
    for tree in dump["tree_info"]:
        if tree.get("num_cat", 0) or "leaf_coeff" in str(tree.keys()):
            raise Unsupported("LightGBM categorical splits or linear trees")
        root, tree_depth = _lightgbm_node(tree["tree_structure"], table)
        roots.append(root)
        depth = max(depth, tree_depth)
    columns = [t % outputs for t in range(len(roots))]
    ensemble = table.ensemble(
        roots,
        columns,
        np.zeros(outputs),
        depth,
        float32_input=False,
        zero_clamp=True,
        average=bool(dump.get("average_output", False)),
    )
    return ensemble, head


def _lightgbm_node(node: dict[str, Any], table: _Table) -> tuple[int, int]:
    if "split_feature" not in node:
        return table.leaf(np.asarray([node["leaf_value"]]), float(node.get("leaf_count", math.nan))), 0
    if node.get("decision_type") != "<=":
        raise Unsupported(f"LightGBM decision type {node.get('decision_type')!r}")
    threshold = float(node["threshold"])
    if abs(threshold) == LIGHTGBM_INF:  # the JSON dump writes a threshold of inf as 1e300 (Common::AvoidInf)
        threshold = math.copysign(math.inf, threshold)
    index = table.add(
        int(node["split_feature"]),
        threshold,
        bool(node["default_left"]),
        _LIGHTGBM_MISSING[node["missing_type"]],
        float(node.get("internal_count", math.nan)),
    )
    left, left_depth = _lightgbm_node(node["left_child"], table)
    right, right_depth = _lightgbm_node(node["right_child"], table)
    table.children[index] = (left, right)
    return index, 1 + max(left_depth, right_depth)


# -- scikit-learn ------------------------------------------------------------------------------------
_SINGLE = {"DecisionTreeRegressor", "DecisionTreeClassifier", "ExtraTreeRegressor", "ExtraTreeClassifier"}
_FORESTS = {"RandomForestRegressor", "RandomForestClassifier", "ExtraTreesRegressor", "ExtraTreesClassifier"}
_BOOSTING = {"GradientBoostingRegressor", "GradientBoostingClassifier"}
SKLEARN_TREE_MODELS = _SINGLE | _FORESTS | _BOOSTING


def from_sklearn(model: Any) -> TreeEnsemble:
    """The ensemble of a fitted scikit-learn tree, forest or gradient-boosting model (raw scores).

    Classifier trees and forests give class probabilities; gradient boosting gives its decision
    function. The caller maps scores to labels (see ``ferry.runtimes.compiled``).
    """
    name = type(model).__name__
    if getattr(model, "n_outputs_", 1) != 1:
        raise Unsupported("multi-output trees")
    if name in _SINGLE:
        return _sklearn_trees([model.tree_], classifier=hasattr(model, "classes_"), average=False)
    if name in _FORESTS:
        trees = [e.tree_ for e in model.estimators_]
        return _sklearn_trees(trees, classifier=hasattr(model, "classes_"), average=True)
    if name in _BOOSTING:
        return _sklearn_boosting(model)
    raise Unsupported(f"{name} is not a known tree model")


def _sklearn_trees(trees: list[Any], classifier: bool, average: bool) -> TreeEnsemble:
    first = trees[0].value
    width = first.shape[2] if classifier else 1
    table = _Table(width=width)
    roots, depth = [], 0
    for tree in trees:
        values = tree.value[:, 0, :]
        if classifier:  # DecisionTreeClassifier.predict_proba normalises each leaf exactly so
            normalizer = values.sum(axis=1)[:, np.newaxis]
            normalizer[normalizer == 0.0] = 1.0
            values = values / normalizer
        roots.append(_sklearn_tree(tree, values, table))
        depth = max(depth, int(tree.max_depth))
    return table.ensemble(
        roots, [0] * len(roots), np.zeros(width), depth, float32_input=True, zero_clamp=False, average=average
    )


def _sklearn_tree(tree: Any, values: np.ndarray, table: _Table) -> int:
    missing_left = getattr(tree, "missing_go_to_left", np.zeros(tree.node_count, dtype=bool))
    offset = len(table.feature)
    cover = tree.weighted_n_node_samples  # what shap's TreeExplainer weighs by
    for i in range(tree.node_count):
        if tree.children_left[i] == -1:
            table.leaf(values[i], float(cover[i]))
        else:
            table.add(
                int(tree.feature[i]), float(tree.threshold[i]), bool(missing_left[i]), MISSING_NAN, float(cover[i])
            )
    for i in range(tree.node_count):
        if tree.children_left[i] != -1:
            table.children[offset + i] = (offset + int(tree.children_left[i]), offset + int(tree.children_right[i]))
    return offset


def _sklearn_boosting(model: Any) -> TreeEnsemble:
    """Gradient boosting: ``init + lr * tree_1 + lr * tree_2 ...`` per class, stage by stage."""
    init = getattr(model, "init_", None)
    if init is None or type(init).__name__ not in ("DummyRegressor", "DummyClassifier"):
        raise Unsupported("gradient boosting with a custom or zero init estimator")
    probe = np.zeros((1, int(model.n_features_in_)))
    baseline = np.asarray(model._raw_predict_init(probe), dtype=np.float64)[0]
    stages = model.estimators_  # [stages, K] of DecisionTreeRegressor
    table = _Table(width=1)
    roots, columns, depth = [], [], 0
    rate = float(model.learning_rate)
    for stage in stages:
        for column, estimator in enumerate(stage):
            tree = estimator.tree_
            roots.append(_sklearn_tree(tree, rate * tree.value[:, 0, :], table))
            columns.append(column)
            depth = max(depth, int(tree.max_depth))
    return table.ensemble(roots, columns, baseline, depth, float32_input=True, zero_clamp=False, average=False)


# -- XGBoost -----------------------------------------------------------------------------------------
# objective -> (link on the summed margin, how base_score becomes the starting margin).
XGBOOST_OBJECTIVES = {
    "reg:squarederror": ("identity", "identity"),
    "reg:linear": ("identity", "identity"),
    "reg:squaredlogerror": ("identity", "identity"),
    "reg:pseudohubererror": ("identity", "identity"),
    "reg:absoluteerror": ("identity", "identity"),
    "reg:quantileerror": ("identity", "identity"),
    "rank:pairwise": ("identity", "identity"),
    "rank:ndcg": ("identity", "identity"),
    "rank:map": ("identity", "identity"),
    "binary:logitraw": ("identity", "identity"),  # its base_score is a margin already
    "binary:logistic": ("sigmoid32", "logit"),
    "reg:logistic": ("sigmoid32", "logit"),
    "count:poisson": ("exp32", "log"),
    "reg:gamma": ("exp32", "log"),
    "reg:tweedie": ("exp32", "log"),
    "multi:softprob": ("softmax32", "identity"),
}


def from_xgboost(model: dict[str, Any]) -> tuple[TreeEnsemble, dict[str, Any]]:
    """The ensemble of an XGBoost model (its JSON, as ``save_model('m.json')`` writes it) and its link.

    XGBoost reads rows as float32, goes left where ``x < split`` (NaN: the default side) and adds leaf
    values in float32 from the base margin on, tree after tree; every one of these is kept here.
    """
    from ferry.runtimes.float32links import logf

    learner = model["learner"]
    booster = learner["gradient_booster"]
    if booster.get("name") != "gbtree":
        raise Unsupported(f"XGBoost booster {booster.get('name')!r} (gbtree is compiled)")
    objective = str(learner["objective"]["name"])
    if objective not in XGBOOST_OBJECTIVES:
        raise Unsupported(f"XGBoost objective {objective!r}")
    link, start = XGBOOST_OBJECTIVES[objective]
    param = learner["learner_model_param"]
    if int(param.get("num_target", 1)) > 1:
        raise Unsupported("XGBoost multi-target trees")
    outputs = max(1, int(param.get("num_class", 0)))
    base = str(param["base_score"])
    scores = np.asarray(json_floats(base), dtype=np.float32).reshape(-1)
    if scores.size not in (1, outputs):
        raise Unsupported(f"XGBoost base_score {base} for {outputs} outputs")
    if start == "logit":
        scores = np.asarray([-logf(np.float32(1.0) / s - np.float32(1.0)) for s in scores], dtype=np.float32)
    elif start == "log":
        scores = np.asarray([logf(s) for s in scores], dtype=np.float32)
    init = np.broadcast_to(scores, (outputs,)).astype(np.float64)
    trees = booster["model"]["trees"]
    columns = [int(c) for c in booster["model"]["tree_info"]]
    if columns != [t % outputs for t in range(len(trees))]:
        raise Unsupported("XGBoost trees not in rounds of one tree per class")
    table = _Table(width=1)
    roots, depth = [], 0
    for tree in trees:
        root, tree_depth = _xgboost_tree(tree, table)
        roots.append(root)
        depth = max(depth, tree_depth)
    ensemble = table.ensemble(
        roots, columns, init, depth, float32_input=True, zero_clamp=False, average=False, float32_sum=True
    )
    return ensemble, {"transform": link}


def json_floats(text: str) -> list[float]:
    """``5E-1`` or ``[1.7E-2,-1.6E-1]``: XGBoost writes its base_score either way."""
    text = text.strip()
    return [float(v) for v in text.strip("[]").split(",")] if text.startswith("[") else [float(text)]


def _xgboost_tree(tree: dict[str, Any], table: _Table) -> tuple[int, int]:
    if any(int(t) != 0 for t in tree.get("split_type", [])):
        raise Unsupported("XGBoost categorical splits")
    if int(tree.get("tree_param", {}).get("size_leaf_vector", "1")) > 1:
        raise Unsupported("XGBoost vector leaves")
    left, right = tree["left_children"], tree["right_children"]
    split = tree["split_conditions"]
    # The hessian summed over the training rows through each node: the cover XGBoost's TreeSHAP weighs by.
    hessian = tree.get("sum_hessian") or [math.nan] * len(left)
    offset = len(table.feature)
    depth = [0] * len(left)
    for i in range(len(left)):
        value = np.float32(split[i])
        cover = float(np.float32(hessian[i]))
        if left[i] == -1:
            table.leaf(np.asarray([value], dtype=np.float64), cover)
        else:
            # XGBoost goes left where x < split; for float32 x that is x <= the float32 just below it.
            below = float(np.nextafter(value, np.float32(-np.inf)))
            table.add(int(tree["split_indices"][i]), below, bool(tree["default_left"][i]), MISSING_NAN, cover)
    for i in range(len(left)):
        if left[i] != -1:
            table.children[offset + i] = (offset + int(left[i]), offset + int(right[i]))
            depth[left[i]] = depth[right[i]] = depth[i] + 1  # a parent comes before its children
    return offset, max(depth)


# -- CatBoost ----------------------------------------------------------------------------------------
_CATBOOST_NAN = {"AsFalse": True, "AsIs": True, "AsTrue": False}  # default_left: NaN fails every split


def from_catboost(model: dict[str, Any]) -> TreeEnsemble:
    """The ensemble of a CatBoost model's JSON (``save_model(..., format='json')``): raw formula values.

    Oblivious trees of float-feature splits only: a depth-d tree becomes a full binary tree whose level
    ``i`` asks split ``i`` (``float32(x) > border``), reaching leaf ``sum(bit_i << i)``. CatBoost sums the
    trees in order, then adds its bias.
    """
    info = model.get("features_info", {})
    if info.get("categorical_features") or info.get("text_features") or info.get("embedding_features"):
        raise Unsupported("CatBoost categorical, text or embedding features")
    if model.get("oblivious_trees") is None or model.get("non_symmetric_trees"):
        raise Unsupported("CatBoost non-symmetric trees")
    scale, bias = model.get("scale_and_bias", [1.0, [0.0]])
    if float(scale) != 1.0:
        raise Unsupported(f"CatBoost scale {scale}")
    bias = np.asarray(bias, dtype=np.float64).reshape(-1)
    width = bias.size
    floats = {int(f["feature_index"]): f for f in info.get("float_features", [])}
    table = _Table(width=width)
    roots, depth = [], 0
    for tree in model["oblivious_trees"]:
        splits = tree.get("splits", [])
        if any(s.get("split_type") != "FloatFeature" for s in splits):
            raise Unsupported("CatBoost splits other than float features")
        leaves = np.asarray(tree["leaf_values"], dtype=np.float64).reshape(-1, width)
        if leaves.shape[0] != 1 << len(splits):
            raise Unsupported("CatBoost tree of unexpected size")
        weights = np.asarray(tree.get("leaf_weights") or [math.nan] * leaves.shape[0], dtype=np.float64)
        roots.append(_catboost_level(splits, leaves, weights, floats, table, 0, 0))
        depth = max(depth, len(splits))
    roots.append(table.leaf(bias))  # the bias comes last: ((tree_1 + tree_2) + ...) + bias
    return table.ensemble(
        roots, [0] * len(roots), np.zeros(width), depth, float32_input=True, zero_clamp=False, average=False
    )


def _catboost_level(
    splits: list[dict[str, Any]],
    leaves: np.ndarray,
    weights: np.ndarray,
    floats: dict[int, Any],
    table: _Table,
    level: int,
    index: int,
) -> int:
    """The node at ``level`` whose lower bits (the answers above it) are ``index``; its cover is the summed
    weight of the training rows in the leaves below it (CatBoost's ``leaf_weights``)."""
    below = (np.arange(leaves.shape[0]) & ((1 << level) - 1)) == index
    cover = float(weights[below].sum())
    if level == len(splits):
        return table.leaf(leaves[index], cover)
    split = splits[level]
    described = floats.get(int(split["float_feature_index"]), {})
    feature = int(described.get("flat_feature_index", split["float_feature_index"]))  # its input column
    treatment = described.get("nan_value_treatment", "AsIs")
    node = table.add(
        feature, float(np.float32(split["border"])), _CATBOOST_NAN.get(treatment, True), MISSING_NAN, cover
    )
    left = _catboost_level(splits, leaves, weights, floats, table, level + 1, index)
    right = _catboost_level(splits, leaves, weights, floats, table, level + 1, index | (1 << level))
    table.children[node] = (left, right)
    return node
