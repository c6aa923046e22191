"""Segment catalog and segment grids: loaded from YAML, validated once, looked up as arrays.

The catalog and the default grids live in `config/segments.yaml`; this module is the only code
that reads them, and every engine gets its lookup tables from here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import yaml

from rfm_assets.errors import RFMConfigError
from rfm_assets.packaged import SEGMENTS_FILE

SUPPORTED_SCALES = (4, 5)


@dataclass(frozen=True)
class SegmentEntry:
    """One catalog entry: what a segment means and what marketing should do about it."""

    name: str
    segment_id: str
    priority: int
    description: str
    recommendation: str
    example_actions: tuple[str, ...]


@dataclass(frozen=True)
class SegmentGrid:
    """A complete map from (R_score, FM_score) to a segment, on a `scale`-point scale.

    `cells[r - 1][fm - 1]` is the segment name of the cell (R=r, FM=fm).
    """

    scale: int
    cells: tuple[tuple[str, ...], ...]
    catalog: dict[str, SegmentEntry]
    value_tiers: tuple[str, ...]  # index = FM_score - 1
    engagement_levels: tuple[str, ...]  # index = R_score - 1

    @property
    def segments(self) -> list[SegmentEntry]:
        """The segments that some cell reaches, in priority order."""
        used = {name for row in self.cells for name in row}
        return sorted((self.catalog[n] for n in used), key=lambda e: (e.priority, e.name))

    def lookup_table(self) -> tuple[np.ndarray, list[SegmentEntry]]:
        """`(table, segments)` where `segments[table[R, FM]]` is the cell's segment.

        `table` has shape (scale + 1, scale + 1) so scores index it directly; row and column 0
        are unused (-1).
        """
        segments = self.segments
        position = {entry.name: i for i, entry in enumerate(segments)}
        table = np.full((self.scale + 1, self.scale + 1), -1, dtype=np.int64)
        for r in range(1, self.scale + 1):
            for fm in range(1, self.scale + 1):
                table[r, fm] = position[self.cells[r - 1][fm - 1]]
        return table, segments

    def segment_of(self, r_score: int, fm_score: int) -> str:
        return self.cells[r_score - 1][fm_score - 1]


def slugify(name: str) -> str:
    """`Cannot Lose Them` -> `cannot_lose_them`."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


@cache
def _packaged_config() -> dict:
    with open(SEGMENTS_FILE, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def _catalog_from(raw, source: str) -> dict[str, SegmentEntry]:
    if not isinstance(raw, dict):
        raise RFMConfigError(f"{source}: catalog must map segment names to entries")
    catalog = {}
    for name, entry in raw.items():
        _check_name(name, source, "catalog")
        if not isinstance(entry, dict):
            raise RFMConfigError(
                f"{source}: catalog entry '{name}' must be a mapping with priority, "
                f"description and recommendation, got {entry!r}"
            )
        missing = {"priority", "description", "recommendation"} - set(entry)
        if missing:
            raise RFMConfigError(
                f"{source}: catalog entry '{name}' lacks {', '.join(sorted(missing))}"
            )
        priority = entry["priority"]
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise RFMConfigError(
                f"{source}: catalog entry '{name}': priority must be a whole number "
                f"(1 = act first), got {priority!r}"
            )
        actions = entry.get("example_actions") or ()
        if isinstance(actions, str) or not isinstance(actions, (list, tuple)):
            raise RFMConfigError(
                f"{source}: catalog entry '{name}': example_actions must be a list of texts"
            )
        catalog[name] = SegmentEntry(
            name=name,
            segment_id=slugify(name),
            priority=priority,
            description=str(entry["description"]),
            recommendation=str(entry["recommendation"]),
            example_actions=tuple(str(action) for action in actions),
        )
    return catalog


def _check_name(name, source: str, where: str) -> None:
    """Segment names are text with at least one letter or digit (they become segment_id)."""
    if not isinstance(name, str) or not slugify(name):
        raise RFMConfigError(
            f"{source}: {where}: segment names must be text with a letter or digit, got {name!r}"
        )


def default_catalog() -> dict[str, SegmentEntry]:
    return _catalog_from(_packaged_config()["catalog"], str(SEGMENTS_FILE))


def _scale_table(raw, scale: int, what: str, source: str) -> tuple[str, ...]:
    table = raw.get(scale) if isinstance(raw, dict) else None
    if not isinstance(table, dict) or sorted(table, key=str) != list(range(1, scale + 1)):
        raise RFMConfigError(f"{source}: {what} must give a value for scores 1..{scale}")
    return tuple(str(table[score]) for score in range(1, scale + 1))


def default_grid(scale: int) -> SegmentGrid:
    """The default grid (README.md) for a 5-point (quintiles) or 4-point (quartiles) scale."""
    if scale not in SUPPORTED_SCALES:
        raise RFMConfigError(f"scale: {scale} is not supported; use one of {SUPPORTED_SCALES}")
    raw = _packaged_config()
    return _build_grid(raw["grids"][scale], scale, default_catalog(), raw, str(SEGMENTS_FILE))


def _build_grid(
    rows: dict, scale: int, catalog: dict[str, SegmentEntry], raw: dict, source: str
) -> SegmentGrid:
    problems = []
    cells = []
    for r in range(1, scale + 1):
        row = rows.get(r) or []
        if len(row) != scale:
            problems.append(f"row R={r} has {len(row)} cells, expected {scale}")
            row = (list(row) + [None] * scale)[:scale]
        cells.append(tuple(row))
    uncovered = [
        f"R={r},FM={fm}"
        for r in range(1, scale + 1)
        for fm in range(1, scale + 1)
        if cells[r - 1][fm - 1] is None
    ]
    unknown = sorted({n for row in cells for n in row if n is not None and n not in catalog})
    if unknown:
        problems.append(f"segments without a catalog entry: {', '.join(unknown)}")
    if uncovered:
        problems.append(f"uncovered cells: {', '.join(uncovered)}")
    if problems:
        raise RFMConfigError(f"{source}: " + "; ".join(problems))
    defaults = _packaged_config()
    return SegmentGrid(
        scale=scale,
        cells=tuple(cells),
        catalog=catalog,
        value_tiers=_scale_table(
            raw.get("value_tiers") or defaults["value_tiers"], scale, "value_tiers", source
        ),
        engagement_levels=_scale_table(
            raw.get("engagement_levels") or defaults["engagement_levels"],
            scale,
            "engagement_levels",
            source,
        ),
    )


def _score_range(value, scale: int, index: int, key: str, source: str) -> tuple[int, int]:
    """A rule's [low, high] for one score, checked against the scale before any use."""
    if (
        not isinstance(value, (list, tuple))
        or len(value) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        raise RFMConfigError(
            f"{source}: rule {index}: {key} must be [low, high] with whole numbers, got {value!r}"
        )
    low, high = value
    if not 1 <= low <= high <= scale:
        raise RFMConfigError(
            f"{source}: rule {index}: {key} range {list(value)} must lie within 1..{scale} "
            "with low <= high"
        )
    return low, high


def _cells_from_rules(rules, scale: int, source: str) -> tuple[dict, list[str]]:
    """Apply ordered range rules (first match wins); return the grid rows and dead segments."""
    if not isinstance(rules, list):
        raise RFMConfigError(f"{source}: rules must be a list")
    winner: dict[tuple[int, int], str] = {}
    winning_segments = set()
    named = []
    for index, rule in enumerate(rules, start=1):
        if not isinstance(rule, dict) or not {"segment", "R", "FM"} <= set(rule):
            raise RFMConfigError(
                f"{source}: rule {index} must be {{segment: NAME, R: [low, high], FM: [low, high]}}"
            )
        name = rule["segment"]
        _check_name(name, source, f"rule {index}")
        r_low, r_high = _score_range(rule["R"], scale, index, "R", source)
        fm_low, fm_high = _score_range(rule["FM"], scale, index, "FM", source)
        if name not in named:
            named.append(name)
        for r in range(r_low, r_high + 1):
            for fm in range(fm_low, fm_high + 1):
                if (r, fm) not in winner:
                    winner[(r, fm)] = name
                    winning_segments.add(name)
    dead = [name for name in named if name not in winning_segments]
    rows = {r: [winner.get((r, fm)) for fm in range(1, scale + 1)] for r in range(1, scale + 1)}
    return rows, dead


def load_grid_file(path: str | Path, scale: int) -> SegmentGrid:
    """Load a user's segment grid (`grid:`) or ordered range rules (`rules:`) from YAML.

    The file may add or override catalog entries under `catalog:`. Validation: every cell of
    the `scale`-point grid is covered, every named segment is reachable, and every segment has
    a catalog entry; the error lists the uncovered cells and the dead segments.
    """
    source = str(path)
    try:
        with open(path, encoding="utf-8") as handle:
            raw = yaml.safe_load(handle) or {}
    except OSError as error:
        raise RFMConfigError(f"segment_grid_file: cannot read {source}: {error.strerror}") from None
    except UnicodeDecodeError:
        raise RFMConfigError(f"segment_grid_file: {source} is not UTF-8 text") from None
    except yaml.YAMLError as error:
        first = " ".join(str(error).split())
        raise RFMConfigError(f"segment_grid_file: {source} is not valid YAML: {first}") from None
    if not isinstance(raw, dict):
        raise RFMConfigError(f"segment_grid_file: {source} must be a mapping with grid: or rules:")
    file_scale = raw.get("scale", scale)
    if file_scale != scale:
        raise RFMConfigError(
            f"segment_grid_file: {source} is for a {file_scale}-point scale but scoring uses "
            f"{scale} points"
        )
    catalog = default_catalog() | _catalog_from(raw.get("catalog") or {}, source)
    if ("grid" in raw) == ("rules" in raw):
        raise RFMConfigError(
            f"segment_grid_file: {source} must have exactly one of grid: or rules:"
        )
    dead: list[str] = []
    if "grid" in raw:
        rows = raw["grid"] or {}
        if not isinstance(rows, dict) or not all(
            isinstance(row, list) or row is None for row in rows.values()
        ):
            raise RFMConfigError(
                f"{source}: grid must map each R_score to a list of {scale} segment names"
            )
        for row in rows.values():
            for name in row or []:
                if name is not None:
                    _check_name(name, source, "grid")
    else:
        rows, dead = _cells_from_rules(raw["rules"] or [], scale, source)
    listed_in_file = set((raw.get("catalog") or {}).keys())
    used = {name for row in rows.values() for name in (row or []) if name is not None}
    dead += sorted(listed_in_file - used - set(dead))
    try:
        grid = _build_grid(rows, scale, catalog, raw, source)
    except RFMConfigError as error:
        if dead:
            raise RFMConfigError(f"{error}; dead segments: {', '.join(dead)}") from None
        raise
    if dead:
        raise RFMConfigError(f"{source}: dead segments (no cell reaches them): {', '.join(dead)}")
    return grid
