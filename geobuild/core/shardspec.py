"""Parse ``--shards SPEC``: which units of a stage to process.

Accepted forms (combinable with commas)::

    {00000..00009}     brace range, as WebDataset URLs spell it
    0-9                numeric range, inclusive
    3,5,8              a list
    00003              one unit
    all / empty        every available unit

Numbers are normalised to the five-digit unit names (``3`` -> ``00003``).
"""

from __future__ import annotations

import re
from typing import Iterable

from .errors import GeobuildError

SHARD_DIGITS = 5


def shard_name(index: int) -> str:
    """Zero-padded unit/shard name: 0 -> '00000'."""
    return f"{index:0{SHARD_DIGITS}d}"


_BRACE = re.compile(r"^\{(\d+)\.\.(\d+)\}$")
_RANGE = re.compile(r"^(\d+)-(\d+)$")
_ONE = re.compile(r"^\d+$")


def _split(spec: str) -> list[str]:
    """Split on commas that are not inside braces."""
    parts, depth, cur = [], 0, []
    for ch in spec:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return [p.strip() for p in parts if p.strip()]


def parse_shard_spec(spec: str | None) -> list[str] | None:
    """Unit names named by ``spec`` (sorted, unique), or None for "all units".

    Raises GeobuildError on anything it cannot read (e.g. ``{5..2}``, ``a-b``).
    """
    if spec is None or spec.strip().lower() in ("", "all", "*"):
        return None
    names: set[str] = set()
    for part in _split(spec.strip()):
        m = _BRACE.match(part) or _RANGE.match(part)
        if m:
            lo, hi = int(m.group(1)), int(m.group(2))
            if hi < lo:
                raise GeobuildError(f"--shards: range '{part}' ends before it starts")
            names.update(shard_name(i) for i in range(lo, hi + 1))
        elif _ONE.match(part):
            names.add(shard_name(int(part)))
        else:
            raise GeobuildError(
                f"--shards: cannot read '{part}'; use e.g. '{{00000..00009}}', '0-9', '3,5,8' or 'all'"
            )
    return sorted(names)


def select_units(available: Iterable[str], spec: str | None, what: str = "units", hint: str = "") -> list[str]:
    """The units of ``available`` named by ``spec`` (all of them for None/'all').

    Units named in ``spec`` but not available are an error that lists them (followed by ``hint``,
    e.g. the command that makes them), so a typo is never silently a no-op.
    """
    available = sorted(available)
    wanted = parse_shard_spec(spec)
    if wanted is None:
        return available
    have = set(available)
    missing = [u for u in wanted if u not in have]
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise GeobuildError(
            f"--shards names {len(missing)} {what} that are not available ({shown}); "
            f"available: {len(available)} ({available[0] + '..' + available[-1] if available else 'none'})"
            + (f"; {hint}" if hint else "")
        )
    return wanted
