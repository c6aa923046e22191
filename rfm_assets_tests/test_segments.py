"""The segment catalog and grids: docs/contract.md's tables, validation of user grids, tiers."""

import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rfm_assets.bounded_files import read_yaml
from rfm_assets.engines.pandas_compute import assign_segments, segment_analytics
from rfm_assets.errors import RFMConfigError
from rfm_assets.segments import default_catalog, default_rule_set, load_rule_set, slugify
from rfm_assets_tests.conftest import FIXED_TIME
from rfm_assets_tests.oracle import GRID_4, GRID_5

ELEVEN = {
    "Champions",
    "Loyal Customers",
    "Potential Loyalists",
    "New Customers",
    "Promising",
    "Need Attention",
    "About to Sleep",
    "At Risk",
    "Cannot Lose Them",
    "Hibernating",
    "Lost",
}


@pytest.mark.parametrize("scale, design", [(5, GRID_5), (4, GRID_4)])
def test_default_rule_sets_are_the_tables_of_the_contract(scale, design):
    grid = default_rule_set(scale)
    for r in range(1, scale + 1):
        for fm in range(1, scale + 1):
            assert grid.segment_of(r, fm, fm) == design[r][fm - 1], (r, fm)
    assert {entry.name for entry in grid.segments} == ELEVEN


def test_catalog_has_eleven_complete_entries_with_distinct_priorities():
    catalog = default_catalog()
    assert set(catalog) == ELEVEN
    assert sorted(e.priority for e in catalog.values()) == list(range(1, 12))
    for entry in catalog.values():
        assert entry.description and entry.recommendation and entry.example_actions
    assert catalog["Cannot Lose Them"].segment_id == "cannot_lose_them"
    assert slugify("About to Sleep") == "about_to_sleep"


def scores_frame(cells):
    r = np.array([c[0] for c in cells])
    fm = np.array([c[1] for c in cells])
    return pd.DataFrame(
        {
            "customer_id": np.arange(len(cells)),
            "recency": 10 * (6 - r),
            "frequency": fm,
            "monetary": fm * 100.0,
            "R_score": r,
            "F_score": fm,
            "M_score": fm,
            "FM_score": fm,
            "RFM_score": (r + 2 * fm) / 3,
        }
    )


@pytest.mark.parametrize("scale", [4, 5])
def test_assign_segments_copies_catalog_fields_and_tiers(scale):
    grid = default_rule_set(scale)
    cells = [(r, fm) for r in range(1, scale + 1) for fm in range(1, scale + 1)]
    segmented = assign_segments(scores_frame(cells), grid, FIXED_TIME)
    catalog = default_catalog()
    for row in segmented.itertuples():  # rows come in segment order: find each one's cell
        r, fm = cells[row.customer_id]
        name = grid.segment_of(r, fm, fm)
        assert row.segment == name
        assert row.segment_id == catalog[name].segment_id
        assert row.recommendation == catalog[name].recommendation
        assert row.value_tier == grid.value_tiers[fm - 1]
        assert row.engagement_level == grid.engagement_levels[r - 1]
    assert (segmented["segmented_at"] == FIXED_TIME).all()
    # Tiers and levels are documented tables: the ends are what their names promise.
    assert grid.value_tiers[0] == "Low" and grid.value_tiers[-1] == "High"
    assert grid.engagement_levels[0] == "Lapsed" and grid.engagement_levels[-1] == "Active"


def test_segment_analytics_lists_every_segment_and_sums_up():
    grid = default_rule_set(5)
    cells = [(5, 5), (5, 5), (1, 1), (3, 3)]
    segmented = assign_segments(scores_frame(cells), grid, FIXED_TIME)
    thresholds = {"recency": [1, 2, 3, 4], "frequency": [1, 2, 3, 4], "monetary": [1, 2, 3, 4]}
    analytics = segment_analytics(segmented, grid, thresholds)
    assert len(analytics) == 11
    assert analytics["priority"].is_monotonic_increasing
    by_name = analytics.set_index("segment")
    assert by_name.loc["Champions", "customers"] == 2
    assert by_name.loc["Champions", "revenue"] == 1000.0
    assert by_name.loc["Lost", "avg_recency"] == 50
    assert by_name.loc["At Risk", "customers"] == 0
    assert analytics["customer_share"].sum() == pytest.approx(1.0)
    assert analytics["revenue_share"].sum() == pytest.approx(1.0)
    assert by_name.loc["Champions", "avg_order_value"] == 1000.0 / 10
    assert by_name.loc["Champions", "recency_thresholds"] == [1, 2, 3, 4]


def write(tmp_path, text):
    path = tmp_path / "grid.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_user_grid_loads_with_its_own_catalog_entry(tmp_path):
    rows = "\n".join(
        f"  {r}: [Lost, Lost, Lost, {'VIP' if r == 4 else 'Lost'}]" for r in range(1, 5)
    )
    path = write(
        tmp_path,
        "scale: 4\ncatalog:\n  VIP:\n    priority: 0\n    description: d\n    recommendation: r\n"
        f"grid:\n{rows}\n",
    )
    grid = load_rule_set(path, 4)
    assert grid.segment_of(4, 4, 4) == "VIP" and grid.segment_of(1, 1, 1) == "Lost"
    assert [e.name for e in grid.segments] == ["VIP", "Lost"]


def test_a_rule_set_edited_between_two_loads_is_read_anew(tmp_path):
    """Parsing is kept per text (a range reads the rule set every week), so an edit, even of
    the same length within the same clock tick, is what the next load sees."""
    grid = "grid:\n" + "".join(f"  {r}: [{{0}}, Lost, Lost, Lost]\n" for r in range(1, 5))
    path = write(tmp_path, "scale: 4\n" + grid.format("Hibernating"))
    assert load_rule_set(path, 4).segment_of(1, 1, 1) == "Hibernating"
    path.write_text("scale: 4\n" + grid.format("Need Attention"))
    assert load_rule_set(path, 4).segment_of(1, 1, 1) == "Need Attention"
    first = read_yaml(path, "segment_rules")
    first["grid"][1][0] = "Champions"  # a caller changing what it read
    assert read_yaml(path, "segment_rules")["grid"][1][0] == "Need Attention"


def test_user_grid_with_holes_lists_the_uncovered_cells(tmp_path):
    path = write(
        tmp_path,
        """
        scale: 4
        grid:
          4: [Champions, Champions, Champions, Champions]
          3: [Promising, Promising, Promising]
          2: [Lost, Lost, Lost, Lost]
        """,
    )
    with pytest.raises(RFMConfigError) as error:
        load_rule_set(path, 4)
    message = str(error.value)
    assert "R=3,FM=4" in message and "R=1,FM=1" in message and "R=1,FM=4" in message
    assert "\n" not in message


def test_rules_first_match_wins_and_dead_segments_are_named(tmp_path):
    path = write(
        tmp_path,
        """
        scale: 5
        rules:
          - {segment: Champions, R: [4, 5], FM: [4, 5]}
          - {segment: Loyal Customers, R: [4, 5], FM: [4, 5]}
          - {segment: Lost, R: [1, 5], FM: [1, 5]}
        """,
    )
    with pytest.raises(RFMConfigError, match=r"dead rules .*: rule 2 \(Loyal Customers\)"):
        load_rule_set(path, 5)


def test_rules_that_leave_cells_uncovered_name_them(tmp_path):
    path = write(
        tmp_path,
        """
        rules:
          - {segment: Champions, R: [2, 5], FM: [1, 5]}
          - {segment: Lost, R: [1, 1], FM: [1, 4]}
        """,
    )
    # R=1 with FM=5: F, M = 4, 5 / 5, 4 / 5, 5 (FM rounds 4.5 up).
    with pytest.raises(RFMConfigError, match=r"3 R,F,M combinations match no rule: 145, 154, 155"):
        load_rule_set(path, 5)


def test_complete_rules_build_the_grid(tmp_path):
    path = write(
        tmp_path,
        """
        rules:
          - {segment: Champions, R: [4, 5], FM: [4, 5]}
          - {segment: At Risk, R: [1, 2], FM: [3, 5]}
          - {segment: Lost, R: [1, 5], FM: [1, 5]}
        """,
    )
    grid = load_rule_set(path, 5)
    assert grid.segment_of(5, 5, 5) == "Champions"
    assert grid.segment_of(2, 4, 4) == "At Risk"
    assert grid.segment_of(3, 3, 3) == "Lost"


def test_unknown_segment_and_wrong_scale_are_reported(tmp_path):
    path = write(
        tmp_path, "grid:\n" + "".join(f"  {r}: [Nobody, Lost, Lost, Lost]\n" for r in range(1, 5))
    )
    with pytest.raises(RFMConfigError, match="without a catalog entry: Nobody"):
        load_rule_set(path, 4)
    path = write(tmp_path, "scale: 4\nrules: []\n")
    with pytest.raises(RFMConfigError, match="4-point scale but scoring uses 5"):
        load_rule_set(path, 5)


RULES_TAIL = "  - {segment: Lost, R: [1, 5], FM: [1, 5]}\n"


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "rules:\n  - {segment: Champions, R: [1, 100000], FM: [4, 5]}\n" + RULES_TAIL,
            r"rule 1: R range \[1, 100000\] must lie within 1..5",
        ),
        (
            "rules:\n  - {segment: Champions, R: [5, 4], FM: [4, 5]}\n" + RULES_TAIL,
            r"rule 1: R range \[5, 4\] must lie within 1..5 with low <= high",
        ),
        (
            "rules:\n  - {segment: Champions, R: [4, five], FM: [4, 5]}\n" + RULES_TAIL,
            r"rule 1: R must be \[low, high\] with whole numbers, got \[4, 'five'\]",
        ),
        (
            "rules:\n  - {segment: 7, R: [4, 5], FM: [4, 5]}\n" + RULES_TAIL,
            r"rule 1: segment names must be text with a letter or digit, got 7",
        ),
        (
            "catalog:\n  VIP: {priority: high, description: d, recommendation: r}\n"
            "rules:\n  - {segment: VIP, R: [4, 5], FM: [4, 5]}\n" + RULES_TAIL,
            r"catalog entry 'VIP': priority must be a whole number \(1 = act first\), got 'high'",
        ),
        (
            "catalog:\n  VIP: just a text\nrules:\n  - {segment: VIP, R: [4, 5], FM: [4, 5]}\n"
            + RULES_TAIL,
            r"catalog entry 'VIP' must be a mapping with priority, description and "
            r"recommendation, got 'just a text'",
        ),
        (
            "catalog:\n  5: {priority: 1, description: d, recommendation: r}\n"
            "rules:\n  - {segment: Lost, R: [1, 5], FM: [1, 5]}\n",
            r"catalog: segment names must be text with a letter or digit, got 5",
        ),
        ("catalog: [a, b]\nrules: []\n", r"catalog must map segment names to entries"),
        ("rules: {a: 1}\n", r"rules must be a list"),
        ("grid: [1, 2]\n", r"grid must map each R_score to a list of 5 segment names"),
        ("grid:\n  5: [1, 2, 3, 4, 5]\n", r"grid: segment names must be text"),
    ],
)
def test_malformed_grid_files_get_one_line_naming_the_problem(tmp_path, text, message):
    with pytest.raises(RFMConfigError, match=message) as error:
        load_rule_set(write(tmp_path, text), 5)
    assert "\n" not in str(error.value)


def test_a_grid_file_that_is_not_utf8_is_named(tmp_path):
    path = tmp_path / "grid.yaml"
    path.write_bytes(b"rules:\n  - {segment: Lost\xff, R: [1, 5], FM: [1, 5]}\n")
    with pytest.raises(RFMConfigError, match=r"grid.yaml is not UTF-8 text"):
        load_rule_set(path, 5)


RULE_SET_DOCS = Path(__file__).resolve().parents[1] / "docs" / "segment-rule-sets.md"
SHIPPED = ("rfm_grid", "score_codes", "ranges")


def generated_coverage() -> str:
    from rfm_assets.segments import coverage_markdown

    return "\n".join(coverage_markdown(name) for name in SHIPPED)


def test_the_coverage_tables_in_the_docs_are_current():
    text = RULE_SET_DOCS.read_text()
    start, end = "<!-- coverage:start -->\n", "<!-- coverage:end -->"
    documented = text[text.index(start) + len(start) : text.index(end)]
    assert documented == generated_coverage(), "regenerate docs/segment-rule-sets.md"


def test_every_published_score_code_lands_in_the_segment_it_names():
    """score_codes: each of the 60 published codes is in its segment, except 144, which the
    convention lists twice (At Risk, listed first, keeps it)."""
    from rfm_assets.segments import load_rule_set

    published = {
        "Champions": [555, 554, 544, 545, 454, 455, 445],
        "Loyal Customers": [543, 444, 435, 355, 354, 345, 344, 335],
        "Potential Loyalists": [512, 511, 422, 421, 412, 411, 311],
        "New Customers": [551, 552, 541, 542, 425],
        "Need Attention": [323, 322, 231, 241, 251, 233, 232],
        "About to Sleep": [331, 321, 312, 221, 213, 222, 132],
        "At Risk": [155, 154, 144, 214, 215, 115, 114, 113],
        "Cannot Lose Them": [144, 234, 134, 124, 123],
        "Lost": [111, 112, 121, 131, 141, 151],
    }
    grid = load_rule_set("score_codes", 5)
    default = load_rule_set("rfm_grid", 5)
    wrong, agree_with_default = [], 0
    for segment, codes in published.items():
        for code in codes:
            r, f, m = (int(c) for c in str(code))
            if grid.segment_of(r, f, m) != segment:
                wrong.append((code, segment, grid.segment_of(r, f, m)))
            agree_with_default += default.segment_of(r, f, m) == segment
    assert wrong == [(144, "Cannot Lose Them", "At Risk")]
    # The default grid puts fewer than half of them where the convention does.
    assert agree_with_default < 30
    # The ranges read digit by digit: "533-515" and "413-315" are New Customers.
    for code in (513, 515, 523, 533, 535, 313, 415):
        assert grid.segment_of(*(int(c) for c in str(code))) == "New Customers", code


def test_the_range_convention_keeps_its_published_cells():
    from rfm_assets.segments import load_rule_set

    grid = load_rule_set("ranges", 5)
    assert grid.segment_of(5, 5, 5) == "Champions"
    assert grid.segment_of(1, 1, 5) == "Can't Lose Them"  # At Risk under rfm_grid
    assert load_rule_set("rfm_grid", 5).segment_of(1, 1, 5) == "At Risk"
    assert grid.segment_of(1, 1, 1) == "Lost" and grid.segment_of(1, 1, 3) == "Hibernating"
    assert grid.segment_of(4, 3, 3) == "Loyal Customers"  # listed before Promising
    assert grid.segment_of(3, 2, 4) == "Promising"
    assert "New Customers" not in {s.name for s in grid.segments}


@pytest.mark.parametrize("name", ["score_codes", "ranges"])
def test_conventions_on_five_points_say_so_on_four(name):
    from rfm_assets.segments import load_rule_set

    with pytest.raises(RFMConfigError, match=f"{name} is for a 5-point scale but scoring uses 4"):
        load_rule_set(name, 4)


def test_display_names_change_what_users_read_not_the_segment_id():
    from rfm_assets.settings import RFMSettings

    settings = RFMSettings(segment_display_names={"Cannot Lose Them": "Cant Lose Them"})
    grid = settings.rule_set()
    segmented = assign_segments(scores_frame([(1, 5), (5, 5)]), grid, FIXED_TIME)
    row = segmented[segmented["segment_id"] == "cannot_lose_them"].iloc[0]
    assert row["segment"] == "Cant Lose Them"  # what its users filter on
    assert row["recommendation"] == default_catalog()["Cannot Lose Them"].recommendation
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="display_names: no catalog segment named Nobody"):
        RFMSettings(segment_display_names={"Nobody": "x"})


def test_the_columns_in_the_contract_page_are_current():
    from rfm_assets.contract import columns_markdown

    text = (Path(__file__).resolve().parents[1] / "docs" / "contract.md").read_text()
    start, end = "<!-- columns:start -->\n", "<!-- columns:end -->"
    documented = text[text.index(start) + len(start) : text.index(end)]
    assert documented == columns_markdown(), "regenerate docs/contract.md"


def test_rules_check_lists_one_line_per_problem_and_per_overlap(tmp_path, capsys):
    from rfm_assets.cli import main

    path = write(
        tmp_path,
        """
        scale: 5
        rules:
          - {segment: Champions, R: [4, 5], FM: [4, 5]}
          - {segment: Loyal Customers, R: [4, 5], FM: [4, 5]}
          - {segment: At Risk, R: [1, 2], F: [3, 5]}
          - {segment: Lost, R: [1, 3], FM: [1, 4]}
        """,
    )
    assert main(["rules", str(path)]) == 1
    out = capsys.readouterr().out.splitlines()
    problems = [line for line in out if line.startswith("problem:")]
    overlaps = [line for line in out if line.startswith("overlap")]
    assert len(problems) == 2 and "33 R,F,M combinations match no rule" in problems[0]
    assert "dead rules" in problems[1] and "rule 2 (Loyal Customers)" in problems[1]
    assert overlaps == [
        "overlap (order decides): rule 1 (Champions) takes 20 combinations that rule 2 "
        "(Loyal Customers) also matches",
        "overlap (order decides): rule 3 (At Risk) takes 24 combinations that rule 4 (Lost) "
        "also matches",
    ]
    assert main(["rules", "ranges"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        "ranges: valid on the 5-point scale, 5 overlaps"
    )


@pytest.mark.parametrize(
    "display, message",
    [
        # The real Champions would merge into At Risk's row under one name.
        ({"At Risk": "Champions"}, "'At Risk' shown as 'Champions' takes the name of the segment"),
        ({"At Risk": "champions!"}, "'At Risk' shown as 'champions!' takes the name of the"),
        ({"At Risk": "Sleepy", "Lost": "sleepy"}, "takes the name also shown for"),
    ],
)
def test_display_names_that_would_merge_two_segments_are_refused(display, message):
    from rfm_assets.segments import load_rule_set

    with pytest.raises(RFMConfigError, match="segment_display_names: ") as raised:
        load_rule_set("rfm_grid", 5, (1.0, 1.0, 1.0), display)
    assert message in str(raised.value) and "\n" not in str(raised.value)
    # A new name that is only a new spelling of the segment's own stays allowed.
    grid = load_rule_set("rfm_grid", 5, (1.0, 1.0, 1.0), {"Cannot Lose Them": "Can't Lose Them"})
    assert len({e.segment_id for e in grid.segments}) == len(grid.segments) == 11


def test_segments_that_normalise_to_one_segment_id_are_refused(tmp_path, capsys):
    from rfm_assets.cli import main

    rules = tmp_path / "rules.yaml"
    rules.write_text(
        textwrap.dedent(
            """
            catalog:
              "champions!": {priority: 1, description: d, recommendation: r}
            rules:
              - {segment: "champions!", R: [5, 5]}
              - {segment: Champions, default: true}
            """
        )
    )
    assert main(["rules", str(rules)]) == 1
    out = capsys.readouterr().out
    assert "segments 'Champions' and 'champions!' are one segment_id (champions)" in out
    with pytest.raises(RFMConfigError, match="are one segment_id"):
        load_rule_set(rules, 5)
