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


def _catalog_from(raw: dict, source: str) -> dict[str, SegmentEntry]:
    catalog = {}
    for name, entry in raw.items():
        missing = {"priority", "description", "recommendation"} - set(entry or {})
        if missing:
            raise RFMConfigError(
                f"{source}: catalog entry '{name}' lacks {', '.join(sorted(missing))}"
            )
        catalog[name] = SegmentEntry(
            name=name,
            segment_id=slugify(name),
            priority=int(entry["priority"]),
            description=str(entry["description"]),
            recommendation=str(entry["recommendation"]),
            example_actions=tuple(entry.get("example_actions") or ()),
        )
    return catalog


def default_catalog() -> dict[str, SegmentEntry]:
    return _catalog_from(_packaged_config()["catalog"], str(SEGMENTS_FILE))


def _scale_table(raw: dict, scale: int, what: str, source: str) -> tuple[str, ...]:
    table = raw.get(scale)
    if table is None or sorted(table) != list(range(1, scale + 1)):
        raise RFMConfigError(f"{source}: {what} must give a value for scores 1..{scale}")
    return tuple(str(table[score]) for score in range(1, scale + 1))


def default_grid(scale: int) -> SegmentGrid:
    """The default grid of DESIGN.md for a 5-point (quintiles) or 4-point (quartiles) scale."""
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


def _cells_from_rules(rules: list, scale: int, source: str) -> tuple[dict, list[str]]:
    """Apply ordered range rules (first match wins); return the grid rows and dead segments."""
    winner: dict[tuple[int, int], str] = {}
    winning_segments = set()
    for index, rule in enumerate(rules, start=1):
        try:
            name = rule["segment"]
            r_low, r_high = rule["R"]
            fm_low, fm_high = rule["FM"]
        except (KeyError, TypeError, ValueError):
            raise RFMConfigError(
                f"{source}: rule {index} must be {{segment: NAME, R: [low, high], FM: [low, high]}}"
            ) from None
        for r in range(int(r_low), int(r_high) + 1):
            for fm in range(int(fm_low), int(fm_high) + 1):
                if 1 <= r <= scale and 1 <= fm <= scale and (r, fm) not in winner:
                    winner[(r, fm)] = name
                    winning_segments.add(name)
    named = []
    for rule in rules:
        if rule["segment"] not in named:
            named.append(rule["segment"])
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
    except yaml.YAMLError as error:
        raise RFMConfigError(f"segment_grid_file: {source} is not valid YAML: {error}") from None
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
