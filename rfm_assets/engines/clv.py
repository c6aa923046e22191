"""Customer lifetime value: who is still alive, how often they will buy, what they will spend.

The standard models of the field, fitted by pymc-marketing (the `clv` extra) with a MAP fit:
BG/NBD for the purchases (`BetaGeoModel`) and Gamma-Gamma for the spend of a purchase
(`GammaGammaModel`). This module prepares what they fit on, fits, predicts over a horizon,
and checks the purchase model against what followed a calibration period (`validate`).

Purchases count as in the models' literature, by day: a customer's purchase days are the
days with at least one kept purchase line (returns are never purchases), and

- `frequency`: repeat purchase days (all but the first);
- `recency`: days from the first purchase day to the last;
- `T`: days from the first purchase day to the end of the observation period;
- `monetary_value`: the mean spend of the repeat purchase days (0 without one), what
  Gamma-Gamma fits on.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Optional

import numpy as np
import pandas as pd

from rfm_assets.contract import MICRO_UNITS, SEGMENT_VALUE_COLUMNS
from rfm_assets.engines.pandas_compute import to_day_numbers, to_micro_units
from rfm_assets.engines.shared import day_number
from rfm_assets.errors import RFMConfigError, RFMInputError

# Below this many customers with a repeat purchase day the purchase model has nothing to
# learn the repeat rate from; below it for positive repeat spend, nor has the spend model.
MIN_REPEAT_CUSTOMERS = 20
SUMMARY_COLUMNS = ["customer_id", "frequency", "recency", "T", "monetary_value"]
# What each model reads of the summary.
PURCHASE_INPUTS = ["customer_id", "frequency", "recency", "T"]
SPEND_INPUTS = ["customer_id", "frequency", "monetary_value"]
CLV_COLUMNS = ["customer_id", "probability_alive", "expected_purchases",
               "expected_average_value", "predicted_clv"]  # fmt: skip
# Discounting runs over periods of this many days (the last one may be shorter).
DISCOUNT_PERIOD_DAYS = 30
INSTALL_HINT = 'customer lifetime value needs pymc-marketing: pip install "rfm_assets[clv]"'


def purchase_days(transactions: pd.DataFrame, end: dt.date) -> pd.DataFrame:
    """(customer_id, day, micro): one row per customer and purchase day before `end`, with
    the day's spend in exact micro-units, from kept transactions (`customer_id,
    transaction_date, amount, is_return`). Sorted by customer and day."""
    purchases = ~transactions["is_return"].to_numpy(dtype=bool)
    days = to_day_numbers(transactions["transaction_date"])
    chosen = purchases & (days < day_number(end))
    lines = pd.DataFrame(
        {
            "customer_id": transactions["customer_id"].array[chosen],
            "day": days[chosen],
            "micro": to_micro_units(transactions["amount"].to_numpy(dtype=np.float64)[chosen]),
        }
    )
    by_day = lines.groupby(["customer_id", "day"], sort=True, observed=True)["micro"].sum()
    return by_day.reset_index()


def purchase_summary(transactions: pd.DataFrame, end: dt.date) -> pd.DataFrame:
    """One row per customer with a purchase day before `end`: `SUMMARY_COLUMNS`, by id.
    Spend is added in micro-units, so both engines give the same `monetary_value` to the bit
    (spark_compute.purchase_summary)."""
    return summary_of(purchase_days(transactions, end), end)


def summary_of(days: pd.DataFrame, end: dt.date) -> pd.DataFrame:
    """`purchase_summary` of the purchase days (`purchase_days`), all before `end`."""
    per_customer = days.groupby("customer_id", sort=True, observed=True)
    first = per_customer["day"].min()
    repeats = (per_customer["day"].size() - 1).to_numpy()
    # The first purchase day's spend is the first row of each customer (days are sorted).
    repeat_micro = per_customer["micro"].sum().to_numpy() - per_customer["micro"].first().to_numpy()
    monetary = np.where(
        repeats > 0, repeat_micro.astype(np.float64) / MICRO_UNITS / np.maximum(repeats, 1), 0.0
    )
    return pd.DataFrame(
        {
            "customer_id": first.index.to_numpy(),
            "frequency": repeats.astype(np.int64),
            "recency": (per_customer["day"].max() - first).to_numpy().astype(np.int64),
            "T": (day_number(end) - first).to_numpy().astype(np.int64),
            "monetary_value": monetary,
        }
    )


@dataclasses.dataclass
class FittedCLV:
    """The fitted models and what a reader of the result needs to know about them."""

    purchases: object  # pymc_marketing.clv.BetaGeoModel
    spend: Optional[object]  # pymc_marketing.clv.GammaGammaModel, None when not fitted
    parameters: dict[str, float]
    diagnostics: dict[str, int | float]


def require_models() -> None:
    """Refuse in one line when pymc-marketing (the `clv` extra) is not installed, without
    importing it (PyMC takes seconds to import)."""
    import importlib.util

    if importlib.util.find_spec("pymc_marketing") is None:
        raise RFMConfigError(INSTALL_HINT)


def _models():
    try:
        from pymc_marketing.clv import BetaGeoModel, GammaGammaModel
    except ImportError:
        raise RFMConfigError(INSTALL_HINT) from None
    return BetaGeoModel, GammaGammaModel


def _map_values(model, names: tuple[str, ...], what: str) -> dict[str, float]:
    """The MAP point of a fitted model; a fit that ended off the parameter space (not finite,
    not positive) is refused in one line."""
    posterior = model.idata.posterior
    values = {name: float(posterior[name].values.ravel()[0]) for name in names}
    bad = {k: v for k, v in values.items() if not (np.isfinite(v) and v > 0)}
    if bad:
        raise RFMInputError(f"clv: the {what} model did not converge ({bad})")
    return values


def fit(summary: pd.DataFrame, spend: bool = True) -> FittedCLV:
    """BG/NBD on every customer of `summary`, and (with `spend`) Gamma-Gamma on those with
    a repeat purchase day of positive mean spend. Too few repeat customers is one line."""
    BetaGeoModel, GammaGammaModel = _models()
    repeaters = int((summary["frequency"] > 0).sum())
    _enough(repeaters, f"{repeaters} of {len(summary)} customers bought on more than one day",
            "purchase")  # fmt: skip
    purchases = BetaGeoModel()
    data = summary[PURCHASE_INPUTS]
    _quietly(lambda: purchases.fit(data, method="map", progressbar=False))
    parameters = _map_values(purchases, ("r", "alpha", "a", "b"), "purchase (BG/NBD)")
    diagnostics = {"customers": len(summary), "repeat_customers": repeaters}
    spend_model = None
    if spend:
        spenders = summary[(summary["frequency"] > 0) & (summary["monetary_value"] > 0)]
        _enough(len(spenders),
                f"{len(spenders)} customers have a repeat purchase day of positive spend",
                "spend")  # fmt: skip
        spend_model = GammaGammaModel()
        spend_data = spenders[SPEND_INPUTS]
        _quietly(lambda: spend_model.fit(spend_data, method="map", progressbar=False))
        parameters.update(_map_values(spend_model, ("p", "q", "v"), "spend (Gamma-Gamma)"))
        diagnostics["spend_customers"] = len(spenders)
    return FittedCLV(purchases, spend_model, parameters, diagnostics)


def _enough(count: int, found: str, model: str) -> None:
    """Refuse, in one line saying what was `found`, a fit of `model` with fewer than
    MIN_REPEAT_CUSTOMERS customers to learn from."""
    if count < MIN_REPEAT_CUSTOMERS:
        raise RFMInputError(
            f"clv: {found}; the {model} model needs at least {MIN_REPEAT_CUSTOMERS}"
        )


def _quietly(work):
    """Run a fit without PyTensor's and PyMC's notices (BLAS, sampler), which are not the
    user's to act on."""
    import logging
    import warnings

    loggers = [logging.getLogger(name) for name in ("pymc", "pytensor", "pymc_marketing")]
    levels = [logger.level for logger in loggers]
    try:
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return work()
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _point(values) -> np.ndarray:
    """A model's prediction as one value per customer (the MAP fit has one chain, one draw)."""
    return np.asarray(values.mean(("chain", "draw")).values, dtype=np.float64)


def expected_purchases(fitted: FittedCLV, summary: pd.DataFrame, days: float) -> np.ndarray:
    """Expected purchase days of each customer of `summary` over the next `days`."""
    data = summary[PURCHASE_INPUTS]
    return _quietly(lambda: _point(fitted.purchases.expected_purchases(data, future_t=days)))


def predict(fitted: FittedCLV, summary: pd.DataFrame, horizon_days: int,
            annual_discount_rate: float = 0.0) -> pd.DataFrame:  # fmt: skip
    """`CLV_COLUMNS` for every customer of `summary`, in its order.

    predicted_clv = expected_average_value x the expected purchases of each period of
    `DISCOUNT_PERIOD_DAYS` up to the horizon, each discounted at `annual_discount_rate` to
    the period's end: (1 + rate) ** -(end_day / 365). Without a discount rate this is the
    expected average value times the expected purchases over the horizon.
    """
    if horizon_days <= 0:
        raise RFMConfigError(f"clv_horizon_days: must be at least 1, got {horizon_days}")
    if fitted.spend is None:
        raise RFMConfigError("clv: predict needs the spend model (fit with spend=True)")
    data = summary[PURCHASE_INPUTS]
    alive = _quietly(lambda: _point(fitted.purchases.expected_probability_alive(data)))
    spend_data = summary[SPEND_INPUTS]
    # Gamma-Gamma's expected spend of a customer's next purchase: their own mean shrunk
    # toward the population's, or the population's for a customer without a repeat day.
    average = _quietly(lambda: _point(fitted.spend.expected_customer_spend(spend_data)))
    ends = [horizon_days]
    if annual_discount_rate:
        ends = [*range(DISCOUNT_PERIOD_DAYS, horizon_days, DISCOUNT_PERIOD_DAYS), horizon_days]
    value, before = np.zeros(len(summary)), np.zeros(len(summary))
    for end in ends:
        upto = expected_purchases(fitted, summary, end)
        value += average * (upto - before) / (1.0 + annual_discount_rate) ** (end / 365.0)
        before = upto
    return pd.DataFrame(
        {
            "customer_id": summary["customer_id"].to_numpy(),
            "probability_alive": alive,
            "expected_purchases": before,
            "expected_average_value": average,
            "predicted_clv": value,
        }
    )


@dataclasses.dataclass
class Validation:
    """How the purchase model fitted before a cutoff predicted the days after it."""

    cutoff: dt.date
    end: dt.date
    customers: int
    predicted_total: float
    actual_total: int
    spearman: float
    parameters: dict[str, float]
    by_calibration_purchases: pd.DataFrame  # the classic chart's table

    @property
    def ratio(self) -> float:
        return self.predicted_total / self.actual_total if self.actual_total else float("nan")


# The classic chart groups customers by repeat purchase days in calibration, 0..6 and 7+.
CHART_GROUPS = 7


def chart_label(group: int) -> str:
    """How a group of the chart is named: its repeat purchase days, the last one with a +."""
    return f"{group}+" if group == CHART_GROUPS else str(group)


def holdout_summary(transactions: pd.DataFrame, end: dt.date, holdout_days: int) -> pd.DataFrame:
    """The calibration summary (`SUMMARY_COLUMNS` of the purchase days before `end -
    holdout_days`) of every customer who bought before it, with `holdout_purchases`: their
    purchase days from then up to `end`. One pass over the rows."""
    return holdout_of(purchase_days(transactions, end), end, holdout_days)


def holdout_of(days: pd.DataFrame, end: dt.date, holdout_days: int) -> pd.DataFrame:
    """`holdout_summary` of the purchase days (`purchase_days`), all before `end`."""
    cutoff = holdout_cutoff(end, holdout_days)
    in_holdout = days["day"].to_numpy() >= day_number(cutoff)
    calibration = summary_of(days[~in_holdout], cutoff)
    after = days[in_holdout].groupby("customer_id", observed=True)["day"].size()
    calibration["holdout_purchases"] = (
        after.reindex(calibration["customer_id"], fill_value=0).to_numpy().astype(np.int64)
    )
    return calibration


def holdout_cutoff(end: dt.date, holdout_days: int) -> dt.date:
    if holdout_days <= 0:
        raise RFMConfigError(f"holdout_days: must be at least 1, got {holdout_days}")
    return end - dt.timedelta(days=holdout_days)


def validate(transactions: pd.DataFrame, end: dt.date, holdout_days: int) -> Validation:
    """`validate_summary` of the kept rows (pandas)."""
    return validate_summary(holdout_summary(transactions, end, holdout_days), end, holdout_days)


def validate_summary(calibration: pd.DataFrame, end: dt.date, holdout_days: int) -> Validation:
    """Fit the purchase model on the calibration summary (`holdout_summary`), predict each
    customer's purchase days in the holdout (up to `end`), and compare with what they did:
    totals, Spearman rank correlation, and mean predicted against mean actual by number of
    repeat purchase days in calibration."""
    cutoff = holdout_cutoff(end, holdout_days)
    if calibration.empty:
        raise RFMInputError(f"clv: no purchase before the holdout starts ({cutoff})")
    fitted = fit(calibration, spend=False)
    predicted = expected_purchases(fitted, calibration, holdout_days)
    actual = calibration["holdout_purchases"].to_numpy()
    from scipy.stats import spearmanr

    group = np.minimum(calibration["frequency"].to_numpy(), CHART_GROUPS)
    chart = (
        pd.DataFrame({"calibration_purchases": group, "predicted": predicted, "actual": actual})
        .groupby("calibration_purchases")
        .agg(customers=("actual", "size"), predicted=("predicted", "mean"),
             actual=("actual", "mean"))
        .reset_index()
    )  # fmt: skip
    return Validation(
        cutoff=cutoff,
        end=end,
        customers=len(calibration),
        predicted_total=float(predicted.sum()),
        actual_total=int(actual.sum()),
        spearman=float(spearmanr(predicted, actual).statistic),
        parameters=fitted.parameters,
        by_calibration_purchases=chart,
    )


# --- the customer_lifetime_value table ------------------------------------------------------


def lifetime_table(inputs: pd.DataFrame, fitted: Optional[FittedCLV], horizon_days: int,
                   annual_discount_rate: float = 0.0) -> pd.DataFrame:  # fmt: skip
    """The columns of customer_lifetime_value (contract.COLUMNS_OF) for every customer of
    `inputs` (customer_id, segment and the summary, which is null for a customer without a
    purchase day): their predictions, or null ones where there is no purchase day to
    predict from, or no fit (`fitted` None)."""
    table = inputs[["customer_id", "segment"]].reset_index(drop=True)
    for column in CLV_COLUMNS[1:]:
        table[column] = np.nan
    bought = inputs["frequency"].notna().to_numpy()
    if fitted is not None and bought.any():
        summary = inputs.loc[bought, SUMMARY_COLUMNS].astype(
            {"frequency": np.int64, "recency": np.int64, "T": np.int64}
        )
        predicted = predict(fitted, summary, horizon_days, annual_discount_rate)
        for column in CLV_COLUMNS[1:]:
            table.loc[bought, column] = predicted[column].to_numpy()
    return table


def value_by_segment(table: pd.DataFrame) -> dict[str, dict[str, float]]:
    """{segment: SEGMENT_VALUE_COLUMNS}: total and mean predicted value and mean probability
    alive of the segment's customers with a prediction; {} when nothing was predicted."""
    predicted = table[table["predicted_clv"].notna()]
    grouped = predicted.groupby(predicted["segment"].astype(str), observed=True)
    return {
        str(segment): {
            "predicted_clv": float(group["predicted_clv"].sum()),
            "avg_predicted_clv": float(group["predicted_clv"].mean()),
            "avg_probability_alive": float(group["probability_alive"].mean()),
        }
        for segment, group in grouped
    }


def segment_value_table(by_segment: dict, priority: dict[str, int]) -> pd.DataFrame:
    """`value_by_segment` as a table in priority order (`segment, priority` and
    SEGMENT_VALUE_COLUMNS); a segment without a priority comes last. What is not a mapping
    of values (a hand-edited run summary) is a row of missing values."""
    last = len(priority) + 1
    rows = [
        {"segment": name, "priority": priority.get(name, last),
         **(values if isinstance(values, dict) else {})}
        for name, values in by_segment.items()
    ]  # fmt: skip
    frame = pd.DataFrame(rows, columns=["segment", "priority", *SEGMENT_VALUE_COLUMNS])
    return frame.sort_values(["priority", "segment"], ignore_index=True)
