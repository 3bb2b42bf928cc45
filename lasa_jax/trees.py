"""Nested-dict helpers used by every module that stores or compares parameter trees.

Flattening is `flax.traverse_util` with a dotted separator; `shape_diff` is the one comparison of an expected
{name: shape} table against what a file or tree holds (parameters, checkpoints, SSI artifacts), and
`describe_diff` its one message format.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from flax import traverse_util


def flatten(tree: Mapping[str, Any], sep: str = ".") -> dict[str, Any]:
    """{"a": {"b": x}} -> {"a.b": x} (leaves are anything that is not a Mapping)."""
    return traverse_util.flatten_dict(dict(tree), sep=sep) if tree else {}


def flatten_paths(tree: Mapping[str, Any]) -> dict[tuple, Any]:
    """{"a": {"b": x}} -> {("a", "b"): x}."""
    return traverse_util.flatten_dict(dict(tree)) if tree else {}


def unflatten(flat: Mapping[Any, Any], sep: str | None = ".") -> dict[str, Any]:
    """Inverse of `flatten` (string keys split on `sep`) or of `flatten_paths` (tuple keys, `sep=None`)."""
    if not flat:
        return {}
    if sep is None:
        return traverse_util.unflatten_dict(dict(flat))
    return traverse_util.unflatten_dict(dict(flat), sep=sep)


@dataclass(frozen=True)
class ShapeDiff:
    """Names missing from / unexpected in what was found, and "name: found (shape), expected (shape)" lines."""
    missing: tuple[str, ...]
    unexpected: tuple[str, ...]
    misshaped: tuple[str, ...]

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.misshaped)


def shape_diff(expected: Mapping[str, Sequence[int]], found: Mapping[str, Sequence[int]],
               ignore: Sequence[str] = ()) -> ShapeDiff:
    """Compare two {name: shape} tables; names in `ignore` are never reported as unexpected."""
    ignored = set(ignore)
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected) - ignored)
    misshaped = sorted(f"{name}: found {tuple(found[name])}, expected {tuple(expected[name])}"
                       for name in set(expected) & set(found) if tuple(found[name]) != tuple(expected[name]))
    return ShapeDiff(tuple(missing), tuple(unexpected), tuple(misshaped))


def describe_diff(diff: ShapeDiff, limit: int = 25) -> str:
    """Indented listing of a non-empty `ShapeDiff`, at most `limit` names per part."""
    def listing(title: str, items: Sequence[str]) -> str:
        shown = "\n    ".join(items[:limit]) + ("\n    ..." if len(items) > limit else "")
        return f"  {title} ({len(items)}):\n    {shown}" if items else ""

    parts = [listing("missing", diff.missing), listing("unexpected", diff.unexpected),
             listing("wrong shape", diff.misshaped)]
    return "\n".join(p for p in parts if p)
