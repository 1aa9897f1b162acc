"""Check a LightGBM text model before LightGBM reads it: LightGBM trusts the file.

A hash says a file is the one that was bundled, not that LightGBM can read it safely: arrays shorter
than ``num_leaves`` says abort the process (a C++ exception thrown inside an OpenMP loop), a child index
out of range reads past an array, and a child that points back at its parent loops for ever in predict.
So every tree is checked here, in Python, as LightGBM will read it (``Tree::Tree(const char*)``): the
array lengths ``num_leaves`` implies, every index in range, the children forming one tree from the
root (each node and each leaf reached exactly once: no cycles, no sharing), and ``tree_sizes``, which
LightGBM uses as byte offsets, matching the blocks. A file LightGBM writes always passes.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from ferry.errors import BundleError

_TREE_START = re.compile(rb"^Tree=", re.M)
_MAX_TREE_LINES = 22  # LightGBM reads at most this many key=value lines per tree
_MISSING_TYPES = (0, 1, 2)  # None, Zero, NaN: bits 2-3 of decision_type


@dataclass(frozen=True)
class _Header:
    max_feature_idx: int
    num_class: int
    num_tree_per_iteration: int


def read_booster(path: Path) -> Any:
    """A ``lightgbm.Booster`` of ``path``, read only after the file passed the check: every path that hands
    a LightGBM text file to LightGBM (build, conversion, serving) reads it through here."""
    import lightgbm

    check_lightgbm_file(path)
    return lightgbm.Booster(model_file=str(path))


def check_lightgbm_file(path: Path) -> None:
    """Raise ``BundleError`` naming the file, tree and field where ``path`` is not a well-formed model."""
    check_lightgbm_text(path.read_bytes(), path.name)


def check_lightgbm_text(data: bytes, name: str = "model.txt") -> None:
    head, found, body = data.partition(b"\nTree=")
    if not found:
        _fail(name, "no trees (expected `Tree=0` after the header)")
    body, found, _ = (b"Tree=" + body).partition(b"end of trees")
    if not found:
        _fail(name, "no `end of trees` line after the trees")
    header = _header(head, name)
    starts = [m.start() for m in _TREE_START.finditer(body)]
    blocks = [body[a:b] for a, b in zip(starts, [*starts[1:], len(body)], strict=True)]
    sizes = _fields(head.split(b"\n")).get("tree_sizes")
    if sizes is not None:
        declared = _numbers(sizes, int, name, "tree_sizes")
        actual = [len(b) for b in blocks]
        if declared != actual:
            _fail(name, f"tree_sizes {_short(declared)} does not match the trees' sizes in bytes {_short(actual)}")
    if len(blocks) % header.num_tree_per_iteration:
        _fail(name, f"{len(blocks)} trees is not a multiple of num_tree_per_iteration={header.num_tree_per_iteration}")
    for index, block in enumerate(blocks):
        _check_tree(block, index, header, name)


def _header(head: bytes, name: str) -> _Header:
    lines = head.split(b"\n")
    if lines[0].strip() != b"tree":
        _fail(name, "not a LightGBM text model (the first line is not `tree`)")
    fields = _fields(lines[1:])
    values = {}
    for key in ("max_feature_idx", "num_class", "num_tree_per_iteration"):
        if key not in fields:
            _fail(name, f"the header has no {key}")
        values[key] = _int(fields[key], name, key)
    header = _Header(**values)
    if header.max_feature_idx < 0 or header.num_class < 1 or header.num_tree_per_iteration != header.num_class:
        _fail(
            name,
            f"inconsistent header: max_feature_idx={header.max_feature_idx}, num_class={header.num_class}, "
            f"num_tree_per_iteration={header.num_tree_per_iteration}",
        )
    for key in ("feature_names", "feature_infos"):
        if key in fields and len(fields[key].split()) != header.max_feature_idx + 1:
            count, needed = len(fields[key].split()), header.max_feature_idx + 1
            _fail(name, f"{key} has {count} entries, max_feature_idx={header.max_feature_idx} needs {needed}")
    return header


def _check_tree(block: bytes, index: int, header: _Header, name: str) -> None:
    where = f"{name}, Tree={index}"
    lines = block.split(b"\n")
    if lines[0].strip() != f"Tree={index}".encode():
        _fail(where, f"trees out of order (found `{lines[0][:20].decode('latin-1')}`)")
    entries = []
    for line in lines[1:]:
        if not line.strip():
            break
        if b"=" not in line:
            _fail(where, f"a line without `=`: `{line[:40].decode('latin-1')}`")
        entries.append(line)
    if len(entries) > _MAX_TREE_LINES:
        _fail(where, f"{len(entries)} fields, LightGBM reads at most {_MAX_TREE_LINES}")
    fields = _fields(entries)
    for key in ("num_leaves", "num_cat", "leaf_value"):
        if key not in fields:
            _fail(where, f"no {key}")
    leaves = _int(fields["num_leaves"], where, "num_leaves")
    num_cat = _int(fields["num_cat"], where, "num_cat")
    linear = _int(fields.get("is_linear", b"0"), where, "is_linear")
    if leaves < 1 or num_cat < 0 or linear not in (0, 1):
        _fail(where, f"num_leaves={leaves}, num_cat={num_cat}, is_linear={linear} are out of range")
    _array(fields, "leaf_value", float, leaves, where)
    if leaves == 1 and not linear:
        return  # LightGBM reads nothing more of a one-leaf tree
    inner = leaves - 1
    left = _array(fields, "left_child", int, inner, where)
    right = _array(fields, "right_child", int, inner, where)
    features = _array(fields, "split_feature", int, inner, where)
    thresholds = _array(fields, "threshold", float, inner, where)
    decisions = _array(fields, "decision_type", int, inner, where, required=False) or [0] * inner
    for key, kind in (("split_gain", float), ("internal_value", float), ("internal_weight", float)):
        _array(fields, key, kind, inner, where, required=False)
    _array(fields, "internal_count", int, inner, where, required=False)
    _array(fields, "leaf_weight", float, leaves, where, required=False)
    _array(fields, "leaf_count", int, leaves, where, required=False)
    _check_splits(features, thresholds, decisions, num_cat, fields, header, where)
    _check_structure(left, right, leaves, where)
    if linear:
        _check_linear(fields, leaves, header, where)


def _check_splits(
    features: list[int],
    thresholds: list[float],
    decisions: list[int],
    num_cat: int,
    fields: dict[str, bytes],
    header: _Header,
    where: str,
) -> None:
    for node, feature in enumerate(features):
        if not 0 <= feature <= header.max_feature_idx:
            _fail(where, f"split_feature[{node}]={feature} is out of range (max_feature_idx={header.max_feature_idx})")
    for node, decision in enumerate(decisions):
        if not 0 <= decision < 128 or (decision >> 2) & 3 not in _MISSING_TYPES:
            _fail(where, f"decision_type[{node}]={decision} is not a decision LightGBM writes")
    if num_cat == 0:
        if any(d & 1 for d in decisions):
            _fail(where, "a categorical split in a tree with num_cat=0")
        return
    bounds = _array(fields, "cat_boundaries", int, num_cat + 1, where)
    if bounds[0] != 0 or any(b < a for a, b in itertools.pairwise(bounds)):
        _fail(where, f"cat_boundaries {_short(bounds)} must start at 0 and never decrease")
    _array(fields, "cat_threshold", int, bounds[-1], where)
    for node, (decision, threshold) in enumerate(zip(decisions, thresholds, strict=True)):
        if decision & 1 and not (threshold.is_integer() and 0 <= threshold < num_cat):
            _fail(where, f"threshold[{node}]={threshold:g} is no categorical split (num_cat={num_cat})")


def _check_structure(left: list[int], right: list[int], leaves: int, where: str) -> None:
    """The children form one binary tree from node 0: every node and every leaf reached exactly once."""
    inner = leaves - 1
    node_seen = [False] * inner
    leaf_seen = [False] * leaves
    node_seen[0] = True
    pending = [0]
    while pending:
        node = pending.pop()
        for side, child in (("left_child", left[node]), ("right_child", right[node])):
            if child >= 0:
                if child >= inner:
                    _fail(where, f"{side}[{node}]={child} is out of range ({inner} inner nodes)")
                if node_seen[child]:
                    _fail(
                        where, f"{side}[{node}]={child} points at a node already in the tree (a cycle or a shared node)"
                    )
                node_seen[child] = True
                pending.append(child)
            else:
                leaf = ~child
                if leaf >= leaves:
                    _fail(where, f"{side}[{node}]={child} names leaf {leaf}, out of range ({leaves} leaves)")
                if leaf_seen[leaf]:
                    _fail(where, f"{side}[{node}]={child} names leaf {leaf} a second time")
                leaf_seen[leaf] = True
    if not all(node_seen) or not all(leaf_seen):
        _fail(where, "some nodes or leaves are not reachable from the root")


def _check_linear(fields: dict[str, bytes], leaves: int, header: _Header, where: str) -> None:
    _array(fields, "leaf_const", float, leaves, where)
    counts = _array(fields, "num_features", int, leaves, where)
    if any(c < 0 for c in counts):
        _fail(where, "num_features has a negative count")
    total = sum(counts)
    features = _array(fields, "leaf_features", int, total, where)
    _array(fields, "leaf_coeff", float, total, where)
    if any(not 0 <= f <= header.max_feature_idx for f in features):
        _fail(where, f"leaf_features names a feature out of range (max_feature_idx={header.max_feature_idx})")


def _fields(lines: list[bytes]) -> dict[str, bytes]:
    fields = {}
    for line in lines:
        key, found, value = line.partition(b"=")
        if found:
            fields[key.strip().decode("latin-1")] = value.strip()
    return fields


def _array(fields: dict[str, bytes], key: str, kind: type, count: int, where: str, required: bool = True) -> list[Any]:
    raw = fields.get(key)
    if raw is None:
        if required:
            _fail(where, f"no {key}")
        return []
    values = _numbers(raw, kind, where, key)
    if len(values) != count:
        _fail(where, f"{key} has {len(values)} values, {count} expected")
    return values


def _numbers(raw: bytes, kind: type, where: str, key: str) -> list[Any]:
    try:
        return [kind(v) for v in raw.split()]
    except ValueError:
        _fail(where, f"{key} holds a value that is not {'an integer' if kind is int else 'a number'}")


def _int(raw: bytes, where: str, key: str) -> int:
    try:
        return int(raw)
    except ValueError:
        _fail(where, f"{key}={raw[:20].decode('latin-1')!r} is not an integer")


def _short(values: list[int]) -> str:
    return str(values) if len(values) <= 6 else f"[{', '.join(map(str, values[:6]))}, ...] ({len(values)})"


def _fail(where: str, problem: str) -> NoReturn:
    raise BundleError(f"{where}: {problem}; LightGBM would crash or loop on it, so it is not loaded")
