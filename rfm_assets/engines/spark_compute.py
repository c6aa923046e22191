"""The RFM computation on Spark DataFrames: the rules of pandas_compute, distributed.

Function for function this mirrors `pandas_read` and `pandas_compute`, and the tests prove
that both give the same tables. Per-row and per-customer work stays in Spark; only small
summaries (counts by reason, extremes by score, sums by segment) come back to the driver and
go through `engines.shared`, the same code the pandas engine uses. No data moves between
pandas and Spark in memory: PySpark 4.3 does not support pandas 3 for those conversions, so
tables cross between the engines only as Parquet files.
"""

from __future__ import annotations

import bisect
import dataclasses
import datetime as dt
import functools
import itertools
import os
import re
import weakref
from typing import Optional

import pyarrow as pa
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from rfm_assets.contract import (
    CUSTOMER_ROW_EXCLUSIONS,
    EXCLUSION_REASONS,
    MICRO_UNITS,
    SLIPPING_COLUMNS,
)
from rfm_assets.engines.caches import persist
from rfm_assets.engines.shared import (
    DAYS_PER_MONTH,
    EARLIEST_VALID_DATE,
    EXAMPLES_SHOWN,
    EXTRA_FRACTION_DIGITS,
    HIGHER_IS_BETTER,
    INFINITY_TEXT,
    ISO_DATE_TEXT,
    LAPSED_CUSTOMERS,
    LARGEST_FLOAT_ID,
    LARGEST_FREQUENCY,
    LARGEST_ZERO_AMOUNT,
    LATEST_VALID_DATE,
    MAX_ABS_AMOUNT,
    MAX_CUSTOMER_TOTAL,
    NAN_TEXT,
    NEW_CUSTOMERS,
    NUMBER_TEXT,
    SCORE_OF,
    TIME_WITH_OFFSET,
    WHITESPACE,
    RowAccount,
    analytics_from_aggregates,
    customer_total_error,
    cut_points_from_extremes,
    day_number,
    from_day_number,
    infer_date_format,
    java_regex,
    migration_from_aggregates,
    no_valid_dates_error,
    reference_and_window,
    reference_day_for_recency,
)
from rfm_assets.engines.source import SourceListing, check_columns, first_line, list_source
from rfm_assets.engines.spec import SourceColumns
from rfm_assets.errors import RFMInputError
from rfm_assets.segments import RuleSet

# A missing order id counts as one order per customer, as in pandas.
MISSING_ORDER = "\u0000missing order"
# strftime directives -> Spark datetime pattern letters, for inferred text date formats.
# Single letters for numbers, which accept one or two digits as pandas does (12/1/2010 8:26).
_PATTERN = {"%Y": "yyyy", "%y": "yy", "%m": "M", "%d": "d", "%H": "H", "%I": "h",
            "%M": "m", "%S": "s", "%f": "SSSSSS", "%b": "MMM", "%B": "MMMM", "%p": "a",
            "%j": "D", "%a": "EEE", "%A": "EEEE", "%%": "%"}  # fmt: skip
_FIXED_WIDTH = {"%m": "MM", "%d": "dd", "%H": "HH", "%I": "hh", "%M": "mm", "%S": "ss"}
_WHITESPACE_SET = "".join(WHITESPACE)


def trimmed(text: Column) -> Column:
    """Text without WHITESPACE at either end, the same set the pandas engine trims.

    Every character of that set is an ASCII control or space, or not ASCII: text that
    starts and ends with a printable ASCII character is left as it is without looking at
    the set, which is most ids, and btrim (slow: it compares character by character) trims
    the rest (timed by benchmarks/pieces.py).
    """

    def printable(character: Column) -> Column:
        return F.ascii(character).between(33, 126)

    printable_ends = printable(text) & printable(F.substring(text, -1, 1))
    return F.when(printable_ends, text).otherwise(F.btrim(text, F.lit(_WHITESPACE_SET)))


def day_of(timestamp: Column) -> Column:
    """Calendar day number (days since 1970-01-01) of a wall-clock timestamp."""
    return F.unix_date(F.to_date(timestamp)).cast("long")


def micro_units(amount: Column) -> Column:
    """amount * 10**6 rounded half to even, as a long: the exact unit of every sum."""
    return F.bround(amount * F.lit(float(MICRO_UNITS)), 0).cast("long")


# --- reading --------------------------------------------------------------------------------


def col(name: str) -> Column:
    """A source column by its exact name, whatever characters it holds (dots, backticks)."""
    return F.col("`" + name.replace("`", "``") + "`")


SHUFFLE_PARTITIONS = "spark.sql.shuffle.partitions"
PARTITIONS_PER_CORE = 4
SOURCE_BYTES_PER_PARTITION = 128 * 2**20


def scale_shuffle_partitions(spark: SparkSession, listing: SourceListing) -> None:
    """Shuffle partitions for the session's run, unless its launch configuration sets them:
    four per core the session has, so every core stays busy whatever the cluster (adaptive
    execution merges the ones that come out small), and more for a large source, one per
    128 MiB of the files read, so that no partition grows past what a task holds without
    spilling. local[2] gets 8 for any source under 1 GiB, a 64-core cluster 256. (Spark's
    fixed 200 runs 200 tasks for every small step: see the rfm_spark_200 variant of
    benchmarks/large.py.)"""
    if spark.sparkContext.getConf().contains(SHUFFLE_PARTITIONS):
        return
    source_bytes = sum(os.path.getsize(f) for f in listing.files) if listing.listed else 0
    by_cores = PARTITIONS_PER_CORE * spark.sparkContext.defaultParallelism
    spark.conf.set(
        SHUFFLE_PARTITIONS, str(max(by_cores, -(-source_bytes // SOURCE_BYTES_PER_PARTITION)))
    )


def read_transactions(
    spark: SparkSession,
    path: str,
    columns: SourceColumns,
    valid_dates: Optional[tuple[dt.date, dt.date]] = None,
    sheet: Optional[str] = None,
) -> tuple[DataFrame, SourceListing]:
    """Read `path` (.parquet, .csv, a directory of Parquet or a sheet of an Excel workbook)
    into the canonical frame.

    Local sources are read file by file as `list_source` found them, with the types it chose,
    so Spark reads the same table as pandas. Validation runs as one aggregation over the
    mapped columns; examples for an error message are fetched only when there is an error.
    With `valid_dates`, that aggregation also takes the date statistics prepare_transactions
    starts from (see _SOURCE_STATISTICS).
    """
    listing = list_source(path, columns, sheet)
    scale_shuffle_partitions(spark, listing)
    source = _read_source(spark, listing, columns)
    frame, statistics = _canonical(spark, source, columns, listing, valid_dates)
    return frame, dataclasses.replace(listing, date_statistics=statistics)


def read_frame(
    frame: DataFrame,
    columns: SourceColumns,
    name: str,
    valid_dates: Optional[tuple[dt.date, dt.date]] = None,
) -> tuple[DataFrame, SourceListing]:
    """The canonical frame of a Spark table another asset produced (`name` says which);
    `valid_dates` as in read_transactions."""
    check_columns(name, columns, frame.columns)
    listing = SourceListing(path=name, is_csv=False, listed=False)
    scale_shuffle_partitions(frame.sparkSession, listing)
    read = frame.columns if columns.every_column else columns.needed
    source = frame.select(*[col(n).alias(n) for n in read])
    canonical, statistics = _canonical(frame.sparkSession, source, columns, listing, valid_dates)
    return canonical, dataclasses.replace(listing, date_statistics=statistics)


def _canonical(
    spark: SparkSession,
    source: DataFrame,
    columns: SourceColumns,
    listing: SourceListing,
    valid_dates: Optional[tuple[dt.date, dt.date]] = None,
) -> tuple[DataFrame, Optional[tuple]]:
    """Canonical columns from the mapped source columns, validated in one aggregation; and
    the date statistics that aggregation took along (see SourceListing.date_statistics), or
    None."""
    path = listing.path
    types = {f.name: f.dataType for f in source.schema.fields}
    mapping = columns.mapping
    # Transaction dates must all be dates; customer-level dates may be missing (counted).
    missing_allowed = columns.level == "customers"

    canonical = {"customer_id": _customer_id(col(columns.customer_id),
                                             types[columns.customer_id])}  # fmt: skip
    for field in columns.date_fields:
        name = mapping[field]
        canonical[field] = _typed_date(spark, col(name), types[name], name, listing)
    if columns.level == "customers":
        for field in ("recency", "frequency", "monetary"):
            if name := mapping[field]:
                canonical[field] = _number(col(name), types[name])
    elif columns.amount:
        canonical["amount"] = _number(col(columns.amount), types[columns.amount])
    else:
        canonical["amount"] = _number(col(columns.quantity), types[columns.quantity]) * _number(
            col(columns.unit_price), types[columns.unit_price]
        )
    if columns.order_id:
        order = col(columns.order_id)
        is_integer = isinstance(types[columns.order_id], T.IntegralType)
        canonical["order_id"] = order.cast("long") if is_integer else order.cast("string")

    # Each text date column's wall-clock text and its reading as ISO 8601, built once: the
    # validation counts the dates that are not ISO, the date statistics and parsing use them.
    wall_clocks = {
        mapping[field]: _wall_clock_text(mapping[field], missing_allowed)
        for field in columns.date_fields
        if isinstance(types[mapping[field]], T.StringType)
    }
    checks = list(_validation_checks(columns, types, listing.is_csv, wall_clocks).values())
    # The date statistics ride along: typed dates need no parsing; text dates are parsed
    # only once validated, so theirs are taken from the text read as ISO 8601 and kept only
    # when the validation finds every date ISO 8601 (else prepare_transactions takes them).
    along = valid_dates is not None and columns.level == "transactions"
    if along:
        date = canonical.get("transaction_date")
        if date is None:
            date = wall_clocks[mapping["transaction_date"]][1]
        checks += _date_statistics(date, canonical["amount"], valid_dates)
    stats = source.agg(F.count(F.lit(1)).alias("rows"), *checks).first().asDict()
    if stats["rows"] == 0:
        raise RFMInputError(f"input_path: {path} has no rows")
    # Raised in the pandas reader's order: text, ids, dates, numbers.
    _raise_for_text_and_ids(stats, source, columns, path)
    for field in columns.date_fields:
        name = mapping[field]
        raw = col(name)
        if isinstance(types[name], T.StringType):
            _raise_for_mixed_zones(stats, name)
            not_iso = stats[f"not_iso:{name}"]
            canonical[field] = _parse_text_dates(source, *wall_clocks[name], not_iso)
            if missing_allowed:
                raw = _blank_as_null(trimmed(raw))
            if not not_iso:  # every date is ISO 8601 text: only missing ones can be bad
                missing = stats["rows"] - stats[f"dates_present:{name}"]
                stats[f"missing_dates:{name}"] = 0 if missing_allowed else missing
        if stats.get(f"missing_dates:{name}", 1):  # typed dates: only nulls can be bad
            parsed = source.select(canonical[field].alias("d"), raw.alias("raw"))
            bad = F.col("d").isNull()
            if missing_allowed:
                bad = bad & F.col("raw").isNotNull()
            _raise_for_bad_dates(parsed.filter(bad), name)
    _raise_for_numbers(stats, source)
    if columns.every_column:
        canonical["duplicate_row"] = duplicate_lines(source)
    frame = source.select(*[column.alias(name) for name, column in canonical.items()])
    date_name = mapping.get("transaction_date")
    if along and isinstance(types[date_name], T.StringType):
        along = not stats[f"not_iso:{date_name}"]
    if not along:
        return frame, None
    return frame, (tuple(valid_dates), {k: stats[k] for k in _DATE_STATISTICS})


def duplicate_lines(source: DataFrame) -> Column:
    """True for each line whose every column equals an earlier line's (missing equals
    missing; see pandas_read.duplicate_lines). Which of equal lines is the first does not
    matter: they are equal in every column."""
    every = Window.partitionBy(*[col(name) for name in source.columns]).orderBy(F.lit(0))
    return F.row_number().over(every) > 1


def _typed_date(
    spark: SparkSession, column: Column, kind: T.DataType, name: str, listing: SourceListing
) -> Optional[Column]:
    """A typed date column as a wall-clock timestamp_ntz (text is parsed after validation)."""
    if isinstance(kind, T.TimestampType):
        # Spark holds zoned timestamps as instants; take the wall clock of the zone the file
        # names (as pandas does), whatever the session's time zone is.
        zone = listing.types[name].tz if listing.listed else None
        session_zone = spark.conf.get("spark.sql.session.timeZone")
        return F.to_utc_timestamp(F.from_utc_timestamp(column, zone or "UTC"), session_zone).cast(
            "timestamp_ntz"
        )
    if isinstance(kind, (T.TimestampNTZType, T.DateType)):
        return column.cast("timestamp_ntz")
    if not isinstance(kind, T.StringType):
        raise RFMInputError(
            f"column '{name}': type {kind.simpleString()} is not a date; expected a date, "
            "timestamp or text"
        )
    return None


def _blank_as_null(text: Column) -> Column:
    return F.when(text == "", F.lit(None)).otherwise(text)


def _read_source(spark: SparkSession, listing: SourceListing, columns: SourceColumns) -> DataFrame:
    """The columns to read (the mapped ones, or every column: SourceColumns.every_column),
    from the listed files with the listed types where there is a listing."""

    def read_of(raw: DataFrame) -> list[str]:
        if listing.listed:
            return list(listing.read_columns)
        check_columns(listing.path, columns, raw.columns)
        return list(raw.columns) if columns.every_column else columns.needed

    try:
        if listing.table is not None:
            # An Excel sheet, read on the driver by the listing (Spark has no reader of its
            # own); it crosses to Spark through Arrow, in the listing's types.
            raw = spark.createDataFrame(listing.table)
            return raw.select(
                *[col(n).cast(_spark_type_of(listing.types[n])).alias(n) for n in read_of(raw)]
            )
        if listing.is_csv:
            # RFC 4180 as pyarrow reads it: doubled quotes inside quotes, line breaks inside
            # quoted fields. Every column stays text: ids keep leading zeros, dates are ours.
            reader = spark.read.options(header=True, mode="PERMISSIVE", multiLine=True, escape='"')
            raw = reader.csv(listing.files[0] if listing.listed else listing.path)
            return raw.select(*[col(name).alias(name) for name in read_of(raw)])
        if not listing.listed:
            raw = spark.read.parquet(listing.path)
            return raw.select(*[col(name).alias(name) for name in read_of(raw)])
        parts = [_read_group(spark, listing, group, columns) for group in listing.groups]
        return functools.reduce(DataFrame.unionByName, parts)
    except RFMInputError:
        raise
    except Exception as error:  # Spark raises AnalysisException, SparkException, Py4J errors
        raise RFMInputError(
            f"input_path: cannot read {listing.path}: {first_line(error)}"
        ) from None


_INFER_PARTITION_TYPES = "spark.sql.sources.partitionColumnTypeInference.enabled"


def _read_group(
    spark: SparkSession, listing: SourceListing, group: tuple[str, ...], columns: SourceColumns
) -> DataFrame:
    """Files of one set of column types, each needed column cast to the listing's type.

    Directory (`key=value`) columns are text, as in the pandas engine: type inference of
    partition values is off while Spark lists the files.
    """
    inferring = spark.conf.get(_INFER_PARTITION_TYPES)
    spark.conf.set(_INFER_PARTITION_TYPES, "false")
    try:
        raw = spark.read.option("basePath", listing.root).parquet(*group)
    finally:
        spark.conf.set(_INFER_PARTITION_TYPES, inferring)
    own = listing.file_types[group[0]]
    selected = []
    for name in listing.read_columns:
        wanted = listing.types[name]
        column = col(name)
        if own[name] != wanted:
            column = column.cast(_spark_type_of(wanted))
        selected.append(column.alias(name))
    return raw.select(*selected)


def _spark_type_of(kind: pa.DataType) -> str:
    """The Spark SQL type of a unified Arrow type (see source.unify_types)."""
    if pa.types.is_timestamp(kind):
        return "timestamp" if kind.tz else "timestamp_ntz"
    if pa.types.is_decimal(kind):
        return f"decimal({kind.precision},{kind.scale})"
    return {
        pa.int64(): "long",
        pa.float64(): "double",
        pa.string(): "string",
        pa.date32(): "date",
        pa.bool_(): "boolean",
    }[kind]


def _is_integer_type(kind: T.DataType) -> bool:
    return isinstance(kind, T.IntegralType) or (isinstance(kind, T.DecimalType) and kind.scale == 0)


def _is_float_type(kind: T.DataType) -> bool:
    return isinstance(kind, (T.FloatType, T.DoubleType, T.DecimalType)) and not _is_integer_type(
        kind
    )


def _float_id(column: Column) -> Column:
    """A float id as a double, with NaN as a missing id (as in pandas)."""
    value = column.cast("double")
    return F.when(F.isnan(value), F.lit(None)).otherwise(value)


def _customer_id(column: Column, kind: T.DataType) -> Column:
    """Integers stay integers; integer-valued floats become integers; text is trimmed."""
    if _is_integer_type(kind):
        return column.cast("long")  # the validation pass refused ids beyond int64
    if _is_float_type(kind):
        return _float_id(column).cast("long")  # fractional and huge ids were refused
    text = trimmed(column.cast("string"))
    return F.when(text == "", F.lit(None)).otherwise(text)


def _number_text(column: Column) -> Column:
    """Trimmed text of a number column, blank as missing (as in the pandas engine)."""
    text = trimmed(column.cast("string"))
    return F.when(text == "", F.lit(None)).otherwise(text)


def _number(column: Column, kind: T.DataType) -> Column:
    """A double; text by NUMBER_TEXT, and the words NaN and inf (validated before use)."""
    if isinstance(kind, T.NumericType):
        return column.cast("double")
    text = _number_text(column)
    infinity = F.regexp_extract(text, java_regex(INFINITY_TEXT), 1)
    return (
        F.when(text.rlike(NUMBER_TEXT), text.cast("double"))
        .when(text.rlike(java_regex(NAN_TEXT)), F.lit(float("nan")))
        .when(text.rlike(java_regex(INFINITY_TEXT)),
              F.when(infinity == "-", F.lit(float("-inf"))).otherwise(F.lit(float("inf"))))
    )  # fmt: skip


def _not_a_number(column: Column) -> Column:
    text = _number_text(column)
    return text.isNotNull() & ~(
        text.rlike(NUMBER_TEXT)
        | text.rlike(java_regex(NAN_TEXT))
        | text.rlike(java_regex(INFINITY_TEXT))
    )


def _validation_checks(
    columns: SourceColumns, types: dict, is_csv: bool, wall_clocks: dict[str, tuple]
) -> dict[str, Column]:
    """Named counts that must be zero (or sets to inspect), computed in one pass.
    `wall_clocks`: each text date column's (wall-clock text, ISO 8601 reading)."""
    checks = {}
    kind = types[columns.customer_id]
    if _is_integer_type(kind) and isinstance(kind, T.DecimalType):
        raw = col(columns.customer_id)
        beyond = (raw >= F.lit(2**63).cast(kind)) | (raw < F.lit(-(2**63)).cast(kind))
        checks["ids_beyond_int64"] = F.sum(F.when(beyond, 1).otherwise(0))
    if _is_float_type(kind):
        cid = _float_id(col(columns.customer_id))
        huge = (F.abs(cid) >= F.lit(LARGEST_FLOAT_ID)) | (F.abs(cid) == F.lit(float("inf")))
        checks["huge_ids"] = F.sum(F.when(huge, 1).otherwise(0))
        checks["fractional_ids"] = F.sum(F.when(~huge & (cid != F.floor(cid)), 1).otherwise(0))
    for field in columns.number_fields:
        name = columns.mapping[field]
        if not isinstance(types[name], T.NumericType):
            not_number = _not_a_number(col(name))
            checks[f"not_numbers:{name}"] = F.sum(F.when(not_number, 1).otherwise(0))
    for field in columns.date_fields:
        date_name = columns.mapping[field]
        if not isinstance(types[date_name], T.StringType):
            missing = col(date_name).isNull()
            checks[f"missing_dates:{date_name}"] = F.sum(F.when(missing, 1).otherwise(0))
            continue
        text = trimmed(col(date_name))
        if columns.level == "customers":
            text = _blank_as_null(text)  # a blank date is a missing one, counted later
        pattern = java_regex(TIME_WITH_OFFSET)
        offset = F.regexp_extract(text, pattern, 2)
        minutes = F.regexp_extract(text, pattern, 4)
        # As shared.zone_label: Z is +00:00, +09 is +09:00.
        zone = F.when(offset == "Z", "+00:00").otherwise(
            F.concat(
                F.regexp_extract(text, pattern, 3),
                F.lit(":"),
                F.when(minutes == "", F.lit("00")).otherwise(minutes),
            )
        )
        checks[f"zones:{date_name}"] = F.collect_set(F.when(offset != "", zone))
        checks[f"with_offset:{date_name}"] = F.sum(F.when(offset != "", 1).otherwise(0))
        checks[f"dates_present:{date_name}"] = F.count(text)
        # Counted here, not by a job of their own: most text dates are ISO 8601.
        wall_clock, iso = wall_clocks[date_name]
        not_iso = wall_clock.isNotNull() & iso.isNull()
        checks[f"not_iso:{date_name}"] = F.sum(F.when(not_iso, 1).otherwise(0))
    if is_csv:
        # Spark replaces bytes that are not UTF-8 with U+FFFD where pyarrow refuses them.
        text_columns = [c for c in columns.needed if isinstance(types[c], T.StringType)]
        replaced = F.lit(False)
        for name in text_columns:
            replaced = replaced | F.coalesce(col(name).contains("\ufffd"), F.lit(False))
        checks["not_utf8"] = F.sum(F.when(replaced, 1).otherwise(0))
    return {name: check.alias(name) for name, check in checks.items()}


def _raise_for_text_and_ids(
    stats: dict, source: DataFrame, columns: SourceColumns, path: str
) -> None:
    if stats.get("not_utf8"):
        raise RFMInputError(
            f"input_path: cannot read {path}: {stats['not_utf8']} rows hold text that is not "
            "valid UTF-8"
        )
    if stats.get("ids_beyond_int64"):
        raise RFMInputError(f"column '{columns.customer_id}': customer ids exceed the int64 range")
    if stats.get("huge_ids"):
        cid = _float_id(col(columns.customer_id))
        huge = (F.abs(cid) >= F.lit(LARGEST_FLOAT_ID)) | (F.abs(cid) == F.lit(float("inf")))
        examples = _examples(source.filter(huge).select(cid))
        raise RFMInputError(
            f"column '{columns.customer_id}': {stats['huge_ids']} customer ids are too large to "
            f"be exact as numbers, e.g. {examples}; store ids as integers or text"
        )
    if stats.get("fractional_ids"):
        cid = _float_id(col(columns.customer_id))
        examples = _examples(source.filter(cid != F.floor(cid)).select(cid))
        raise RFMInputError(
            f"column '{columns.customer_id}': {stats['fractional_ids']} customer ids are not "
            f"whole numbers, e.g. {examples}; map an integer or text id column"
        )


def _raise_for_mixed_zones(stats: dict, name: str) -> None:
    zones = sorted(stats[f"zones:{name}"])
    partial = stats[f"with_offset:{name}"] != stats[f"dates_present:{name}"]
    if len(zones) > 1 or (zones and partial):
        shown = zones + (["none"] if partial else [])
        raise RFMInputError(
            f"column '{name}': mixed time zones ({', '.join(shown)}); convert the column to "
            "one zone first, e.g. UTC or the shop's local time"
        )


def _raise_for_numbers(stats: dict, source: DataFrame) -> None:
    for key, count in stats.items():
        if key.startswith("not_numbers:") and count:
            name = key.split(":", 1)[1]
            bad = source.filter(_not_a_number(col(name)))
            raise RFMInputError(
                f"column '{name}': {count} values are not numbers, "
                f"e.g. {_examples(bad.select(_number_text(col(name))))}"
            )


def _examples(frame: DataFrame) -> list:
    """The smallest few distinct values, sorted as the pandas engine sorts its examples."""
    first = frame.columns[0]
    rows = frame.distinct().orderBy(F.col(first).asc_nulls_first()).limit(EXAMPLES_SHOWN)
    return sorted((row[0] for row in rows.collect()), key=str)


def _wall_clock_text(name: str, missing_allowed: bool = False) -> tuple[Column, Column]:
    """(the wall-clock text of a text date column, that text parsed as ISO 8601 or null): a
    single offset is already checked, so it is dropped."""
    raw = trimmed(col(name))
    if missing_allowed:
        raw = _blank_as_null(raw)
    pattern = java_regex(TIME_WITH_OFFSET)
    text = F.when(raw.rlike(pattern), F.regexp_extract(raw, pattern, 1)).otherwise(raw)
    truncated = F.regexp_replace(text, EXTRA_FRACTION_DIGITS, "$1")
    iso = F.when(text.rlike(ISO_DATE_TEXT), F.try_to_timestamp(truncated)).cast("timestamp_ntz")
    return text, iso


def _parse_text_dates(source: DataFrame, text: Column, iso: Column, not_iso: int) -> Column:
    """Wall-clock text (`text`, read as ISO 8601 by `iso`; see _wall_clock_text) to
    timestamps: `iso` where the validation pass counted no row that is not ISO 8601
    (`not_iso`), else one format inferred from the data for every row, as the pandas reader
    does."""
    if not not_iso:
        return iso
    distinct = source.select(text.alias("text")).dropna().distinct()
    sample = [row[0] for row in distinct.orderBy("text").limit(100).collect()]
    date_format = infer_date_format(sample)
    if date_format is None:
        return F.lit(None).cast("timestamp_ntz")
    return F.try_to_timestamp(text, F.lit(spark_date_pattern(date_format))).cast("timestamp_ntz")


def spark_date_pattern(date_format: str) -> str:
    """A strftime format as a Spark datetime pattern.

    Single pattern letters accept one or two digits (12/1/2010 8:26), as pandas does; where
    two number fields touch (20240105) only fixed widths can tell them apart. Literal text
    with letters is quoted.
    """
    tokens = re.findall(r"%.|[^%]+", date_format)
    touching = any(a[0] == "%" and b[0] == "%" for a, b in zip(tokens, tokens[1:]))
    letters = {**_PATTERN, **(_FIXED_WIDTH if touching else {})}
    return "".join(
        letters.get(token, token)
        if token.startswith("%")
        else (f"'{token}'" if re.search("[A-Za-z']", token) else token)
        for token in tokens
    )


def _raise_for_bad_dates(bad: DataFrame, name: str) -> None:
    count = bad.count()
    if count:
        examples = _examples(bad.select(F.col("raw").cast("string")))
        raise RFMInputError(f"column '{name}': {count} values are not dates, e.g. {examples}")


# --- cleaning and metrics -------------------------------------------------------------------


def prepare_transactions(
    frame: DataFrame,
    reference_date: Optional[dt.date] = None,
    analysis_period_days: Optional[int] = None,
    returns_policy: str = "exclude",
    cancelled_order_prefix: str = "C",
    valid_dates: tuple[dt.date, dt.date] = (EARLIEST_VALID_DATE, LATEST_VALID_DATE),
    consume: bool = False,
    date_statistics: Optional[tuple] = None,
    kept_from: Optional[dt.date] = None,
    net_by_window: bool = False,
) -> tuple[DataFrame, RowAccount]:
    """The counted cleaning rules (see pandas_compute.prepare_transactions). `consume` has
    nothing to release here: `frame` is a plan, not rows. `date_statistics`: what the reader
    of `frame` took along (SourceListing.date_statistics), which saves a pass over it."""
    amount = F.col("amount")
    finite = _finite(amount)
    day = day_of(F.col("transaction_date"))
    low_day, high_day = (day_number(d) for d in valid_dates)
    in_range = (day >= F.lit(low_day)) & (day <= F.lit(high_day))
    taken, stats = date_statistics or (None, None)
    if taken != tuple(valid_dates):
        stats = frame.agg(
            F.count(F.lit(1)).alias("rows"),
            *_date_statistics(F.col("transaction_date"), amount, valid_dates),
        ).first()
    if stats["first_day"] is None:
        raise no_valid_dates_error(valid_dates, int(stats["rows"]))
    ref_day, window_start_day = reference_and_window(
        reference_date,
        analysis_period_days,
        int(stats["first_day"]),
        int(stats["last_day"]),
        low_day,
    )
    if stats["large"]:
        examples = [r[0] for r in frame.filter(finite & (F.abs(amount) > MAX_ABS_AMOUNT))
                    .select(amount).limit(3).collect()]  # fmt: skip
        raise RFMInputError(
            f"column amount: {stats['large']} values exceed {MAX_ABS_AMOUNT:g} in size, "
            f"e.g. {examples}"
        )
    has_orders = "order_id" in frame.columns
    if has_orders and cancelled_order_prefix:
        cancelled = F.coalesce(
            F.col("order_id").cast("string").startswith(cancelled_order_prefix), F.lit(False)
        )
    else:
        cancelled = F.lit(False)

    rules = [
        ("missing_customer_id", F.col("customer_id").isNull()),
        ("invalid_amount", ~finite),
        ("date_out_of_range", ~in_range),
        ("on_or_after_reference_date", day >= ref_day),
    ]
    if window_start_day is not None:
        rules.append(("before_analysis_window", day < window_start_day))
    if kept_from is not None:
        rules.append(("kept_by_earlier_weeks", day < F.lit(day_number(kept_from))))
    if returns_policy == "exclude":
        rules += [
            ("cancelled_order", cancelled),
            ("non_positive_amount", amount <= F.lit(LARGEST_ZERO_AMOUNT)),
        ]
    if "duplicate_row" in frame.columns:  # drop_duplicate_rows: the reader marked them
        rules.insert(0, ("duplicate_row", F.col("duplicate_row")))
    reason = first_reason(rules)
    is_return = (cancelled | (amount <= F.lit(LARGEST_ZERO_AMOUNT))) & reason.isNull()
    flagged = frame.select(
        "*",
        reason.alias("reason"),
        is_return.alias("is_return"),
        F.when(is_return, -F.abs(amount)).otherwise(amount).alias("signed_amount"),
    )
    net_rule = returns_policy == "net" and not net_by_window
    if net_rule:
        # The guard comes first: the net sums below are exactly what could overflow.
        kept_before_net = flagged.filter(F.col("reason").isNull())
        _check_customer_totals(flagged, kept_before_net.agg(F.sum(F.abs("amount"))).first()[0])
        net = _net_micro_by_customer(kept_before_net, "signed_amount")
        flagged = flagged.join(net, "customer_id", "left").withColumn(
            "reason",
            F.when(
                F.col("reason").isNull() & (F.col("net_micro") <= 0),
                F.lit("customer_monetary_not_positive"),
            ).otherwise(F.col("reason")),
        )
    # The accounting and the metrics in one aggregation of every row, and nothing row-level
    # cached (holding every row in the JVM's memory is what ran out at 10M rows): the
    # per-customer totals are cached instead, and the metrics of these kept rows are taken
    # from them (compute_metrics); whoever reads the kept rows otherwise computes them again.
    totals = _per_customer_totals(flagged, "signed_amount", accounted=True)
    totals = persist(totals)
    counted = _account_of(totals, EXCLUSION_REASONS)
    rows_kept = counted.pop(None, 0)
    if not net_rule:
        _check_customer_totals(flagged, counted["kept_abs_total"])
    counted.pop("kept_abs_total")
    customers = counted.pop("kept_customers")
    if rows_kept == 0 and kept_from is None:
        removed = ", ".join(f"{r}: {counted[r]}" for r in EXCLUSION_REASONS if counted.get(r))
        raise RFMInputError(f"no transactions left after filtering ({removed})")
    kept_columns = [
        "customer_id",
        "transaction_date",
        F.col("signed_amount").alias("amount"),
        "is_return",
    ] + (["order_id"] if has_orders else [])
    kept = flagged.filter(F.col("reason").isNull()).select(*kept_columns)
    _TOTALS_OF_KEPT[kept] = totals
    # The cache lives as long as the rows it sums (not at exit: the JVM goes with the process).
    weakref.finalize(kept, totals.unpersist).atexit = False
    account = RowAccount(
        rows_read=int(stats["rows"]),
        rows_kept=int(rows_kept),
        rows_excluded={reason: int(counted.get(reason, 0)) for reason in EXCLUSION_REASONS},
        reference_date=from_day_number(ref_day),
        window_start=from_day_number(window_start_day) if window_start_day is not None else None,
        customers=int(customers),
    )
    return kept, account


def prepare_customers(
    frame: DataFrame,
    reference_date: Optional[dt.date] = None,
    analysis_period_days: Optional[int] = None,
    valid_dates: tuple[dt.date, dt.date] = (EARLIEST_VALID_DATE, LATEST_VALID_DATE),
) -> tuple[DataFrame, RowAccount]:
    """The counted rules of customer-level input (see pandas_compute.prepare_customers)."""
    low_day, high_day = (day_number(d) for d in valid_dates)
    frequency, monetary = F.col("frequency"), F.col("monetary")
    finite_monetary = _finite(monetary)
    by_date = "last_purchase_date" in frame.columns
    if by_date:
        last_day = day_of(F.col("last_purchase_date"))
        in_range = (last_day >= F.lit(low_day)) & (last_day <= F.lit(high_day))
        extra = [
            F.min(F.when(in_range, last_day)).alias("first_day"),
            F.max(F.when(in_range, last_day)).alias("last_day"),
        ]
    else:
        extra = []
    stats = frame.agg(
        F.count(F.lit(1)).alias("rows"),
        F.count("customer_id").alias("ids"),
        F.count_distinct("customer_id").alias("distinct_ids"),
        F.sum(
            F.when(finite_monetary & (F.abs(monetary) >= F.lit(MAX_CUSTOMER_TOTAL)), 1).otherwise(0)
        ).alias("huge"),
        *extra,
    ).first()
    _refuse_repeated_ids_or_huge_totals(frame, stats, finite_monetary)
    if by_date:
        if stats["first_day"] is None:
            raise no_valid_dates_error(valid_dates, int(stats["rows"]))
        ref_day, window_start_day = reference_and_window(
            reference_date,
            analysis_period_days,
            int(stats["first_day"]),
            int(stats["last_day"]),
            low_day,
        )
        invalid_recency = F.col("last_purchase_date").isNull()
        last_value = last_day.cast("double")
        after_reference = last_day >= F.lit(ref_day)
    else:
        ref_day = reference_day_for_recency(reference_date)
        window_start_day = (
            max(ref_day - analysis_period_days, low_day) if analysis_period_days else None
        )
        recency = F.col("recency")
        invalid_recency = ~_finite(recency) | (recency < 0) | (recency != F.floor(recency))
        last_value = F.lit(float(ref_day)) - recency
        after_reference = F.lit(False)
    in_range = (last_value >= F.lit(float(low_day))) & (last_value <= F.lit(float(high_day)))
    whole_count = (
        _finite(frequency)
        & (frequency >= 1)
        & (frequency < F.lit(LARGEST_FREQUENCY))
        & (frequency == F.floor(frequency))
    )
    rules = [
        ("missing_customer_id", F.col("customer_id").isNull()),
        ("invalid_recency", invalid_recency),
        ("invalid_frequency", ~whole_count),
        ("invalid_monetary", ~finite_monetary),
        ("date_out_of_range", ~in_range),
        ("on_or_after_reference_date", after_reference),
        (
            "before_analysis_window",
            last_value < F.lit(float(window_start_day))
            if window_start_day is not None
            else F.lit(False),
        ),
    ]
    has_first = "first_purchase_date" in frame.columns
    if has_first:
        first_day = day_of(F.col("first_purchase_date"))
        rules.append(
            (
                "invalid_first_purchase_date",
                F.col("first_purchase_date").isNull()
                | (first_day < F.lit(low_day))
                | (first_day > F.lit(high_day))
                | (first_day.cast("double") > last_value),
            )
        )
    rules.append(("customer_monetary_not_positive", monetary <= F.lit(LARGEST_ZERO_AMOUNT)))
    reason = first_reason(rules)
    flagged = frame.select("*", reason.alias("reason"), last_value.alias("last_value"))
    counted = _reason_counts(flagged, CUSTOMER_ROW_EXCLUSIONS)
    rows_kept = counted.pop(None, 0)
    if rows_kept == 0:
        removed = ", ".join(f"{r}: {counted[r]}" for r in CUSTOMER_ROW_EXCLUSIONS if counted.get(r))
        raise RFMInputError(f"no customers left after filtering ({removed})")
    last_kept = F.col("last_value").cast("long")
    kept_columns = [
        F.col("customer_id"),
        (F.lit(ref_day) - last_kept).alias("recency"),
        F.date_from_unix_date(last_kept.cast("int")).cast("timestamp_ntz")
        .alias("last_purchase_date"),
    ]  # fmt: skip
    if has_first:
        kept_columns.append(
            F.date_from_unix_date(day_of(F.col("first_purchase_date")).cast("int"))
            .cast("timestamp_ntz").alias("first_purchase_date")
        )  # fmt: skip
    kept_columns += [
        frequency.cast("long").alias("frequency"),
        (micro_units(monetary).cast("double") / F.lit(float(MICRO_UNITS))).alias("monetary"),
    ]
    kept = flagged.filter(F.col("reason").isNull()).select(*kept_columns)
    account = RowAccount(
        rows_read=int(stats["rows"]),
        rows_kept=int(rows_kept),
        rows_excluded={r: int(counted.get(r, 0)) for r in CUSTOMER_ROW_EXCLUSIONS},
        reference_date=from_day_number(ref_day),
        window_start=from_day_number(window_start_day) if window_start_day is not None else None,
        customers=int(rows_kept),
    )
    return kept, account


def _refuse_repeated_ids_or_huge_totals(frame: DataFrame, stats, finite_monetary: Column) -> None:
    """Customer-level input holds one row per customer, each under the exact-sum limit."""
    if stats["ids"] != stats["distinct_ids"]:
        repeated = (
            frame.filter(F.col("customer_id").isNotNull())
            .groupBy("customer_id").count().filter(F.col("count") > 1)
        )  # fmt: skip
        raise RFMInputError(
            f"column customer_id: {repeated.count()} customer ids appear on more than one row, "
            f"e.g. {_examples(repeated.select('customer_id'))}; customer-level input holds one "
            "row per customer"
        )
    if stats["huge"]:
        worst = (
            frame.filter(finite_monetary)
            .orderBy(F.abs(F.col("monetary")).desc(), F.col("customer_id").asc())
            .first()
        )
        raise RFMInputError(
            f"column monetary: customer {worst['customer_id']!r} has {worst['monetary']:.6g}, "
            f"beyond the {MAX_CUSTOMER_TOTAL:g} that exact micro-unit sums allow"
        )


_DATE_STATISTICS = ("rows", "first_day", "last_day", "large")


def _date_statistics(
    date: Column, amount: Column, valid_dates: tuple[dt.date, dt.date]
) -> list[Column]:
    """What prepare_transactions starts from, besides the rows: the first and last day in
    the valid range (they fix the reference date) and the count of amounts too large."""
    day = day_of(date)
    low_day, high_day = (day_number(d) for d in valid_dates)
    in_range = (day >= F.lit(low_day)) & (day <= F.lit(high_day))
    large = _finite(amount) & (F.abs(amount) > MAX_ABS_AMOUNT)
    return [
        F.min(F.when(in_range, day)).alias("first_day"),
        F.max(F.when(in_range, day)).alias("last_day"),
        F.sum(F.when(large, 1).otherwise(0)).alias("large"),
    ]


def first_reason(rules: list[tuple[str, Column]]) -> Column:
    """The name of the first rule in `rules` whose condition holds, else null."""
    reason = F.lit(None).cast("string")
    for name, condition in reversed(rules):
        reason = F.when(condition, F.lit(name)).otherwise(reason)
    return reason


def _finite(value: Column) -> Column:
    return value.isNotNull() & ~F.isnan(value) & (F.abs(value) != F.lit(float("inf")))


def customer_metrics(customers: DataFrame, reference_date: dt.date) -> DataFrame:
    """The metrics of kept customer-level rows (see pandas_compute.customer_metrics)."""
    ref_day = day_number(reference_date)
    last_day = F.lit(ref_day) - F.col("recency")
    if "first_purchase_date" in customers.columns:
        first_date = F.col("first_purchase_date")
        first_day = day_of(first_date)
        tenure = (F.lit(ref_day) - first_day).cast("long")
        lifetime = (last_day - first_day + 1).cast("long")
        per_month = (
            F.col("frequency").cast("double") * F.lit(DAYS_PER_MONTH)
            / F.greatest(tenure.cast("double"), F.lit(DAYS_PER_MONTH))
        )  # fmt: skip
    else:
        first_date = F.lit(None).cast("timestamp_ntz")
        tenure = lifetime = F.lit(None).cast("long")
        per_month = F.lit(None).cast("double")
    # Cached: the steps after this one read projections of these rows, not a cache of their
    # own (see compute_metrics).
    return persist(customers).select(
        "customer_id",
        "recency",
        "frequency",
        "monetary",
        first_date.alias("first_purchase_date"),
        "last_purchase_date",
        tenure.alias("tenure_days"),
        (F.col("monetary") / F.col("frequency")).alias("avg_order_value"),
        lifetime.alias("customer_lifetime_days"),
        per_month.alias("purchase_frequency_per_month"),
    )


# The per-customer totals of kept rows that prepare_transactions computed along with their
# accounting: {kept rows: totals}. Kept rows are the same rows whatever reference date their
# metrics are measured at, so their totals serve any.
_TOTALS_OF_KEPT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _reason_counts(flagged: DataFrame, reasons: tuple[str, ...]) -> dict:
    """Rows per exclusion reason (None: kept rows) in one aggregation: conditional sums need
    no shuffle, where a group-by on the reason needs one."""
    reason = F.col("reason")
    sums = {None: F.sum(F.when(reason.isNull(), 1).otherwise(0))}
    sums.update({name: F.sum(F.when(reason == name, 1).otherwise(0)) for name in reasons})
    row = flagged.agg(*[value.alias(f"c{i}") for i, value in enumerate(sums.values())]).first()
    return {name: int(row[f"c{i}"] or 0) for i, name in enumerate(sums)}


def _order_key() -> Column:
    """The order of a line; a missing order id counts as one order per customer."""
    return F.coalesce(F.col("order_id").cast("string"), F.lit(MISSING_ORDER))


def _per_customer_totals(rows: DataFrame, signed_amount: str, accounted: bool) -> DataFrame:
    """One row per customer id of `rows` (missing ids as one row): over its kept lines, what
    the metrics sum (exact micro-units of `signed_amount`, first and last purchase day,
    orders with a purchase). With `accounted`, `rows` are every row with its `reason` (null:
    kept), and each customer also carries its lines per exclusion reason, its kept lines
    and the sum of |amount| over them (the overflow guard's).

    Frequency counts orders with a purchase: one group-by per order (and reason, so an
    order's excluded lines stay apart from its kept ones), then one per customer, which
    shuffles far less than count(DISTINCT order) inside the second."""
    reason = F.col("reason")
    kept = reason.isNull() if accounted else F.lit(True)
    purchase = kept & ~F.col("is_return")
    day = F.when(purchase, day_of(F.col("transaction_date")))
    columns = {
        "micro": F.when(kept, micro_units(F.col(signed_amount))),
        "last_day": day,
        "first_day": day,
        "purchases": purchase.cast("long"),
    }
    # Accounted, the guard against sums beyond a long judges these totals after they are
    # taken: a sum that overflows is null (try_sum) rather than an error, and is refused.
    totals = {"micro": F.try_sum if accounted else F.sum, "last_day": F.max, "first_day": F.min}
    if accounted:
        columns.update(abs_amount=F.when(kept, F.abs("amount")), lines=F.lit(1))
        totals.update(abs_amount=F.sum, lines=F.sum)
    keys = ["customer_id", *(["reason"] if accounted else [])]
    if "order_id" in rows.columns:
        lines = rows.select(*keys, _order_key().alias("order"),
                            *[value.alias(name) for name, value in columns.items()])  # fmt: skip
        lines = lines.groupBy(*keys, "order").agg(
            *[total(name).alias(name) for name, total in totals.items()],
            F.max("purchases").alias("purchases"),
        )
    else:
        lines = rows.select(*keys, *[value.alias(name) for name, value in columns.items()])
    per_customer = [total(name).alias(name) for name, total in totals.items() if name != "lines"]
    per_customer.append(F.sum("purchases").cast("long").alias("frequency"))
    if accounted:
        per_customer.append(F.sum(F.when(kept, F.col("lines"))).alias("kept_lines"))
        per_customer += [F.sum(F.when(reason == name, F.col("lines"))).alias(name)
                         for name in EXCLUSION_REASONS]  # fmt: skip
    return lines.groupBy("customer_id").agg(*per_customer)


def _account_of(totals: DataFrame, reasons: tuple[str, ...]) -> dict:
    """Rows per exclusion reason (None: kept rows), the customers with a kept row and the
    sum of |amount| over kept rows (`kept_abs_total`), added up from per-customer totals."""
    has_kept = F.col("kept_lines") > 0
    row = totals.agg(
        F.sum("kept_lines").alias("kept"),
        *[F.sum(name).alias(name) for name in reasons],
        F.count(F.when(has_kept, 1)).alias("kept_customers"),
        F.sum("abs_amount").alias("kept_abs_total"),
    ).first()
    counted = {None: int(row["kept"] or 0)}
    counted.update({name: int(row[name] or 0) for name in reasons})
    counted.update(kept_customers=int(row["kept_customers"]),
                   kept_abs_total=row["kept_abs_total"])  # fmt: skip
    return counted


def _check_customer_totals(flagged: DataFrame, total: Optional[float]) -> None:
    """Refuse inputs whose exact long micro-unit sums could overflow (see shared); `total`
    is the sum of |amount| over the kept rows."""
    if (total or 0.0) < MAX_CUSTOMER_TOTAL:  # no customer can exceed what all add up to
        return
    worst = (
        flagged.filter(F.col("reason").isNull())
        .groupBy("customer_id")
        .agg(F.sum(F.abs("amount")).alias("total"))
        .orderBy(F.col("total").desc())
        .first()
    )
    if worst["total"] >= MAX_CUSTOMER_TOTAL:
        raise customer_total_error(worst["customer_id"], float(worst["total"]))


def window_rows(frames: list[DataFrame], window_start: Optional[dt.date]) -> DataFrame:
    """The kept rows of several weeks as one plan (see pandas_compute.window_rows)."""
    frame = functools.reduce(lambda a, b: a.unionByName(b), frames)
    if window_start is None:
        return frame
    return frame.filter(day_of(F.col("transaction_date")) >= F.lit(day_number(window_start)))


def distinct_customers(kept: DataFrame) -> int:
    return kept.select("customer_id").distinct().count()


def _net_micro_by_customer(rows: DataFrame, signed_amount: str) -> DataFrame:
    """`customer_id, net_micro`: each customer's exact netted sum (the net rule's judge)."""
    return rows.groupBy("customer_id").agg(
        F.sum(micro_units(F.col(signed_amount))).alias("net_micro")
    )


def net_positive(kept: DataFrame) -> tuple[DataFrame, int]:
    """The kept rows of customers whose netted monetary is above zero, and how many rows
    are not (see pandas_compute.net_positive)."""
    flagged = kept.join(_net_micro_by_customer(kept, "amount"), "customer_id", "left")
    not_positive = flagged.filter(F.col("net_micro") <= 0).count()
    return flagged.filter(F.col("net_micro") > 0).drop("net_micro"), not_positive


def compute_metrics(transactions: DataFrame, reference_date: dt.date) -> DataFrame:
    """One row per customer (see pandas_compute.compute_metrics for the definitions): from
    the per-customer totals the accounting of these very rows took, else from the rows.

    Either way the metrics are a projection of cached totals, and so are the scores and the
    segments after them: the steps cache none of these. Each action recomputes the few
    columns it reads from one row per customer, where a cache per step took a job of its own
    to build and a copy of every customer in memory."""
    ref_day = day_number(reference_date)
    totals = _TOTALS_OF_KEPT.get(transactions)
    if totals is not None:
        per_customer = totals.filter(F.col("kept_lines") > 0)
    else:
        per_customer = persist(_per_customer_totals(transactions, "amount", accounted=False))
    monetary = F.col("micro").cast("double") / F.lit(float(MICRO_UNITS))
    return per_customer.select(
        "customer_id",
        (F.lit(ref_day) - F.col("last_day")).cast("long").alias("recency"),
        "frequency",
        monetary.alias("monetary"),
        F.date_from_unix_date("first_day").cast("timestamp_ntz").alias("first_purchase_date"),
        F.date_from_unix_date("last_day").cast("timestamp_ntz").alias("last_purchase_date"),
        (F.lit(ref_day) - F.col("first_day")).cast("long").alias("tenure_days"),
        (monetary / F.col("frequency")).alias("avg_order_value"),
        (F.col("last_day") - F.col("first_day") + 1).cast("long").alias("customer_lifetime_days"),
        # As pandas: frequency * 30.44 / max(tenure_days, 30.44), in that order.
        (
            F.col("frequency").cast("double") * F.lit(DAYS_PER_MONTH)
            / F.greatest((F.lit(ref_day) - F.col("first_day")).cast("double"),
                         F.lit(DAYS_PER_MONTH))
        ).alias("purchase_frequency_per_month"),
    )  # fmt: skip


def filter_customers(
    metrics: DataFrame,
    min_frequency: Optional[int] = None,
    exclude_recent_days: Optional[int] = None,
) -> tuple[DataFrame, dict[str, int]]:
    """Customers held out before scoring, counted by reason (see pandas_compute)."""
    reasons = [("below_min_frequency", F.col("frequency") < F.lit(min_frequency or 0))]
    recent = F.lit(False)
    if exclude_recent_days is not None:
        recent = F.col("tenure_days") <= F.lit(exclude_recent_days)
    reasons.append(("first_purchase_too_recent", recent))
    reason = first_reason(reasons)
    if min_frequency is None and exclude_recent_days is None:
        return metrics, {name: 0 for name, _ in reasons}
    row = metrics.agg(
        *[F.sum(F.when(reason == name, 1).otherwise(0)).alias(name) for name, _ in reasons]
    ).first()
    counts = {name: int(row[name] or 0) for name, _ in reasons}
    return metrics.filter(reason.isNull()), counts


# --- lifetime value ---------------------------------------------------------------------------


def purchase_summary(kept: DataFrame, end: dt.date) -> DataFrame:
    """clv.purchase_summary on Spark (see engines/clv.py for the definitions): one row per
    customer with a purchase day before `end`, from kept rows. Spend is added in
    micro-units and divided as pandas divides it, so `monetary_value` is the same to the bit.
    The result is one row per customer: small enough for the models to fit on the driver."""
    end_day = day_number(end)
    days = (
        kept.filter(~F.col("is_return"))
        .select("customer_id", day_of(F.col("transaction_date")).alias("day"),
                micro_units(F.col("amount")).alias("micro"))
        .filter(F.col("day") < F.lit(end_day))
        .groupBy("customer_id", "day")
        .agg(F.sum("micro").alias("micro"))
    )  # fmt: skip
    per_customer = days.groupBy("customer_id").agg(
        F.min("day").alias("first_day"),
        F.max("day").alias("last_day"),
        F.count(F.lit(1)).alias("days"),
        (F.sum("micro") - F.min_by("micro", "day")).alias("repeat_micro"),
    )
    repeats = F.col("days") - 1
    # As pandas: the division by max(repeats, 1), whose result a one-day customer drops.
    mean = (
        F.col("repeat_micro").cast("double")
        / F.lit(float(MICRO_UNITS))
        / F.greatest(repeats, F.lit(1))
    )
    return per_customer.select(
        "customer_id",
        repeats.cast("long").alias("frequency"),
        (F.col("last_day") - F.col("first_day")).cast("long").alias("recency"),
        (F.lit(end_day) - F.col("first_day")).cast("long").alias("T"),
        F.when(repeats > 0, mean).otherwise(F.lit(0.0)).alias("monetary_value"),
    )


def holdout_summary(kept: DataFrame, end: dt.date, holdout_days: int) -> DataFrame:
    """clv.holdout_summary on Spark: the calibration summary of the purchase days before
    `end - holdout_days`, with each of its customers' purchase days from then up to `end`
    (`holdout_purchases`)."""
    cutoff = end - dt.timedelta(days=holdout_days)
    day = day_of(F.col("transaction_date"))
    after = (
        kept.filter(~F.col("is_return") & (day >= F.lit(day_number(cutoff)))
                    & (day < F.lit(day_number(end))))
        .groupBy("customer_id")
        .agg(F.countDistinct(day).cast("long").alias("holdout_purchases"))
    )  # fmt: skip
    calibration = purchase_summary(kept, cutoff)
    return (
        calibration.join(after, "customer_id", "left")
        .fillna(0, subset=["holdout_purchases"])
        .orderBy("customer_id")
    )


def with_segment_values(analytics: DataFrame, values: dict[str, dict[str, float]]) -> DataFrame:
    """PandasEngine.with_segment_values on Spark: each column of contract.SEGMENT_VALUE_COLUMNS
    looked up by segment in a literal map (a dozen segments), null for a segment without."""
    from rfm_assets.contract import SEGMENT_VALUE_COLUMNS

    def by_segment(column: str):
        if not values:
            return F.lit(None).cast("double")
        pairs = [F.lit(x) for s, v in values.items() for x in (s, float(v[column]))]
        return F.create_map(*pairs)[F.col("segment")].cast("double")

    return analytics.select("*", *(by_segment(c).alias(c) for c in SEGMENT_VALUE_COLUMNS))


# --- scores ---------------------------------------------------------------------------------

# Accuracy of the first pass's approximate quantiles (Spark's default): a value it returns
# lies within about n / QUANTILE_ACCURACY ranks of the one asked for.
QUANTILE_ACCURACY = 10_000
# How far either side of a boundary the exact pass looks, as a share of the customers: twice
# that error, so that one exact pass nearly always finds every boundary.
BRACKET = 2 / QUANTILE_ACCURACY


@dataclasses.dataclass(frozen=True)
class QuantileBoundaries:
    """Where the quantile scores step up, and the thresholds that publish them.

    score = 1 + floor(k * b / n) is at least j + 1 exactly when b >= m_j = ceil(j * n / k).
    Larger-is-better, b counts the values strictly below: the score passes j where the value
    passes the m_j-th smallest value. Recency, b counts the values strictly above: the score
    passes j where the value falls below the m_j-th largest. `boundaries[dimension][j - 1]`
    is that value; ties share a side of every boundary, hence a score.
    """

    boundaries: dict[str, list[float]]
    thresholds: Optional[dict[str, list[float]]]  # None when there are no customers


@dataclasses.dataclass(frozen=True)
class _Run:
    """Customers of a range of values, in value order: one exact value, or a gap between the
    ranges counted value by value."""

    customers: int
    low: float
    high: float
    exact: bool


def quantile_score(value, boundaries: list[float], higher_is_better: bool):
    """1 + the boundaries `value` is past (above, or for recency below): its quantile score,
    as a long Column for a Column, as an int for a float."""
    past = [(value > b) if higher_is_better else (value < b) for b in boundaries]
    if isinstance(value, Column):
        return sum((p.cast("long") for p in past), F.lit(1).cast("long"))
    return 1 + sum(past)


def quantile_boundaries(metrics: DataFrame, scale: int) -> QuantileBoundaries:
    """The boundaries of the three quantile scores and their thresholds, exactly, in two
    aggregations whatever the number of customers.

    The first counts the customers and brackets each boundary of a fractional dimension
    (monetary) between two approximate quantiles; the second counts each value inside a
    bracket and only the customers of each gap between brackets (with its least and greatest
    value), and every value of a whole-number dimension (recency in days, frequency in
    orders, whose distinct values are few): a few thousand rows. Ranks are then walked on
    the driver. Should a gap hold a boundary after all (the approximation missed), that gap
    is counted value by value in one more aggregation. (A quantile sketch of a whole-number
    column cost more than counting its values, about as much again as the count itself.)
    """
    values = {d: F.col(d).cast("double") for d in HIGHER_IS_BETTER}
    types = {field.name: field.dataType for field in metrics.schema.fields}
    sketched = [d for d in HIGHER_IS_BETTER if not isinstance(types[d], T.IntegralType)]
    fractions = [j / scale for j in range(1, scale)]
    percentages = [min(1.0, max(0.0, f + side)) for f in fractions for side in (-BRACKET, BRACKET)]
    first = metrics.agg(
        F.count(F.lit(1)).alias("customers"),
        *[F.percentile_approx(values[d], percentages, QUANTILE_ACCURACY).alias(d)
          for d in sketched],
    ).first()  # fmt: skip
    n = int(first["customers"])
    if n == 0:
        return QuantileBoundaries({d: [] for d in HIGHER_IS_BETTER}, None)
    every_value = [(float("-inf"), float("inf"))]
    exact = {
        d: _merged(list(zip(first[d][0::2], first[d][1::2]))) if d in sketched else every_value
        for d in HIGHER_IS_BETTER
    }
    while True:
        runs = _value_runs(metrics, values, exact)
        walked = {d: _walk(runs[d], _boundary_ranks(n, scale, d)) for d in HIGHER_IS_BETTER}
        missed = {d: gaps for d, (_, _, gaps) in walked.items() if gaps}
        if not missed:
            break
        for d, gaps in missed.items():
            exact[d] = _merged(exact[d] + gaps)
    boundaries, extremes, maxima = {}, {}, {}
    for d, (found, known, _) in walked.items():
        boundaries[d] = found
        # Every score's least and greatest value is the least or greatest value overall or
        # next to a boundary, and all of those are known: score them by the same rule.
        extremes[d] = {}
        for value in known:
            score = quantile_score(value, found, HIGHER_IS_BETTER[d])
            low, high = extremes[d].get(score, (value, value))
            extremes[d][score] = (min(low, value), max(high, value))
        maxima[d] = runs[d][-1].high
    return QuantileBoundaries(boundaries, cut_points_from_extremes(extremes, maxima, scale))


def _boundary_ranks(n: int, scale: int, dimension: str) -> list[int]:
    """1-based ranks, smallest value first, of the boundaries j = 1..k-1 (see
    QuantileBoundaries)."""
    smallest = [-(-j * n // scale) for j in range(1, scale)]  # ceil(j * n / k), exact
    return smallest if HIGHER_IS_BETTER[dimension] else [n + 1 - m for m in smallest]


def _merged(ranges: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Overlapping (low, high) ranges joined, in order."""
    merged: list[tuple[float, float]] = []
    for low, high in sorted(ranges):
        if merged and low <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], high))
        else:
            merged.append((low, high))
    return merged


def _value_runs(
    metrics: DataFrame, values: dict[str, Column], exact: dict[str, list[tuple[float, float]]]
) -> dict[str, list[_Run]]:
    """Per dimension, its customers as runs in value order: each value inside an `exact`
    range on its own, the values between two ranges together. One aggregation."""
    parts = []
    for d, ranges in exact.items():
        value = values[d]
        inside = functools.reduce(
            lambda a, b: a | b, [value.between(low, high) for low, high in ranges]
        )
        gap = sum((F.when(value > F.lit(high), 1).otherwise(0) for _, high in ranges), F.lit(0))
        parts.append(
            metrics.select(
                F.lit(d).alias("dimension"),
                gap.alias("gap"),  # ranges below the value: the gap, or the range it is in
                F.when(inside, value).alias("exact"),
                value.alias("value"),
            )
        )
    rows = (
        functools.reduce(DataFrame.unionByName, parts)
        .groupBy("dimension", "gap", "exact")
        .agg(
            F.count(F.lit(1)).alias("customers"),
            F.min("value").alias("low"),
            F.max("value").alias("high"),
        )
        .collect()
    )
    runs: dict[str, list[_Run]] = {d: [] for d in exact}
    # A gap comes before the range that ends it, whose values come in order.
    for row in sorted(rows, key=lambda r: (r["gap"], r["exact"] is not None, r["exact"] or 0.0)):
        runs[row["dimension"]].append(
            _Run(int(row["customers"]), row["low"], row["high"], row["exact"] is not None)
        )
    return runs


def _walk(
    runs: list[_Run], ranks: list[int]
) -> tuple[list[float], set[float], list[tuple[float, float]]]:
    """The value at each rank, the values known exactly around them (the least and greatest,
    each rank's value and the values next to it), and the gaps that hold a rank (its value
    is not known yet)."""
    ends = list(itertools.accumulate(run.customers for run in runs))
    found, known, missed = [], {runs[0].low, runs[-1].high}, []
    for rank in ranks:
        i = bisect.bisect_left(ends, rank)  # runs[i] holds the rank
        if not runs[i].exact:
            missed.append((runs[i].low, runs[i].high))
            continue
        found.append(runs[i].low)
        known.add(runs[i].low)
        if i > 0:
            known.add(runs[i - 1].high)
        if i + 1 < len(runs):
            known.add(runs[i + 1].low)
    return found, known, missed


def _fixed_score(value: Column, cut_points: list[float], higher_is_better: bool) -> Column:
    if higher_is_better:
        reached = sum((F.when(value >= F.lit(float(t)), 1).otherwise(0) for t in cut_points),
                      F.lit(0))  # fmt: skip
        return (F.lit(1) + reached).cast("long")
    beyond = sum((F.when(value > F.lit(float(t)), 1).otherwise(0) for t in cut_points), F.lit(0))
    return (F.lit(len(cut_points) + 1) - beyond).cast("long")


def compute_scores(
    metrics: DataFrame,
    scale: int,
    weights: tuple[float, float, float] = (1.0, 1.0, 1.0),
    fixed_cut_points: Optional[dict[str, list[float]]] = None,
    quantiles: Optional[QuantileBoundaries] = None,
) -> DataFrame:
    """Metrics plus R/F/M scores (quantile, or fixed), FM, RFM and the cell.

    Quantile scores compare each value with the boundaries (`quantiles`, or found now): no
    join, no shuffle."""
    if fixed_cut_points is None:
        quantiles = quantiles or quantile_boundaries(metrics, scale)
        score = {
            d: quantile_score(F.col(d), quantiles.boundaries[d], HIGHER_IS_BETTER[d])
            for d in HIGHER_IS_BETTER
        }
    else:
        score = {
            d: _fixed_score(F.col(d), fixed_cut_points[d], HIGHER_IS_BETTER[d])
            for d in HIGHER_IS_BETTER
        }
    scores = metrics.select("*", *[score[d].alias(SCORE_OF[d]) for d in HIGHER_IS_BETTER])
    w_r, w_f, w_m = (float(w) for w in weights)
    r, f, m = F.col("R_score"), F.col("F_score"), F.col("M_score")
    # The same double operations in the same order as numpy, so FM lands on the same side.
    fm = F.floor((F.lit(w_f) * f + F.lit(w_m) * m) / F.lit(w_f + w_m) + F.lit(0.5))
    rfm = (F.lit(w_r) * r + F.lit(w_f) * f + F.lit(w_m) * m) / F.lit(w_r + w_f + w_m)
    return scores.select(
        *metrics.columns,
        "R_score",
        "F_score",
        "M_score",
        fm.cast("long").alias("FM_score"),
        rfm.alias("RFM_score"),
        F.concat(r.cast("string"), f.cast("string"), m.cast("string")).alias("rfm_cell"),
    )


def thresholds_from_scores(scores: DataFrame, scale: int) -> dict[str, list[float]]:
    """Least and greatest value per score and dimension, in one job; cut points as pandas."""
    per_dimension = [
        scores.groupBy(F.col(SCORE_OF[d]).alias("score"))
        .agg(F.min(d).cast("double").alias("low"), F.max(d).cast("double").alias("high"))
        .withColumn("dimension", F.lit(d))
        for d in HIGHER_IS_BETTER
    ]
    rows = functools.reduce(DataFrame.unionByName, per_dimension).collect()
    extremes = {d: {} for d in HIGHER_IS_BETTER}
    for row in rows:
        extremes[row["dimension"]][int(row["score"])] = (row["low"], row["high"])
    maxima = {d: max(high for _, high in extremes[d].values()) for d in HIGHER_IS_BETTER}
    return cut_points_from_extremes(extremes, maxima, scale)


# --- segments -------------------------------------------------------------------------------


def assign_segments(scores: DataFrame, rule_set: RuleSet, segmented_at: dt.datetime) -> DataFrame:
    """Scores plus the segment of each (R, F, M) combination and its catalog fields, from
    the same rule set and catalog as pandas, broadcast as a small table."""
    cells = [((r, f, m), name) for (r, f, m), name in sorted(rule_set.by_code.items())]
    return _with_catalog(
        scores, cells, ["R_score", "F_score", "M_score"], "R_score long, F_score long, "
        "M_score long", rule_set, segmented_at, [],
    )  # fmt: skip


def _with_catalog(
    frame: DataFrame,
    keyed: list[tuple[tuple, str]],
    on: list[str],
    key_schema: str,
    rule_set: RuleSet,
    segmented_at: dt.datetime,
    last: list[str],
) -> DataFrame:
    """`frame` with the segment each key names and the segment's catalog fields, value tier,
    engagement level and time; `last` columns go after them. Ordered as pandas orders it:
    segment priority, then the weighted RFM_score, highest first.

    The sort carries only each row's priority rank (a broadcast join of the keys with a small
    table of (key..., rank)); the names and texts of the catalog are looked up by that rank
    after it. Joined before the sort, every row's recommendation text went through the sort's
    shuffle: the widest column of the table, and the same few texts a million times."""
    catalog = rule_set.catalog
    rank = {entry.name: i for i, entry in enumerate(rule_set.segments)}
    lookup = local_frame(
        frame.sparkSession,
        [(*key, rank[name]) for key, name in keyed],
        f"{key_schema}, segment_rank int",
    )
    ordered = frame.join(F.broadcast(lookup), on=on, how="left").orderBy(
        "segment_rank", F.col("RFM_score").desc(), "customer_id"
    )

    def by_rank(values: list[str]) -> Column:  # null for a key the rule set does not name
        # One SQL expression: a Column call per text would be a Py4J round trip each.
        texts = ", ".join(_sql_text(v) for v in values)
        return F.expr(f"element_at(array({texts}), segment_rank + 1)")

    def by_score(labels: tuple[str, ...], score: str) -> Column:
        table = F.create_map(*[F.lit(x) for i, v in enumerate(labels) for x in (i + 1, v)])
        return F.element_at(table, F.col(score))

    names = [entry.name for entry in rule_set.segments]
    entries = [catalog[name] for name in names]
    return ordered.select(
        *[c for c in frame.columns if c not in last],
        by_rank(names).alias("segment"),
        by_rank([e.segment_id for e in entries]).alias("segment_id"),
        by_rank([e.recommendation for e in entries]).alias("recommendation"),
        by_score(rule_set.value_tiers, "FM_score").alias("value_tier"),
        by_score(rule_set.engagement_levels, "R_score").alias("engagement_level"),
        F.lit(segmented_at).cast("timestamp").alias("segmented_at"),
        *last,
    )


# --- k-means (segmentation_method: kmeans) ----------------------------------------------


def days_between_purchases() -> Column:
    """clustering.days_between_purchases as a column: (customer_lifetime_days - 1) /
    (frequency - 1) with more than one order, else tenure_days."""
    return F.when(
        F.col("frequency") > 1,
        (F.col("customer_lifetime_days") - 1).cast("double") / (F.col("frequency") - 1),
    ).otherwise(F.col("tenure_days").cast("double"))


def feature_column(name: str) -> Column:
    """A clustering feature of a customer table, as a double column."""
    if name == "days_between_purchases":
        return days_between_purchases()
    return F.col(name).cast("double")


def _logged(name: str) -> Column:
    return F.log1p(F.greatest(feature_column(name), F.lit(0.0)))


def _scaled(model) -> list[Column]:
    """The scaled features of ClusterModel.scaled, as columns."""
    return [
        (_logged(name) - float(model.median[j])) / float(model.iqr[j])
        for j, name in enumerate(model.features)
    ]


def nearest_cluster(model) -> tuple[Column, Column]:
    """(cluster, distance) columns of ClusterModel.assign: the nearest centroid in scaled
    space, the lower cluster id on a tie."""
    scaled = _scaled(model)
    distances = [
        F.sqrt(sum((x - float(c)) ** 2 for x, c in zip(scaled, centroid)))
        for centroid in model.centroids
    ]
    nearest = F.least(*distances)
    cluster = F.coalesce(*[F.when(d == nearest, F.lit(i)) for i, d in enumerate(distances)])
    return cluster.cast("long"), nearest


def fit_clusters(scores: DataFrame, k_range: tuple[int, int], sample_size: int, seed: int,
                 features: tuple[str, ...], method: str = "kmeans"):  # fmt: skip
    """clustering.fit on Spark: the same scaling (exact medians and IQRs, Spark's
    `percentile`) and the same choice of k (clustering.search_k on a seeded Spark sample of at
    most SEARCH_SAMPLE customers, collected to the driver: a few MB), then MLlib's k-means
    fits the chosen k on every customer. With `method` auto, clustering.best_method compares
    the three methods on that sample; a winner other than k-means keeps its means (no MLlib
    fit). Returns (the model, the comparison or {})."""
    import numpy as np
    from pyspark.ml.clustering import KMeans
    from pyspark.ml.feature import VectorAssembler

    from rfm_assets.engines.clustering import (
        SEARCH_SAMPLE,
        ClusterModel,
        best_method,
        largest_k,
        search_k,
    )

    quartiles = scores.agg(
        *[F.percentile(_logged(n), [0.25, 0.5, 0.75]).alias(n) for n in features],
        F.count(F.lit(1)).alias("customers"),
    ).first()
    low, median, high = (np.array([quartiles[n][i] for n in features]) for i in range(3))
    iqr = np.where(high - low > 0, high - low, 1.0)
    customers = int(quartiles["customers"])
    unfitted = ClusterModel(median, iqr, None, features=tuple(features))
    scaled = scores.select(*[x.alias(f"x{j}") for j, x in enumerate(_scaled(unfitted))])
    highest = largest_k(k_range, scaled.distinct().count())
    search = scaled
    if customers > SEARCH_SAMPLE:
        search = scaled.sample(fraction=SEARCH_SAMPLE / customers, seed=seed)
    search = np.array(search.collect(), dtype=np.float64).reshape(-1, len(features))
    rng = np.random.default_rng(seed)
    sample = rng.choice(len(search), size=min(sample_size, len(search)), replace=False)
    k, silhouettes, inertias, fitted = search_k(search, sample, k_range[0], highest, seed)
    compared = {}
    if method == "auto":
        found = dataclasses.replace(unfitted, centroids=fitted.cluster_centers_)
        chosen, compared = best_method(found, search, sample_size, seed)
        if chosen.fitted["method"] != "kmeans":
            return dataclasses.replace(chosen, silhouette_by_k=silhouettes,
                                       inertia_by_k=inertias), compared  # fmt: skip
    columns = [f"x{j}" for j in range(len(features))]
    vectors = VectorAssembler(inputCols=columns, outputCol="features")
    # Up to 50 rounds (MLlib stops at 20 by default): on the bundled data 20 leave a centroid
    # on the other side of a cut point from the converged one, which renames its cluster.
    fitted = KMeans(k=k, seed=seed, maxIter=50).fit(vectors.transform(scaled))
    centroids = np.array(fitted.clusterCenters())
    chosen = {"method": "kmeans"}
    if method == "auto":  # and k-means won
        chosen["method_choice"] = "best silhouette of three"
    model = dataclasses.replace(unfitted, centroids=centroids, silhouette_by_k=silhouettes,
                                inertia_by_k=inertias, fitted=chosen)  # fmt: skip
    return model, compared


def cluster_segments(
    scores: DataFrame,
    rule_set: RuleSet,
    thresholds: dict[str, list[float]],
    k_range: tuple[int, int],
    sample_size: int,
    seed: int,
    segmented_at: dt.datetime,
    stored=None,
    fitted: Optional[dict] = None,
    features: tuple[str, ...] = ("recency", "frequency", "monetary"),
    method: str = "kmeans",
):
    """pandas_compute.cluster_segments on Spark: MLlib fits; the assignment, names, sums and
    summary follow the same rules (engines.clustering)."""
    import numpy as np

    from rfm_assets.engines import clustering

    compared = {}
    if stored is None:
        model, compared = fit_clusters(scores, k_range, sample_size, seed, features, method)
    else:
        model = stored
    cluster, distance = nearest_cluster(model)
    with_clusters = persist(
        scores.select(*scores.columns, cluster.alias("cluster"), distance.alias("cluster_distance"))
    )
    sums = cluster_sums(with_clusters, model)
    if stored is None:
        model = model.named(thresholds, rule_set, sums.counts)
        customers = int(sums.counts.sum())
        # model.fitted: the method (and method_choice with auto), as fit_clusters chose.
        model.fitted = {**(fitted or {}), **model.fitted, "engine": "spark", "customers": customers}
    named = [((c,), name) for c, name in enumerate(model.segments)]
    lookup = F.create_map(*[F.lit(x) for c, name in enumerate(model.names) for x in (c, name)])
    segmented = _with_catalog(
        with_clusters.withColumn("cluster_name", F.element_at(lookup, F.col("cluster"))),
        named, ["cluster"], "cluster long", rule_set, segmented_at,
        list(clustering.CLUSTER_COLUMNS),
    )  # fmt: skip
    # A seeded sample on the driver, collected as rows (no pandas conversion in Spark).
    sample = np.array(
        with_clusters.orderBy(F.rand(seed))
        .limit(sample_size)
        .select(*[feature_column(n) for n in model.features], "cluster")
        .collect(),
        dtype=np.float64,
    ).reshape(-1, len(model.features) + 1)
    values, labels = sample[:, :-1], sample[:, -1].astype(np.int64)
    silhouette = clustering.silhouette_of_sample(model, values, labels, seed, sample_size)
    if stored is None and not compared:
        compared = clustering.compare_methods(model, values, sample_size, seed)
    summary = clustering.summary(
        model, silhouette, sums, applied=stored is not None, methods_compared=compared
    )
    return segmented, summary, model


def cluster_sums(with_clusters: DataFrame, model):
    """clustering.cluster_sums in two passes: the clusters' means, then the distances."""
    import numpy as np

    from rfm_assets.engines.clustering import ClusterSums

    scaled = _scaled(model)
    k = model.k
    rows = (
        with_clusters.groupBy("cluster")
        .agg(F.count(F.lit(1)).alias("n"), *[F.avg(x).alias(f"m{j}") for j, x in enumerate(scaled)])
        .collect()
    )  # fmt: skip
    counts, means = np.zeros(k, dtype=np.int64), np.zeros((k, len(scaled)))
    for row in rows:
        counts[row["cluster"]] = row["n"]
        means[row["cluster"]] = [row[f"m{j}"] for j in range(len(scaled))]

    def mean_of(j: int) -> Column:
        return F.element_at(
            F.array(*[F.lit(float(v)) for v in means[:, j]]), (F.col("cluster") + 1).cast("int")
        )

    distance = F.sqrt(sum((x - mean_of(j)) ** 2 for j, x in enumerate(scaled)))
    spread = (
        with_clusters.groupBy("cluster")
        .agg(F.sum(distance).alias("distance"), F.sum(distance**2).alias("squares"))
        .collect()
    )
    mean_distance, within = np.zeros(k), 0.0
    for row in spread:
        mean_distance[row["cluster"]] = row["distance"] / counts[row["cluster"]]
        within += row["squares"]
    return ClusterSums(counts, means, mean_distance, float(within))


def segment_analytics(
    segmented: DataFrame, rule_set: RuleSet, thresholds: dict[str, list[float]]
) -> DataFrame:
    """Per-segment sums in Spark; the table itself from the shared builder."""
    rows = (
        segmented.groupBy("segment")
        .agg(
            F.count(F.lit(1)).alias("customers"),
            # Exact at any size: decimal sums, as Python ints on the driver.
            F.sum(micro_units(F.col("monetary")).cast("decimal(38,0)")).alias("revenue_micro"),
            F.sum("recency").alias("recency"),
            F.sum("frequency").alias("orders"),
        )
        .collect()
    )
    aggregates = {row["segment"]: {k: int(row[k]) for k in row.asDict() if k != "segment"}
                  for row in rows}  # fmt: skip
    table = analytics_from_aggregates(aggregates, rule_set, thresholds)
    schema = T.StructType(
        [T.StructField(name, _spark_type(name, table[name].dtype), True) for name in table.columns]
    )
    records = [
        tuple(_python_value(value) for value in record)
        for record in table.itertuples(index=False, name=None)
    ]
    # A dozen rows: one partition keeps their priority order through every write.
    return local_frame(segmented.sparkSession, records, schema).coalesce(1)


def local_frame(spark: SparkSession, records: list[tuple], schema) -> DataFrame:
    """A small table of Python values (`schema`: a StructType or DDL text), in the order
    given, built in the JVM from one SQL expression of literals. createDataFrame would hand
    the rows to Python worker processes, which a run otherwise never starts (about a second
    and a half to start them); a Column call per value would cost a Py4J round trip each."""
    if isinstance(schema, str):
        schema = T.DataType.fromDDL(schema)
    if not records:
        return spark.range(0).select(*[F.lit(None).cast(f.dataType).alias(f.name) for f in schema])
    rows = ", ".join(
        "named_struct("
        + ", ".join(f"{_sql_text(f.name)}, {_sql_literal(v, f.dataType)}"
                    for v, f in zip(record, schema))
        + ")"
        for record in records
    )  # fmt: skip
    # The cast gives every column the nullability createDataFrame would give it.
    return spark.range(1).select(F.inline(F.expr(f"array({rows})").cast(T.ArrayType(schema))))


def _sql_text(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _sql_literal(value, kind: T.DataType) -> str:
    """`value` as SQL of type `kind`: text cast to it (repr of a float reads back exactly;
    nan and inf are read as such)."""
    if value is None:
        return f"CAST(NULL AS {kind.simpleString()})"
    if isinstance(kind, T.ArrayType):
        items = ", ".join(_sql_literal(v, kind.elementType) for v in value)
        return f"CAST(array({items}) AS {kind.simpleString()})"
    text = repr(value) if isinstance(value, float) else str(value)
    return f"CAST({_sql_text(text)} AS {kind.simpleString()})"


def _spark_type(name: str, dtype) -> T.DataType:
    if name.endswith("_thresholds"):
        return T.ArrayType(T.DoubleType())
    if dtype.kind in "iu":
        return T.LongType()
    if dtype.kind == "f":
        return T.DoubleType()
    return T.StringType()


def _python_value(value):
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    return value


def _joinable_ids(previous: DataFrame, current: DataFrame) -> Column:
    """Customer ids of two weeks in one type: as they are when they agree, else as text."""
    same = previous.schema["customer_id"].dataType == current.schema["customer_id"].dataType
    return F.col("customer_id") if same else F.col("customer_id").cast("string")


def segment_migration(previous: DataFrame, current: DataFrame, order: list[str]) -> DataFrame:
    """From x to table between two weeks (see pandas_compute.segment_migration)."""
    key = _joinable_ids(previous, current)
    before = previous.select(
        key.alias("key"),
        F.col("segment").cast("string").alias("from_segment"),
        micro_units(F.col("monetary")).alias("before_micro"),
    )
    now = current.select(
        key.alias("key"),
        F.col("segment").cast("string").alias("to_segment"),
        micro_units(F.col("monetary")).alias("now_micro"),
    )
    joined = before.join(now, on="key", how="full_outer")
    micro = F.when(F.col("to_segment").isNotNull(), F.col("now_micro")).otherwise(
        F.col("before_micro")
    )
    rows = (
        joined.groupBy(
            F.coalesce("from_segment", F.lit(NEW_CUSTOMERS)).alias("from_segment"),
            F.coalesce("to_segment", F.lit(LAPSED_CUSTOMERS)).alias("to_segment"),
        )
        .agg(
            F.count(F.lit(1)).alias("customers"),
            # Exact at any size: decimal sums, as Python ints on the driver.
            F.sum(micro.cast("decimal(38,0)")).alias("revenue_micro"),
        )
        .collect()
    )
    aggregates = {
        (row["from_segment"], row["to_segment"]): (int(row["customers"]), int(row["revenue_micro"]))
        for row in rows
    }
    table = migration_from_aggregates(aggregates, order)
    schema = "from_segment string, to_segment string, customers long, revenue double"
    records = [tuple(_python_value(v) for v in r) for r in table.itertuples(index=False, name=None)]
    return local_frame(current.sparkSession, records, schema).coalesce(1)


def slipping_customers(
    previous: DataFrame, current: DataFrame, engaged: list[str], slipping: list[str]
) -> DataFrame:
    """Customers who moved from an engaged segment into a slipping one (see pandas_compute)."""
    key = _joinable_ids(previous, current)
    before = previous.filter(F.col("segment_id").isin(engaged)).select(
        key.alias("key"), F.col("segment").cast("string").alias("previous_segment")
    )
    now = current.filter(F.col("segment_id").isin(slipping)).withColumn("key", key)
    moved = now.join(before, on="key", how="inner")
    shown = [c for c in SLIPPING_COLUMNS if c in moved.columns]  # see pandas_compute
    return moved.select(*shown).orderBy(F.col("monetary").desc(), "customer_id")


def high_value_customers(segmented: DataFrame, top_percentage: float, by: str) -> DataFrame:
    """The tie-safe top share of customers by `by` (see rfm_assets.lists): rank() - 1 is the
    number of customers with a strictly greater value."""
    customers = segmented.count()
    # One window over the customer table (not the transactions): a global order.
    rank = F.rank().over(Window.orderBy(F.col(by).desc()))
    ranked = segmented.withColumn("high_value_rank", rank.cast("long"))
    chosen = ranked.filter((F.col("high_value_rank") - 1) < F.lit(top_percentage * customers))
    return chosen.orderBy("high_value_rank", "customer_id")
