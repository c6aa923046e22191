"""Customer lifetime value (rfm_assets.clv): the summary against a loop, the predictions
against the models' closed forms, the holdout check against what CDNOW's customers did."""

import datetime as dt
import json

import numpy as np
import pandas as pd
import pytest
from scipy.special import hyp2f1

from rfm_assets.cli import main
from rfm_assets.engines import clv
from rfm_assets.engines.dispatch import PandasEngine
from rfm_assets.errors import RFMConfigError, RFMInputError
from rfm_assets.settings import RFMSettings
from rfm_assets_tests.conftest import CDNOW


def kept_rows(settings: RFMSettings) -> tuple[pd.DataFrame, object]:
    """The kept transactions and their account, as the transactions step makes them."""
    spec, engine = settings.run_spec(), PandasEngine()
    raw, listing = engine.read(spec)
    return engine.prepare(raw, spec, listing)


def summary_by_loop(rows: list[tuple], end: dt.date) -> dict:
    """{customer: (frequency, recency, T, monetary_value)} the slow way: a dict of days."""
    spend_by_day: dict = {}
    for customer, when, amount, is_return in rows:
        if is_return or when.date() >= end:
            continue
        days = spend_by_day.setdefault(customer, {})
        days[when.date()] = days.get(when.date(), 0.0) + amount
    out = {}
    for customer, days in spend_by_day.items():
        ordered = sorted(days)
        repeat = [days[d] for d in ordered[1:]]
        out[customer] = (
            len(repeat),
            (ordered[-1] - ordered[0]).days,
            (end - ordered[0]).days,
            sum(repeat) / len(repeat) if repeat else 0.0,
        )
    return out


def test_the_summary_counts_purchase_days_as_a_loop_does():
    rng = np.random.default_rng(5)
    start = dt.datetime(2024, 1, 1)
    rows = [
        (
            f"c{rng.integers(40)}",
            start + dt.timedelta(days=int(rng.integers(120)), hours=int(rng.integers(24))),
            float(rng.integers(1, 500)) / 4,
            bool(rng.random() < 0.1),  # returns are never purchases
        )
        for _ in range(600)
    ]
    frame = pd.DataFrame(rows, columns=["customer_id", "transaction_date", "amount", "is_return"])
    end = dt.date(2024, 4, 1)  # rows on or after it are left out
    summary = clv.purchase_summary(frame, end)
    expected = summary_by_loop(rows, end)
    assert set(summary["customer_id"]) == set(expected)
    for row in summary.itertuples(index=False):
        frequency, recency, age, monetary = expected[row.customer_id]
        assert (row.frequency, row.recency, row.T) == (frequency, recency, age), row
        assert row.monetary_value == pytest.approx(monetary, rel=1e-12)
    # Several lines of one day are one purchase day: some customer has more lines than days.
    assert (summary["frequency"] + 1).sum() < (~frame["is_return"]).sum()


@pytest.fixture(scope="module")
def cdnow():
    settings = RFMSettings(
        input_path=str(CDNOW),
        columns={"transaction_date": "date", "amount": "dollar_value"},
        reference_date="1998-07-01",  # the day after the last purchase
    )
    return kept_rows(settings)


def test_cdnow_holdout_from_the_command_line_is_close_to_what_followed(tmp_path, capsys):
    """Calibrated up to 1997-10-01, 273 days of holdout (Fader, Hardie & Lee 2005): the
    predicted purchase days total within 20% of the actual ones, rank customers with
    Spearman >= 0.40, and the parameters are near the published ones (r 0.243, alpha 4.414
    weeks, a 0.793, b 2.426, fitted on a 1/10 sample; here on every customer)."""
    code = main(["validate-clv", "--input", str(CDNOW), "--transaction-date", "date",
                 "--amount", "dollar_value", "--holdout-days", "273",
                 "--output", str(tmp_path)])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    document = json.loads((tmp_path / "clv_validation.json").read_text())
    assert document["cutoff"] == "1997-10-01" and document["end"] == "1998-07-01"
    # Every customer of the cohort bought in the first quarter of 1997, so all 23,570 are
    # calibrated but those whose only purchase lines are worth $0 (excluded as non-positive).
    assert 23_400 < document["customers"] <= 23_570
    ratio = document["predicted_purchase_days"] / document["actual_purchase_days"]
    assert 0.8 <= ratio <= 1.2, ratio
    assert document["spearman"] >= 0.40
    p = document["parameters"]
    published = {"r": 0.243, "alpha": 4.414 * 7, "a": 0.793, "b": 2.426}
    for name, value in published.items():
        assert p[name] == pytest.approx(value, rel=0.15), (name, p[name])
    # The actual purchase days, counted here from the rows: days after the cutoff with a
    # purchase, per calibrated customer.
    frame = pd.read_parquet(CDNOW)
    frame = frame[frame["dollar_value"] > 0]
    days = pd.to_datetime(frame["date"])
    calibrated = set(frame.loc[days < "1997-10-01", "customer_id"])
    after = frame[(days >= "1997-10-01") & frame["customer_id"].isin(calibrated)]
    assert document["actual_purchase_days"] == len(after.drop_duplicates(["customer_id", "date"]))
    # The classic chart: mean predicted against actual by repeat days in calibration, 0..7+.
    chart = pd.DataFrame(document["by_calibration_purchases"])
    assert list(chart["calibration_purchases"]) == list(range(8))
    assert chart["customers"].sum() == document["customers"]
    assert chart["actual"].is_monotonic_increasing and chart["predicted"].is_monotonic_increasing
    assert "ratio 0.8" in printed and "7+" in printed
    # The same table drawn: a PNG beside the document.
    assert (tmp_path / "clv_validation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def bgnbd_expected(p: dict, x, tx, T, t):
    """E[purchases in (T, T + t]] of BG/NBD (Fader, Hardie & Lee 2005, eq. 10)."""
    r, alpha, a, b = p["r"], p["alpha"], p["a"], p["b"]
    term = hyp2f1(r + x, b + x, a + b + x - 1, t / (alpha + T + t))
    head = (a + b + x - 1) / (a - 1) * (1 - ((alpha + T) / (alpha + T + t)) ** (r + x) * term)
    return head / (1 + (x > 0) * a / (b + x - 1) * ((alpha + T) / (alpha + tx)) ** (r + x))


def bgnbd_alive(p: dict, x, tx, T):
    r, alpha, a, b = p["r"], p["alpha"], p["a"], p["b"]
    return 1 / (1 + (x > 0) * a / (b + x - 1) * ((alpha + T) / (alpha + tx)) ** (r + x))


def test_predictions_follow_the_models_closed_forms(cdnow):
    kept, account = cdnow
    summary = clv.purchase_summary(kept, account.reference_date)
    fitted = clv.fit(summary)
    p = fitted.parameters
    horizon = 365
    predicted = clv.predict(fitted, summary, horizon)
    assert list(predicted.columns) == clv.CLV_COLUMNS
    assert list(predicted["customer_id"]) == list(summary["customer_id"])
    x, tx, T = (summary[c].to_numpy(dtype=float) for c in ("frequency", "recency", "T"))
    np.testing.assert_allclose(predicted["expected_purchases"],
                               bgnbd_expected(p, x, tx, T, horizon), rtol=1e-6)  # fmt: skip
    np.testing.assert_allclose(predicted["probability_alive"], bgnbd_alive(p, x, tx, T),
                               rtol=1e-6)  # fmt: skip
    # Gamma-Gamma's expected spend: (p (v + x m)) / (p x + q - 1) (Fader, Hardie & Lee 2005b).
    m = summary["monetary_value"].to_numpy()
    spend = p["p"] * (p["v"] + x * m) / (p["p"] * x + p["q"] - 1)
    np.testing.assert_allclose(predicted["expected_average_value"], spend, rtol=1e-6)
    np.testing.assert_allclose(predicted["predicted_clv"],
                               spend * bgnbd_expected(p, x, tx, T, horizon), rtol=1e-6)  # fmt: skip
    # Discounting by 30-day periods at 10% a year: each period's purchases at its end.
    discounted = clv.predict(fitted, summary, horizon, annual_discount_rate=0.10)
    ends = [*range(30, horizon, 30), horizon]
    by_loop, before = np.zeros(len(summary)), np.zeros(len(summary))
    for end in ends:
        upto = bgnbd_expected(p, x, tx, T, end)
        by_loop += spend * (upto - before) / 1.10 ** (end / 365)
        before = upto
    np.testing.assert_allclose(discounted["predicted_clv"], by_loop, rtol=1e-6)
    assert (discounted["predicted_clv"] < predicted["predicted_clv"]).all()
    np.testing.assert_allclose(discounted["expected_purchases"], predicted["expected_purchases"])
    # Spend is fitted on repeat customers of positive repeat spend only.
    assert fitted.diagnostics["spend_customers"] == int(((x > 0) & (m > 0)).sum())


def test_too_little_to_fit_and_a_zero_horizon_are_one_line_each(cdnow):
    kept, account = cdnow
    summary = clv.purchase_summary(kept, account.reference_date)
    few = pd.concat([summary[summary["frequency"] == 0].head(50),
                     summary[summary["frequency"] > 0].head(5)])  # fmt: skip
    with pytest.raises(RFMInputError, match=r"^clv: 5 of 55 customers bought on more than one"):
        clv.fit(few)
    with pytest.raises(RFMConfigError, match=r"^clv_horizon_days: must be at least 1, got 0$"):
        clv.predict(clv.FittedCLV(None, object(), {}, {}), summary, 0)
    with pytest.raises(RFMConfigError, match="^holdout_days: must be at least 1"):
        clv.validate(kept, account.reference_date, 0)
    # After the last purchase nothing follows; before the first nothing is calibrated.
    with pytest.raises(RFMInputError, match=r"^clv: no purchase before the holdout starts"):
        clv.validate(kept, account.reference_date, 600)


def test_the_command_line_refuses_a_zero_holdout_and_a_missing_extra(capsys, monkeypatch):
    assert main(["validate-clv", "--holdout-days", "0"]) == 1
    assert capsys.readouterr().err == (
        "rfm-assets: error: --holdout-days: must be at least 1, got 0\n"
    )
    import builtins

    real_import = builtins.__import__

    def without_pymc_marketing(name, *args, **kwargs):
        if name.startswith("pymc_marketing"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_pymc_marketing)
    assert main(["validate-clv", "--holdout-days", "30"]) == 1
    assert capsys.readouterr().err == f"rfm-assets: error: {clv.INSTALL_HINT}\n"
