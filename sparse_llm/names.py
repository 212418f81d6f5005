"""Selecting modules by name: one rule for ``prune`` and ``sparsify`` alike."""

from __future__ import annotations

import re
from collections.abc import Iterable


def as_patterns(value: str | Iterable[str] | None) -> list[str]:
    """None -> [], one string -> [it], an iterable -> its list."""
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def matches_any(name: str, patterns: Iterable[str]) -> bool:
    """True when a pattern is the whole name, a dotted suffix of it (``"q_proj"``), or a regex found in it."""
    return any(name == p or name.endswith("." + p) or re.search(p, name) for p in patterns)
