"""`rfm-assets`: run the RFM asset graph in-process and write its tables, or report on a result.

Errors are one line on stderr and a non-zero exit; `--debug` shows the traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import traceback
import warnings
from pathlib import Path
from typing import Any, Optional

import pandas as pd

from rfm_assets import pictures
from rfm_assets.bounded_files import read_bounded, read_yaml
from rfm_assets.contract import ANALYTICS_COLUMNS
from rfm_assets.engines.source import first_line
from rfm_assets.errors import RFMConfigError, RFMError
from rfm_assets.exports import (
    CAMPAIGN_COLUMNS,
    campaign_lists,
    markdown_cell,
    write_atomically,
    write_spark_table,
    write_table,
)
from rfm_assets.packaged import preset_names, preset_path
from rfm_assets.report import ReportInputs, report_html, require_numbers
from rfm_assets.result_dir import ResultDirectory
from rfm_assets.runner import run
from rfm_assets.settings import build_settings

OUTPUT_TABLES = ("customer_segments", "segment_analytics")
# Tables the graph computes that the CLI writes only when asked (--high-value).
OPTIONAL_TABLES = ("high_value_customers",)
# Written with --clv.
LIFETIME_TABLES = ("customer_lifetime_value",)
# Written when the output directory holds an earlier result to compare with.
MOVEMENT_TABLES = ("segment_migration", "slipping_customers")
# What the segment sizes picture is drawn from (numbers, or the report is refused).
SIZES_DRAWN_FROM = ("priority", "customers", "revenue_share")
# The columns `report` needs of each table it reads.
TABLE_COLUMNS = {
    "segment_analytics": ANALYTICS_COLUMNS[:12],
    # What a report counts its segments from (a customer table given as --input).
    "customer_segments": ["customer_id", "segment", "recency", "frequency", "monetary",
                          "R_score", "FM_score"],
}  # fmt: skip
EXIT_USAGE = 2
EXIT_FAILED = 1


# --- settings from a config file and flags --------------------------------------------------


def read_config_file(path: str) -> dict[str, Any]:
    """The YAML mapping of a run-config file or preset name."""
    source = Path(path)
    if not source.exists() and preset_path(path).exists():
        source = preset_path(path)
    try:
        raw = read_yaml(source, "--config") or {}
    except FileNotFoundError:
        raise RFMConfigError(
            f"--config: cannot read {path}: No such file or directory; presets: "
            f"{', '.join(preset_names())}"
        ) from None
    if not isinstance(raw, dict):
        raise RFMConfigError(f"--config: {path} must hold a mapping")
    return raw


def settings_from_config_file(path: str) -> dict[str, Any]:
    """The `rfm_settings` config of a run-config YAML file or preset name.

    Accepts Dagster run config (`resources: rfm_settings: config: {...}`), the same file the
    launchpad and `dagster asset materialize -c` take, or the bare settings mapping.
    """
    raw = read_config_file(path)
    if "resources" in raw:
        try:
            return dict(raw["resources"]["rfm_settings"]["config"] or {})
        except (KeyError, TypeError):
            raise RFMConfigError(
                f"--config: {path} has resources: but no resources.rfm_settings.config"
            ) from None
    return raw


def settings_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Settings mapping: the config file first, then every flag that was given."""
    settings = settings_from_config_file(args.config) if args.config else {}
    flags = {
        "input_path": args.input,
        "sheet": args.sheet,
        "drop_duplicate_rows": args.drop_duplicate_rows or None,
        "output_table": getattr(args, "output_table", None),
        "input_level": args.input_level,
        "reference_date": args.reference_date,
        "analysis_period_days": args.analysis_period_days,
        "min_frequency": args.min_frequency,
        "high_value_share": args.high_value,
        "high_value_by": args.high_value_by,
        "exclude_recent_days": args.exclude_recent_days,
        "scoring_method": args.scoring,
        "returns_policy": args.returns,
        "segment_grid_file": args.segment_grid,
        "segment_rules": args.segment_rules,
        "segmentation_method": getattr(args, "segmentation", None),
        "clusters": getattr(args, "clusters", None),
        "cluster_features": getattr(args, "cluster_features", None),
        "cluster_model_path": getattr(args, "model", None),
        "engine": args.engine,
        "clv": getattr(args, "clv", None) or None,
        "clv_horizon_days": getattr(args, "clv_horizon_days", None),
        "clv_discount_rate": getattr(args, "clv_discount_rate", None),
        "clv_holdout_days": getattr(args, "clv_holdout_days", None),
    }
    settings.update({k: v for k, v in flags.items() if v is not None})
    columns = {
        "customer_id": args.customer_id,
        "transaction_date": args.transaction_date,
        "amount": args.amount,
        "quantity": args.quantity,
        "unit_price": args.unit_price,
        "order_id": args.order_id,
        "recency": args.recency,
        "last_purchase_date": args.last_purchase_date,
        "first_purchase_date": args.first_purchase_date,
        "frequency": args.frequency,
        "monetary": args.monetary,
    }
    given = {k: v for k, v in columns.items() if v is not None}
    if given:
        settings["columns"] = {**settings.get("columns", {}), **given}
    if args.weights is not None:
        settings["weights"] = parse_weights(args.weights)
    return settings


def parse_weights(text: str) -> dict[str, float]:
    parts = text.split(",")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != 3:
        raise RFMConfigError(f"--weights: expected three numbers R,F,M such as 2,1,1; got {text!r}")
    return dict(zip(("recency", "frequency", "monetary"), values))


# --- running the graph ----------------------------------------------------------------------


def spark_resource_for(args: argparse.Namespace, settings):
    """The `spark` resource of the run; none for the pandas engine, which then never imports
    PySpark (the Spark options are checked all the same)."""
    import dagster as dg

    if settings.engine == "spark":
        return spark_resource(args)
    spark_options(args)
    return dg.ResourceDefinition.none_resource()


def spark_resource(args: argparse.Namespace):
    """The lazy Spark resource: the code location's defaults, then the options on top."""
    from rfm_assets.spark_resource import DEFAULT_SPARK_CONFIG, SparkResource

    return SparkResource(spark_config={**DEFAULT_SPARK_CONFIG, **spark_options(args)})


def spark_options(args: argparse.Namespace) -> dict[str, str]:
    """The Spark settings the run asks for: the config file's spark resource (as Dagster would
    use it), then --spark-master, then each --spark-conf."""
    options = {}
    if args.config:
        resources = read_config_file(args.config).get("resources") or {}
        from_file = ((resources.get("spark") or {}).get("config") or {}).get("spark_config")
        options.update({str(k): str(v) for k, v in (from_file or {}).items()})
    if args.spark_master:
        options["spark.master"] = args.spark_master
    for item in args.spark_conf or []:
        key, separator, value = item.partition("=")
        if not separator or not key.strip():
            raise RFMConfigError(f"--spark-conf: expected KEY=VALUE, got {item!r}")
        options[key.strip()] = value
    return options


@contextlib.contextmanager
def jvm_stderr_to(path: Path):
    """Point file descriptor 2 at `path` while Spark starts its JVM.

    The JVM inherits stderr when it starts and keeps it: its start-up warnings and the
    stack traces Spark logs on a failure then go to the log, and the user reads our one
    line (`--debug` leaves stderr alone and shows everything).
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "ab") as log:
        os.dup2(log.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def run_summary(settings, metadata: dict[str, Any]) -> dict:
    tx = metadata["transactions"]
    return {
        "input": settings.source_path,
        "input_level": settings.input_level,
        "engine": settings.engine,
        "files_read": tx["files_read"],
        "files_skipped": tx["files_skipped"],
        "rows_read": tx["rows_read"],
        "rows_kept": tx["rows_kept"],
        "rows_excluded": tx["rows_excluded"],
        "customers": metadata["customer_segments"]["dagster/row_count"],
        "customers_held_out": metadata["rfm_metrics"]["customers_held_out"],
        "reference_date": tx["reference_date"],
        "window_start": tx.get("window_start"),
        "scoring_method": settings.scoring_method,
        "scale": settings.scale,
        "weights": settings.effective_weights.model_dump(),
        "returns_policy": settings.returns_policy,
        "thresholds": metadata["rfm_scores"]["thresholds"],
        "segmentation_method": settings.segmentation_method,
        # What a report of customer_segments alone needs to count its segments as the run did.
        "rule_set": settings.rule_set_source,
        "display_names": dict(settings.segment_display_names),
        # k, silhouette, Davies-Bouldin, Calinski-Harabasz, per-k scores, clusters
        "clustering": metadata["customer_segments"].get("clustering"),
        # clv: the fit, its parameters, the value by segment and the holdout check
        **({"lifetime_value": lifetime_of(metadata)} if settings.clv else {}),
    }


def lifetime_of(metadata: dict[str, Any]) -> dict:
    """What customer_lifetime_value's step found (its table's context)."""
    from rfm_assets.io_manager import CONTEXT_METADATA

    return metadata["customer_lifetime_value"][CONTEXT_METADATA]["lifetime_value"]


def lifetime_lines(lifetime: dict) -> list[str]:
    """The terminal's account of the lifetime value: the total predicted, or why there is
    none, and the holdout check."""
    if not lifetime["fitted"]:
        lines = [f"lifetime value not fitted, its predictions are null: {lifetime['refused']}"]
    else:
        total = sum(v["predicted_clv"] for v in lifetime["value_by_segment"].values())
        parameters = ", ".join(f"{k} {v:.3g}" for k, v in lifetime["parameters"].items())
        discount = lifetime["discount_rate"]
        lines = [
            f"lifetime value: {total:,.2f} predicted over the next {lifetime['horizon_days']} "
            f"days" + (f", discounted at {discount:.1%} a year" if discount else "")
            + f" (BG/NBD and Gamma-Gamma: {parameters})"
        ]  # fmt: skip
    holdout = lifetime.get("holdout")
    if holdout and "refused" in holdout:
        lines.append(f"holdout check could not run: {holdout['refused']}")
    elif holdout:
        lines.append(
            f"holdout check: fitted before {holdout['cutoff']}, predicted "
            f"{holdout['predicted_total']:,.0f} purchase days to {holdout['end']}, "
            f"{holdout['actual_total']:,} happened (ratio {holdout['ratio']:.3f}; Spearman "
            f"{holdout['spearman']:.3f})"
        )
    return lines


# --- writing results ------------------------------------------------------------------------


# Result CSVs: ids stay text ("007", "NA"); only an empty field or NaN is a missing value.
RESULT_CSV = dict(dtype={"customer_id": "str"}, keep_default_na=False, na_values=["", "NaN", "nan"])


def read_table(
    directory: Path, name: str, required: bool = True, flag: str = "--input"
) -> Optional[pd.DataFrame]:
    """A result table of `directory` (None when absent and not `required`); a damaged or
    foreign file is one line naming it and the flag that pointed at it."""
    for suffix in (".parquet", ".csv"):
        # Resolved once: a reader that opens the link twice could see two runs' files if
        # another run switches the result in between.
        path = (directory / f"{name}{suffix}").resolve()
        if path.exists():
            return _read_result_file(path, name, flag)
    if required:
        raise RFMError(
            f"{flag}: {directory} has no {name}.parquet or {name}.csv; run analyze first"
        )
    return None


def _read_result_file(path: Path, name: str, flag: str) -> pd.DataFrame:
    # A file, or a Spark table's folder of part files; a pipe would be waited on, a device
    # read forever.
    if not (path.is_file() or path.is_dir()):
        raise RFMError(f"{flag}: {path} is not a regular file (a pipe or device?)")
    reader = pd.read_parquet if path.suffix.lower() == ".parquet" else (
        lambda p: pd.read_csv(p, **RESULT_CSV))  # fmt: skip
    try:
        table = reader(path)
    except Exception as error:  # pyarrow, pandas and OS errors alike: name the file
        raise RFMError(f"{flag}: cannot read {path}: {first_line(error)}") from None
    missing = [c for c in TABLE_COLUMNS.get(name, ()) if c not in table.columns]
    if missing:
        raise RFMError(f"{flag}: {path} is not a {name} table (no {', '.join(missing)})")
    return table


def read_table_file(path: Path, name: str) -> pd.DataFrame:
    """A table file the user named (any name, .parquet or .csv), read as `read_table` reads."""
    if path.suffix.lower() not in (".parquet", ".csv"):
        raise RFMError(f"--input: {path} must be a .parquet or .csv table, or a result folder")
    return _read_result_file(path.resolve(), name, "--input")


def analytics_of_table(segments: pd.DataFrame, summary: dict, path: Path) -> pd.DataFrame:
    """segment_analytics of a customer table, as the graph counts it: the rule set and the
    thresholds of the run_summary.json beside it, else the default rule set and no
    thresholds recorded. A segment the rule set does not name is refused, not dropped."""
    from rfm_assets.engines.dispatch import PandasEngine
    from rfm_assets.segments import load_rule_set

    scale = _scale_of(summary, segments)
    weights = summary.get("weights") or {}
    rule_set = load_rule_set(
        summary.get("rule_set") or "rfm_grid",
        scale,
        tuple(float(weights.get(k, 1.0)) for k in ("recency", "frequency", "monetary")),
        dict(summary.get("display_names") or {}),
    )
    names = {entry.name for entry in rule_set.segments}
    unknown = sorted(set(segments["segment"].astype(str)) - names)
    if unknown:
        raise RFMError(
            f"--input: {path} holds segments that rule set {rule_set.name} does not name "
            f"({', '.join(unknown[:3])}); report its result folder, which records its rule set"
        )
    thresholds = summary.get("thresholds") or {d: [] for d in ("recency", "frequency", "monetary")}
    return PandasEngine().analytics(segments, rule_set, thresholds)


# run_summary.json holds a few KiB; a file far larger is not one.
SUMMARY_MAX_BYTES = 16 << 20


def read_summary(directory: Path) -> Optional[dict]:
    """run_summary.json of a result, or None when there is none."""
    path = directory / "run_summary.json"
    if not path.exists():
        return None
    try:
        summary = json.loads(read_bounded(path, "--input", SUMMARY_MAX_BYTES, RFMError))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RFMError(f"--input: cannot read {path}: {first_line(error)}") from None
    if not isinstance(summary, dict):
        raise RFMError(f"--input: {path} is not a run summary (not a JSON object)")
    return summary


def segment_table_text(analytics: pd.DataFrame) -> str:
    """A fixed-width segment table for the terminal."""
    # With clv, the mean predicted value of the segment's customers.
    valued = "avg_predicted_clv" in analytics
    header = (
        f"{'segment':<20} {'customers':>9} {'share':>6} {'revenue':>14} {'rev.share':>9} "
        f"{'recency':>8} {'orders':>7} {'monetary':>10}"
        + (f" {'pred.value':>10}" if valued else "")
    )
    lines = [header, "-" * len(header)]
    for row in analytics.itertuples(index=False):
        lines.append(
            f"{row.segment:<20} {row.customers:>9,} {row.customer_share:>6.1%} "
            f"{row.revenue:>14,.2f} {row.revenue_share:>9.1%} {_number(row.avg_recency, 1):>8} "
            f"{_number(row.avg_frequency, 2):>7} {_number(row.avg_monetary, 2):>10}"
            + (f" {_number(row.avg_predicted_clv, 2):>10}" if valued else "")
        )
    return "\n".join(lines)


def cluster_table_text(clustering: dict) -> str:
    """k-means for the terminal: k, how it was chosen, and one line per cluster with its
    segment, customers and centroid (the grid's segment table would be mostly empty rows)."""
    fitted = clustering.get("model") == "fitted"
    tried = sorted(int(k) for k in clustering.get("silhouette_by_k") or {})
    chosen = (f"best silhouette of k = {tried[0]}..{tried[-1]}" if len(tried) > 1
              else "k as given") if fitted else "the stored model's k"  # fmt: skip
    from rfm_assets.engines.clustering import METHOD_NAMES

    name = METHOD_NAMES.get(clustering.get("method", "kmeans"), "k-means")
    if fitted and (clustering.get("fitted") or {}).get("method_choice"):
        chosen += "; the method with the best silhouette of three at that k"
    features = clustering.get("features") or ["recency", "frequency", "monetary"]
    if len(features) > 3:
        chosen += f"; on {', '.join(features)}"
    clusters = clustering["clusters"]
    total = sum(c["customers"] for c in clusters) or 1
    header = (
        f"{'cluster':>7}  {'name':<22} {'segment':<20} {'customers':>9} {'share':>6} "
        f"{'recency':>8} {'orders':>7} {'monetary':>10}"
    )
    lines = [
        f"{name}: k = {clustering['k']} ({chosen}), silhouette {clustering['silhouette']:.3f}; "
        "each cluster's centroid:",
        header,
        "-" * len(header),
    ]
    for c in clusters:
        lines.append(
            f"{c['cluster']:>7}  {c['name']:<22} {c['segment']:<20} {c['customers']:>9,} "
            f"{c['customers'] / total:>6.1%} {c['recency']:>8.1f} {c['frequency']:>7.2f} "
            f"{c['monetary']:>10,.2f}"
        )
    return "\n".join(lines)


def _number(value: float, digits: int) -> str:
    return "-" if pd.isna(value) else f"{value:,.{digits}f}"


def _count(value) -> str:
    return f"{value:,}" if isinstance(value, int) else "unknown"


def report_markdown(analytics: pd.DataFrame, summary: Optional[dict]) -> str:
    lines = ["# RFM segment report", ""]
    if summary:
        excluded = summary.get("rows_excluded")
        excluded = list(excluded.values()) if isinstance(excluded, dict) else [None]
        # A count that is not a whole number (an edited file) makes the total "unknown".
        excluded = sum(excluded) if all(isinstance(n, int) for n in excluded) else None
        window = summary.get("window_start")
        lines += [
            f"- input: {markdown_cell(summary.get('input'))}",
            f"- reference date: {markdown_cell(summary.get('reference_date'))}"
            + (f", window from {markdown_cell(window)}" if window else ""),
            f"- rows read {_count(summary.get('rows_read'))}, kept "
            f"{_count(summary.get('rows_kept'))}, excluded {_count(excluded)}",
            f"- customers: {_count(summary.get('customers'))}; scoring: "
            f"{markdown_cell(summary.get('scoring_method'))}",
            "",
        ]
    lines += [
        "| segment | customers | share | revenue | revenue share | avg recency | avg orders "
        "| avg monetary | avg order value | recommendation |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in analytics.itertuples(index=False):
        # Every cell through markdown_cell: a number is formatted only when it is one, and
        # text (a segment name, or text where a number belongs) can never become markup.
        cells = [
            markdown_cell(row.segment),
            markdown_cell(row.customers, ","),
            markdown_cell(row.customer_share, ".1%"),
            markdown_cell(row.revenue, ",.2f"),
            markdown_cell(row.revenue_share, ".1%"),
            markdown_cell(row.avg_recency, ",.1f"),
            markdown_cell(row.avg_frequency, ",.2f"),
            markdown_cell(row.avg_monetary, ",.2f"),
            markdown_cell(row.avg_order_value, ",.2f"),
            markdown_cell(getattr(row, "recommendation", "")),  # include_recommendations
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def campaign_choice(args: argparse.Namespace, settings, segments: pd.DataFrame) -> dict:
    """The campaign lists the flags ask for, of `segments` (checked on an empty table before
    the run, so a typo costs no run)."""
    catalog = {entry.segment_id: entry.name for entry in settings.rule_set().segments}
    chosen = tuple(s.strip() for s in (args.campaign_segments or "").split(",") if s.strip())
    columns = tuple(c.strip() for c in (args.campaign_columns or "").split(",") if c.strip())
    # the default columns the table has (no recommendation with include_recommendations false)
    shown = tuple(c for c in CAMPAIGN_COLUMNS if c in segments.columns)
    return campaign_lists(segments, catalog, chosen, columns or shown)


def write_campaigns(directory: Path, args: argparse.Namespace, settings) -> None:
    """campaigns/<segment_id>.csv per segment, spreadsheet-safe, from the written result."""
    lists = campaign_choice(args, settings, read_table(directory, "customer_segments"))
    folder = directory / "campaigns"
    folder.mkdir()
    for segment_id, frame in lists.items():
        write_table(frame, folder / f"{segment_id}.csv", "csv")


def previous_result(output: Path) -> tuple[Optional[pd.DataFrame], Optional[str]]:
    """The customer_segments of the result in `output` that this run replaces, read back from
    its file; (None, why) when there is nothing readable to compare with."""
    try:
        previous = read_table(output, "customer_segments", False, "--output")
    except RFMError as error:  # an earlier layout or a damaged file: this run still stands
        return None, f"segment movement: not compared, {error}".replace("--output: ", "")
    if previous is None:
        return None, f"segment movement: no previous result in {output} to compare with"
    return previous, None


def movement_line(metadata: dict) -> str:
    """What moved, from the metadata of the graph's segment_migration and slipping_customers."""
    counts = metadata["segment_migration"]
    slipping = metadata["slipping_customers"]["dagster/row_count"]
    return (
        f"since the previous result: {counts['customers_moved']:,} customers changed segment, "
        f"{counts['customers_new']:,} new, {counts['customers_lapsed']:,} gone; {slipping:,} "
        "slipped into a win-back segment (slipping_customers)"
    )


def write_result_table(frame, target: Path, file_format: str) -> None:
    """A table of the run into `target`, by the engine that made it."""
    from rfm_assets.engines.stored import is_spark_dataframe

    if not is_spark_dataframe(frame):
        write_table(frame, target, file_format)
        return
    # The run's own frames, held in memory: each is in the engine's row order already, one
    # sorted range per partition, and Spark writes partition i to part file i, so the files
    # read in name order (as pandas reads a folder) come in that order without a new sort.
    write_spark_table(frame, target, file_format)


# --- commands -------------------------------------------------------------------------------


def command_analyze(args: argparse.Namespace) -> int:
    # The pictures live in Dagster's asset metadata, which the command line does not keep.
    settings = build_settings({**settings_from_args(args), "pictures": False})
    if settings.thresholds_from_week:
        raise RFMConfigError(
            "thresholds_from_week: reads the weekly history of a Dagster deployment, which "
            "the command line does not keep; pin the cut points with fixed_thresholds instead"
        )
    args.split_by_segment |= bool(args.campaign_segments or args.campaign_columns)
    if args.split_by_segment:
        from rfm_assets.contract import COLUMNS_OF

        campaign_choice(args, settings, pd.DataFrame(columns=COLUMNS_OF["customer_segments"]))
    # The names this run may show: one taken by something rfm-assets did not write is refused
    # before the graph runs.
    shows = [f"{name}.{args.format}" for name in OUTPUT_TABLES + MOVEMENT_TABLES]
    shows.append("run_summary.json")
    shows += [f"{name}.{args.format}" for name in LIFETIME_TABLES]
    if args.high_value is not None:
        shows.append(f"high_value_customers.{args.format}")
    if settings.clustered:
        from rfm_assets.engines.stored import MODEL_FILE

        shows.append(MODEL_FILE)
    if args.split_by_segment:
        shows.append("campaigns")
    if getattr(args, "strategies", False):
        shows.append(STRATEGIES_FILE)
    spark = spark_resource_for(args, settings)
    previous, movement_note = previous_result(Path(args.output))
    with ResultDirectory(Path(args.output), shows) as result:
        if settings.engine == "spark" and not args.debug:
            result.work.mkdir()
            with jvm_stderr_to(result.work / "spark.log"):
                _ = spark.spark_session  # starts the JVM now, with its stderr in the log
        tables = OUTPUT_TABLES + (OPTIONAL_TABLES if args.high_value is not None else ())
        tables += LIFETIME_TABLES if settings.clv else ()
        if previous is not None:
            tables += MOVEMENT_TABLES
        outcome = run(
            settings,
            spark=spark,
            previous=handed_previous(previous, settings, result.work),
            keep=tables,
            leave_out=() if args.high_value is not None else OPTIONAL_TABLES,
        )
        try:
            for name in tables:
                target = result.files / f"{name}.{args.format}"
                write_result_table(outcome.tables[name], target, args.format)
            if args.split_by_segment:
                write_campaigns(result.files, args, settings)
            if getattr(args, "strategies", False):
                write_strategies(result.files, outcome, settings)
            if previous is not None:
                movement_note = movement_line(outcome.metadata)
            if outcome.cluster_model is not None:
                from rfm_assets.engines.stored import MODEL_FILE

                (result.files / MODEL_FILE).write_text(
                    json.dumps(outcome.cluster_model, indent=2) + "\n", encoding="utf-8"
                )
            summary = run_summary(settings, outcome.metadata)
            (result.files / "run_summary.json").write_text(
                json.dumps(summary, indent=2) + "\n", encoding="utf-8"
            )
        except OSError as error:
            raise RFMError(
                f"--output: cannot write {args.output}: {error.strerror or error}"
            ) from None
        finally:
            outcome.release()
        # Read from this run's own files: once published, a racing run with other options
        # may hide the visible names.
        segment_table = segment_table_text(read_table(result.files, "segment_analytics"))
        lists = sorted(p.name for p in (result.files / "campaigns").glob("*"))
        result.publish()
    output = Path(args.output)
    excluded = sum(summary["rows_excluded"].values())
    skipped = summary.get("files_skipped") or 0
    rows = "customer rows" if settings.input_level == "customers" else "rows"
    print(
        f"{summary['rows_read']:,} {rows} read, {summary['rows_kept']:,} kept, {excluded:,} "
        f"excluded; {summary['customers']:,} customers; reference date "
        f"{summary['reference_date']}"
        + (f"; {skipped:,} files skipped (names starting with _ or .)" if skipped else "")
    )
    clustering = summary.get("clustering")
    print(cluster_table_text(clustering) if clustering else segment_table)
    if settings.clv:
        lifetime = summary["lifetime_value"]
        for line in lifetime_lines(lifetime):
            print(line, file=sys.stdout if lifetime["fitted"] else sys.stderr)
    print(movement_note)
    from rfm_assets.engines.stored import MODEL_FILE

    written = [f"{n}.{args.format}" for n in tables]
    if outcome.cluster_model is not None:
        written.append(MODEL_FILE)
    if getattr(args, "strategies", False):
        written.append(STRATEGIES_FILE)
    if args.split_by_segment:
        print(f"campaign lists: {len(lists)} files in {output / 'campaigns'}")
    print(f"wrote {', '.join(written)}, run_summary.json to {output}")
    return 0


STRATEGIES_FILE = "segment_strategies.json"


def write_strategies(directory: Path, outcome, settings) -> None:
    """segment_strategies.json: the catalog's strategy of each segment of this run."""
    from rfm_assets.assets.graph import small_to_pandas
    from rfm_assets.lists import segment_strategies

    analytics = small_to_pandas(outcome.tables["segment_analytics"])  # a dozen rows
    strategies = segment_strategies(analytics, settings.rule_set().segments)
    (directory / STRATEGIES_FILE).write_text(
        json.dumps(strategies, indent=2) + "\n", encoding="utf-8"
    )


def handed_previous(previous: Optional[pd.DataFrame], settings, work: Path):
    """The previous result's customer_segments as the graph's engine loads it: the frame for
    pandas, a Parquet copy for Spark (no pandas -> Spark conversion in memory)."""
    if previous is None or settings.engine != "spark":
        return previous
    from rfm_assets.engines.stored import StoredTable

    work.mkdir(exist_ok=True)
    path = work / "previous_customer_segments.parquet"
    previous.to_parquet(path, index=False)
    return StoredTable(str(path))


def command_predict(args: argparse.Namespace) -> int:
    """`analyze` with the stored model applied: the clusters keep their ids and names."""
    args.segmentation, args.clusters = "kmeans", None  # the stored model fixes both
    return command_analyze(args)


def command_validate_clv(args: argparse.Namespace) -> int:
    """Print (and with --output write) how the purchase model fitted before the holdout
    predicted the purchase days in it."""
    from rfm_assets.engines import clv

    if args.holdout_days < 1:
        raise RFMConfigError(f"--holdout-days: must be at least 1, got {args.holdout_days}")
    settings = build_settings(settings_from_args(args))
    if settings.input_level != "transactions":
        raise RFMConfigError(
            "validate-clv: counts purchase days, which need transaction lines "
            "(--input-level transactions)"
        )
    from rfm_assets.engines.dispatch import engine_for

    spark = spark_resource_for(args, settings)
    with tempfile.TemporaryDirectory(prefix="rfm-validate-clv-") as work:
        if settings.engine == "spark":
            log = contextlib.nullcontext() if args.debug else jvm_stderr_to(Path(work) / "log")
            with log:
                _ = spark.spark_session  # starts the JVM now, with its stderr in the log
        # The kept rows as the graph's transactions step makes and checks them; on Spark a
        # plan the summary's two group-bys read, and only the summary comes to the driver.
        outcome = run(settings, spark=spark, keep=("transactions",))
        end = outcome.account.reference_date
        engine = engine_for(settings.engine, spark)
        calibration = engine.holdout_summary(outcome.tables["transactions"], end, args.holdout_days)
        outcome.release()
    checked = clv.validate_summary(calibration, end, args.holdout_days)
    print(clv_validation_text(checked))
    if args.output:
        directory = Path(args.output)
        directory.mkdir(parents=True, exist_ok=True)
        document = {
            "cutoff": checked.cutoff.isoformat(),
            "end": checked.end.isoformat(),
            "holdout_days": args.holdout_days,
            "customers": checked.customers,
            "predicted_purchase_days": checked.predicted_total,
            "actual_purchase_days": checked.actual_total,
            "ratio": checked.ratio,
            "spearman": checked.spearman,
            "parameters": checked.parameters,
            "by_calibration_purchases": checked.by_calibration_purchases.to_dict("records"),
        }
        target = directory / "clv_validation.json"
        text = json.dumps(document, indent=2)
        write_atomically(target, lambda path: path.write_text(text))
        chart = pictures.clv_holdout(
            checked.by_calibration_purchases, str(checked.cutoff), str(checked.end)
        )
        picture = directory / "clv_validation.png"
        write_atomically(picture, lambda path: path.write_bytes(chart))
        print(f"wrote {target} and {picture.name}")
    return 0


def clv_validation_text(checked) -> str:
    """The holdout check as a user reads it."""
    from rfm_assets.engines.clv import chart_label

    p = checked.parameters
    chart = checked.by_calibration_purchases
    rows = [
        f"  {chart_label(g):>5}  {n:>9,}  {pred:>9.2f}  {act:>6.2f}"
        for g, n, pred, act in chart[["calibration_purchases", "customers", "predicted",
                                      "actual"]].itertuples(index=False)
    ]  # fmt: skip
    return "\n".join(
        [
            f"CLV holdout check: purchase model fitted on {checked.customers:,} customers' "
            f"purchase days before {checked.cutoff}, compared over the "
            f"{(checked.end - checked.cutoff).days} days to {checked.end}",
            f"  predicted purchase days {checked.predicted_total:,.0f}, actual "
            f"{checked.actual_total:,}: ratio {checked.ratio:.3f}",
            f"  Spearman rank correlation per customer: {checked.spearman:.3f}",
            f"  BG/NBD: r {p['r']:.3f}, alpha {p['alpha']:.2f} days "
            f"({p['alpha'] / 7:.2f} weeks), a {p['a']:.3f}, b {p['b']:.3f}",
            "  mean purchase days in the holdout, by repeat purchase days in calibration:",
            "   days  customers  predicted  actual",
            *rows,
        ]
    )


REPORT_FORMATS = (".md", ".csv", ".html")


def command_report(args: argparse.Namespace) -> int:
    given = Path(args.input)
    if not (given.is_dir() or given.is_file()):
        raise RFMError(
            f"--input: {given} is neither a result folder of analyze nor a customer_segments "
            "table file (.parquet or .csv)"
        )
    directory = given if given.is_dir() else given.parent
    target = Path(args.output) if args.output else directory / "segment_report.md"
    if target.suffix.lower() not in REPORT_FORMATS:
        raise RFMError(
            f"--output: {target} must end in {', '.join(REPORT_FORMATS)} (the report's format)"
        )
    summary = read_summary(directory)
    segments = None
    if given.is_dir():
        analytics = read_table(directory, "segment_analytics")
    else:  # a customer table: its segments are counted from it
        segments = read_table_file(given, "customer_segments")
        analytics = analytics_of_table(segments, summary or {}, given)
    suffix = target.suffix.lower()
    if suffix == ".csv":
        write_table(analytics, target, "csv")
        print(f"wrote {target}")
        return 0
    if suffix == ".html":
        page = report_html(report_inputs(directory, analytics, summary, segments))
        write_atomically(target, lambda p: p.write_text(page, encoding="utf-8"))
        print(f"wrote {target}")
        return 0
    chart = target.with_name("segment_sizes.png")
    require_numbers(analytics, SIZES_DRAWN_FROM, "segment_analytics", "the segment sizes")
    png = pictures.segment_sizes(analytics)
    write_atomically(chart, lambda p: p.write_bytes(png))
    text = report_markdown(analytics, summary) + f"\n![segment sizes]({chart.name})\n"
    write_atomically(target, lambda p: p.write_text(text, encoding="utf-8"))
    print(text, end="")
    print(f"wrote {target} and {chart}")
    return 0


def report_inputs(directory: Path, analytics: pd.DataFrame, summary: Optional[dict],
                  segments: Optional[pd.DataFrame] = None):  # fmt: skip
    """What the HTML report of a result directory shows, read from its files; of a customer
    table file (`segments`), that table and what lies beside it."""
    from rfm_assets.engines.dispatch import CLUSTER_PICTURE_CUSTOMERS, PandasEngine

    if segments is None:
        segments = read_table(directory, "customer_segments")
    engine = PandasEngine()
    summary = summary or {}
    migration = read_table(directory, "segment_migration", required=False)
    moved = read_table(directory, "slipping_customers", required=False)
    return ReportInputs(
        analytics=analytics,
        score_grid=engine.score_grid(segments),
        histograms=engine.histograms(segments),
        scale=_scale_of(summary, segments),
        summary=summary,
        migration=migration,
        previous="the result this one replaced",
        slipping=None if moved is None else len(moved),
        clustering=summary.get("clustering"),
        lifetime_value=summary.get("lifetime_value"),
        cluster_sample=(
            engine.cluster_sample(segments, CLUSTER_PICTURE_CUSTOMERS, 0)
            if summary.get("clustering") and "cluster" in segments
            else None
        ),
    )


def _scale_of(summary: dict, segments: pd.DataFrame) -> int:
    """The score scale of a result: its summary's, else the largest R_score it holds."""
    scale = summary.get("scale")
    if scale is None:
        return int(segments["R_score"].max())
    if isinstance(scale, bool) or scale not in (4, 5):
        raise RFMError(f"--input: run_summary.json: scale is {str(scale)[:40]!r}, not 4 or 5")
    return int(scale)


def command_rules(args: argparse.Namespace) -> int:
    """Check a rule set: one line per problem and per overlap that its order decides."""
    from rfm_assets.segments import check_rule_set

    weights = parse_weights(args.weights) if args.weights else None
    weight_tuple = tuple(weights.values()) if weights else (1.0, 1.0, 1.0)
    problems, overlaps = check_rule_set(args.rule_set, args.scale, weight_tuple)
    for line in problems:
        print(f"problem: {line}")
    for line in overlaps:
        print(f"overlap (order decides): {line}")
    if problems:
        count = f"{len(problems)} problem" + ("s" if len(problems) != 1 else "")
        raise RFMConfigError(f"{args.rule_set}: {count}, listed above")
    print(f"{args.rule_set}: valid on the {args.scale}-point scale, {len(overlaps)} overlaps")
    return 0


def command_generate(args: argparse.Namespace) -> int:
    from rfm_assets.synthetic import generate_transactions

    frame = generate_transactions(args.rows, customers=args.customers, seed=args.seed)
    target = Path(args.output)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.suffix == ".csv":
        write_atomically(target, lambda p: frame.to_csv(p, index=False))
    else:
        write_atomically(target, lambda p: frame.to_parquet(p, index=False))
    print(f"wrote {len(frame):,} rows to {target}")
    return 0


class _OneLineErrors(argparse.ArgumentParser):
    """Usage mistakes are one line too, with the allowed values argparse names."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def add_analysis_arguments(analyze: argparse.ArgumentParser, output_required: bool = True,
                           clustering: bool = True) -> None:  # fmt: skip
    """The options of `analyze`, which `predict` and `validate-clv` share; `predict`, whose
    stored model fixes the method and k, has no --segmentation or --clusters."""
    analyze.add_argument(
        "--input",
        help="transactions (.parquet, .csv, Parquet directory, Excel .xlsx/.xlsm/.xls); "
        "default: the bundled UCI Online Retail data",
    )
    analyze.add_argument(
        "--sheet", metavar="NAME", help="the sheet of an Excel --input; default: its first"
    )
    analyze.add_argument(
        "--drop-duplicate-rows",
        action="store_true",
        help="exclude lines equal to an earlier line in every column (counted as duplicate_row)",
    )
    analyze.add_argument(
        "--input-level",
        choices=("transactions", "customers"),
        help="customers: --input holds one row per customer (recency or last purchase date, "
        "frequency, monetary); default: transactions",
    )
    analyze.add_argument("--output", required=output_required, help="directory for the result")
    analyze.add_argument(
        "--output-table",
        metavar="PATH",
        help="also write customer_segments to this Delta table (a folder or URI), replaced "
        'atomically; needs pip install "rfm_assets[delta]"',
    )
    analyze.add_argument("--format", choices=("parquet", "csv"), default="parquet")
    analyze.add_argument(
        "--config", help=f"run-config YAML or preset ({', '.join(preset_names())})"
    )
    engine = analyze.add_argument_group("engine")
    engine.add_argument("--engine", choices=("pandas", "spark"), help="default: pandas")
    engine.add_argument("--spark-master", metavar="URL", help="e.g. local[4], spark://host:7077")
    engine.add_argument(
        "--spark-conf", metavar="KEY=VALUE", action="append", help="Spark setting (repeatable)"
    )
    mapping = analyze.add_argument_group("column mapping")
    mapping.add_argument("--customer-id", metavar="COL")
    mapping.add_argument("--transaction-date", metavar="COL")
    amount = mapping.add_mutually_exclusive_group()
    amount.add_argument("--amount", metavar="COL")
    amount.add_argument("--quantity", metavar="COL", help="with --unit-price")
    mapping.add_argument("--unit-price", metavar="COL", help="with --quantity")
    mapping.add_argument("--order-id", metavar="COL")
    by_customer = analyze.add_argument_group("column mapping, --input-level customers")
    last = by_customer.add_mutually_exclusive_group()
    last.add_argument("--recency", metavar="COL", help="days since the last purchase")
    last.add_argument("--last-purchase-date", metavar="COL")
    by_customer.add_argument("--first-purchase-date", metavar="COL", help="optional")
    by_customer.add_argument("--frequency", metavar="COL", help="number of orders")
    by_customer.add_argument("--monetary", metavar="COL", help="total spend")
    campaigns = analyze.add_argument_group("campaign lists")
    campaigns.add_argument(
        "--strategies",
        action="store_true",
        help="also write segment_strategies.json: each segment's goal, channel, campaign and "
        "budget share, from the segment catalog",
    )
    campaigns.add_argument(
        "--split-by-segment",
        action="store_true",
        help="also write campaigns/<segment_id>.csv per segment (spreadsheet-safe CSV)",
    )
    campaigns.add_argument(
        "--campaign-segments",
        metavar="SEG,SEG",
        help="only these segments (segment_id or name; implies --split-by-segment); default: all",
    )
    campaigns.add_argument(
        "--campaign-columns",
        metavar="COL,COL",
        help=f"columns of each list (implies --split-by-segment); default: "
        f"{','.join(CAMPAIGN_COLUMNS)}",
    )
    rules = analyze.add_argument_group("rules")
    rules.add_argument("--reference-date", metavar="YYYY-MM-DD")
    rules.add_argument("--analysis-period-days", type=int, metavar="N")
    rules.add_argument(
        "--high-value",
        type=float,
        nargs="?",
        const=0.2,
        metavar="SHARE",
        help="also write high_value_customers: the top SHARE (default 0.2) of customers",
    )
    rules.add_argument(
        "--high-value-by",
        choices=("monetary", "RFM_score", "predicted_clv"),
        help="what ranks the high-value list (predicted_clv: with --clv)",
    )
    rules.add_argument(
        "--min-frequency", type=int, metavar="N", help="hold out customers with fewer orders"
    )
    rules.add_argument(
        "--exclude-recent-days",
        type=int,
        metavar="N",
        help="hold out customers whose first purchase is within N days of the reference date",
    )
    scoring = rules.add_mutually_exclusive_group()
    scoring.add_argument("--scoring", choices=("quintiles", "quartiles"))
    scoring.add_argument(
        "--quintiles", dest="scoring", action="store_const", const="quintiles",
        help="same as --scoring quintiles",
    )  # fmt: skip
    scoring.add_argument(
        "--quartiles", dest="scoring", action="store_const", const="quartiles",
        help="same as --scoring quartiles",
    )  # fmt: skip
    if clustering:
        rules.add_argument(
            "--segmentation",
            choices=("grid", "kmeans", "auto"),
            help="grid (default): the rule set's cells; kmeans: clusters named from the "
            "catalog; auto: k-means, a Gaussian mixture or Ward's, the best silhouette",
        )
        rules.add_argument(
            "--clusters", type=int, metavar="K", help="kmeans: K clusters (default: best of 3..8)"
        )
        rules.add_argument(
            "--cluster-features",
            type=lambda text: [name.strip() for name in text.split(",")],
            metavar="NAME,...",
            help="kmeans / auto: the features clustered on (default recency,frequency,monetary; "
            "also tenure_days, avg_order_value, purchase_frequency_per_month, "
            "days_between_purchases)",
        )
    rules.add_argument("--weights", metavar="R,F,M")
    rules.add_argument("--returns", choices=("exclude", "net"))
    rules.add_argument(
        "--segment-rules",
        metavar="NAME|FILE",
        help="rule set: a shipped one (rfm_grid) or a YAML file of rules",
    )
    rules.add_argument("--segment-grid", metavar="FILE", help="former name of --segment-rules")


def package_version() -> str:
    """The installed package's version (its metadata, as pip shows it)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("rfm_assets")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def parser() -> argparse.ArgumentParser:
    root = _OneLineErrors(
        prog="rfm-assets", description="RFM customer segmentation as a Dagster asset graph."
    )
    root.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    root.add_argument("--version", action="version", version=f"rfm-assets {package_version()}")
    # --debug is accepted after the command too; SUPPRESS keeps the root's value otherwise.
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show tracebacks and Spark's own output on errors")  # fmt: skip
    commands = root.add_subparsers(dest="command", required=True)

    analyze = commands.add_parser(
        "analyze", help="run the RFM graph and write the tables", parents=[debug]
    )
    add_analysis_arguments(analyze)
    lifetime = analyze.add_argument_group(
        "lifetime value", 'BG/NBD and Gamma-Gamma (pip install "rfm_assets[clv]")'
    )
    lifetime.add_argument(
        "--clv",
        action="store_true",
        help="also write customer_lifetime_value and the value per segment",
    )
    lifetime.add_argument(
        "--clv-horizon-days", type=int, metavar="N", help="days predicted over (default 365)"
    )
    lifetime.add_argument(
        "--clv-discount-rate",
        type=float,
        metavar="RATE",
        help="annual discount rate of future value, e.g. 0.1 (default 0)",
    )
    lifetime.add_argument(
        "--clv-holdout-days",
        type=int,
        metavar="N",
        help="also check the purchase model on the N days before the reference date",
    )
    analyze.set_defaults(handler=command_analyze)

    predict = commands.add_parser(
        "predict",
        help="assign customers to the clusters of a stored k-means model, without refitting",
        parents=[debug],
    )
    predict.add_argument(
        "--model",
        required=True,
        metavar="DIR",
        help="cluster_model.json, a folder holding one (an analyze --output), or a "
        "cluster_model location of an asset store",
    )
    add_analysis_arguments(predict, clustering=False)
    predict.set_defaults(handler=command_predict)

    holdout = commands.add_parser(
        "validate-clv",
        help="fit the lifetime-value purchase model before a holdout and compare its "
        "predictions with what followed",
        parents=[debug],
    )
    holdout.add_argument(
        "--holdout-days",
        type=int,
        required=True,
        metavar="N",
        help="fit on purchases before reference date - N days, compare over the N days after",
    )
    add_analysis_arguments(holdout, output_required=False)
    holdout.set_defaults(handler=command_validate_clv)

    report = commands.add_parser("report", help="summarise a finished result", parents=[debug])
    report.add_argument("--input", required=True, help="directory written by analyze")
    report.add_argument(
        "--output",
        help="report file; its suffix picks the format: .md (with a PNG chart beside it), "
        ".csv or .html (default: INPUT/segment_report.md)",
    )
    report.set_defaults(handler=command_report)

    rules_check = commands.add_parser(
        "rules", help="check a segment rule set, one line per problem", parents=[debug]
    )
    rules_check.add_argument("rule_set", help="a shipped rule set name or a YAML file")
    rules_check.add_argument(
        "--scale", type=int, choices=(4, 5), default=5, help="points of each score (default 5)"
    )
    rules_check.add_argument(
        "--weights", metavar="R,F,M", help="weights of the scores, e.g. 2,1,1 (default 1,1,1)"
    )
    rules_check.set_defaults(handler=command_rules)

    generate = commands.add_parser(
        "generate", help="write seeded synthetic transactions", parents=[debug]
    )
    generate.add_argument(
        "--rows", type=int, required=True, metavar="N", help="transaction lines to write"
    )
    generate.add_argument(
        "--customers", type=int, metavar="N", help="distinct customers (default: rows / 25)"
    )
    generate.add_argument(
        "--seed", type=int, default=0, metavar="S", help="the same seed writes the same data"
    )
    generate.add_argument("--output", required=True, help="a .parquet or .csv file")
    generate.set_defaults(handler=command_generate)
    return root


def return_freed_memory() -> None:
    """Let Arrow allocate from jemalloc, which hands freed pages back to the system, unless
    the user chose a pool (ARROW_DEFAULT_MEMORY_POOL).

    Arrow's default (mimalloc) keeps the source rows' pages after they are freed, so they
    add to the peak of the aggregation that follows. Builds without jemalloc keep their
    default.
    """
    import pyarrow as pa

    if os.environ.get("ARROW_DEFAULT_MEMORY_POOL"):
        return
    try:
        pa.set_memory_pool(pa.jemalloc_memory_pool())
        # At once, not after jemalloc's default decay of seconds: the source rows freed by
        # one step would otherwise still be resident when the next one allocates.
        pa.jemalloc_set_decay_ms(0)
    except NotImplementedError:
        pass


def main(argv: Optional[list[str]] = None) -> int:
    args = parser().parse_args(argv)
    # Dagster's preview/supersession notices are not the user's concern on this command line.
    warnings.filterwarnings("ignore")
    return_freed_memory()
    try:
        return args.handler(args)
    except RFMError as error:
        if args.debug:
            traceback.print_exc()
        print(f"rfm-assets: error: {error}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("rfm-assets: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`rfm-assets ... | head`); the files are already written.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as error:  # a bug, not a user error: still one line unless --debug
        if args.debug:
            traceback.print_exc()
        print(
            f"rfm-assets: unexpected error: {type(error).__name__}: {error} "
            "(rerun with --debug for the traceback)",
            file=sys.stderr,
        )
        return EXIT_FAILED
