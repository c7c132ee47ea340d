"""`python -m bench` (`make bench`). Starts its own embedded broker and database unless
KAFKA_BOOTSTRAP_SERVERS / DATABASE_URL are set, so nothing else shares them."""

from __future__ import annotations

import argparse
import asyncio
import os
from typing import Any

from shared.devstack import embedded_stack

from . import metering, report


async def run_metering(kafka: str, database: str, args: argparse.Namespace) -> dict[str, Any]:
    print(
        f"metering: preparing {args.events:,} usage events for {args.organisations:,} organisations"
    )
    workload = metering.make_workload(args.events, args.organisations)
    e2e = await metering.end_to_end(kafka, database, workload)
    print(f"  end to end:      {e2e['per_second']:>9,} events/s")
    consume = await metering.consume_ceiling(kafka, e2e["topic"], args.events)
    print(f"  consume ceiling: {consume['per_second']:>9,} records/s")
    insert = await metering.insert_ceiling(database, workload)
    print(f"  insert ceiling:  {insert['per_second']:>9,} rows/s")
    latency = await metering.visibility_latency(
        kafka, database, background_per_second=args.moderate_rate, probes=args.probes
    )
    print(f"  visibility:      p50 {latency['p50_ms']} ms, p99 {latency['p99_ms']} ms")
    ratios = {
        "end_to_end_vs_insert_ceiling": round(e2e["per_second"] / insert["per_second"], 3),
        "end_to_end_vs_consume_ceiling": round(e2e["per_second"] / consume["per_second"], 3),
    }
    figures = {
        "end_to_end": e2e,
        "insert_ceiling": insert,
        "consume_ceiling": consume,
        "visibility_latency": latency,
        "ratios": ratios,
        "targets": {
            "end_to_end_per_second": 50_000,
            "end_to_end_vs_insert_ceiling": round(1 / 3, 3),
            "visibility_p99_ms": 500,
        },
    }
    print()
    print(
        report.table(
            "Credit metering (exactly-once debits, broker and database on this machine)",
            [
                ("measure", "figure", "target / ratio"),
                (
                    "end to end, publish -> committed",
                    f"{e2e['per_second']:,}/s",
                    "target >= 50,000/s",
                ),
                (
                    "ceiling: batched INSERT, same rows",
                    f"{insert['per_second']:,}/s",
                    f"end to end = {ratios['end_to_end_vs_insert_ceiling']:.2f} x (target >= 0.33)",
                ),
                (
                    "ceiling: consume, do nothing",
                    f"{consume['per_second']:,}/s",
                    f"end to end = {ratios['end_to_end_vs_consume_ceiling']:.2f} x",
                ),
                (
                    f"balance visible, p50 / p99 @ {args.moderate_rate:,}/s",
                    f"{latency['p50_ms']} / {latency['p99_ms']} ms",
                    "target p99 <= 500 ms",
                ),
            ],
        )
    )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(prog="make bench")
    parser.add_argument("--events", type=int, default=500_000)
    parser.add_argument("--organisations", type=int, default=1_000)
    parser.add_argument(
        "--moderate-rate", type=int, default=2_000, help="events/s during latency probes"
    )
    parser.add_argument("--probes", type=int, default=300)
    args = parser.parse_args()
    with embedded_stack(
        "billing_bench",
        kafka_url=os.environ.get("KAFKA_BOOTSTRAP_SERVERS"),
        database_url=os.environ.get("DATABASE_URL"),
    ) as (kafka, database):
        figures = {
            "parameters": vars(args),
            "metering": asyncio.run(run_metering(kafka, database, args)),
        }
    path = report.write("bench", figures)
    print(f"\nfigures written to {path.relative_to(path.parents[2])}")


if __name__ == "__main__":
    main()
