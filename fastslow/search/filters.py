"""Metadata filters of a search: which fields an index's items can be filtered on, a request's filter checked
against them, and the items of a shard that pass it.

    {"media": {"eq": "image"}, "width": {"gte": 512}, "duration": {"lte": 30}, "id": {"prefix": "2024/"}}

Fields: `media` (`eq`, `in`), `id` (`eq`, `in`, `prefix`), and every numeric field: the index's own `width`,
`height` and `duration` columns and each key of the items' metadata (img2dataset's `.json`: `original_width`,
`original_height`, ...) whose values are numbers (`eq`, `in`, `gte`, `lte`). An item without the field never
passes a condition on it. Conditions on several fields must all hold.
"""

from __future__ import annotations

import json
import math

import numpy as np

from fastslow.errors import FastslowError

NUMBER, MEDIA, ID = "number", "media", "id"
OPERATORS = {NUMBER: ("eq", "in", "gte", "lte"), MEDIA: ("eq", "in"), ID: ("eq", "in", "prefix")}
MAX_IN = 1000  # values of one `in`
COLUMNS = ("width", "height", "duration")  # the index's own numeric columns (media_info)


class FilterError(FastslowError):
    """A filter names an unknown field or operator, or a value of the wrong type (the message names which)."""


def _is_number(v) -> bool:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    try:
        return math.isfinite(float(v))
    except OverflowError:  # an int beyond any float
        return False


def check_filter(spec, fields: dict[str, str]) -> dict[str, dict]:
    """`spec` as {field: {operator: value}} if every part is valid for `fields` (name -> kind), else a FilterError
    naming the part, e.g. `filter.width.gte: must be a number, got "big"`."""
    if spec is None:
        return {}
    if not isinstance(spec, dict):
        raise FilterError("filter: must be an object {field: {operator: value}}")
    checked = {}
    for name, conditions in spec.items():
        where = f"filter.{name}"
        if name not in fields:
            known = ", ".join(sorted(fields)) or "none"
            raise FilterError(f"{where}: no such field in this index (fields: {known})")
        kind = fields[name]
        if not isinstance(conditions, dict) or not conditions:
            raise FilterError(f"{where}: must be an object of conditions, e.g. {{\"{OPERATORS[kind][0]}\": ...}}")
        for op, value in conditions.items():
            if op not in OPERATORS[kind]:
                raise FilterError(f"{where}.{op}: not an operator of a {kind} field ({', '.join(OPERATORS[kind])})")
            _check_value(f"{where}.{op}", kind, op, value)
        checked[name] = dict(conditions)
    return checked


def _is_text(v) -> bool:
    """A string that can be encoded (no lone surrogate, which JSON can carry and UTF-8 cannot)."""
    return isinstance(v, str) and not any(0xD800 <= ord(c) <= 0xDFFF for c in v)


def _check_value(where: str, kind: str, op: str, value) -> None:
    wanted = "a number" if kind == NUMBER else "a string (valid Unicode)"
    ok = _is_number if kind == NUMBER else _is_text
    if op == "in":
        if not isinstance(value, list) or not value or len(value) > MAX_IN:
            raise FilterError(f"{where}: must be a list of 1 to {MAX_IN} values")
        bad = [v for v in value if not ok(v)]
        if bad:
            raise FilterError(f"{where}: every value must be {wanted}, got {json.dumps(bad[0])[:60]}")
    elif not ok(value):
        raise FilterError(f"{where}: must be {wanted}, got {json.dumps(value)[:60]}")


class ItemFields:
    """The filterable fields of one shard's items (its metadata table, in the shard's order) and their masks.

    The metadata's JSON is parsed once, on the first use, into one float column per numeric key.
    """

    def __init__(self, table):
        self.table = table
        self._numbers: dict[str, np.ndarray] | None = None

    def numbers(self) -> dict[str, np.ndarray]:
        """field -> float64 values per item (NaN where the item lacks it or it is not a number)."""
        if self._numbers is None:
            n, numbers = self.table.num_rows, {}
            if "metadata" in self.table.column_names:
                for i, raw in enumerate(self.table.column("metadata").to_pylist()):
                    meta = json.loads(raw) if raw else None
                    for key, v in (meta.items() if isinstance(meta, dict) else ()):
                        if _is_number(v) and key not in COLUMNS:
                            numbers.setdefault(key, np.full(n, np.nan))[i] = v
            for name in COLUMNS:
                if name in self.table.column_names:
                    values = self.table.column(name).to_numpy(zero_copy_only=False)
                    numbers[name] = np.asarray(values, dtype=np.float64)
            self._numbers = numbers
        return self._numbers

    def kinds(self) -> dict[str, str]:
        """field -> kind, for every field a filter may name here."""
        return {"media": MEDIA, "id": ID, **{name: NUMBER for name in self.numbers()}}

    def describe(self, live: np.ndarray | None = None) -> dict[str, dict]:
        """field -> {kind, operators, and the values (media) or the range (numbers) present}: what a page shows.
        `live` (bool per item): only those items count (a version's deleted items do not)."""
        live = np.ones(self.table.num_rows, bool) if live is None else live
        media = self.table.column("media").to_pylist()
        out = {"id": {"kind": ID, "operators": list(OPERATORS[ID])},
               "media": {"kind": MEDIA, "operators": list(OPERATORS[MEDIA]),
                         "values": sorted({m for m, keep in zip(media, live) if m and keep})}}
        for name, values in self.numbers().items():
            present = values[live & ~np.isnan(values)]
            out[name] = {"kind": NUMBER, "operators": list(OPERATORS[NUMBER]), "items": int(len(present)),
                         "min": float(present.min()) if len(present) else None,
                         "max": float(present.max()) if len(present) else None}
        return out

    def mask(self, spec: dict[str, dict]) -> np.ndarray:
        """Which items pass every condition of a checked filter (bool per item, in the shard's order)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        keep = np.ones(self.table.num_rows, bool)
        for name, conditions in spec.items():
            if name in ("media", "id"):
                column = self.table.column(name)
                for op, value in conditions.items():
                    if op == "prefix":
                        hit = pc.starts_with(column, value)
                    else:
                        hit = pc.is_in(column, value_set=pa.array(value if op == "in" else [value], pa.string()))
                    keep &= np.asarray(pc.fill_null(hit, False).to_numpy(zero_copy_only=False), bool)
                continue
            values = self.numbers().get(name, np.full(self.table.num_rows, np.nan))
            with np.errstate(invalid="ignore"):
                for op, value in conditions.items():
                    if op == "eq":
                        keep &= values == value
                    elif op == "in":
                        keep &= np.isin(values, np.asarray(value, np.float64))
                    elif op == "gte":
                        keep &= values >= value
                    else:
                        keep &= values <= value
        return keep


def merge_descriptions(shards: list[dict[str, dict]]) -> dict[str, dict]:
    """One `ItemFields.describe` of a whole version from its shards': media values joined, numbers' item counts
    added and ranges widened."""
    out: dict[str, dict] = {}
    for described in shards:
        for name, f in described.items():
            if name not in out:
                out[name] = dict(f)
                continue
            have = out[name]
            if "values" in f:
                have["values"] = sorted(set(have["values"]) | set(f["values"]))
            if f.get("kind") == NUMBER:
                have["items"] += f["items"]
                for end, pick in (("min", min), ("max", max)):
                    both = [v for v in (have[end], f[end]) if v is not None]
                    have[end] = pick(both) if both else None
    return out
