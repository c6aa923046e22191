"""Settings: every bad value fails before any asset computes, naming the field; presets work."""

from pathlib import Path

import dagster as dg
import numpy as np
import pytest
import yaml
from pydantic import ValidationError

from rfm_assets import defs
from rfm_assets.errors import RFMConfigError
from rfm_assets.packaged import BUNDLED_DATASET, preset_names, preset_path
from rfm_assets.settings import RFMSettings, build_settings

REPO_TESTS = Path(__file__).parent
PRESETS = [
    "b2b",
    "balanced_ecommerce",
    "clusters",
    "large_run_spark",
    "repeat_purchase",
    "subscription",
]


@pytest.mark.parametrize(
    "settings, field",
    [
        ({"weights": {"recency": -1}}, "weights.recency"),
        ({"weights": {"frequency": float("inf")}}, "weights.frequency"),
        ({"weights": {"recency": float("nan")}}, "weights.recency"),
        ({"weights": {"recency": 0, "frequency": 0, "monetary": 0}}, "weights"),
        ({"weights": {"recency": 1, "frequency": 0, "monetary": 0}}, "weights"),
        ({"weights": {"frequency": 1e308, "monetary": 1e308}}, "weights.frequency: must be 0 or"),
        ({"weights": {"monetary": 1e-320}}, "weights.monetary: must be 0 or between 1e-06"),
        ({"earliest_valid_date": "3000-01-01"}, "earliest_valid_date: 3000-01-01 must be before"),
        ({"latest_valid_date": "9999-12-31"}, "latest_valid_date: 9999-12-31 must be before"),
        ({"latest_valid_date": "31/12/2999"}, "latest_valid_date: '31/12/2999' is not a date"),
        ({"scoring_method": "deciles"}, "scoring_method"),
        ({"analysis_period_days": 0}, "analysis_period_days"),
        ({"analysis_period_days": -30}, "analysis_period_days"),
        ({"reference_date": "2024-13-01"}, "reference_date"),
        ({"scoring_method": "fixed"}, "fixed_thresholds"),
        (
            {
                "scoring_method": "fixed",
                "fixed_thresholds": {
                    "recency": [10, 30, 20, 90],
                    "frequency": [1, 2, 3, 4],
                    "monetary": [1, 2, 3, 4],
                },
            },
            "fixed_thresholds.recency",
        ),
        (
            {
                "scoring_method": "fixed",
                "fixed_thresholds": {"recency": [1, 2], "frequency": [1, 2], "monetary": [1, 2]},
            },
            "fixed_thresholds",
        ),
        ({"returns_policy": "ignore"}, "returns_policy"),
        ({"columns": {"amount": "a", "quantity": "q", "unit_price": "p"}}, "columns"),
        ({"columns": {"quantity": "q"}}, "columns"),
        ({"segment_grid_file": "/no/such/grid.yaml"}, "segment_grid_file"),
    ],
)
def test_bad_settings_fail_with_a_message_naming_the_field(settings, field):
    with pytest.raises(RFMConfigError) as error:
        build_settings(settings)
    message = str(error.value)
    assert field in message
    assert "\n" not in message


def test_fixed_scale_follows_the_number_of_cut_points():
    four = [1.0, 2.0, 3.0]
    settings = RFMSettings(
        scoring_method="fixed",
        fixed_thresholds={"recency": four, "frequency": four, "monetary": four},
    )
    assert settings.scale == 4
    assert RFMSettings(scoring_method="quartiles").scale == 4
    assert RFMSettings().scale == 5


def test_column_mapping_defaults():
    bundled = RFMSettings().source_columns()
    assert (bundled.customer_id, bundled.quantity, bundled.unit_price, bundled.order_id) == (
        "CustomerID",
        "Quantity",
        "UnitPrice",
        "InvoiceNo",
    )
    assert bundled.amount is None
    user = RFMSettings(input_path="x.parquet").source_columns()
    assert (user.customer_id, user.transaction_date, user.amount, user.order_id) == (
        "customer_id",
        "transaction_date",
        "amount",
        None,
    )
    by_quantity = RFMSettings(
        input_path="x.csv", columns={"quantity": "qty", "unit_price": "price"}
    ).source_columns()
    assert (by_quantity.amount, by_quantity.quantity, by_quantity.unit_price) == (
        None,
        "qty",
        "price",
    )
    assert RFMSettings().source_path == str(BUNDLED_DATASET)


def test_every_setting_has_a_description_for_the_launchpad():
    for name, info in RFMSettings.model_fields.items():
        assert info.description, name


def test_presets_are_shipped_and_valid():
    assert preset_names() == PRESETS
    for name in PRESETS:
        config = yaml.safe_load(preset_path(name).read_text())["resources"]["rfm_settings"][
            "config"
        ]
        RFMSettings(**config)


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_is_valid_run_config_for_the_job(name):
    run_config = yaml.safe_load(preset_path(name).read_text())
    job = defs.resolve_job_def("rfm_job")
    assert dg.validate_run_config(job, run_config)


def test_spark_preset_selects_spark_and_the_cli_uses_its_spark_config():
    from rfm_assets.cli import parser, spark_resource

    config = yaml.safe_load(preset_path("large_run_spark").read_text())["resources"]
    assert config["rfm_settings"]["config"]["engine"] == "spark"
    args = parser().parse_args(
        ["analyze", "--output", "o", "--config", "large_run_spark", "--spark-conf", "a.b=c"]
    )
    spark_config = spark_resource(args).spark_config
    assert spark_config["spark.driver.memory"] == "4g"  # from the preset
    assert spark_config["a.b"] == "c"  # the flag on top
    # In Dagster the preset's spark_config replaces the defaults whole: it must carry every
    # default that the numbers depend on (zones, calendars, timestamp type).
    from rfm_assets.definitions import DEFAULT_SPARK_CONFIG

    from_preset = config["spark"]["config"]["spark_config"]
    for key in ("spark.sql.session.timeZone", "spark.sql.parquet.outputTimestampType",
                "spark.sql.parquet.datetimeRebaseModeInRead",
                "spark.sql.parquet.int96RebaseModeInRead"):  # fmt: skip
        assert from_preset[key] == DEFAULT_SPARK_CONFIG[key], key


def test_presets_express_their_emphasis():
    def weights(name):
        config = yaml.safe_load(preset_path(name).read_text())
        return config["resources"]["rfm_settings"]["config"]["weights"]

    assert max(weights("subscription"), key=weights("subscription").get) == "recency"
    assert max(weights("b2b"), key=weights("b2b").get) == "monetary"
    assert max(weights("repeat_purchase"), key=weights("repeat_purchase").get) == "frequency"
    assert len(set(weights("balanced_ecommerce").values())) == 1


def test_preset_runs_unchanged_as_dagster_run_config():
    run_config = yaml.safe_load(preset_path("b2b").read_text())
    result = defs.resolve_job_def("rfm_job").execute_in_process(
        run_config=run_config, instance=dg.DagsterInstance.ephemeral(), partition_key="2011-11-28"
    )
    assert result.success
    scores = result.asset_materializations_for_node("rfm_scores")[0].metadata
    assert scores["scoring_method"].value == "quartiles"
    assert len(scores["thresholds"].value["recency"]) == 3
    # Net policy: weekly, the window's rows are judged by rfm_metrics (a week cannot).
    metrics = result.asset_materializations_for_node("rfm_metrics")[0].metadata
    assert metrics["window_rows_excluded"].value["customer_monetary_not_positive"] > 0


def test_bad_run_config_fails_before_any_asset_runs():
    run_config = {"resources": {"rfm_settings": {"config": {"weights": {"recency": -1}}}}}
    instance = dg.DagsterInstance.ephemeral()
    result = defs.resolve_job_def("rfm_job").execute_in_process(
        run_config=run_config, instance=instance, raise_on_error=False, partition_key="2011-11-28"
    )
    assert not result.success
    assert result.get_asset_materialization_events() == []
    assert not any(e.is_step_start for e in result.all_events)
    # Resources are set up once for the run, before the first step: that is where it stops.
    failures = [
        record.dagster_event
        for record in instance.all_logs(result.run_id)
        if record.dagster_event and record.dagster_event.event_type_value == "RESOURCE_INIT_FAILURE"
    ]
    assert failures and "weights.recency" in str(failures[0].event_specific_data)


def test_unknown_literal_is_rejected_before_launch():
    run_config = {"resources": {"rfm_settings": {"config": {"scoring_method": "deciles"}}}}
    with pytest.raises(dg.DagsterInvalidConfigError, match="scoring_method"):
        defs.resolve_job_def("rfm_job").execute_in_process(run_config=run_config)


def test_pydantic_error_names_the_nested_field():
    with pytest.raises(ValidationError, match="weights.recency"):
        RFMSettings(weights={"recency": -2})


@pytest.mark.parametrize(
    "weights", [(1, 1e6, 1e6), (1, 1e-6, 1e6), (1, 1e6, 1e-6), (1e6, 1e-6, 1e-6), (0, 0, 1e-6)]
)
def test_weights_at_their_bounds_keep_every_score_on_the_scale(weights):
    from rfm_assets.engines.pandas_compute import combined_scores

    RFMSettings(weights=dict(zip(("recency", "frequency", "monetary"), weights)))
    scores = np.arange(1, 6)
    r, f, m = (a.ravel() for a in np.meshgrid(scores, scores, scores))
    fm, rfm = combined_scores(r, f, m, weights)
    assert fm.min() >= 1 and fm.max() <= 5
    # RFM_score is a float weighted mean: on the scale up to rounding in the last bit.
    assert np.isfinite(rfm).all() and rfm.min() > 1 - 1e-9 and rfm.max() < 5 + 1e-9


def test_rule_sets_are_chosen_by_name_or_path_and_an_unknown_name_lists_the_shipped_ones():
    assert RFMSettings().rule_set().name == "rfm_grid"
    path = REPO_TESTS / "data" / "rules_f_and_m.yaml"
    settings = RFMSettings(segment_rules=str(path))
    assert "Big Spenders Gone Quiet" in {s.name for s in settings.rule_set().segments}
    with pytest.raises(RFMConfigError, match=r"segment_rules: no_such_set is neither a shipped "
                       r"rule set \(.*rfm_grid.*\) nor a file"):  # fmt: skip
        build_settings({"segment_rules": "no_such_set"})


def test_flat_weight_keys_are_aliases_of_weights():
    settings = build_settings({"recency_weight": 2, "frequency_weight": 0.5})
    assert settings.weight_tuple() == (2.0, 0.5, 1.0)
    with pytest.raises(RFMConfigError, match="recency_weight: Input should be greater than"):
        build_settings({"recency_weight": -1})
    # As Dagster run config too: the launchpad's schema knows the keys.
    run_config = {"resources": {"rfm_settings": {"config": {"monetary_weight": 3.0}}}}
    dg.validate_run_config(defs.resolve_job_def("rfm_job"), run_config)
    assert RFMSettings(monetary_weight=3.0).weight_tuple() == (1.0, 1.0, 3.0)


def test_subscription_preset_holds_out_first_month_customers_and_counts_them():
    from rfm_assets import run

    config = yaml.safe_load(preset_path("subscription").read_text())["resources"]
    settings = config["rfm_settings"]["config"]
    assert settings["exclude_recent_days"] == 30
    with_filter = run(RFMSettings(**settings))
    without = run(RFMSettings(**{**settings, "exclude_recent_days": None}))
    newcomers = without.rfm_metrics["tenure_days"] <= 30
    held_out = with_filter.customers_held_out["first_purchase_too_recent"]
    assert held_out == int(newcomers.sum()) > 0
    assert len(with_filter.customer_segments) == len(without.customer_segments) - held_out
    assert with_filter.customer_segments["tenure_days"].min() > 30
