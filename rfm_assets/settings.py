"""The run's settings: one pydantic-validated Dagster resource shared by every asset.

A bad value fails when the resource is built, before any asset computes, with a message that
names the field.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
from collections.abc import Callable
from typing import Annotated, Any, Literal, Optional, Union

import dagster as dg
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo

from rfm_assets.engines.excel import is_excel
from rfm_assets.engines.spec import (
    CUSTOMER_FIELDS,
    TRANSACTION_FIELDS,
    RunSpec,
    SourceColumns,
)
from rfm_assets.errors import RFMConfigError, RFMError
from rfm_assets.packaged import BUNDLED_COLUMNS, BUNDLED_DATASET
from rfm_assets.segments import RuleSet, load_rule_set

SCALE_OF_METHOD = {"quintiles": 5, "quartiles": 4}
# Weights are ratios: any usable ratio fits between these.
SMALLEST_WEIGHT = 1e-6
LARGEST_WEIGHT = 1e6


class ColumnMapping(dg.Config):
    """Which source column holds each canonical field. Unset fields take the source's default."""

    customer_id: Optional[str] = Field(
        default=None, description="Customer id column. Default: `customer_id`."
    )
    transaction_date: Optional[str] = Field(
        default=None,
        description="Transaction date or timestamp column. Default: `transaction_date`.",
    )
    amount: Optional[str] = Field(
        default=None,
        description="Line amount column. Map either this or quantity and unit_price. "
        "Default (when neither is mapped): `amount`.",
    )
    quantity: Optional[str] = Field(
        default=None, description="Quantity column; amount = quantity * unit_price."
    )
    unit_price: Optional[str] = Field(
        default=None, description="Unit price column; amount = quantity * unit_price."
    )
    order_id: Optional[str] = Field(
        default=None,
        description="Order (invoice) id column. When mapped, frequency counts distinct orders; "
        "otherwise it counts transaction rows.",
    )
    # Customer-level input (input_level: customers): one row per customer.
    recency: Optional[str] = Field(
        default=None,
        description="input_level customers: days since the last purchase, counted to the "
        "reference date. Default: `recency`, unless last_purchase_date is mapped.",
    )
    last_purchase_date: Optional[str] = Field(
        default=None,
        description="input_level customers: date of the last purchase, instead of recency.",
    )
    first_purchase_date: Optional[str] = Field(
        default=None,
        description="input_level customers: date of the first purchase (optional; gives "
        "tenure_days, customer_lifetime_days and purchase_frequency_per_month).",
    )
    frequency: Optional[str] = Field(
        default=None,
        description="input_level customers: number of orders. Default: `frequency`.",
    )
    monetary: Optional[str] = Field(
        default=None,
        description="input_level customers: total spend. Default: `monetary`.",
    )

    @model_validator(mode="after")
    def _one_way_to_the_amount(self):
        if self.amount and (self.quantity or self.unit_price):
            raise ValueError(
                "columns: map either amount or quantity and unit_price, not both "
                f"(amount={self.amount!r}, quantity={self.quantity!r}, "
                f"unit_price={self.unit_price!r})"
            )
        if self.recency and self.last_purchase_date:
            raise ValueError(
                "columns: map either recency or last_purchase_date, not both "
                f"(recency={self.recency!r}, last_purchase_date={self.last_purchase_date!r})"
            )
        if bool(self.quantity) != bool(self.unit_price):
            raise ValueError(
                "columns: quantity and unit_price go together; "
                f"got quantity={self.quantity!r}, unit_price={self.unit_price!r}"
            )
        return self


class Weights(dg.Config):
    """Weights of the R, F and M scores in FM_score and RFM_score."""

    recency: float = Field(
        default=1.0, ge=0, allow_inf_nan=False, description="Weight of R_score (>= 0)."
    )
    frequency: float = Field(
        default=1.0, ge=0, allow_inf_nan=False, description="Weight of F_score (>= 0)."
    )
    monetary: float = Field(
        default=1.0, ge=0, allow_inf_nan=False, description="Weight of M_score (>= 0)."
    )

    @field_validator("recency", "frequency", "monetary")
    @classmethod
    def _usable_size(cls, value: float, info) -> float:
        # Beyond these, wF*F + wM*M overflows or underflows in double precision and the
        # FM_score would leave the scale.
        if value != 0 and not SMALLEST_WEIGHT <= value <= LARGEST_WEIGHT:
            raise ValueError(
                f"weights.{info.field_name}: must be 0 or between {SMALLEST_WEIGHT:g} and "
                f"{LARGEST_WEIGHT:g}, got {value:g}"
            )
        return value

    @model_validator(mode="after")
    def _fm_weights_not_both_zero(self):
        # FM_score divides by wF + wM, so those two may not both be 0 (which also rules out
        # all three being 0).
        if self.frequency + self.monetary <= 0:
            raise ValueError(
                "weights: frequency and monetary may not both be 0 "
                f"(got recency={self.recency}, frequency={self.frequency}, "
                f"monetary={self.monetary})"
            )
        return self


class FixedThresholds(dg.Config):
    """Ascending cut points per dimension for `scoring_method: fixed` (k-1 of them each)."""

    recency: list[float] = Field(
        description="Recency cut points in days, ascending: recency <= t1 scores k, "
        "t1 < recency <= t2 scores k-1, ..., recency > t(k-1) scores 1."
    )
    frequency: list[float] = Field(
        description="Frequency cut points, ascending: frequency < t1 scores 1, "
        "t1 <= frequency < t2 scores 2, ..., frequency >= t(k-1) scores k."
    )
    monetary: list[float] = Field(
        description="Monetary cut points in currency units, ascending, as for frequency."
    )

    @model_validator(mode="after")
    def _sorted_and_same_length(self):
        lengths = {len(self.recency), len(self.frequency), len(self.monetary)}
        if len(lengths) != 1 or lengths.pop() not in (3, 4):
            raise ValueError(
                "fixed_thresholds: recency, frequency and monetary need the same number of "
                "cut points, 4 (5-point scale) or 3 (4-point scale); got "
                f"{len(self.recency)}, {len(self.frequency)}, {len(self.monetary)}"
            )
        for name in ("recency", "frequency", "monetary"):
            cuts = getattr(self, name)
            if not all(math.isfinite(c) for c in cuts):
                raise ValueError(f"fixed_thresholds.{name}: cut points must be finite, got {cuts}")
            if any(b < a for a, b in zip(cuts, cuts[1:])):
                raise ValueError(f"fixed_thresholds.{name}: cut points must ascend, got {cuts}")
        return self


class RFMSettings(dg.ConfigurableResource):
    """Settings of an RFM run: input, column mapping, window, scoring, weights, segments."""

    input_path: Optional[str] = Field(
        default=None,
        description="Transactions: a .parquet file, a .csv file, a directory of Parquet "
        "files or an Excel workbook (.xlsx, .xlsm, .xls). Unset: the bundled UCI Online "
        "Retail data.",
    )
    output_table: Optional[str] = Field(
        default=None,
        description="A Delta table (a folder path or URI) that customer_segments is also "
        "written to, with its published columns, replaced atomically by each run; a weekly "
        "run replaces its own week's rows (column week). Needs the delta extra.",
    )
    include_recommendations: bool = Field(
        default=True,
        description="false: the tables carry no recommendation column (customer_segments, "
        "segment_analytics, high_value_customers, slipping_customers); the catalog's text "
        "stays in the report.",
    )
    drop_duplicate_rows: bool = Field(
        default=False,
        description="Exclude a transaction line whose every column (not only the mapped ones) "
        "equals an earlier line's, counted as duplicate_row: an export that repeats lines. "
        "Off by default: two equal lines can be two real purchases.",
    )
    sheet: Optional[str] = Field(
        default=None,
        description="Excel input: the name of the sheet to read. Unset: the workbook's first "
        "sheet.",
    )
    input_level: Literal["transactions", "customers"] = Field(
        default="transactions",
        description="transactions: one row per transaction line. customers: one row per "
        "customer with recency (or last_purchase_date), frequency and monetary, as CRMs and "
        "warehouses export them; scored without transactions.",
    )
    columns: ColumnMapping = Field(
        default_factory=ColumnMapping, description="Source column of each canonical field."
    )
    reference_date: Optional[str] = Field(
        default=None,
        description="Reference date YYYY-MM-DD; recency counts days to it and rows dated on "
        "or after it are excluded. Unset: the day after the latest transaction date.",
    )
    earliest_valid_date: str = Field(
        default="1900-01-01",
        description="Transactions dated before this (YYYY-MM-DD) are placeholders such as "
        "1900-01-01, not purchases: excluded and counted as date_out_of_range.",
    )
    latest_valid_date: str = Field(
        default="2999-12-31",
        description="Transactions dated after this (YYYY-MM-DD) are placeholders such as "
        "9999-12-31 ('no end'), not purchases: excluded and counted as date_out_of_range, so "
        "they never move the default reference date.",
    )
    analysis_period_days: Optional[int] = Field(
        default=None,
        ge=1,
        description="Keep transactions with reference_date - N <= date < reference_date. "
        "Unset: all history before the reference date.",
    )
    min_frequency: Optional[int] = Field(
        default=None,
        ge=1,
        description="Hold out customers with fewer orders before scoring (counted as "
        "below_min_frequency), e.g. 2 to score repeat buyers only. Unset: everyone.",
    )
    exclude_recent_days: Optional[int] = Field(
        default=None,
        ge=0,
        description="Hold out customers whose first purchase is within this many days of the "
        "reference date (counted as first_purchase_too_recent). Unset: everyone.",
    )
    scoring_method: Literal["quintiles", "quartiles", "fixed"] = Field(
        default="quintiles",
        description="quintiles (5-point), quartiles (4-point) or fixed (fixed_thresholds).",
    )
    fixed_thresholds: Optional[FixedThresholds] = Field(
        default=None,
        description="Cut points for scoring_method: fixed, e.g. the thresholds an earlier "
        "quantile run published, to keep scores comparable over time.",
    )
    thresholds_from_week: Optional[str] = Field(
        default=None,
        description="Score with the cut points that the stored week starting on this date "
        "(a weekly partition key, YYYY-MM-DD) published, so scores stay comparable from week "
        "to week. Unset: quantiles of this run (or fixed_thresholds).",
    )
    weights: Weights = Field(default_factory=Weights, description="Weights of R, F and M.")
    recency_weight: Optional[float] = Field(
        default=None, description="Flat alias of weights.recency (as other RFM tools name it)."
    )
    frequency_weight: Optional[float] = Field(
        default=None, description="Flat alias of weights.frequency."
    )
    monetary_weight: Optional[float] = Field(
        default=None, description="Flat alias of weights.monetary."
    )
    returns_policy: Literal["exclude", "net"] = Field(
        default="exclude",
        description="exclude: drop rows with amount <= 0 and cancelled orders (counted). "
        "net: subtract them from monetary, never count them as orders.",
    )
    cancelled_order_prefix: str = Field(
        default="C",
        description="Order ids starting with this text are cancellations (only when an order "
        "column is mapped). Empty: no order is a cancellation.",
    )
    segment_rules: str = Field(
        default="rfm_grid",
        description="Rule set that names the segments: a shipped one (rfm_grid, the default "
        "R x FM grid) or the path of a YAML file with a grid or ordered rules over R, F, M, "
        "FM and RFM_score.",
    )
    segment_display_names: dict[str, str] = Field(
        default_factory=dict,
        description="Names shown in the segment column instead of the catalog's, e.g. "
        "{Cannot Lose Them: Can't Lose Them}; segment_id stays the catalog's slug.",
    )
    segment_grid_file: Optional[str] = Field(
        default=None,
        description="Former name of segment_rules for a file path; when set, it wins.",
    )
    segmentation_method: Literal["grid", "kmeans", "auto"] = Field(
        default="grid",
        description="grid: segments from the rule set's (R, F, M) cells. kmeans: customers "
        "clustered on the log-scaled cluster_features, each cluster named by the (R, F, M) cell "
        "of its centroid. auto: k-means, a Gaussian mixture or Ward's clustering, whichever "
        "has the best silhouette on one sample; customers go to the nearest cluster mean.",
    )
    cluster_features: list[str] = Field(
        default_factory=lambda: ["recency", "frequency", "monetary"],
        description="kmeans / auto: the features clustered on: recency, frequency and "
        "monetary, and any of tenure_days, avg_order_value, purchase_frequency_per_month and "
        "days_between_purchases.",
    )
    clusters: Optional[int] = Field(
        default=None,
        ge=2,
        le=20,
        description="kmeans: this many clusters. Unset: the k in cluster_range with the best "
        "silhouette.",
    )
    cluster_range: list[int] = Field(
        default_factory=lambda: [3, 8],
        description="kmeans: [smallest, largest] k tried.",
    )
    cluster_sample_size: int = Field(
        # The silhouette compares every pair of the sample: 5,000 takes half a second, 10,000
        # about ten times that.
        default=5_000,
        ge=100,
        description="kmeans: customers (a seeded sample) the silhouette is measured on, so "
        "choosing k costs the same at any size.",
    )
    cluster_seed: int = Field(default=0, description="kmeans: the seed; results repeat.")
    cluster_model_path: Optional[str] = Field(
        default=None,
        description="kmeans: apply this stored model instead of fitting one, so clusters keep "
        "their ids and names week over week: a cluster_model.json file, a folder holding one "
        "(an analyze --output), or the cluster_model location of an asset store.",
    )
    high_value_share: float = Field(
        default=0.2,
        gt=0,
        le=1,
        description="Share of customers in high_value_customers (0.2 = the top 20%); ties at "
        "the cut are all in.",
    )
    high_value_by: Literal["monetary", "RFM_score", "predicted_clv"] = Field(
        default="monetary",
        description="Measure that ranks high_value_customers: monetary, the weighted "
        "RFM_score (so the weights decide who is on the list), or predicted_clv (clv: true).",
    )
    clv: bool = Field(
        default=False,
        description="Add customer_lifetime_value: each customer's probability of being alive, "
        "expected purchases and predicted value over clv_horizon_days (BG/NBD and Gamma-Gamma "
        'by pymc-marketing: pip install "rfm_assets[clv]"); segment_analytics and the report '
        "gain predicted value per segment.",
    )
    clv_horizon_days: int = Field(
        default=365,
        ge=1,
        description="clv: days ahead the purchases and value are predicted over.",
    )
    clv_discount_rate: float = Field(
        default=0.0,
        ge=0,
        lt=1,
        description="clv: annual discount rate of future value (0.1 = 10% a year), applied "
        "to each 30-day period at its end. 0: undiscounted.",
    )
    clv_holdout_days: Optional[int] = Field(
        default=None,
        ge=1,
        description="clv: also fit the purchase model on the data before reference_date - N "
        "and check its predictions against the N days that followed (asset check "
        "predictions_match_holdout). Unset: no holdout check.",
    )
    max_segment_share: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="Warn (asset check dominant_segment) when one segment holds more than "
        "this share of the customers.",
    )
    max_weekly_share_change: float = Field(
        default=0.10,
        gt=0,
        le=1,
        description="Warn (asset check share_change_from_previous_week) when a segment's "
        "share of customers moves more than this from the previous week.",
    )
    engine: Literal["pandas", "spark"] = Field(
        default="pandas",
        description="pandas (in-process, no services) or spark (the `spark` resource's "
        "session: local mode or any spark.master).",
    )
    pictures: bool = Field(
        default=True,
        description="Draw the PNG pictures into the asset metadata for the Dagster UI (a few "
        "seconds a run at millions of customers; `rfm-assets analyze`, which keeps only the "
        "tables, leaves them out).",
    )
    range_pictures: Literal["last_week", "every_week"] = Field(
        default="last_week",
        description="In a run over a range of weeks (a backfill), draw the pictures (in the "
        "UI and in rfm_report) for the range's last week only, or for every week. Drawing "
        "them is most of a range's time (about 0.6 s a week); a week left without them says "
        "so where they would be, and a run of that week alone draws them.",
    )

    @field_validator(
        "reference_date", "earliest_valid_date", "latest_valid_date", "thresholds_from_week"
    )
    @classmethod
    def _iso_date(cls, value: Optional[str], info) -> Optional[str]:
        if value is None:
            return value
        try:
            dt.date.fromisoformat(value)
        except (ValueError, TypeError):
            raise ValueError(
                f"{info.field_name}: {value!r} is not a date in YYYY-MM-DD form"
            ) from None
        return value

    @model_validator(mode="after")
    def _valid_dates_in_order(self):
        earliest, latest = self.valid_dates
        if earliest >= latest:
            raise ValueError(
                f"earliest_valid_date: {earliest} must be before latest_valid_date {latest}"
            )
        if latest >= dt.date(9999, 12, 31):
            # The default reference date is the day after the latest date: it must exist.
            raise ValueError(f"latest_valid_date: {latest} must be before 9999-12-31")
        return self

    @model_validator(mode="after")
    def _duplicates_of_transaction_lines(self):
        if self.drop_duplicate_rows and self.input_level != "transactions":
            raise ValueError(
                "drop_duplicate_rows: applies to transaction lines (input_level: "
                "transactions); customer-level input refuses a repeated customer id"
            )
        return self

    @model_validator(mode="after")
    def _gold_table_is_possible(self):
        if self.output_table is not None:
            from rfm_assets.exports import require_delta

            try:
                require_delta()  # refused with the settings, before anything runs
            except RFMError as error:
                raise ValueError(str(error)) from None
        return self

    @model_validator(mode="after")
    def _sheet_of_a_workbook(self):
        if self.sheet is not None and not is_excel(self.input_path or ""):
            raise ValueError(
                "sheet: applies to an Excel workbook (input_path ending in .xlsx, .xlsm or .xls)"
            )
        return self

    @model_validator(mode="after")
    def _clustering_is_possible(self):
        bounds = list(self.cluster_range)
        if len(bounds) != 2 or not 2 <= bounds[0] <= bounds[1] <= 20:
            raise ValueError(
                f"cluster_range: {bounds} must be [low, high], whole numbers with "
                "2 <= low <= high <= 20"
            )
        if self.cluster_model_path and self.segmentation_method != "kmeans":
            raise ValueError("cluster_model_path: applies to segmentation_method kmeans")
        from rfm_assets.engines.clustering import (
            DATED_FEATURES,
            FEATURES,
            DamagedModel,
            feature_names,
        )

        try:
            feature_names(self.cluster_features)
        except DamagedModel as error:
            raise ValueError(str(error)) from None
        if tuple(self.cluster_features) != FEATURES:
            if not self.clustered:
                raise ValueError("cluster_features: applies to segmentation_method kmeans or auto")
            if self.cluster_model_path:
                raise ValueError(
                    "cluster_features: the stored model in cluster_model_path fixes its "
                    "features; unset cluster_features"
                )
            dated = [n for n in self.cluster_features if n in DATED_FEATURES]
            if dated and self.input_level == "customers":
                raise ValueError(
                    f"cluster_features: {dated[0]} needs purchase dates, which input_level "
                    "customers does not have (it has recency, frequency and monetary)"
                )
        if self.cluster_model_path and self.clusters:
            raise ValueError(
                "clusters: the stored model in cluster_model_path fixes k; unset clusters"
            )
        return self

    @model_validator(mode="after")
    def _lifetime_value_is_possible(self):
        if self.high_value_by == "predicted_clv" and not self.clv:
            raise ValueError("high_value_by: predicted_clv needs clv: true")
        if self.clv and self.input_level != "transactions":
            raise ValueError(
                "clv: the lifetime-value models count purchase days, which need transaction "
                "lines (input_level: transactions)"
            )
        given = {"clv_horizon_days", "clv_discount_rate", "clv_holdout_days"}
        given &= self.model_fields_set
        if given and not self.clv:
            raise ValueError(f"{min(given)}: applies with clv: true")
        if self.clv:
            from rfm_assets.engines.clv import require_models

            try:
                require_models()  # refused with the settings, before anything runs
            except RFMConfigError as error:
                raise ValueError(f"clv: {error}") from None
        return self

    @property
    def clustered(self) -> bool:
        """Segments from clusters (kmeans or auto), not from the rule set's cells."""
        return self.segmentation_method in ("kmeans", "auto")

    @property
    def k_range(self) -> tuple[int, int]:
        """The k tried by kmeans: `clusters` alone when set, else `cluster_range`."""
        return (self.clusters, self.clusters) if self.clusters else tuple(self.cluster_range)

    @model_validator(mode="after")
    def _columns_of_the_input_level(self):
        own, other = (
            (TRANSACTION_FIELDS, CUSTOMER_FIELDS)
            if self.input_level == "transactions"
            else (CUSTOMER_FIELDS, TRANSACTION_FIELDS)
        )
        foreign = [f"columns.{f}" for f in other if getattr(self.columns, f)]
        if foreign:
            raise ValueError(
                f"{', '.join(foreign)}: not used with input_level {self.input_level!r} "
                f"(it maps {', '.join(own)})"
            )
        if self.input_level == "customers":
            if self.exclude_recent_days is not None and not self.columns.first_purchase_date:
                raise ValueError(
                    "exclude_recent_days: customer-level input needs a first purchase date "
                    "for it; map columns.first_purchase_date"
                )
        return self

    @property
    def effective_weights(self) -> Weights:
        """`weights`, with any flat alias (recency_weight, ...) taking the place of its field."""
        flat = {
            "recency": self.recency_weight,
            "frequency": self.frequency_weight,
            "monetary": self.monetary_weight,
        }
        given = {k: v for k, v in flat.items() if v is not None}
        if not given:
            return self.weights
        return Weights(**{**self.weights.model_dump(), **given})

    @model_validator(mode="after")
    def _scoring_is_complete(self):
        try:
            self.effective_weights  # noqa: B018 (validates the flat aliases as weights)
        except ValidationError as error:
            raise ValueError(
                "; ".join(
                    f"{item['loc'][0]}_weight: {item['msg'].removeprefix('Value error, ')}"
                    if item["loc"]
                    else item["msg"].removeprefix("Value error, ")
                    for item in error.errors()
                )
            ) from None
        if self.scoring_method == "fixed" and self.fixed_thresholds is None:
            raise ValueError("fixed_thresholds: required when scoring_method is 'fixed'")
        if self.scoring_method == "fixed" and self.thresholds_from_week:
            raise ValueError(
                "thresholds_from_week: use either it or scoring_method 'fixed', not both"
            )
        if self.scoring_method != "fixed" and self.fixed_thresholds is not None:
            raise ValueError(
                f"fixed_thresholds: only used with scoring_method 'fixed', "
                f"not {self.scoring_method!r}"
            )
        # Loading validates the grid file now, before any asset runs.
        self.rule_set()
        return self

    @property
    def scale(self) -> int:
        """Points on the score scale (k): 5 for quintiles, 4 for quartiles, cut points + 1."""
        if self.scoring_method == "fixed":
            return len(self.fixed_thresholds.recency) + 1
        return SCALE_OF_METHOD[self.scoring_method]

    @property
    def source_path(self) -> str:
        return self.input_path or str(BUNDLED_DATASET)

    @property
    def valid_dates(self) -> tuple[dt.date, dt.date]:
        """(earliest_valid_date, latest_valid_date) as dates."""
        return (
            dt.date.fromisoformat(self.earliest_valid_date),
            dt.date.fromisoformat(self.latest_valid_date),
        )

    @property
    def parsed_reference_date(self) -> Optional[dt.date]:
        return dt.date.fromisoformat(self.reference_date) if self.reference_date else None

    def source_columns(self, bundled: Optional[bool] = None) -> SourceColumns:
        """Resolve the column mapping: explicit names first, then the source's defaults.

        `bundled`: whether the source is the bundled sample (default: no input_path set); a
        table from another asset is not.
        """
        mapped = self.columns
        if self.input_level == "customers":
            return SourceColumns(
                level="customers",
                customer_id=mapped.customer_id or "customer_id",
                recency=None if mapped.last_purchase_date else (mapped.recency or "recency"),
                last_purchase_date=mapped.last_purchase_date,
                first_purchase_date=mapped.first_purchase_date,
                frequency=mapped.frequency or "frequency",
                monetary=mapped.monetary or "monetary",
            )
        if bundled is None:
            bundled = self.input_path is None
        defaults = BUNDLED_COLUMNS if bundled else {}
        by_quantity = bool(mapped.quantity) or (not mapped.amount and "quantity" in defaults)
        return SourceColumns(
            every_column=self.drop_duplicate_rows,
            customer_id=mapped.customer_id or defaults.get("customer_id", "customer_id"),
            transaction_date=mapped.transaction_date
            or defaults.get("transaction_date", "transaction_date"),
            amount=None if by_quantity else (mapped.amount or "amount"),
            quantity=(mapped.quantity or defaults.get("quantity")) if by_quantity else None,
            unit_price=(mapped.unit_price or defaults.get("unit_price")) if by_quantity else None,
            order_id=mapped.order_id or defaults.get("order_id"),
        )

    @property
    def rule_set_source(self) -> str:
        """The rule set in use: a shipped name or a file path."""
        return self.segment_grid_file or self.segment_rules

    def weight_tuple(self) -> tuple[float, float, float]:
        weights = self.effective_weights
        return (weights.recency, weights.frequency, weights.monetary)

    def rule_set(self, scale: Optional[int] = None) -> RuleSet:
        """The rule set compiled for the scale (default: the settings') and the weights."""
        try:
            return load_rule_set(
                self.rule_set_source,
                scale or self.scale,
                self.weight_tuple(),
                dict(self.segment_display_names),
            )
        except RFMConfigError as error:
            if not self.segment_grid_file:
                raise
            # Name the field the user set.
            message = str(error).replace("segment_rules:", "segment_grid_file:", 1)
            raise RFMConfigError(message) from None

    def changed(self, **changes: Any) -> RFMSettings:
        """These settings with `changes`, validated again. (Not `model_copy`: a Dagster
        resource keeps the config it was built with, so a copy would run with the old one.)"""
        given = {name: getattr(self, name) for name in self.model_fields_set}
        return type(self)(**{**given, **changes})

    def run_spec(self) -> RunSpec:
        """What the engines read of these settings, as plain values."""
        return RunSpec(
            source_path=self.source_path,
            input_path=self.input_path,
            input_level=self.input_level,
            columns=self.source_columns(),
            table_columns=self.source_columns(bundled=False),
            reference_date=self.parsed_reference_date,
            analysis_period_days=self.analysis_period_days,
            valid_dates=self.valid_dates,
            returns_policy=self.returns_policy,
            cancelled_order_prefix=self.cancelled_order_prefix,
            min_frequency=self.min_frequency,
            exclude_recent_days=self.exclude_recent_days,
            scale=self.scale,
            weights=self.weight_tuple(),
            fixed_cut_points=self.fixed_cut_points(),
            k_range=self.k_range,
            cluster_sample_size=self.cluster_sample_size,
            cluster_seed=self.cluster_seed,
            cluster_model_path=self.cluster_model_path,
            cluster_features=tuple(self.cluster_features),
            segmentation_method=self.segmentation_method,
            high_value_share=self.high_value_share,
            high_value_by=self.high_value_by,
            sheet=self.sheet,
        )

    def fixed_cut_points(self) -> Optional[dict[str, list[float]]]:
        if self.fixed_thresholds is None:
            return None
        return {
            "recency": list(self.fixed_thresholds.recency),
            "frequency": list(self.fixed_thresholds.frequency),
            "monetary": list(self.fixed_thresholds.monetary),
        }


# --- settings from a mapping (a config file, flags, a component's attributes) ----------------


def _config_model(annotation):
    """The Config class behind a field's annotation (unwrapping Optional), or None."""
    for candidate in (annotation, *getattr(annotation, "__args__", ())):
        if hasattr(candidate, "model_fields"):
            return candidate
    return None


def unknown_keys(model, mapping: dict, prefix: str = "") -> list[str]:
    """Keys of `mapping`, recursively, that `model` has no field for (typos, old names)."""
    unknown = []
    for key, value in mapping.items():
        field = model.model_fields.get(key)
        if field is None:
            unknown.append(f"{prefix}{key}")
            continue
        nested = _config_model(field.annotation)
        if nested is not None and isinstance(value, dict):
            unknown += unknown_keys(nested, value, f"{prefix}{key}.")
    return unknown


def build_settings(settings: dict[str, Any]) -> RFMSettings:
    """RFMSettings from a mapping; a validation error becomes one line naming the field."""
    unknown = unknown_keys(RFMSettings, settings)
    if unknown:
        known = ", ".join(RFMSettings.model_fields)
        raise RFMConfigError(f"unknown settings: {', '.join(unknown)}; known settings: {known}")
    try:
        return RFMSettings(**settings)
    except ValidationError as error:
        raise RFMConfigError(describe_validation_error(error)) from None


def describe_validation_error(error) -> str:
    problems = []
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "literal_error":
            message = f"{message}; got {item['input']!r}"
        problems.append(
            f"{field}: {message}" if field and not message.startswith(field) else message
        )
    return "invalid settings: " + "; ".join(problems)


# --- the settings in YAML: the schema of the RFMSegmentation component's `settings` ----------
#
# Editors and `dg check yaml` validate a defs.yaml against the JSON schema: every known key
# with its description and type, nothing else. Loading checks only the shape (nested keys are
# mappings) and leaves the values, with templates such as "{{ env.RFM_ENGINE }}" filled in,
# and any unknown key, to RFMSettings via build_settings: its messages name the field, as they
# do for the command line and config files, and each field is defined once, in RFMSettings.

# In YAML any value that is not a string may also be a template, filled in on load.
_TEMPLATE = Annotated[str, StringConstraints(pattern=r"\{\{.*\}\}")]


class _InYaml(dg.Model):
    # An unknown key is an error in the schema (additionalProperties: false) and is named, with
    # the known ones, by build_settings on load.
    model_config = ConfigDict(extra="allow")


def _value_schema(field: FieldInfo) -> Callable[[dict[str, Any]], None]:
    """The JSON schema of one setting: its type with its bounds (or a template)."""
    shown = Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation
    if field.annotation not in (str, Optional[str]):
        shown = Union[shown, _TEMPLATE]

    def update(schema: dict[str, Any]) -> None:
        schema.update(TypeAdapter(shown).json_schema())
        if field.is_required():
            schema.pop("default", None)

    return update


@functools.cache
def yaml_model(config: type[BaseModel]) -> type[dg.Model]:
    """A settings class (RFMSettings, ColumnMapping, ...) as the model of its YAML: its fields
    by name, with their descriptions and defaults, derived from it so the two cannot drift; a
    nested settings class becomes a nested model."""
    fields: dict[str, Any] = {}
    for name, field in config.model_fields.items():
        nested = _config_model(field.annotation)
        if nested is None:
            # Loading takes any value: RFMSettings validates it once templates are filled in.
            annotation, info = Any, {"json_schema_extra": _value_schema(field)}
        else:
            annotation, info = yaml_model(nested), {}
            if field.annotation is not nested:  # Optional[...]
                annotation = Optional[annotation]
        if nested is not None and field.default_factory is nested:
            info["default_factory"] = yaml_model(nested)
        elif field.default_factory is not None:
            info["default"] = field.default_factory()  # so that the schema shows it
        else:
            # A required field is unset until given (the schema says it is required).
            info["default"] = None if field.is_required() else field.default
        fields[name] = (annotation, Field(description=field.description, **info))
    model = create_model(
        config.__name__, __base__=_InYaml, __doc__=config.__doc__, __module__=__name__, **fields
    )
    required = [name for name, field in config.model_fields.items() if field.is_required()]
    model.model_config["json_schema_extra"] = {
        "additionalProperties": False,
        **({"required": required} if required else {}),
    }
    return model


# The `settings` attribute of the RFMSegmentation component.
RFMSettingsModel = yaml_model(RFMSettings)
