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
    """{"a": {"b": x, 0: y}} -> {"a.b": x, "a.0": y} (leaves: anything that is not a Mapping; keys joined as str)."""
    if not tree:
        return {}
    return {sep.join(str(k) for k in path): v for path, v in traverse_util.flatten_dict(dict(tree)).items()}


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
    """Names missing from / unexpected in what was found, and "name: <found> (spec), expected (spec)" lines."""
    missing: tuple[str, ...]
    unexpected: tuple[str, ...]
    misshaped: tuple[str, ...]

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.misshaped)


def _spec_text(spec: Any) -> str:
    """(8, 16) -> "(8, 16)"; ((8, 16), "float32") -> "(8, 16) float32"."""
    if isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[1], str):
        return f"{tuple(spec[0])} {spec[1]}"
    return str(tuple(spec))


def shape_diff(expected: Mapping[str, Any], found: Mapping[str, Any], ignore: Sequence[str] = (),
               found_label: str = "found") -> ShapeDiff:
    """Compare two {name: spec} tables, a spec being a shape or a (shape, dtype name) pair; names in `ignore` are
    never reported as unexpected. Wrong-spec lines read "name: <found_label> (8, 16), expected (8, 32)"."""
    def norm(spec):
        if isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[1], str):
            return tuple(spec[0]), spec[1]
        return tuple(spec)

    ignored = set(ignore)
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected) - ignored)
    misshaped = sorted(f"{name}: {found_label} {_spec_text(found[name])}, expected {_spec_text(expected[name])}"
                       for name in set(expected) & set(found) if norm(found[name]) != norm(expected[name]))
    return ShapeDiff(tuple(missing), tuple(unexpected), tuple(misshaped))


def describe_diff(diff: ShapeDiff, limit: int = 25) -> str:
    """Indented listing of a non-empty `ShapeDiff`, at most `limit` names per part."""
    def listing(title: str, items: Sequence[str]) -> str:
        shown = "\n    ".join(items[:limit]) + ("\n    ..." if len(items) > limit else "")
        return f"  {title} ({len(items)}):\n    {shown}" if items else ""

    parts = [listing("missing", diff.missing), listing("unexpected", diff.unexpected),
             listing("wrong shape", diff.misshaped)]
    return "\n".join(p for p in parts if p)


def get_path(tree: dict, path: tuple[str, ...]):
    """tree[path[0]][path[1]]...: the value at a key path of a nested dict."""
    for key in path:
        tree = tree[key]
    return tree


def put_path(tree: dict, path: tuple[str, ...], value) -> None:
    """Set the value at a key path of a nested dict, creating the intermediate dicts."""
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value
