"""What customer lifetime value adds to a run, piece by piece, in one process.

    python benchmarks/clv_cost.py /tmp/rfm-large/large_10000000_1000000_seed42.parquet \
        [--repeats 3] [--results benchmarks/results/clv_cost.json]

Reads and cleans the file once with the pandas engine (not timed: the graph does that
anyway), then times, median of --repeats after one warm-up on 10,000 customers drawn at random
(which also compiles PyTensor's functions, a one-off cost on a fresh machine, shown apart):

- summary: `clv.purchase_summary` (purchase days per customer from the kept rows);
- fit: `clv.fit` (BG/NBD on every customer, Gamma-Gamma on repeat customers, MAP);
- predict: `clv.predict` over 365 days, undiscounted and discounted at 10% a year.

Peak RSS (VmHWM) of the process is printed at the end; it includes the kept rows.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path


def peak_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def timed(work, repeats: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--results", type=Path)
    args = parser.parse_args()

    from rfm_assets.engines import clv
    from rfm_assets.engines.dispatch import PandasEngine
    from rfm_assets.settings import RFMSettings

    settings = RFMSettings(
        input_path=args.file, columns={"order_id": "order_id", "amount": "amount"}
    )
    spec, engine = settings.run_spec(), PandasEngine()
    raw, listing = engine.read(spec)
    kept, account = engine.prepare(raw, spec, listing, consume=True)
    end = account.reference_date
    print(f"{account.rows_kept:,} kept rows, {account.customers:,} customers", flush=True)

    start = time.perf_counter()
    summary = clv.purchase_summary(kept, end)
    small = summary.sample(10_000, random_state=0)
    clv.predict(clv.fit(small), small, 365)
    warm_up = time.perf_counter() - start
    print(f"  warm-up (10,000 customers; compiles on a fresh machine) {warm_up:7.2f} s")

    figures = {}
    figures["summary"] = timed(lambda: clv.purchase_summary(kept, end), args.repeats)
    fitted = clv.fit(summary)
    figures["fit"] = timed(lambda: clv.fit(summary), args.repeats)
    figures["predict"] = timed(lambda: clv.predict(fitted, summary, 365), args.repeats)
    figures["predict, discounted"] = timed(
        lambda: clv.predict(fitted, summary, 365, annual_discount_rate=0.10), args.repeats
    )
    for name, (median, _) in figures.items():
        print(f"  {name:<24} {median:7.2f} s", flush=True)
    peak = peak_mib()
    print(f"  peak RSS {peak:,.0f} MiB; {fitted.diagnostics}; {fitted.parameters}")
    if args.results:
        document = {
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "date": time.strftime("%Y-%m-%d"),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
            "rows_kept": account.rows_kept,
            "customers": len(summary),
            "warm_up_s": warm_up,
            "seconds": {k: {"median": m, "runs": t} for k, (m, t) in figures.items()},
            "peak_rss_mib": peak,
            "diagnostics": fitted.diagnostics,
            "parameters": fitted.parameters,
        }
        args.results.write_text(json.dumps(document, indent=2))


if __name__ == "__main__":
    main()
