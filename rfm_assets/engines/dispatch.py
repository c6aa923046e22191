"""The two engines behind one interface, so the assets do not care which one runs.

`PandasEngine` and `SparkEngine` expose the same steps; each step is a call into
`pandas_compute`/`pandas_read` or `spark_compute`, which implement the rules of docs/contract.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
from typing import Any, Optional

import numpy as np
import pandas as pd

from rfm_assets.engines import pandas_compute, pandas_read
from rfm_assets.engines.pandas_compute import RowAccount
from rfm_assets.engines.shared import histogram_edges
from rfm_assets.engines.source import SourceListing
from rfm_assets.engines.spec import RunSpec
from rfm_assets.engines.stored import HeldTable, StoredTable
from rfm_assets.errors import RFMConfigError, RFMInputError
from rfm_assets.segments import RuleSet

_GRID_COLUMNS = ["R_score", "FM_score", "customers", "revenue"]
# The clusters picture draws this many customers (a seeded sample).
CLUSTER_PICTURE_CUSTOMERS = 2_000
CLUSTER_PICTURE_COLUMNS = ("recency", "frequency", "monetary", "cluster", "cluster_name")
# Scores that must lie on 1..scale (RFM_score, a weighted mean, is checked with a tolerance).
SCORE_COLUMNS = ("R_score", "F_score", "M_score", "FM_score")


@dataclasses.dataclass(frozen=True)
class Tally:
    """Counts the asset checks compare, taken on a step's result (see `PandasEngine.tally`);
    a count that was not asked for is None."""

    rows: int
    distinct: Optional[int] = None
    micro_sum: Optional[int] = None
    off_scale: Optional[int] = None


def _source_path(spec: RunSpec) -> str:
    if spec.input_level == "customers" and spec.input_path is None:
        raise RFMConfigError(
            "input_path: required with input_level 'customers' (the bundled sample holds "
            "transactions)"
        )
    return spec.source_path


def stored_model(spec: RunSpec, rule_set: RuleSet):
    """The model of cluster_model_path, checked against the rule set, or None."""
    if not spec.cluster_model_path:
        return None
    from rfm_assets.engines.clustering import ClusterModel, check_segments
    from rfm_assets.engines.stored import model_document_at

    document, source = model_document_at(spec.cluster_model_path)
    model = ClusterModel.from_document(document, source)
    check_segments(model, rule_set, source)
    return model


class PandasEngine:
    """Steps of the pandas engine; `compute` is the module that implements them."""

    name = "pandas"
    compute = pandas_compute

    def load(self, value: Any) -> pd.DataFrame:
        return value.to_pandas() if isinstance(value, (StoredTable, HeldTable)) else value

    def read(self, spec: RunSpec) -> tuple[pd.DataFrame, SourceListing]:
        """The canonical frame and the listing of the files it came from."""
        return pandas_read.read_transactions(_source_path(spec), spec.columns, spec.sheet)

    def read_table(self, table, spec: RunSpec, name: str):
        """The canonical frame of a table another asset produced and Dagster loaded."""
        if not isinstance(table, pd.DataFrame):
            raise RFMInputError(
                f"source asset {name}: the pandas engine reads a pandas DataFrame, got "
                f"{type(table).__name__}"
            )
        return pandas_read.read_frame(table, spec.table_columns, name)

    def prepare(
        self,
        raw,
        spec: RunSpec,
        listing: Optional[SourceListing] = None,
        reference_date: Optional[dt.date] = None,
        consume: bool = False,
        kept_from: Optional[dt.date] = None,
        net_by_window: bool = False,
    ) -> tuple[Any, RowAccount]:
        """The counted cleaning rules; `reference_date` (a week's end) overrides the setting.
        With `consume` the caller is done with `raw`: the rules may empty it as they go.
        `kept_from` and `net_by_window`: one week of a weekly history (transaction lines
        only; see pandas_compute.prepare_transactions)."""
        if spec.input_level == "customers":
            kept, account = self.compute.prepare_customers(
                raw,
                reference_date=reference_date or spec.reference_date,
                analysis_period_days=spec.analysis_period_days,
                valid_dates=spec.valid_dates,
            )
        else:
            kept, account = self.compute.prepare_transactions(
                raw,
                reference_date=reference_date or spec.reference_date,
                analysis_period_days=spec.analysis_period_days,
                returns_policy=spec.returns_policy,
                cancelled_order_prefix=spec.cancelled_order_prefix,
                valid_dates=spec.valid_dates,
                consume=consume,
                kept_from=kept_from,
                net_by_window=net_by_window,
                **self._read_along(listing),
            )
        if listing is not None and listing.listed:
            account = dataclasses.replace(
                account, files_read=listing.files_read, files_skipped=listing.files_skipped
            )
        return kept, account

    def _read_along(self, listing: Optional[SourceListing]) -> dict:
        """What the reader took along for the cleaning step (nothing, on pandas)."""
        return {}

    def metrics(self, kept, reference_date: dt.date, input_level: str = "transactions"):
        """One row per customer, from kept transactions or kept customer-level rows."""
        if input_level == "customers":
            return self.compute.customer_metrics(kept, reference_date)
        return self.compute.compute_metrics(kept, reference_date)

    def one_session(self):
        """A block whose steps share what each would open for itself (DuckDB on pandas;
        nothing on Spark, whose session is shared already): a range of weeks."""
        share = getattr(self.compute, "one_duckdb", None)
        return share() if share is not None else contextlib.nullcontext()

    def window_rows(self, weeks: list, window_start: Optional[dt.date],
                    read: Optional[dict] = None):  # fmt: skip
        """The kept rows of a window, from the stored weeks of a weekly history that keep
        them (any order): one table, without the rows dated before `window_start`.

        `read` ({stored path: table}) keeps the stored weeks read for one window for the
        next: the windows of a range of weeks overlap, so each stored week is read once. It
        is left holding this window's weeks only."""
        if read is None:
            return self.compute.window_rows([self.load(week) for week in weeks], window_start)
        paths = [getattr(week, "path", None) for week in weeks]
        for path in set(read) - set(paths):
            del read[path]
        tables = []
        for path, week in zip(paths, weeks):
            if path is None:  # held in this run, not stored
                tables.append(self.load(week))
                continue
            if path not in read:
                read[path] = self.load(week)
            tables.append(read[path])
        if len(tables) == 1 and isinstance(tables[0], pd.DataFrame):  # kept: not the caller's
            tables = [tables[0].copy(deep=False)]
        return self.compute.window_rows(tables, window_start)

    def customers_of(self, kept) -> int:
        """Distinct customers of kept rows."""
        return self.compute.distinct_customers(kept)

    def net_positive(self, kept) -> tuple[Any, int]:
        """The rows of customers whose netted monetary is above zero, and how many rows are
        not: the net rule, applied to a window's rows when a week's rows cannot judge it."""
        return self.compute.net_positive(kept)

    def filter_customers(self, metrics, spec: RunSpec) -> tuple[Any, dict[str, int]]:
        """Customers held out before scoring (min_frequency, exclude_recent_days), counted."""
        return self.compute.filter_customers(metrics, spec.min_frequency, spec.exclude_recent_days)

    def scores(
        self, metrics, spec: RunSpec, cut_points: Optional[dict] = None
    ) -> tuple[Any, dict[str, list[float]]]:
        """(scores, the cut points behind them): by `cut_points` (e.g. an earlier week's)
        when given, else by the settings (fixed ones, or those the quantiles drew)."""
        cut_points = cut_points or spec.fixed_cut_points
        scale = len(cut_points["recency"]) + 1 if cut_points else spec.scale
        scores = self.compute.compute_scores(metrics, scale, spec.weights, cut_points)
        return scores, cut_points or self.compute.thresholds_from_scores(scores, spec.scale)

    def segments(self, scores, rule_set: RuleSet, segmented_at: dt.datetime):
        return self.compute.assign_segments(scores, rule_set, segmented_at)

    def clusters(self, scores, rule_set: RuleSet, thresholds, spec, segmented_at,
                 fitted: Optional[dict] = None):  # fmt: skip
        """Segments by k-means (segmentation_method: kmeans): the table, what the clustering
        measured, and the model (the stored one of cluster_model_path, or one fitted now;
        `fitted` records where, e.g. the reference date)."""
        return self.compute.cluster_segments(
            scores,
            rule_set,
            thresholds,
            spec.k_range,
            spec.cluster_sample_size,
            spec.cluster_seed,
            segmented_at,
            stored_model(spec, rule_set),
            {**(fitted or {}), "seed": spec.cluster_seed, "rule_set": rule_set.name},
            spec.cluster_features,
            spec.segmentation_method,
        )

    def analytics(self, segmented, rule_set: RuleSet, thresholds):
        return self.compute.segment_analytics(segmented, rule_set, thresholds)

    def migration(self, previous, current, rule_set: RuleSet):
        """From x to table of customers and revenue between two weeks' segments."""
        return self.compute.segment_migration(
            previous, current, [entry.name for entry in rule_set.segments]
        )

    def slipping(self, previous, current, rule_set: RuleSet):
        """Customers who moved from an engaged segment into a slipping one."""
        return self.compute.slipping_customers(
            previous,
            current,
            rule_set.segment_ids_by_standing("engaged"),
            rule_set.segment_ids_by_standing("slipping"),
        )

    # --- small aggregates the pictures are drawn from (rfm_assets.pictures) -----------------

    def score_grid(self, segmented) -> pd.DataFrame:
        """Customers and revenue per (R_score, FM_score)."""
        grouped = segmented.groupby(["R_score", "FM_score"], observed=True)
        return grouped["monetary"].agg(customers="size", revenue="sum").reset_index()

    def histograms(self, metrics) -> dict:
        """(counts, edges) of recency, frequency and monetary over the customers."""
        result = {}
        for name in ("recency", "frequency", "monetary"):
            values = metrics[name].to_numpy(dtype=float)
            edges = histogram_edges(name, float(values.min()), float(values.max()))
            result[name] = (np.histogram(values, bins=edges)[0], edges)
        return result

    def high_value(self, segmented, spec: RunSpec):
        return self.compute.high_value_customers(
            segmented, spec.high_value_share, spec.high_value_by
        )

    def cluster_mismatches(self, segmented, model) -> int:
        """Customers whose `cluster` is not the one `model` assigns them."""
        from rfm_assets.engines.clustering import feature_values

        assigned, _ = model.assign(feature_values(segmented, model.features))
        return int((assigned != segmented["cluster"].to_numpy()).sum())

    def cluster_sample(self, segmented, customers: int, seed: int) -> pd.DataFrame:
        """A seeded sample of customers for the clusters picture."""
        shown = segmented.sample(n=min(customers, len(segmented)), random_state=seed)
        return shown[list(CLUSTER_PICTURE_COLUMNS)]

    def lifetime_inputs(self, kept, end: dt.date, segmented,
                        holdout_days: Optional[int] = None) -> tuple:  # fmt: skip
        """(every customer of `segmented` (customer_id, segment), by id, with the
        lifetime-value summary of their kept rows before `end` (clv.SUMMARY_COLUMNS; null
        for a customer without a purchase day); with `holdout_days`, the holdout's
        calibration summary (`holdout_summary`), else None), on the driver: the models fit
        there. The rows' purchase days are taken once for both."""
        from rfm_assets.engines import clv

        days = clv.purchase_days(kept, end)
        customers = segmented[["customer_id", "segment"]]
        summary = clv.summary_of(days, end)
        joined = customers.merge(summary, on="customer_id", how="left", validate="one_to_one")
        calibration = clv.holdout_of(days, end, holdout_days) if holdout_days else None
        return joined.sort_values("customer_id", ignore_index=True), calibration

    def holdout_summary(self, kept, end: dt.date, holdout_days: int) -> pd.DataFrame:
        """clv.holdout_summary of the kept rows, on the driver."""
        from rfm_assets.engines import clv

        return clv.holdout_summary(kept, end, holdout_days)

    def with_predicted_value(self, segmented, lifetime):
        """`segmented` with each customer's predicted_clv (customer_lifetime_value)."""
        predicted = lifetime[["customer_id", "predicted_clv"]]
        return segmented.merge(predicted, on="customer_id", how="left", validate="one_to_one")

    def with_segment_values(self, analytics, values: dict[str, dict[str, float]]):
        """`analytics` with the columns of `values` ({segment: {column: value}}, the
        lifetime value per segment) beside each segment; null for a segment without."""
        from rfm_assets.contract import SEGMENT_VALUE_COLUMNS

        segments = analytics["segment"].astype(str)
        return analytics.assign(**{
            column: segments.map({s: v[column] for s, v in values.items()}).astype(np.float64)
            for column in SEGMENT_VALUE_COLUMNS
        })  # fmt: skip

    def without(self, frame, column: str):
        """`frame` without `column`."""
        return frame.drop(columns=[column])

    def from_driver(self, frame: pd.DataFrame):
        """A table made on the driver (the lifetime-value predictions) as this engine's."""
        return frame

    def cached(self, frame):
        """A step's result, computed once for its checks, metadata and write (a no-op on
        pandas, whose frames are computed already)."""
        return frame

    def empty(self, frame):
        """A table with the columns of `frame` and no rows."""
        return frame.iloc[:0]

    def row_count(self, frame) -> int:
        return len(frame)

    def kept_rows(self, kept, account: RowAccount) -> int:
        """Rows of the kept transactions, counted on the value itself."""
        return len(kept)

    def run_details(self) -> dict[str, str]:
        """What identifies the computation beyond the engine's name (none for pandas)."""
        return {}

    def schema(self, frame) -> list[tuple[str, str]]:
        return [(str(name), str(dtype)) for name, dtype in frame.dtypes.items()]

    def segment_counts(self, segmented) -> dict[Optional[str], int]:
        """Customers per segment value; customers without one are counted under None."""
        counts = segmented["segment"].value_counts(dropna=False)
        return {None if pd.isna(name) else str(name): int(n) for name, n in counts.items() if n}

    # --- plain counts for the asset checks: simple code, independent of the steps' own ----

    def tally(self, frame, distinct_of: Optional[str] = None, money_of: Optional[str] = None,
              off_scale: Optional[int] = None) -> Tally:  # fmt: skip
        """What the checks count on a table, in one pass: its rows, the distinct non-null
        values of `distinct_of`, the exact micro-unit sum of `money_of`, and the rows whose
        scores are null or off the 1..`off_scale` scale."""
        return Tally(
            rows=len(frame),
            distinct=None
            if distinct_of is None
            else self.compute.distinct_count(frame[distinct_of]),
            micro_sum=None if money_of is None else self.monetary_micro_sum(frame, money_of),
            off_scale=None if off_scale is None else self._scores_off_scale(frame, off_scale),
        )

    @staticmethod
    def _scores_off_scale(scores, scale: int) -> int:
        bad = pd.Series(False, index=scores.index)
        for column in SCORE_COLUMNS:
            values = scores[column]
            bad |= values.isna() | (values < 1) | (values > scale)
        rfm = scores["RFM_score"]
        bad |= rfm.isna() | (rfm < 1 - 1e-9) | (rfm > scale + 1e-9)
        return int(bad.sum())

    def monetary_micro_sum(self, frame, column: str) -> int:
        """Exact sum of a money column in micro-units (Python int, no overflow)."""
        micro = self.compute.to_micro_units(frame[column].to_numpy())
        # As high and low 32-bit halves, each of which sums without overflow.
        return int((micro >> 32).sum()) * 2**32 + int((micro & 0xFFFFFFFF).sum())


class SparkEngine(PandasEngine):
    """The same steps on Spark: only reading, loading, caching and counting differ."""

    name = "spark"

    def __init__(self, session):
        from rfm_assets.engines import spark_compute

        self.session = session
        self.compute = spark_compute

    def load(self, value: Any):
        if isinstance(value, (StoredTable, HeldTable)):
            return value.to_spark(self.session)
        return value

    def lifetime_inputs(self, kept, end: dt.date, segmented,
                        holdout_days: Optional[int] = None) -> tuple:  # fmt: skip
        summary = self.compute.purchase_summary(kept, end)
        customers = segmented.select("customer_id", "segment")
        joined = customers.join(summary, "customer_id", "left").orderBy("customer_id")
        calibration = self.holdout_summary(kept, end, holdout_days) if holdout_days else None
        return _on_driver(joined), calibration

    def holdout_summary(self, kept, end: dt.date, holdout_days: int) -> pd.DataFrame:
        return _on_driver(self.compute.holdout_summary(kept, end, holdout_days))

    def with_predicted_value(self, segmented, lifetime):
        return segmented.join(lifetime.select("customer_id", "predicted_clv"), "customer_id",
                              "left")  # fmt: skip

    def with_segment_values(self, analytics, values: dict[str, dict[str, float]]):
        return self.compute.with_segment_values(analytics, values)

    def without(self, frame, column: str):
        return frame.drop(column)

    def from_driver(self, frame: pd.DataFrame):
        import pyarrow as pa

        # Through Arrow (no pandas conversion of PySpark's); categories as plain text.
        plain = frame.astype({c: str for c in frame.columns if frame[c].dtype == "category"})
        return self.session.createDataFrame(pa.Table.from_pandas(plain, preserve_index=False))

    def read(self, spec: RunSpec):
        return self.compute.read_transactions(
            self.session, _source_path(spec), spec.columns, spec.valid_dates, spec.sheet
        )

    def _read_along(self, listing: Optional[SourceListing]) -> dict:
        return {"date_statistics": listing.date_statistics if listing else None}

    def read_table(self, table, spec: RunSpec, name: str):
        from rfm_assets.engines.stored import is_spark_dataframe

        if not is_spark_dataframe(table):
            # No pandas -> Spark conversion in memory (see spark_resource.py): tables cross
            # between the engines as Parquet.
            raise RFMInputError(
                f"source asset {name}: the Spark engine reads a Spark DataFrame, got "
                f"{type(table).__name__}; store the source as Parquet and give its path"
            )
        return self.compute.read_frame(table, spec.table_columns, name, spec.valid_dates)

    def scores(self, metrics, spec: RunSpec, cut_points: Optional[dict] = None):
        """As pandas; quantile thresholds come with the boundaries the scores were found by,
        without a pass over the scores (which a table without customers still takes)."""
        if cut_points or spec.fixed_cut_points:
            return super().scores(metrics, spec, cut_points)
        quantiles = self.compute.quantile_boundaries(metrics, spec.scale)
        scores = self.compute.compute_scores(metrics, spec.scale, spec.weights, quantiles=quantiles)
        thresholds = quantiles.thresholds
        return scores, thresholds or self.compute.thresholds_from_scores(scores, spec.scale)

    def cached(self, frame):
        """Cache a step's result: its metadata and its write then compute it once. (Not for
        a projection of a cached frame, which is as cheap to compute again as to read from a
        cache of its own: the metrics, scores and segments.)"""
        from rfm_assets.engines.caches import persist

        return persist(frame)

    def empty(self, frame):
        return frame.limit(0)

    def row_count(self, frame) -> int:
        return frame.count()

    def run_details(self) -> dict[str, str]:
        """The Spark application that computed the step (its id finds its logs and UI)."""
        context = self.session.sparkContext
        return {
            "spark_application": context.applicationId,
            "spark_master": context.master,
            "spark_shuffle_partitions": self.session.conf.get("spark.sql.shuffle.partitions"),
        }

    def kept_rows(self, kept, account: RowAccount) -> int:
        """Rows of the kept transactions as the accounting's one aggregation counted them
        (rows without a reason): counting the value again is one more pass over the source."""
        return account.rows_kept

    def schema(self, frame) -> list[tuple[str, str]]:
        return [(field.name, field.dataType.simpleString()) for field in frame.schema.fields]

    def segment_counts(self, segmented) -> dict[str, int]:
        rows = segmented.groupBy("segment").count().collect()
        return {row["segment"]: int(row["count"]) for row in rows}

    def tally(self, frame, distinct_of: Optional[str] = None, money_of: Optional[str] = None,
              off_scale: Optional[int] = None) -> Tally:  # fmt: skip
        """As pandas, in one Spark job. Distinct ids are counted as the groups of a group-by
        on the id, the other counts summed over those groups: Spark plans count(DISTINCT)
        beside other aggregates by expanding every row once per kind of aggregate, which
        took longer than a job of its own. The steps' tables come out of a group-by on the
        customer id, so this one needs no shuffle."""
        from pyspark.sql import functions as F

        columns = {"rows": F.count(F.lit(1))}
        if money_of is not None:
            micro = self.compute.micro_units(F.col(money_of)).cast("decimal(38,0)")
            columns["micro_sum"] = F.sum(micro)
        if off_scale is not None:
            bad = F.lit(False)
            for column in SCORE_COLUMNS:
                value = F.col(column)
                bad = bad | value.isNull() | (value < 1) | (value > off_scale)
            rfm = F.col("RFM_score")
            bad = bad | rfm.isNull() | (rfm < 1 - 1e-9) | (rfm > off_scale + 1e-9)
            columns["off_scale"] = F.count(F.when(bad, 1))
        if distinct_of is None:
            row = frame.agg(*[value.alias(name) for name, value in columns.items()]).first()
        else:
            groups = frame.groupBy(distinct_of).agg(
                *[value.alias(name) for name, value in columns.items()]
            )
            row = groups.agg(
                *[F.sum(name).alias(name) for name in columns],
                F.count(distinct_of).alias("distinct"),  # a missing id is no distinct id
            ).first()
        row = row.asDict()
        return Tally(
            rows=int(row["rows"] or 0),
            distinct=None if distinct_of is None else int(row["distinct"]),
            micro_sum=None if money_of is None else int(row["micro_sum"] or 0),
            off_scale=None if off_scale is None else int(row["off_scale"] or 0),
        )

    def monetary_micro_sum(self, frame, column: str) -> int:
        return self.tally(frame, money_of=column).micro_sum  # the one exact sum on Spark

    def score_grid(self, segmented) -> pd.DataFrame:
        from pyspark.sql import functions as F

        rows = (
            segmented.groupBy("R_score", "FM_score")
            .agg(F.count(F.lit(1)).alias("customers"), F.sum("monetary").alias("revenue"))
            .collect()
        )
        return pd.DataFrame([row.asDict() for row in rows], columns=_GRID_COLUMNS)

    def histograms(self, metrics) -> dict:
        from pyspark.sql import functions as F

        names = ("recency", "frequency", "monetary")
        extremes = metrics.agg(
            *[F.min(n).alias(f"low_{n}") for n in names],
            *[F.max(n).alias(f"high_{n}") for n in names],
        ).first()
        result = {}
        for name in names:
            edges = histogram_edges(
                name, float(extremes[f"low_{name}"]), float(extremes[f"high_{name}"])
            )
            # The bin of each value as numpy's histogram finds it: the last edge is inclusive.
            conditions = F.lit(len(edges) - 2)
            for i in range(len(edges) - 2, 0, -1):
                conditions = F.when(F.col(name) < float(edges[i]), i - 1).otherwise(conditions)
            rows = metrics.groupBy(conditions.alias("bin")).count().collect()
            counts = np.zeros(len(edges) - 1, dtype=np.int64)
            for row in rows:
                counts[int(row["bin"])] = int(row["count"])
            result[name] = (counts, edges)
        return result

    def cluster_mismatches(self, segmented, model) -> int:
        from pyspark.sql import functions as F

        assigned, _ = self.compute.nearest_cluster(model)
        return int(segmented.filter(assigned != F.col("cluster")).count())

    def cluster_sample(self, segmented, customers: int, seed: int) -> pd.DataFrame:
        from pyspark.sql import functions as F

        shown = segmented.orderBy(F.rand(seed)).limit(customers)
        rows = shown.select(*CLUSTER_PICTURE_COLUMNS).collect()
        return pd.DataFrame([row.asDict() for row in rows], columns=CLUSTER_PICTURE_COLUMNS)


def _on_driver(frame) -> pd.DataFrame:
    """A small Spark result (one row per customer at most) as pandas, through Arrow."""
    return frame.toArrow().to_pandas()


def engine_for(name: str, spark=None) -> PandasEngine:
    """The engine by its name (the setting `engine`); `spark` is the (lazy) Spark resource."""
    if name == "spark":
        if spark is None:
            raise ValueError("engine: spark needs the `spark` resource")
        return SparkEngine(spark.spark_session)
    return PandasEngine()
