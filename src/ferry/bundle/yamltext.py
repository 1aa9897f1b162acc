"""``ferry.yaml`` as YAML text: PyYAML's safe loader with bounds, and its dumper.

Imported only where YAML is parsed or written: ``ferry serve`` reads a bundle's JSON twin instead
(``ferry.bundle.manifest``), since importing PyYAML, which compiles its resolvers' regular expressions,
was about 8% of a compiled server's start-up.
"""

from __future__ import annotations

from typing import Any

import yaml

# Bound on the values a document expands to once YAML aliases are followed (an alias bomb is a few
# lines that expand to billions of values).
MAX_VALUES = 1_000_000

YAMLError = yaml.YAMLError

# libyaml's parser where PyYAML has it: ten times faster, which a repository of a thousand bundles verified
# at start-up (``--max-memory``) needs.
_SafeLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load(text: bytes | str) -> Any:
    """The document in ``text``, by the safe loader; raises ``YAMLError`` (or ``RecursionError``)."""
    # Only an alias (``*name``) can expand a document past its own size, and every encoding YAML reads
    # spells ``*`` with the byte 0x2A: without one, counting the values is not needed.
    aliased = b"*" in text if isinstance(text, bytes) else "*" in text
    return yaml.load(text, Loader=_BoundedLoader if aliased else _SafeLoader)


def dump(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


class _BoundedLoader(_SafeLoader):  # type: ignore[valid-type,misc]
    """PyYAML's safe loader, refusing a document whose aliases expand past ``MAX_VALUES``.

    The node graph is composed without expanding aliases; it is counted before anything is constructed.
    """

    def get_single_node(self) -> yaml.Node | None:
        node: yaml.Node | None = super().get_single_node()
        if node is not None:
            _count_values(node, {}, set())
        return node


def _count_values(node: yaml.Node, counted: dict[int, int], open_nodes: set[int]) -> int:
    """How many values ``node`` expands to, each shared (aliased) node counted once per use but walked once."""
    key = id(node)
    if key in counted:
        return counted[key]
    if key in open_nodes:
        raise yaml.YAMLError("an alias refers to a node that contains it")
    open_nodes.add(key)
    children = node.value if isinstance(node, yaml.SequenceNode) else []
    if isinstance(node, yaml.MappingNode):
        children = [item for pair in node.value for item in pair]
    total = 1 + sum(_count_values(child, counted, open_nodes) for child in children)
    open_nodes.discard(key)
    if total > MAX_VALUES:
        raise yaml.YAMLError(f"expands to more than {MAX_VALUES} values (YAML aliases)")
    counted[key] = total
    return total
