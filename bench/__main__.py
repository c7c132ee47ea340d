"""`python -m bench` (`make bench`). Starts its own embedded broker and database unless
KAFKA_BOOTSTRAP_SERVERS / DATABASE_URL are set, so nothing else shares them."""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
from typing import Any

from shared.devstack import embedded_stack

from . import (
    authorization,
    budgets,
    dashboard,
    metering,
    process,
    reconcile,
    renewals,
    report,
    restart,
    scaling,
    seats,
    webhooks,
    year,
)


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
    delivery = latency["delivery"]
    print(
        f"  visibility:      p50 {latency['p50_ms']} ms, p99 {latency['p99_ms']} ms "
        f"(broker delivery alone: p50 {delivery['p50_ms']}, p99 {delivery['p99_ms']} ms)"
    )
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
            "end_to_end_vs_insert_ceiling": 0.8,
            "visibility_p99_ms": 50,
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
                    f"end to end = {ratios['end_to_end_vs_insert_ceiling']:.2f} x (target >= 0.8)",
                ),
                (
                    "ceiling: consume, do nothing",
                    f"{consume['per_second']:,}/s",
                    f"end to end = {ratios['end_to_end_vs_consume_ceiling']:.2f} x",
                ),
                (
                    f"balance visible, p50 / p99 @ {args.moderate_rate:,}/s",
                    f"{latency['p50_ms']} / {latency['p99_ms']} ms",
                    "target p99 <= 50 ms",
                ),
                (
                    "baseline: broker delivery alone, same probes",
                    f"{delivery['p50_ms']} / {delivery['p99_ms']} ms",
                    "publish -> a consumer that does nothing has it",
                ),
            ],
        )
    )
    return figures


async def run_authorization(kafka: str, database: str, args: argparse.Namespace) -> dict[str, Any]:
    rates = [int(r) for r in args.spread_rates.split(",")]
    print(
        f"authorization: hot {args.hot_requests:,} requests from {args.connections} callers; "
        f"spread over 1,000 organisations at {args.spread_rates}/s, {args.spread_seconds:g} s each"
    )
    api = await authorization.through_the_api(
        kafka,
        database,
        hot_requests=args.hot_requests,
        hot_credits=args.hot_requests * 2 // 3,
        connections=args.connections,
        spread_rates=rates,
        spread_seconds=args.spread_seconds,
    )
    ceiling = await authorization.postgres_ceiling(
        database,
        hot_requests=args.hot_requests,
        connections=args.connections,
        spread_rate=max(rates),
        spread_seconds=args.spread_seconds,
    )
    apart = await authorization.api_apart(
        kafka, database, rate=max(rates), seconds=args.spread_seconds
    )
    hot, spread = api["hot"], api["spread"]
    ratio = round(hot["per_second"] / ceiling["hot_per_second"], 2)
    print()
    print(
        report.table(
            "Credit authorization (HTTP, group commit; PostgreSQL on this machine)",
            [
                ("measure", "figure", "ceiling / target"),
                (
                    f"hot: 1 organisation, {args.connections} callers",
                    f"{hot['per_second']:,}/s (p50 {hot['p50_ms']} / p99 {hot['p99_ms']} ms)",
                    f"PostgreSQL, 1 update/request: {ceiling['hot_per_second']:,}/s "
                    f"-> {ratio:.2f} x (target >= 2)",
                ),
                *(
                    (
                        f"spread: 1,000 organisations at {int(rate):,}/s",
                        f"p50 {s['p50_ms']} / p99 {s['p99_ms']} ms",
                        (
                            f"target p50 <= 2, p99 <= 10 ms; PostgreSQL alone: "
                            f"p50 {ceiling['spread_p50_ms']} / p99 {ceiling['spread_p99_ms']} ms"
                        )
                        if int(rate) == max(rates)
                        else "",
                    )
                    for rate, s in spread["by_rate"].items()
                ),
                (
                    f"spread at {max(rates):,}/s, the API in a process of its own",
                    f"p50 {apart['p50_ms']} / p99 {apart['p99_ms']} ms",
                    "consumers and outbox relay in a second process",
                ),
                (
                    "approved on the hot wallet",
                    f"{hot['approved']:,} of {hot['requests']:,}",
                    f"credits cover {hot['credits_granted']:,} estimates",
                ),
                (
                    "overspend (held by approvals - granted)",
                    f"{hot['overspend'] + spread['overspend'] + apart['overspend']}",
                    "target 0",
                ),
            ],
        )
    )
    return {
        **api,
        "api_apart": apart,
        "postgres_ceiling": ceiling,
        "ratios": {"hot_vs_postgres_ceiling": ratio},
        "targets": {"hot_vs_postgres_ceiling": 2, "spread_p50_ms": 2, "spread_p99_ms": 10},
    }


async def run_restart(kafka: str, database: str, args: argparse.Namespace) -> dict[str, Any]:
    print(f"restart: metering killed, started again (session timeout {args.session_ms} ms)")
    figures = await restart.after_a_crash(kafka, database, args.session_ms)
    first, again = figures["first_start"], figures["after_sigkill"]
    print()
    print(
        report.table(
            "Restart after SIGKILL (seconds from spawning the process)",
            [
                ("measure", "after SIGKILL", "first start (baseline) / target"),
                (
                    "first authorization answered",
                    f"{again['first_authorization_s']} s",
                    f"{first['first_authorization_s']} s; target <= 2 s",
                ),
                (
                    "both consumer groups joined",
                    f"{again['groups_joined_s']} s",
                    f"{first['groups_joined_s']} s; bound: the session timeout "
                    f"({args.session_ms / 1000:g} s) of the dead member",
                ),
            ],
        )
    )
    return figures


async def run_webhooks(kafka: str, database: str, args: argparse.Namespace) -> dict[str, Any]:
    rate, seconds = args.webhook_rate, args.webhook_seconds
    print(f"webhooks: {rate}/s for {seconds:g} s, signed, to the Stripe gateway")
    gateway = await webhooks.through_the_gateway(
        kafka, database, rate=rate, seconds=seconds, process=False
    )
    verify = webhooks.verification_ceiling()
    insert = await webhooks.insert_ceiling(database, rate=rate, seconds=seconds)
    print()
    print(
        report.table(
            "Stripe webhooks (verified, stored once, answered; the objects they name are "
            "fetched afterwards: see reconciliation for Stripe fetches)",
            [
                ("measure", "figure", "baseline / target"),
                (
                    f"answered at {rate}/s, p50 / p99",
                    f"{gateway['p50_ms']} / {gateway['p99_ms']} ms",
                    "target p99 <= 50 ms",
                ),
                (
                    "bare insert of the same rows, same rate",
                    f"{insert['p50_ms']} / {insert['p99_ms']} ms",
                    f"gateway p99 = {gateway['p99_ms'] / max(insert['p99_ms'], 0.01):.1f} x",
                ),
                (
                    "signature verification alone",
                    f"{verify['per_verification_us']} us each",
                    "",
                ),
            ],
        )
    )
    return {"gateway": gateway, "verification": verify, "insert_ceiling": insert}


async def run_renewals(kafka: str, database: str, args: argparse.Namespace) -> dict[str, Any]:
    count = args.renewals
    print(f"renewals: {count:,} organisations whose credit period ends at the same instant")
    services = await renewals.through_the_services(kafka, database, count)
    ceiling = await renewals.grant_ceiling(kafka, database, count)
    ratio = round(services["per_second"] / ceiling["per_second"], 2)
    print()
    print(
        report.table(
            "Monthly renewal (subscriptions -> metering, both in their own processes)",
            [
                ("measure", "figure", "ceiling / target"),
                (
                    f"{count:,} renewed, credits in metering",
                    f"{services['seconds']} s ({services['per_second']:,}/s)",
                    "target <= 30 s",
                ),
                (
                    "resets in metering's ledger",
                    f"{services['resets_in_ledger']:,}",
                    f"target exactly {count:,}",
                ),
                (
                    "metering's grant-apply ceiling (grants published directly)",
                    f"{ceiling['seconds']} s ({ceiling['per_second']:,}/s)",
                    f"renewal = {ratio:.2f} x the ceiling",
                ),
            ],
        )
    )
    return {"services": services, "grant_ceiling": ceiling, "ratio": ratio}


async def run_seats(kafka: str, database: str, args: argparse.Namespace) -> dict[str, Any]:
    events, organisations, rate = args.seat_events, args.seat_organisations, args.seat_check_rate
    print(f"seats: {events:,} membership events over {organisations:,} organisations")
    projected = await seats.projection(kafka, database, events, organisations)
    ceiling = await seats.insert_ceiling(database, events, organisations)
    schema = projected["schema"]
    checks = await seats.seat_checks(
        kafka, database, schema, organisations, rate=rate, seconds=args.seat_check_seconds
    )
    postgres = await seats.postgres_checks(
        database, schema, organisations, rate=rate, seconds=args.seat_check_seconds
    )
    ratio = round(projected["per_second"] / ceiling["per_second"], 2)
    print()
    print(
        report.table(
            "Seats (the seat service in its own process)",
            [
                ("measure", "figure", "baseline / target"),
                (
                    "membership events projected, counted",
                    f"{projected['per_second']:,}/s ({projected['seconds']} s)",
                    "target >= 20,000/s",
                ),
                (
                    "bare insert of the same rows, same batches",
                    f"{ceiling['per_second']:,} rows/s",
                    f"projection = {ratio:.2f} x the insert",
                ),
                (
                    f"seat check at {rate}/s over {organisations:,} organisations, p50 / p99",
                    f"{checks['p50_ms']} / {checks['p99_ms']} ms",
                    "target p99 <= 10 ms",
                ),
                (
                    "PostgreSQL alone, the same query at the same rate",
                    f"{postgres['p50_ms']} / {postgres['p99_ms']} ms",
                    f"errors through the API: {checks['errors']}",
                ),
            ],
        )
    )
    return {
        "projection": projected,
        "insert_ceiling": ceiling,
        "ratio": ratio,
        "seat_check": checks,
        "postgres_check": postgres,
    }


async def run_dashboard(kafka: str, database: str, args: argparse.Namespace) -> dict[str, Any]:
    pages, organisations = args.live_pages, args.live_organisations
    print(f"dashboard: {pages} open Billing pages over {organisations} organisations")
    live = await dashboard.live_pages(kafka, database, pages=pages, organisations=organisations)
    many, one = live["many"], live["one"]
    print()
    print(
        report.table(
            "Live Billing pages (server-sent events; the dashboard in its own process)",
            [
                ("measure", "figure", "baseline / target"),
                (
                    f"{pages} open pages: publish -> page updated, p50 / p99 / max",
                    f"{many['p50_ms']} / {many['p99_ms']} / {many['max_ms']} ms",
                    f"target: all within 1 s ({many['within_1s']} of {pages})",
                ),
                (
                    "one open page, the same change",
                    f"{one['p50_ms']} ms",
                    f"{pages} pages: max = {many['max_ms'] / max(one['p50_ms'], 0.1):.1f} x",
                ),
            ],
        )
    )
    return live


async def run_reconcile(kafka: str, database: str, args: argparse.Namespace) -> dict[str, Any]:
    count, drifted = args.reconcile_organisations, args.reconcile_drifted
    print(f"reconciliation: {count:,} paid organisations in devstripe, {drifted} drifted")
    found = await reconcile.sweep(kafka, database, count, drifted)
    sweep, raw = found["sweep"], found["raw_fetch"]
    print()
    print(
        report.table(
            "Reconciliation (one sweep: Stripe's subscriptions against the gateway's)",
            [
                ("measure", "figure", "baseline / target"),
                (
                    f"sweep over {count:,} paid organisations",
                    f"{found['sweep_seconds']} s",
                    "target <= 60 s",
                ),
                (
                    "raw fetch: the same subscriptions listed, nothing else",
                    f"{raw['seconds']} s ({raw['requests']} requests)",
                    f"sweep = {found['sweep_vs_raw_fetch']} x",
                ),
                (
                    "drift found and repaired",
                    f"{sweep.get('repaired')} of {drifted}",
                    f"{sweep.get('subscriptions')} compared, {sweep.get('alerts')} alerts",
                ),
            ],
        )
    )
    return found


async def run_year(kafka: str, database: str, args: argparse.Namespace) -> dict[str, Any]:
    count = args.year_organisations
    print(f"a year: {count:,} organisations on mixed plans, moved forward twelve months")
    found = await year.run(kafka, database, count)
    print()
    print(
        report.table(
            "A year of billing on the movable clock (`billing clock advance 1y`)",
            [
                ("measure", "figure", "target"),
                (
                    f"one year, {count:,} organisations ({found['paid']} paid)",
                    f"{found['year_seconds']} s in {found['steps']} steps",
                    "target < 60 s",
                ),
                (
                    "credit renewals (metering's renewal resets)",
                    f"{found['credit_renewals']:,}",
                    f"expected {12 * count:,}",
                ),
                (
                    "Stripe's renewal invoices (devstripe)",
                    f"{found['stripe_renewal_invoices']:,}",
                    "",
                ),
                ("cost per renewal (both kinds)", f"{found['ms_per_renewal']} ms", ""),
            ],
        )
    )
    return found


async def run_buckets(kafka: str, database: str, args: argparse.Namespace) -> dict[str, Any]:
    events, organisations = args.bucket_events, args.organisations
    print(f"buckets: {events:,} usage events for {organisations:,} wallets, 1 then 5 buckets each")
    workload = metering.make_workload(events, organisations, seed=5)
    runs: dict[int, list[dict[str, Any]]] = {1: [], 5: []}
    for buckets in (1, 5, 1, 5, 1, 5):
        found = await metering.end_to_end(kafka, database, workload, buckets=buckets)
        runs[buckets].append(found)
        print(f"  {buckets} bucket(s) per wallet: {found['per_second']:>9,} events/s")
    best = {n: max(r["per_second"] for r in found) for n, found in runs.items()}
    median = {n: sorted(r["per_second"] for r in found)[1] for n, found in runs.items()}
    ratios = {
        "five_vs_one_bucket_best": round(best[5] / best[1], 3),
        "five_vs_one_bucket_median": round(median[5] / median[1], 3),
    }
    print()
    print(
        report.table(
            "Usage throughput with buckets (the same workload, runs alternated)",
            [
                ("measure", "figure", "target / ratio"),
                ("1 live bucket per wallet, median of 3", f"{median[1]:,}/s", ""),
                (
                    "5 live buckets per wallet, median of 3",
                    f"{median[5]:,}/s",
                    f"= {ratios['five_vs_one_bucket_median']:.2f} x 1 bucket (target >= 0.9)",
                ),
                (
                    "best of 3, 5 vs 1",
                    f"{best[5]:,} / {best[1]:,}/s",
                    f"= {ratios['five_vs_one_bucket_best']:.2f} x",
                ),
            ],
        )
    )
    return {
        "runs": {str(n): found for n, found in runs.items()},
        "ratios": ratios,
        "targets": {"five_vs_one_bucket": 0.9},
    }


async def run_budgets(kafka: str, database: str, args: argparse.Namespace) -> dict[str, Any]:
    rate = max(int(r) for r in args.spread_rates.split(","))
    hot_requests = args.hot_requests // 3
    print(
        f"budgets: spread over 1,000 organisations at {rate:,}/s, {args.spread_seconds:g} s, and "
        f"hot {hot_requests:,} requests from {args.connections} callers; with budgets and "
        "without, alternated three times"
    )
    found = await budgets.compare(
        kafka,
        database,
        rate=rate,
        seconds=args.spread_seconds,
        hot_requests=hot_requests,
        connections=args.connections,
    )
    rows: list[tuple[str, str, str]] = [("measure", "figure", "target / ratio")]
    for name, what in (("spread", f"spread at {rate:,}/s"), ("hot", "hot, 1 organisation")):
        for side in ("without", "with"):
            s = found[name][side]
            rows.append(
                (f"{what}, {side} budgets", f"p50 {s['p50_ms']} / p99 {s['p99_ms']} ms", "")
            )
        rows.append(
            (
                f"{what}: p50 with / without",
                f"{found[name]['p50_with_vs_without']:.2f} x",
                "target <= 1.2",
            )
        )
    rows.append(("errors, denials", f"{found['errors']}, {found['denied']}", "target 0, 0"))
    print()
    print(report.table("Authorization with budgets (same process, same run)", rows))
    return found | {"targets": {"p50_with_vs_without": 1.2}}


async def run_scaling(kafka: str, database: str, args: argparse.Namespace) -> dict[str, Any]:
    events, organisations = args.bucket_events, args.organisations
    print(
        f"scaling: {events:,} usage events for {organisations:,} wallets, drained by one "
        "metering instance, then by two in one consumer group; alternated three times"
    )
    found = await scaling.compare(kafka, database, events, organisations)
    median = found["median_per_second"]
    print()
    print(
        report.table(
            "Metering scaled out (same machine: 2 cores shared with broker and database)",
            [
                ("measure", "figure", "ratio"),
                ("1 instance, median of 3", f"{median['1']:,}/s", ""),
                (
                    "2 instances, one group, median of 3",
                    f"{median['2']:,}/s",
                    f"= {found['two_vs_one']:.2f} x 1 instance",
                ),
            ],
        )
    )
    return found


SUITES = {
    "metering": run_metering,
    "scaling": run_scaling,
    "buckets": run_buckets,
    "authorization": run_authorization,
    "budgets": run_budgets,
    "restart": run_restart,
    "webhooks": run_webhooks,
    "renewals": run_renewals,
    "seats": run_seats,
    "dashboard": run_dashboard,
    "reconcile": run_reconcile,
    "year": run_year,
}
"""Every suite, in the order a full run takes them."""


def main() -> None:
    parser = argparse.ArgumentParser(prog="make bench")
    parser.add_argument("--events", type=int, default=500_000)
    parser.add_argument("--organisations", type=int, default=1_000)
    parser.add_argument("--bucket-events", type=int, default=200_000)
    parser.add_argument(
        "--moderate-rate", type=int, default=2_000, help="events/s during latency probes"
    )
    parser.add_argument("--probes", type=int, default=300)
    parser.add_argument("--hot-requests", type=int, default=30_000)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument(
        "--spread-rates", default="250,1000", help="steady request rates, comma-separated"
    )
    parser.add_argument("--spread-seconds", type=float, default=15)
    parser.add_argument(
        "--only",
        choices=tuple(SUITES),
        help="run one suite (default: all)",
    )
    parser.add_argument(
        "--session-ms", type=int, default=10_000, help="consumer session timeout for restart"
    )
    parser.add_argument("--webhook-rate", type=int, default=500)
    parser.add_argument("--renewals", type=int, default=100_000)
    parser.add_argument("--live-pages", type=int, default=200)
    parser.add_argument("--live-organisations", type=int, default=20)
    parser.add_argument("--seat-events", type=int, default=220_000)
    parser.add_argument("--seat-organisations", type=int, default=1_000)
    parser.add_argument("--seat-check-rate", type=int, default=1_000)
    parser.add_argument("--seat-check-seconds", type=float, default=15)
    parser.add_argument("--webhook-seconds", type=float, default=15)
    parser.add_argument("--reconcile-organisations", type=int, default=10_000)
    parser.add_argument("--reconcile-drifted", type=int, default=100)
    parser.add_argument("--year-organisations", type=int, default=1_000)
    args = parser.parse_args()
    with embedded_stack(
        "billing_bench",
        kafka_url=os.environ.get("KAFKA_BOOTSTRAP_SERVERS"),
        database_url=os.environ.get("DATABASE_URL"),
    ) as (kafka, database):
        figures: dict[str, Any] = {"parameters": vars(args)}
        for name, run in SUITES.items():
            if args.only in (None, name):
                figures[name] = asyncio.run(run(kafka, database, args))
        stack = process.stack_peaks()  # while the broker and the database still run
    figures["peak_memory_mib"] = (
        {module: max(peaks) for module, peaks in sorted(process.PEAKS.items())}
        | stack
        | {
            "bench (load generator)": round(
                resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1
            )
        }
    )
    print()
    print(
        report.table(
            "Peak memory (resident, MiB) of each process",
            [("process", "peak", "")]
            + [(name, f"{mib}", "") for name, mib in figures["peak_memory_mib"].items()],
        )
    )
    path = report.write("bench", figures)
    print(f"\nfigures written to {path.relative_to(path.parents[2])}")


if __name__ == "__main__":
    main()
