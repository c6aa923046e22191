"""`RFMSegmentationEngine`: the RFM graph's steps called on your own DataFrame, in a notebook.

    from rfm_assets import RFMSegmentationEngine

    rfm = RFMSegmentationEngine(reference_date="2011-12-10", columns={"order_id": "InvoiceNo"})
    profiles = rfm.generate_customer_profiles(transactions)   # pandas in, pandas out
    summary = rfm.get_segment_summary(profiles)

A Spark DataFrame in gives Spark DataFrames out (the Spark engine, on the frame's session).
Each method is a thin wrapper: the whole chain and the metrics run the graph itself
(`rfm_assets.run`, the chain the command line and Dagster run), and the single steps call the
same engine steps the graph's assets call, so the numbers are the graph's.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any, Optional

import pandas as pd

from rfm_assets.engines.dispatch import PandasEngine, SparkEngine
from rfm_assets.engines.stored import is_spark_dataframe
from rfm_assets.errors import RFMConfigError
from rfm_assets.settings import RFMSettings, build_settings

# The steps after rfm_metrics, which calculate_rfm_metrics does not run (with those the
# settings add: customer_lifetime_value with clv, cluster_model with kmeans).
_AFTER_METRICS = ("rfm_scores", "customer_segments", "segment_analytics", "high_value_customers")


class RFMSegmentationEngine:
    """The RFM steps on a DataFrame (see the module doc).

    `reference_date` (a date or YYYY-MM-DD) and `quintiles` (False: quartiles) are the
    notebook engine's own arguments; every other keyword is a setting of RFMSettings
    (`columns`, `weights`, `analysis_period_days`, `returns_policy`, ...), validated here:
    a bad one is one line naming it.
    """

    def __init__(self, spark_session=None, reference_date=None, quintiles: bool = True,
                 **settings: Any):  # fmt: skip
        if isinstance(reference_date, dt.datetime):  # a datetime or a pandas Timestamp
            reference_date = reference_date.date()
        if reference_date is not None:
            settings["reference_date"] = str(reference_date)
        settings.setdefault("scoring_method", "quintiles" if quintiles else "quartiles")
        self.settings: RFMSettings = build_settings(settings)
        self.spark_session = spark_session
        # What the last graph run of this engine found: its thresholds, row account, tables.
        self.last_run = None
        # The cut points the engine scored by last (the graph's run, or assign_rfm_scores).
        self.thresholds: Optional[dict] = None

    # --- the graph's steps ---------------------------------------------------------------

    def calculate_rfm_metrics(self, df):
        """One row per customer (rfm_metrics) of the transactions in `df`: the graph's
        reading, counted cleaning and metrics; the row account is `self.last_run.account`."""
        after = _AFTER_METRICS + ("customer_lifetime_value",) * self.settings.clv
        after += ("cluster_model",) * self.settings.clustered
        return self._run(df, keep=("rfm_metrics",), leave_out=after).rfm_metrics

    def assign_rfm_scores(self, df):
        """`df` (rfm_metrics) with R, F, M, FM and RFM scores and rfm_cell (rfm_scores); the
        cut points it scored by are `self.thresholds`."""
        engine, settings = self._engine_for(df)
        scores, self.thresholds = engine.scores(df, settings.run_spec())
        return scores

    def assign_customer_segments(self, df):
        """`df` (rfm_scores) with its segment, segment_id, recommendation, value tier and
        engagement level (customer_segments), by the rule set of the settings."""
        engine, settings = self._engine_for(df)
        if settings.clustered:
            raise RFMConfigError(
                "segmentation_method: kmeans segments in generate_customer_profiles, which "
                "fits the model; assign_customer_segments applies the rule set"
            )
        segmented = engine.segments(df, self.settings.rule_set(), _now())
        if not settings.include_recommendations:
            segmented = engine.without(segmented, "recommendation")
        return segmented

    def generate_customer_profiles(self, transactions_df):
        """Every customer of `transactions_df` with metrics, scores and segment: the graph's
        customer_segments, from one run of the graph (`self.last_run` keeps its tables)."""
        keep = ("customer_segments", "segment_analytics")
        return self._run(transactions_df, keep=keep, leave_out=()).customer_segments

    def get_segment_summary(self, profiles):
        """Per segment: customers, revenue, shares, averages and recommendation
        (segment_analytics) of `profiles`."""
        if self.last_run is not None and profiles is self.last_run.tables.get("customer_segments"):
            return self.last_run.segment_analytics
        engine, settings = self._engine_for(profiles)
        # (profiles this engine did not score: their cut points, found from their scores)
        thresholds = self.thresholds or engine.compute.thresholds_from_scores(
            profiles, settings.scale
        )
        summary = engine.analytics(profiles, self.settings.rule_set(), thresholds)
        if not settings.include_recommendations:
            summary = engine.without(summary, "recommendation")
        return summary

    def identify_high_value_customers(self, profiles, top_percentage: float = 0.2,
                                      by: str = "monetary"):  # fmt: skip
        """The tie-safe top `top_percentage` of `profiles` by `by` (the high_value_customers
        rule: customers tied at the cut are all in), with high_value_rank, highest first."""
        from rfm_assets.lists import check_high_value_arguments

        check_high_value_arguments(top_percentage, by)
        engine, _ = self._engine_for(profiles)
        return engine.compute.high_value_customers(profiles, top_percentage, by)

    def recommend_actions(self, profiles):
        """Per segment of `profiles`, in priority order: customers, revenue, the catalog's
        goal, channel, campaign, recommendation and example actions, and the budget share
        (the rows of segment_strategies.json, `rfm_assets.lists.segment_strategies`)."""
        from rfm_assets.assets.graph import small_to_pandas
        from rfm_assets.lists import segment_strategies

        engine, _ = self._engine_for(profiles)
        summary = small_to_pandas(self.get_segment_summary(profiles))  # a dozen rows
        rows = segment_strategies(summary, self.settings.rule_set().segments)
        table = pd.DataFrame(rows)
        return engine.from_driver(table) if is_spark_dataframe(profiles) else table

    # --- results -------------------------------------------------------------------------

    def segment_of(self, customer_id, result=None) -> Optional[dict]:
        """The row of `customer_id` in a result as a dict (segment, scores, recommendation,
        ...), or None when the result has no such customer. `result`: a customer table
        (pandas or Spark), a folder written by `rfm-assets analyze`, or None for the
        profiles this engine made last."""
        segments = self._customers_of(result)
        if is_spark_dataframe(segments):
            rows = segments.filter(segments["customer_id"] == customer_id).limit(1).collect()
            return rows[0].asDict() if rows else None
        found = segments[segments["customer_id"] == customer_id]
        return None if found.empty else found.iloc[0].to_dict()

    def detect_drift(self, before, after, max_share_change: Optional[float] = None):
        """How the segments moved from result `before` to result `after` (customer tables,
        folders, or summaries): per segment, customers and share in each and the change of
        share; `drifted` where the share moved by more than `max_share_change` (default:
        the settings' max_weekly_share_change), as the weekly share check judges it."""
        limit = max_share_change
        if limit is None:
            limit = self.settings.max_weekly_share_change
        sizes = [self._segment_sizes(result) for result in (before, after)]
        catalog = sorted(self.settings.rule_set().segments, key=lambda e: e.priority)
        names = [entry.name for entry in catalog]
        names += sorted((set(sizes[0]) | set(sizes[1])) - set(names))  # names outside the rules
        totals = [sum(size.values()) or 1 for size in sizes]
        rows = []
        for name in names:
            counts = [size.get(name, 0) for size in sizes]
            if not any(counts):
                continue
            shares = [count / total for count, total in zip(counts, totals)]
            rows.append({"segment": name, "customers_before": counts[0],
                         "customers_after": counts[1], "share_before": shares[0],
                         "share_after": shares[1], "share_change": shares[1] - shares[0],
                         "drifted": abs(shares[1] - shares[0]) > limit})  # fmt: skip
        return pd.DataFrame(rows)

    # --- plumbing ------------------------------------------------------------------------

    def _engine_for(self, df):
        """The engine of the frame's kind, and the settings that say so."""
        if is_spark_dataframe(df):
            settings = self.settings.changed(engine="spark")
            return SparkEngine(df.sparkSession), settings
        if not isinstance(df, pd.DataFrame):
            raise RFMConfigError(f"expected a pandas or a Spark DataFrame, got {type(df).__name__}")
        return PandasEngine(), self.settings.changed(engine="pandas")

    def _run(self, df, keep: tuple[str, ...], leave_out: tuple[str, ...]):
        from rfm_assets.runner import run

        _, settings = self._engine_for(df)
        session = df.sparkSession if is_spark_dataframe(df) else None
        previous = self.last_run
        self.last_run = run(settings, source=df, spark_session=session, keep=keep,
                            leave_out=leave_out)  # fmt: skip
        # One run's Spark caches at a time, let go once the new run no longer reads them
        # (its source may be a table of the previous run).
        if previous is not None:
            previous.release()
        self.thresholds = self.last_run.thresholds or None
        return self.last_run

    def _customers_of(self, result):
        if result is None:
            if self.last_run is None or "customer_segments" not in self.last_run.tables:
                raise RFMConfigError(
                    "segment_of: no result given, and this engine has made no profiles yet"
                )
            return self.last_run.customer_segments
        if isinstance(result, (str, Path)):
            from rfm_assets.cli import read_table

            return read_table(Path(result), "customer_segments")
        return result

    def _segment_sizes(self, result) -> dict[str, int]:
        table = self._customers_of(result)
        if "customers" in table.columns and "customer_id" not in table.columns:  # a summary
            from rfm_assets.assets.graph import small_to_pandas

            summary = small_to_pandas(table)  # a dozen rows
            return dict(zip(summary["segment"].astype(str), summary["customers"].astype(int)))
        counts = self._engine_for(table)[0].segment_counts(table)
        return {name: n for name, n in counts.items() if name is not None}


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)
