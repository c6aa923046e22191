"""Segment catalog and rule sets: loaded from YAML, validated once, looked up as arrays.

A rule set gives every combination of (R_score, F_score, M_score) on the scale its segment.
It is written either as a grid over (R_score, FM_score) or as ordered rules over ranges of
R, F, M, FM and the weighted RFM_score (first match wins). Both compile, for the run's
weights, into one table over (R, F, M) that every engine looks up. The catalog and the
shipped rule sets live in `config/`; this module is the only code that reads them.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Optional

import numpy as np

from rfm_assets.bounded_files import read_yaml
from rfm_assets.errors import RFMConfigError
from rfm_assets.formulas import combined_scores
from rfm_assets.packaged import RULE_SETS_DIR, SEGMENTS_FILE

SUPPORTED_SCALES = (4, 5)
# A segment's standing: engaged customers buy lately; slipping ones were valuable and have
# gone quiet; lapsed ones are gone.
STANDINGS = ("engaged", "slipping", "lapsed")
DEFAULT_RULE_SET = "rfm_grid"
# How many uncovered combinations an error names before it counts the rest.
COMBINATIONS_SHOWN = 40


@dataclass(frozen=True)
class SegmentEntry:
    """One catalog entry: what a segment means and what marketing should do about it."""

    name: str
    segment_id: str
    priority: int
    description: str
    recommendation: str
    example_actions: tuple[str, ...]
    # engaged, slipping or lapsed: customers who move from an engaged segment into a
    # slipping one are listed week by week (slipping_customers).
    standing: str = "engaged"
    # The campaign strategy (segment_strategies.json): what to aim for, through which
    # channel, with which campaign, and the weight of a customer of the segment in the
    # budget (budget share = weight x customers, over the segments' total).
    goal: Optional[str] = None
    channel: Optional[str] = None
    campaign: Optional[str] = None
    budget_weight: float = 1.0


@dataclass(frozen=True)
class RuleSet:
    """A complete map from (R_score, F_score, M_score) to a segment on a `scale`-point scale.

    `by_code[(r, f, m)]` is the segment name of that combination; `name` says which rule set
    it came from (a shipped name or a file path).
    """

    scale: int
    by_code: dict[tuple[int, int, int], str]
    catalog: dict[str, SegmentEntry]
    value_tiers: tuple[str, ...]  # index = FM_score - 1
    engagement_levels: tuple[str, ...]  # index = R_score - 1
    name: str = DEFAULT_RULE_SET

    @property
    def segments(self) -> list[SegmentEntry]:
        """The segments that some combination reaches, in priority order."""
        used = set(self.by_code.values())
        return sorted((self.catalog[n] for n in used), key=lambda e: (e.priority, e.name))

    def lookup_table(self) -> tuple[np.ndarray, list[SegmentEntry]]:
        """`(table, segments)` where `segments[table[R, F, M]]` is the combination's segment.

        `table` has shape (scale + 1,) * 3 so scores index it directly; index 0 is unused (-1).
        """
        segments = self.segments
        position = {entry.name: i for i, entry in enumerate(segments)}
        table = np.full((self.scale + 1,) * 3, -1, dtype=np.int64)
        for (r, f, m), name in self.by_code.items():
            table[r, f, m] = position[name]
        return table, segments

    def segment_ids_by_standing(self, standing: str) -> list[str]:
        """segment_id of every catalog segment with this standing."""
        return sorted(e.segment_id for e in self.catalog.values() if e.standing == standing)

    def segment_of(self, r_score: int, f_score: int, m_score: int) -> str:
        return self.by_code[(r_score, f_score, m_score)]


def all_codes(scale: int) -> list[tuple[int, int, int]]:
    """Every (R, F, M) score combination of the scale, in code order (111, 112, ...)."""
    return list(itertools.product(range(1, scale + 1), repeat=3))


def _code(combination: tuple[int, int, int]) -> str:
    return "".join(str(score) for score in combination)


def _fm_and_rfm(scale: int, weights) -> dict[tuple[int, int, int], tuple[int, float]]:
    """(FM_score, RFM_score) of every combination, by the engines' own formula."""
    codes = all_codes(scale)
    r, f, m = (np.array(values) for values in zip(*codes))
    fm, rfm = combined_scores(r, f, m, weights)
    return {code: (int(a), float(b)) for code, a, b in zip(codes, fm, rfm)}


def slugify(name: str) -> str:
    """`Cannot Lose Them` -> `cannot_lose_them`."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


@cache
def _packaged_config() -> dict:
    return read_yaml(SEGMENTS_FILE, "segment catalog")


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
        standing = entry.get("standing", "engaged")
        if standing not in STANDINGS:
            raise RFMConfigError(
                f"{source}: catalog entry '{name}': standing must be one of "
                f"{', '.join(STANDINGS)}, got {standing!r}"
            )
        weight = entry.get("budget_weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight >= 0:
            raise RFMConfigError(
                f"{source}: catalog entry '{name}': budget_weight must be a number >= 0, "
                f"got {weight!r}"
            )
        strategy = {key: entry.get(key) for key in ("goal", "channel", "campaign")}
        for key, value in strategy.items():
            if value is not None and not isinstance(value, str):
                raise RFMConfigError(
                    f"{source}: catalog entry '{name}': {key} must be text, got {value!r}"
                )
        catalog[name] = SegmentEntry(
            name=name,
            segment_id=slugify(name),
            priority=priority,
            description=str(entry["description"]),
            recommendation=str(entry["recommendation"]),
            example_actions=tuple(str(action) for action in actions),
            standing=standing,
            budget_weight=float(weight),
            **strategy,
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


def default_rule_set(scale: int, weights=(1.0, 1.0, 1.0)) -> RuleSet:
    """The default rule set, the R x FM grid of docs/contract.md, for the scale and weights."""
    return load_rule_set(DEFAULT_RULE_SET, scale, weights)


def _grid_codes(
    rows: dict, scale: int, weights, source: str
) -> tuple[dict[tuple[int, int, int], str], list[str]]:
    """An R x FM grid as a map over (R, F, M), and its problems (short rows, holes)."""
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
    if uncovered:
        problems.append(f"uncovered cells: {', '.join(uncovered)}")
    scores = _fm_and_rfm(scale, weights)
    by_code = {}
    for code, (fm, _) in scores.items():
        name = cells[code[0] - 1][fm - 1]
        if name is not None:
            by_code[code] = name
    return by_code, problems


def _compiled_rule_set(
    by_code: dict,
    scale: int,
    catalog: dict[str, SegmentEntry],
    raw: dict,
    source: str,
    name: str,
    problems: list[str],
) -> RuleSet:
    unknown = sorted({n for n in by_code.values() if n not in catalog})
    if unknown:
        problems.append(f"segments without a catalog entry: {', '.join(unknown)}")
    if problems:
        raise RFMConfigError(f"{source}: " + "; ".join(problems))
    defaults = _packaged_config()
    return RuleSet(
        scale=scale,
        by_code=by_code,
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
        name=name,
    )


RULE_KEYS = ("R", "F", "M", "FM")


def _score_range(value, scale: int, index: int, key: str, source: str) -> tuple[int, int]:
    """A rule's range for one score (`[low, high]` or one score), checked against the scale."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value, value]
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


def _rfm_range(value, index: int, source: str) -> tuple[float, float]:
    if (
        not isinstance(value, (list, tuple))
        or len(value) != 2
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        or value[0] > value[1]
    ):
        raise RFMConfigError(
            f"{source}: rule {index}: RFM must be [low, high] with low <= high, got {value!r}"
        )
    return float(value[0]), float(value[1])


def _codes_of(value, scale: int, index: int, source: str) -> set[tuple[int, int, int]]:
    """A rule's `codes`: three-digit R, F, M score codes such as 555 or "545"."""
    if not isinstance(value, list):
        raise RFMConfigError(f"{source}: rule {index}: codes must be a list such as [555, 545]")
    codes = set()
    for item in value:
        text = str(item)
        if not re.fullmatch(rf"[1-{scale}]{{3}}", text):
            raise RFMConfigError(
                f"{source}: rule {index}: {item!r} is not an R, F, M score code of the "
                f"{scale}-point scale (three digits 1..{scale}, e.g. {scale}{scale}{scale})"
            )
        codes.add(tuple(int(c) for c in text))
    return codes


def _matcher(rule, index: int, scale: int, source: str):
    """A predicate over (code, FM, RFM) for one rule; every named condition must hold."""
    if not isinstance(rule, dict) or "segment" not in rule:
        raise RFMConfigError(
            f"{source}: rule {index} must be a mapping with segment: and conditions on "
            "R, F, M, FM (ranges), RFM (a range of RFM_score), codes, or default: true"
        )
    allowed = {"segment", *RULE_KEYS, "RFM", "codes", "default", "note", "completion"}
    unknown = sorted(set(rule) - allowed)
    if unknown:
        raise RFMConfigError(f"{source}: rule {index}: unknown keys {', '.join(map(str, unknown))}")
    _check_name(rule["segment"], source, f"rule {index}")
    if rule.get("default"):
        if len(set(rule) - {"segment", "default", "note", "completion"}) > 0:
            raise RFMConfigError(f"{source}: rule {index}: a default rule has no conditions")
        return lambda code, fm, rfm: True
    ranges = {key: _score_range(rule[key], scale, index, key, source)
              for key in RULE_KEYS if key in rule}  # fmt: skip
    rfm_range = _rfm_range(rule["RFM"], index, source) if "RFM" in rule else None
    codes = _codes_of(rule["codes"], scale, index, source) if "codes" in rule else None
    if not ranges and rfm_range is None and codes is None:
        raise RFMConfigError(
            f"{source}: rule {index} names no condition; give R, F, M, FM, RFM or codes, or "
            "default: true"
        )

    def matches(code, fm, rfm) -> bool:
        values = {"R": code[0], "F": code[1], "M": code[2], "FM": fm}
        return (
            all(low <= values[key] <= high for key, (low, high) in ranges.items())
            and (rfm_range is None or rfm_range[0] <= rfm <= rfm_range[1])
            and (codes is None or code in codes)
        )

    return matches


def _rules_codes(
    rules, scale: int, weights, source: str
) -> tuple[dict[tuple[int, int, int], str], list[str]]:
    """Apply ordered rules (first match wins) to every combination; return the map and the
    problems: combinations no rule covers, and rules that never win."""
    if not isinstance(rules, list):
        raise RFMConfigError(f"{source}: rules must be a list")
    matchers = [_matcher(rule, i, scale, source) for i, rule in enumerate(rules, start=1)]
    scores = _fm_and_rfm(scale, weights)
    by_code, wins = {}, [0] * len(rules)
    for code, (fm, rfm) in scores.items():
        for i, matches in enumerate(matchers):
            if matches(code, fm, rfm):
                by_code[code] = rules[i]["segment"]
                wins[i] += 1
                break
    problems = []
    uncovered = [_code(code) for code in scores if code not in by_code]
    if uncovered:
        shown = ", ".join(uncovered[:COMBINATIONS_SHOWN])
        hidden = len(uncovered) - COMBINATIONS_SHOWN
        more = f" and {hidden} more" if hidden > 0 else ""
        problems.append(
            f"{len(uncovered)} R,F,M combinations match no rule: {shown}{more} (add a final "
            "rule with default: true)"
        )
    dead = [f"rule {i} ({rules[i - 1]['segment']})" for i, n in enumerate(wins, 1) if n == 0]
    if dead:
        problems.append(f"dead rules (earlier rules take all they match): {', '.join(dead)}")
    return by_code, problems


def rule_overlaps(grid_rules: list, scale: int, weights) -> list[str]:
    """Overlaps that rule order decides: for each rule, the later rules it takes codes from.

    Not errors (ordered rules overlap on purpose); the coverage docs list them.
    """
    matchers = [_matcher(rule, i, scale, "rules") for i, rule in enumerate(grid_rules, 1)]
    scores = _fm_and_rfm(scale, weights)
    taken: dict[tuple[int, int], int] = {}
    for code, (fm, rfm) in scores.items():
        hits = [i for i, matches in enumerate(matchers) if matches(code, fm, rfm)]
        for later in hits[1:]:
            taken[(hits[0], later)] = taken.get((hits[0], later), 0) + 1
    return [
        f"rule {a + 1} ({grid_rules[a]['segment']}) takes {n} combinations that rule {b + 1} "
        f"({grid_rules[b]['segment']}) also matches"
        for (a, b), n in sorted(taken.items())
        if not grid_rules[b].get("default")
    ]


def shipped_rule_sets() -> list[str]:
    """Names of the rule sets shipped in config/rule_sets/."""
    return sorted(p.stem for p in RULE_SETS_DIR.glob("*.yaml"))


def rule_set_path(name_or_path: str | Path) -> Path:
    """The YAML of a shipped rule set by name, or a user's file by path."""
    candidate = RULE_SETS_DIR / f"{name_or_path}.yaml"
    if isinstance(name_or_path, str) and "/" not in name_or_path and candidate.exists():
        return candidate
    return Path(name_or_path)


def _read_yaml(path: str) -> dict:
    try:
        return read_yaml(path, "segment_rules") or {}
    except FileNotFoundError:
        raise RFMConfigError(
            f"segment_rules: {path} is neither a shipped rule set "
            f"({', '.join(shipped_rule_sets())}) nor a file"
        ) from None


def load_rule_set(
    name_or_path: str | Path,
    scale: int,
    weights=(1.0, 1.0, 1.0),
    display_names: dict | None = None,
) -> RuleSet:
    """Load a shipped rule set (by name) or a user's YAML (by path), compiled for the scale
    and weights.

    The file holds `grid:` (an R x FM grid) or `rules:` (ordered rules), per scale under
    `scales: {5: ..., 4: ...}` or for one `scale:`; it may add or override catalog entries
    under `catalog:`. Validation: every (R, F, M) combination is covered, every rule wins
    somewhere, every named segment is reachable and in the catalog; the error lists them.
    """
    if scale not in SUPPORTED_SCALES:
        raise RFMConfigError(f"scale: {scale} is not supported; use one of {SUPPORTED_SCALES}")
    path = rule_set_path(name_or_path)
    source = str(name_or_path) if path.parent == RULE_SETS_DIR else str(path)
    raw = _read_yaml(str(path))
    if not isinstance(raw, dict):
        raise RFMConfigError(f"segment_rules: {source} must be a mapping with grid: or rules:")
    body = raw
    if "scales" in raw:
        body = (raw["scales"] or {}).get(scale) if isinstance(raw["scales"], dict) else None
        if not isinstance(body, dict):
            raise RFMConfigError(f"segment_rules: {source} has no rules for a {scale}-point scale")
    else:
        file_scale = raw.get("scale", scale)
        if file_scale != scale:
            raise RFMConfigError(
                f"segment_rules: {source} is for a {file_scale}-point scale but scoring uses "
                f"{scale} points"
            )
    catalog = default_catalog() | _catalog_from(raw.get("catalog") or {}, source)
    if ("grid" in body) == ("rules" in body):
        raise RFMConfigError(f"segment_rules: {source} must have exactly one of grid: or rules:")
    if "grid" in body:
        rows = body["grid"] or {}
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
        by_code, problems = _grid_codes(rows, scale, weights, source)
    else:
        by_code, problems = _rules_codes(body["rules"] or [], scale, weights, source)
    listed_in_file = set((raw.get("catalog") or {}).keys())
    unreached = sorted(listed_in_file - set(by_code.values()))
    if unreached:
        problems.append(f"dead segments (no combination reaches them): {', '.join(unreached)}")
    display = {**_display_names(raw.get("display_names"), catalog, source),
               **_display_names(display_names, catalog, "segment_display_names")}  # fmt: skip
    _check_distinct_names(catalog, display, source, display_names or {})
    alias_of = {shown: canonical for canonical, shown in display.items()}
    # Rules may name a segment by its display name too.
    by_code = {code: alias_of.get(segment, segment) for code, segment in by_code.items()}
    rule_set = _compiled_rule_set(by_code, scale, catalog, raw, source, str(name_or_path), problems)
    return _with_display_names(rule_set, display) if display else rule_set


def _display_names(raw, catalog: dict, source: str) -> dict[str, str]:
    """Display names: catalog segment -> the name users see in the segment column."""
    if not raw:
        return {}
    if not isinstance(raw, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and v.strip() for k, v in raw.items()
    ):
        raise RFMConfigError(f"{source}: display_names must map segment names to display names")
    unknown = sorted(set(raw) - set(catalog))
    if unknown:
        raise RFMConfigError(
            f"{source}: display_names: no catalog segment named {', '.join(unknown)}"
        )
    return dict(raw)


def _check_distinct_names(
    catalog: dict, display: dict[str, str], source: str, settings_names: dict
) -> None:
    """Segment names, the names shown and segment ids are each unique after normalisation
    (slugify: case, spaces and punctuation aside): two segments under one segment_id would
    share a campaign file and a row of segment_analytics, and a display name equal to
    another segment's name would merge the two."""
    by_id: dict[str, str] = {}
    for name in catalog:
        other = by_id.setdefault(slugify(name), name)
        if other != name:
            raise RFMConfigError(
                f"{source}: segments {other!r} and {name!r} are one segment_id "
                f"({slugify(name)}), so one of them needs another name"
            )
    shown_by_id: dict[str, str] = {}
    for name in catalog:
        shown = display.get(name, name)
        other = shown_by_id.setdefault(slugify(shown), name)
        if other != name:
            renamed, kept = (name, other) if name in display else (other, name)
            taken = (
                f"the name of the segment {kept!r}"
                if kept not in display
                else f"the name also shown for {kept!r} ({display[kept]!r})"
            )
            where = (
                "segment_display_names" if renamed in settings_names else f"{source}: display_names"
            )
            raise RFMConfigError(
                f"{where}: {renamed!r} shown as {display[renamed]!r} takes {taken} "
                "(each segment needs a name of its own)"
            )


def _with_display_names(rule_set: RuleSet, display: dict[str, str]) -> RuleSet:
    """The same rule set with segments shown under their display names; segment_id (the slug of
    the catalog name) and everything else stay as they are."""
    import dataclasses

    catalog = {
        display.get(name, name): dataclasses.replace(entry, name=display.get(name, name))
        for name, entry in rule_set.catalog.items()
    }
    by_code = {code: display.get(name, name) for code, name in rule_set.by_code.items()}
    return dataclasses.replace(rule_set, catalog=catalog, by_code=by_code)


def coverage_markdown(name: str, scale: int = 5) -> str:
    """A shipped rule set's coverage, for the docs: for each R_score a table of F_score
    (rows) by M_score (columns) with the segment of every code; `*` marks a code that a
    completion rule (`completion: true`) fills, where the convention itself is silent."""
    path = rule_set_path(name)
    raw = _read_yaml(str(path))
    body = raw["scales"][scale] if "scales" in raw else raw
    rule_set = load_rule_set(name, scale)
    filled: set[tuple[int, int, int]] = set()
    if "rules" in body:
        matchers = [_matcher(rule, i, scale, name) for i, rule in enumerate(body["rules"], 1)]
        for code, (fm, rfm) in _fm_and_rfm(scale, (1.0, 1.0, 1.0)).items():
            winner = next(i for i, matches in enumerate(matchers) if matches(code, fm, rfm))
            if body["rules"][winner].get("completion"):
                filled.add(code)
    lines = [f"### `{name}`", ""]
    header = "| F \\ M | " + " | ".join(str(m) for m in range(1, scale + 1)) + " |"
    for r in range(scale, 0, -1):
        lines += [f"R_score {r}:", "", header, "|---" * (scale + 1) + "|"]
        for f in range(scale, 0, -1):
            cells = [
                rule_set.by_code[(r, f, m)] + ("\\*" if (r, f, m) in filled else "")
                for m in range(1, scale + 1)
            ]
            lines.append(f"| **{f}** | " + " | ".join(cells) + " |")
        lines.append("")
    counts = {}
    for segment in rule_set.by_code.values():
        counts[segment] = counts.get(segment, 0) + 1
    summary = ", ".join(f"{s} {n}" for s, n in sorted(counts.items(), key=lambda i: -i[1]))
    lines += [f"Codes per segment: {summary}. Filled by completion (\\*): {len(filled)}.", ""]
    return "\n".join(lines)


def check_rule_set(name_or_path: str, scale: int, weights=(1.0, 1.0, 1.0)) -> tuple[list, list]:
    """(problems, overlaps) of a rule set, one line each: what makes it invalid, and the
    overlaps that its order decides (allowed, listed so the author can see them)."""
    problems = []
    try:
        load_rule_set(name_or_path, scale, weights)
    except RFMConfigError as error:
        text = str(error)
        source, _, rest = text.partition(": ")
        problems = [f"{source}: {part}" for part in rest.split("; ")] if rest else [text]
    overlaps = []
    path = rule_set_path(name_or_path)
    try:
        raw = _read_yaml(str(path))
        body = raw["scales"][scale] if "scales" in raw else raw
        if isinstance(body, dict) and isinstance(body.get("rules"), list):
            overlaps = rule_overlaps(body["rules"], scale, weights)
    except (RFMConfigError, KeyError, TypeError):
        pass  # already among the problems
    return problems, overlaps
