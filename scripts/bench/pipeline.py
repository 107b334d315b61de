#!/usr/bin/env python3
"""The document-pipeline benchmark behind scripts/bench-pipeline (run that, not this).

Starts the release binaries for each scenario with a fresh DATA_DIR, a fresh Postgres
database and a private Redis queue, drives them, measures, stops everything and writes the
figures with a baseline measured in the same run to bench/RESULTS.md.

Scenarios (--scenarios, comma-separated; default all):
  html      HTML documents end to end, embedded (SQLite) and Postgres + Redis, under wrk
  pdf       PDF through the pipeline vs cold wkhtmltopdf calls vs the warm engine alone
  xlsx      worker RSS while it writes a 100,000-row XLSX (Postgres + Redis)
  download  API RSS growth while streaming a 50 MB encrypted document (embedded)
  batch     a 10,000-item batch: accepted, all ready, interactive documents beside it,
            two agents' batches shared fairly, its archive streamed (both deployments)
  webhook   1,000 documents with a document.ready delivery each to a receiver on
            loopback: delivery lag and CPU per document, webhooks on vs off (both)

With --baseline REV (the wrapper builds REV's binaries into $BENCH_BASELINE_BIN_DIR), the
html scenario runs as same-run pairs: per deployment REV's binaries and the current ones
side by side, each measurement for both back to back (--rounds, default 2: baseline,
current, current, baseline); the other scenarios run for the current build only.

Python 3.9+ standard library only; needs wrk, psql, redis-cli, curl, wkhtmltopdf. The
machinery it shares with scripts/bench-api is in benchlib.py.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import re
import shlex
import shutil
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
import zipfile
from pathlib import Path

import benchlib
from benchlib import (
    API_BIN,
    BIN_DIR,
    ROOT,
    WORKER_BIN,
    CURRENT,
    BenchError,
    Binaries,
    CpuWindow,
    Deployment,
    PairSection,
    RssSampler,
    Section,
    cpu_table,
    fmt_rate,
    log,
    machine_facts,
    mb,
    missed_by,
    parse_ts,
    percentile,
    psql,
    rss_kb,
    run_wrk,
    shown_env,
    start_run,
    steady_rss_kb,
    write_results,
)

EXAMPLE = BIN_DIR / "examples" / "pdf_engine_bench"
ORIGINAL_HTML_PER_SECOND = 138.0  # the Python original, rendering inside the request


# --------------------------------------------------------------------------------------
# Reading the documents table
# --------------------------------------------------------------------------------------

class Store:
    """Reads generated_documents from SQLite (embedded) or Postgres."""

    def __init__(self, sqlite_path: Path | None = None, pg_url: str | None = None) -> None:
        self.sqlite_path, self.pg_url = sqlite_path, pg_url

    def _sqlite(self, sql: str, args=()) -> list[tuple]:
        con = sqlite3.connect(str(self.sqlite_path), timeout=30)
        try:
            return con.execute(sql, args).fetchall()
        finally:
            con.close()

    def pending(self) -> tuple[int, int]:
        """(documents queued or processing, of which queued and never claimed)."""
        sql = (
            "SELECT count(*), coalesce(sum(CASE WHEN status = 'queued' AND attempts = 0 "
            "THEN 1 ELSE 0 END), 0) FROM generated_documents "
            "WHERE status IN ('queued', 'processing')"
        )
        if self.pg_url:
            total, untouched = psql(self.pg_url, sql).strip().split("|")
            return int(total), int(untouched)
        total, untouched = self._sqlite(sql)[0]
        return int(total), int(untouched)

    def rows(self, document_type: str) -> list[tuple]:
        """(status, created, finished, timings) with times in epoch seconds and the
        worker's own `timings` (queue_ms, render_ms, store_ms…) as a dict or None."""
        if self.pg_url:
            out = psql(
                self.pg_url,
                "SELECT status, extract(epoch FROM created_at), "
                "coalesce(extract(epoch FROM finished_at)::text, ''), coalesce(timings::text, '') "
                f"FROM generated_documents WHERE document_type = '{document_type}'",
            )
            rows = []
            for line in out.splitlines():
                status, created, finished, timings = line.split("|", 3)
                rows.append(
                    (
                        status,
                        float(created),
                        float(finished) if finished else None,
                        json.loads(timings) if timings else None,
                    )
                )
            return rows
        return [
            (
                status,
                parse_ts(created),
                parse_ts(finished) if finished else None,
                json.loads(timings) if timings else None,
            )
            for status, created, finished, timings in self._sqlite(
                "SELECT status, created_at, finished_at, timings FROM generated_documents "
                "WHERE document_type = ?",
                (document_type,),
            )
        ]

    def wait_drained(self, deployment: Deployment, cpu: CpuWindow | None = None,
                     limit: float = 1800, settle: float = 3.0) -> dict:
        """Waits until no document is queued or processing. Rows that stay queued, never
        claimed, for `settle` seconds while nothing else moves are orphans (a request wrk
        cut off at its stop, after the row was written and before its job was): they are
        counted, not waited for. Returns the drain time, the orphans and, given `cpu`, the
        CPU sample taken when the last document finished."""
        started = time.monotonic()
        last_report = 0.0
        last = None
        changed_at = started
        cpu_at_change = cpu.sample() if cpu else None
        while True:
            pending, untouched = self.pending()
            now = time.monotonic()
            if (pending, untouched) != last:
                last, changed_at = (pending, untouched), now
                if cpu:
                    cpu_at_change = cpu.sample()
            if pending == 0 or (pending == untouched and now - changed_at >= settle):
                return {"seconds": changed_at - started, "orphans": pending, "cpu_end": cpu_at_change}
            deployment.check_alive()
            if now - started > limit:
                raise BenchError(f"{pending} documents still pending after {limit:.0f} s")
            if now - last_report > 5:
                log(f"{deployment.name}: {pending} documents still queued or processing")
                last_report = now
            time.sleep(0.1)


def pipeline_stats(rows: list[tuple]) -> dict:
    ready = [(c, f, t or {}) for s, c, f, t in rows if s == "ready" and f is not None]
    failed = sum(1 for s, _, _, _ in rows if s == "failed")
    if not ready:
        raise BenchError(f"no document became ready ({failed} failed, {len(rows)} rows)")
    first = min(r[1] for r in rows)
    last = max(f for _, f, _ in ready)
    latencies = [1000.0 * (f - c) for c, f, _ in ready]
    span = last - first

    def timing(name: str) -> list[float]:
        return [float(t.get(name, 0.0)) for _, _, t in ready]

    return {
        "documents": len(rows),
        "ready": len(ready),
        "failed": failed,
        # Still queued once everything else has finished: rows whose job was never pushed.
        "left_queued": sum(1 for r in rows if r[0] == "queued"),
        "span_s": span,
        "per_second": len(ready) / span if span > 0 else float("nan"),
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "max_ms": max(latencies),
        # The worker's own account: waiting before the claim, then rendering and storing.
        "queue_p50_ms": percentile(timing("queue_ms"), 50),
        "render_mean_ms": statistics.fmean(timing("render_ms")),
        "store_mean_ms": statistics.fmean(timing("store_ms")),
    }


def new_deployment(run_dir: Path, name: str, extra: dict[str, str], postgres: bool,
                   bins: Binaries = CURRENT) -> tuple[Deployment, Store]:
    deployment = benchlib.new_deployment(run_dir, name, extra, postgres, bins)
    if postgres:
        store = Store(pg_url=deployment.env["DATABASE_URL"])
    else:
        store = Store(sqlite_path=deployment.workdir / "data" / "monassurance.db")
    return deployment, store


# --------------------------------------------------------------------------------------
# Templates and bodies
# --------------------------------------------------------------------------------------

ATTESTATION = """<!doctype html>
<html lang="fr"><head><meta charset="utf-8"><title>Attestation d'assurance</title>
<style>body { font-family: sans-serif; margin: 2em } th { text-align: left }</style></head>
<body>
<h1>Attestation d'assurance automobile</h1>
<p>{{ inline_context.insurer }} atteste que <strong>{{ inline_context.insured }}</strong>
est couvert(e) par le contrat n° {{ inline_context.policy_number }}.</p>
<table>
<tr><th>Véhicule</th><td>{{ inline_context.vehicle }} ({{ inline_context.plate }})</td></tr>
<tr><th>Garanties</th><td>{{ inline_context.cover | join(", ") }}</td></tr>
<tr><th>Validité</th><td>du {{ inline_context.start }} au {{ inline_context.end }}</td></tr>
<tr><th>Prime</th><td>{{ inline_context.premium }} XAF</td></tr>
</table>
<p>Document {{ document.id }} émis le {{ now }}.</p>
</body></html>
"""

ATTESTATION_CONTEXT = {
    "insurer": "MONASSURANCE Courtage",
    "insured": "Ada Lovelace",
    "policy_number": "POL-2024-004217",
    "vehicle": "Toyota Corolla",
    "plate": "LT 421 AB",
    "cover": ["Responsabilité civile", "Vol", "Incendie"],
    "start": "2024-01-01",
    "end": "2024-12-31",
    "premium": "185 000",
}

INVOICE = """<!doctype html>
<html lang="fr"><head><meta charset="utf-8"><title>Facture</title>
<style>body { font-family: sans-serif } td, th { border: 1px solid #999; padding: 4px }</style>
</head><body>
<h1>Invoice {{ inline_context.number }}</h1>
<p>Client: {{ inline_context.client }}</p>
<table>
<tr><th>Item</th><th>Amount</th></tr>
{% for item in inline_context.items %}<tr><td>{{ item.label }}</td><td>{{ item.amount }}</td></tr>
{% endfor %}</table>
<p>Total due: {{ inline_context.total }}</p>
</body></html>
"""

INVOICE_CONTEXT = {
    "number": "INV-2024-0042",
    "client": "Ada Lovelace",
    "items": [
        {"label": "Home insurance premium", "amount": "1 234,56 €"},
        {"label": "Broker fee", "amount": "25,00 €"},
    ],
    "total": "1 259,56 €",
}

# ~135 bytes of HTML per row of six pseudo-random ten-digit numbers; `blocks` × `rows`
# rows (minijinja refuses ranges over 100,000 elements, hence two loops).
BIG_TABLE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Bordereau</title></head><body><table>
{% for b in range(inline_context.blocks) %}{% for r in range(inline_context.rows) %}{% set n = b * inline_context.rows + r + 1 %}<tr><td>{{ n }}</td><td>{{ (n * 2654435761) % 4294967291 }}</td><td>{{ (n * 40503 + 12345) % 1000000007 }}</td><td>{{ (n * 2246822519) % 4294967279 }}</td><td>{{ (n * 3266489917) % 4294967231 }}</td><td>{{ (n * 668265263) % 4294967197 }}</td><td>{{ (n * 374761393) % 4294967189 }}</td></tr>
{% endfor %}{% endfor %}</table></body></html>
"""
BIG_TABLE_ROW_BYTES = 135

XLSX_SPEC = {
    "sheets": [
        {
            "name": "Policies",
            "rows": "inline_context.policies",
            "columns": [
                {"header": "Number", "value": "row.number", "format": "text"},
                {"header": "Premium", "value": "row.premium", "format": "currency", "currency": "XAF"},
                {"header": "Start", "value": "row.start", "format": "date"},
            ],
            "totals": {"label": "Total", "columns": ["Premium"]},
        }
    ]
}


# --------------------------------------------------------------------------------------
# Scenario 1: HTML end to end
# --------------------------------------------------------------------------------------


def html_sync_loop(args, run_dir: Path, bins: Binaries = CURRENT) -> tuple[dict, str] | None:
    """The bare work, synchronous, on one thread, no HTTP, database or queue: the build's
    own examples/pdf_engine_bench html-loop (else the current build's; None when neither
    has it). Returns its figures (with "example_of") and the command as shown."""
    owner = bins if bins.example("pdf_engine_bench") else CURRENT
    example = owner.example("pdf_engine_bench")
    if example is None:
        return None
    template_file = run_dir / "attestation.html.j2"
    template_file.write_text(ATTESTATION)
    context_file = run_dir / "attestation-context.json"
    context_file.write_text(json.dumps(ATTESTATION_CONTEXT))
    loop_count = 2000 if args.quick else 20000
    argv = [
        str(example),
        "html-loop",
        "--template",
        str(template_file),
        "--context",
        str(context_file),
        "--out",
        str(run_dir / "html-loop"),
        "--count",
        str(loop_count),
    ]
    log(f"html: synchronous render+write loop baseline ({loop_count} documents, one thread)"
        + ("" if bins is CURRENT else f", {bins.label} build"))
    sync = json.loads(subprocess.run(argv, check=True, capture_output=True, text=True).stdout)
    sync["example_of"] = owner.label
    shutil.rmtree(run_dir / "html-loop", ignore_errors=True)
    return sync, owner.shown(" ".join(shlex.quote(a) for a in argv).replace(str(run_dir), "<run dir>"))


HTML_LABELS = {"embedded": "embedded (SQLite)", "postgres": "Postgres + Redis"}


def html_start(run_dir: Path, mode: str, bins: Binaries = CURRENT, suffix: str = "",
               env: dict[str, str] | None = None) -> tuple[Deployment, Store, str]:
    """Starts the HTML scenario's deployment of `mode` (embedded: `all`; Postgres + Redis:
    `serve` and two workers), with `env` added to its configuration, and creates its
    template. Returns it, its store and the template's id; stop it with
    deployment.stop()."""
    postgres = mode == "postgres"
    extra = {"WORKER_CONCURRENCY": "8", "WORKER_POLL_MS": "10", **(env or {})}
    deployment, store = new_deployment(run_dir, f"html-{mode}{suffix}", extra, postgres, bins)
    try:
        deployment.start_api("serve" if postgres else "all")
        if postgres:
            for i in range(2):
                deployment.start_worker(i)
        template_id = deployment.create_template("Attestation bench", "html", ATTESTATION)
    except BaseException:
        deployment.stop()
        raise
    return deployment, store, template_id


def html_body(run_dir: Path, name: str, template_id: str, document_type: str) -> Path:
    path = run_dir / f"{name}-{document_type}.json"
    path.write_text(
        json.dumps({"document_type": document_type, "template_id": template_id, "inline_context": ATTESTATION_CONTEXT})
    )
    return path


def html_health(deployment: Deployment, args, seconds: float) -> dict:
    """Raw HTTP capacity of the same process under the same wrk settings."""
    log(f"{deployment.name}: baseline wrk GET /health ({seconds} s)")
    return run_wrk(deployment.base + "/health", seconds, args.connections, args.threads, {"BENCH_METHOD": "GET"})


def html_warmup(deployment: Deployment, store: Store, args, seconds: float, body: Path) -> None:
    log(f"{deployment.name}: warm-up ({seconds} s)")
    run_wrk(
        deployment.base + "/api/v1/documents/generate",
        seconds,
        args.connections,
        args.threads,
        {"BENCH_METHOD": "POST", "BENCH_TOKEN": deployment.token, "BENCH_BODY_FILE": str(body)},
    )
    store.wait_drained(deployment)


def html_submit(deployment: Deployment, store: Store, args, seconds: float, body: Path,
                document_type: str) -> tuple[dict, dict, dict, dict]:
    """wrk POSTs `body` for `seconds`, then waits for the queue to drain. Returns the
    pipeline's figures for `document_type`, wrk's, the CPU window's and the drain's."""
    conns, threads = args.connections, args.threads
    log(f"{deployment.name}: wrk POST /documents/generate, {conns} connections, {threads} threads, {seconds} s")
    cpu = CpuWindow().start()
    submit = run_wrk(
        deployment.base + "/api/v1/documents/generate",
        seconds,
        conns,
        threads,
        {"BENCH_METHOD": "POST", "BENCH_TOKEN": deployment.token, "BENCH_BODY_FILE": str(body)},
    )
    log(f"{deployment.name}: {submit['requests']} submitted ({submit['per_second']:.0f}/s); waiting for the queue to drain")
    drain = store.wait_drained(deployment, cpu)
    cpu_stats = cpu.stop(drain["cpu_end"])
    stats = pipeline_stats(store.rows(document_type))
    log(
        f"{deployment.name}: {stats['ready']} ready in {stats['span_s']:.1f} s = {stats['per_second']:.0f}/s, "
        f"p50 {stats['p50_ms']:.0f} ms, p99 {stats['p99_ms']:.0f} ms, {stats['failed']} failed"
    )
    return stats, submit, cpu_stats, drain


def scenario_html(args, run_dir: Path) -> Section:
    section = Section("1. HTML documents end to end (submit → ready)")
    seconds, warm = (3, 1) if args.quick else (args.duration, 2)

    sync, sync_cmd = html_sync_loop(args, run_dir)
    section.commands.append("# baseline: synchronous render + hash + write loop, one thread\n" + sync_cmd)

    results = {}
    for mode in ("embedded", "postgres"):
        label = HTML_LABELS[mode]
        deployment = None
        try:
            deployment, store, template_id = html_start(run_dir, mode)
            section.commands.append(
                f"# {label}: environment\n{shown_env(deployment.env)}\n"
                + "\n".join(CURRENT.shown(c) for c in deployment.commands)
            )
            bodies = {kind: html_body(run_dir, mode, template_id, kind) for kind in ("warmup", "attestation")}
            health = html_health(deployment, args, seconds)
            html_warmup(deployment, store, args, warm, bodies["warmup"])
            stats, submit, cpu_stats, drain = html_submit(deployment, store, args, seconds, bodies["attestation"],
                                                          "attestation")
            section.commands.append(f"# {label}: raw HTTP baseline\n{health['command']}")
            section.commands.append(f"# {label}: load\n{submit['command']}")
            results[mode] = (stats, submit, health, cpu_stats, drain, label)
        finally:
            if deployment is not None:
                deployment.stop()

    for mode, (stats, submit, health, cpu_stats, drain, label) in results.items():
        rate = stats["per_second"]
        met = rate >= 1000
        section.row(
            f"{label}: documents ready per second",
            fmt_rate(rate),
            "≥ 1,000/s",
            f"original (sync, quoted): 138/s; sync render+write loop, 1 thread: {fmt_rate(sync['per_second'])}",
            f"{rate / ORIGINAL_HTML_PER_SECOND:.1f}× the original",
            met,
        )
        section.row(
            f"{label}: latency submit → ready, p50 / p99",
            f"{stats['p50_ms']:,.0f} / {stats['p99_ms']:,.0f} ms",
            "—",
            "—",
            "—",
            None,
        )
        section.row(
            f"{label}: submit throughput (wrk, 202s)",
            fmt_rate(submit["per_second"]),
            "—",
            f"GET /health: {fmt_rate(health['per_second'])}",
            f"{submit['per_second'] / health['per_second']:.2f}× /health",
            None,
        )
        bench_cpu = max(0.0, cpu_stats["busy_s"] - cpu_stats["foreign_s"])
        per_doc_ms = 1000.0 * bench_cpu / stats["ready"]
        budget_ms = 1000.0 * cpu_stats["cores"] / 1000
        section.row(
            f"{label}: CPU per ready document (every bench process: API, workers, databases, wrk)",
            f"{per_doc_ms:.2f} ms",
            f"≤ {budget_ms:.1f} ms (what 1,000/s on {cpu_stats['cores']} cores allows)",
            f"sync render+write loop: {1000.0 / sync['per_second']:.2f} ms",
            f"{per_doc_ms * sync['per_second'] / 1000.0:.0f}× the bare work",
            None,
        )
        section.row(
            f"{label}: non-2xx / socket errors / failed documents / left queued",
            f"{submit['non_2xx']} / {submit['socket_errors']} / {stats['failed']} / {stats['left_queued']}",
            "0 / 0 / 0 / —",
            "—",
            "—",
            # Rows left queued come from wrk's abrupt stop; the note below explains them.
            submit["non_2xx"] == 0 and submit["socket_errors"] == 0 and stats["failed"] == 0,
        )
        section.notes.append(
            f"{label}: {stats['ready']:,} documents submitted in {submit['duration_us'] / 1e6:.1f} s "
            f"({fmt_rate(submit['per_second'])}, request latency p50 {submit['latency_p50_us'] / 1000:.1f} ms, "
            f"p99 {submit['latency_p99_us'] / 1000:.1f} ms); the last was ready {stats['span_s']:.1f} s after "
            f"the first was submitted (the queue drained {drain['seconds']:.1f} s after wrk stopped)."
            + (
                " Submissions outran the workers, so a backlog built up during the run and the "
                "latency is mostly time spent queued."
                if drain["seconds"] > 1.0
                else ""
            )
        )
        section.notes.append(
            f"{label}: the worker's own timings (the `timings` column): queue wait p50 "
            f"{stats['queue_p50_ms']:,.0f} ms, render (loading the template included) "
            f"{stats['render_mean_ms']:.2f} ms and store "
            f"{stats['store_mean_ms']:.2f} ms on average: the rest of each document's cost is the "
            "HTTP request, the database rows (insert, claim, finish, audit) and the queue."
        )
        if drain["orphans"]:
            warm_up = drain["orphans"] - stats["left_queued"]
            section.notes.append(
                f"{label}: **{stats['left_queued']} of the measured run's documents "
                f"(and {warm_up} of the warm-up's) were left `queued`, never claimed**: "
                "requests wrk cut off when it stopped, after the row was written but before the job "
                "was pushed (the handler is cancelled with its connection). Their jobs do not exist; "
                "the reconciler re-enqueues them after QUEUED_LEASE_SECONDS (600 s). They are "
                "excluded from the figures (not counted as ready)."
            )
        if not met:
            section.notes.append(f"{label}: **documents/s target {missed_by(rate, 1000, True)}**.")
        section.extra.append(f"**{label}** — " + "\n".join(cpu_table(cpu_stats)))
        section.extra.append("")
    return section


def scenario_html_pair(args, run_dir: Path, base: Binaries) -> PairSection:
    """The HTML scenario as same-run pairs: per deployment, both builds started side by
    side; /health, then the load (each with its drain), measured for one build and right
    after for the other, in rounds that alternate which goes first."""
    section = PairSection(
        f"1. HTML documents end to end (submit → ready), {base.label} vs current "
        f"({args.rounds} round{'s' if args.rounds > 1 else ''})",
        base.label,
    )
    section.short = f"HTML ({base.label} vs current)"
    seconds, warm = (3, 1) if args.quick else (args.duration, 2)
    builds = {"baseline": base, "current": CURRENT}
    other = {"baseline": "current", "current": "baseline"}
    pr = benchlib.pair_ratio
    orders = benchlib.round_order(args.rounds)

    sync = {key: [] for key in builds}
    sync_cmd = {}
    for r, order in enumerate(orders):
        for key in order:
            found = html_sync_loop(args, run_dir, builds[key])
            if found:
                sync[key].append(found[0])
                sync_cmd[key] = found[1]
    sync = {key: benchlib.median_run(v) if v else None for key, v in sync.items()}
    for key in builds:
        if key in sync_cmd:
            section.commands.append(
                f"# {key}: baseline, synchronous render + hash + write loop, one thread\n" + sync_cmd[key]
            )
    if sync["baseline"] and sync["current"]:
        section.pair(
            "synchronous render + write loop, one thread (the build's own `pdf_engine_bench html-loop`)",
            fmt_rate(sync["baseline"]["per_second"]), fmt_rate(sync["current"]["per_second"]),
            pr(sync["current"]["per_second"], sync["baseline"]["per_second"]),
        )
        if sync["baseline"]["example_of"] != base.label:
            section.notes.append("The baseline build has no `examples/pdf_engine_bench`: its loop row is the "
                                 "current build's example run twice.")
    else:
        section.notes.append("No `examples/pdf_engine_bench` in either build: the synchronous loop was not measured.")

    for mode in ("embedded", "postgres"):
        label = HTML_LABELS[mode]
        deps: dict[str, tuple] = {}
        runs = {key: [{} for _ in orders] for key in builds}
        try:
            for key, bins in builds.items():
                deployment, store, template_id = html_start(run_dir, mode, bins, f"-{key}")
                deps[key] = (deployment, store, template_id)
                section.commands.append(
                    f"# {label}, {key}: environment\n{shown_env(deployment.env)}\n"
                    + "\n".join(bins.shown(c) for c in deployment.commands)
                )
            for step in ("health", "warmup", "submit"):
                for r, order in enumerate(orders):
                    if step == "warmup" and r > 0:
                        break
                    for key in order:
                        deployment, store, template_id = deps[key]
                        log(f"--- html/{mode}: {step}, round {r + 1}/{len(orders)}: {builds[key].label}")
                        with benchlib.idle_partner(deps[other[key]][0], builds[other[key]].label):
                            if step == "health":
                                runs[key][r]["health"] = html_health(deployment, args, seconds)
                            elif step == "warmup":
                                body = html_body(run_dir, f"{mode}-{key}", template_id, "warmup")
                                html_warmup(deployment, store, args, warm, body)
                            else:
                                doc_type = f"attestation-{r + 1}"
                                body = html_body(run_dir, f"{mode}-{key}", template_id, doc_type)
                                stats, submit, cpu_stats, drain = html_submit(
                                    deployment, store, args, seconds, body, doc_type
                                )
                                runs[key][r].update(stats=stats, submit=submit, cpu=cpu_stats, drain=drain)
            unknown = benchlib.unknown_variables(base, [d for d, _, _ in deps.values()])
        finally:
            for deployment, _, _ in deps.values():
                deployment.stop()

        b, c = (benchlib.median_run(runs[key]) for key in ("baseline", "current"))
        rb, rc = b["stats"]["per_second"], c["stats"]["per_second"]
        section.pair(f"{label}: documents ready per second", fmt_rate(rb), fmt_rate(rc), pr(rc, rb),
                     "≥ 1,000/s", (rb >= 1000, rc >= 1000))
        section.pair(
            f"{label}: latency submit → ready, p50 / p99",
            f"{b['stats']['p50_ms']:,.0f} / {b['stats']['p99_ms']:,.0f} ms",
            f"{c['stats']['p50_ms']:,.0f} / {c['stats']['p99_ms']:,.0f} ms",
            f"p50 {pr(c['stats']['p50_ms'], b['stats']['p50_ms'])}, p99 {pr(c['stats']['p99_ms'], b['stats']['p99_ms'])}",
        )
        sb, sc = b["submit"]["per_second"], c["submit"]["per_second"]
        section.pair(f"{label}: submit throughput (wrk, 202s)", fmt_rate(sb), fmt_rate(sc), pr(sc, sb))
        hb, hc = b["health"]["per_second"], c["health"]["per_second"]
        section.pair(f"{label}: GET /health, same processes and wrk settings", fmt_rate(hb), fmt_rate(hc), pr(hc, hb))

        def per_doc_ms(x):
            cpu = x["cpu"]
            bench = max(0.0, cpu["busy_s"] - cpu["foreign_s"] - cpu.get("partner_s", 0.0))
            return 1000.0 * bench / x["stats"]["ready"]

        db, dc = per_doc_ms(b), per_doc_ms(c)
        budget = 1000.0 * c["cpu"]["cores"] / 1000
        section.pair(
            f"{label}: CPU per ready document (every bench process of the measured build: API, workers, "
            "databases, wrk)",
            f"{db:.2f} ms", f"{dc:.2f} ms", pr(dc, db), f"≤ {budget:.1f} ms", (None, None),
        )
        section.pair(
            f"{label}: the worker's own render / store, mean",
            f"{b['stats']['render_mean_ms']:.2f} / {b['stats']['store_mean_ms']:.2f} ms",
            f"{c['stats']['render_mean_ms']:.2f} / {c['stats']['store_mean_ms']:.2f} ms",
            f"{pr(c['stats']['render_mean_ms'], b['stats']['render_mean_ms'])} / "
            f"{pr(c['stats']['store_mean_ms'], b['stats']['store_mean_ms'])}",
        )

        def counts(key):
            rs = runs[key]
            return (sum(x["submit"]["non_2xx"] for x in rs), sum(x["submit"]["socket_errors"] for x in rs),
                    sum(x["stats"]["failed"] for x in rs), sum(x["stats"]["left_queued"] for x in rs))

        cb, cc = counts("baseline"), counts("current")
        section.pair(
            f"{label}: non-2xx / socket errors / failed documents / left queued (every round)",
            " / ".join(map(str, cb)), " / ".join(map(str, cc)), "—", "0 / 0 / 0 / —",
            (cb[:3] == (0, 0, 0), cc[:3] == (0, 0, 0)),
        )
        if len(orders) > 1:
            ratios = [pr(y["stats"]["per_second"], x["stats"]["per_second"]) for x, y in zip(runs["baseline"], runs["current"])]
            section.notes.append(f"{label}: documents ready per second, current / baseline per round: {', '.join(ratios)}.")
        worst = {k: max(x["cpu"]["foreign_pct"] for x in runs[k]) for k in builds}
        section.notes.append(
            f"{label}: processes that are not part of the bench took up to {worst['baseline']:.0f}% of the machine "
            f"during a baseline load window, up to {worst['current']:.0f}% during a current one"
            + (" (**figures lower than a quiet machine gives**)." if max(worst.values()) >= 10 else ".")
        )
        if cb[3] or cc[3]:
            section.notes.append(
                f"{label}: documents left `queued` (baseline {cb[3]}, current {cc[3]}) are requests wrk cut off "
                "at its stop, after the row was written and before the job was pushed; they are excluded "
                "from the figures."
            )
        if unknown:
            section.notes.append(f"{label}: {unknown}")
        for key, x in (("baseline", b), ("current", c)):
            section.extra.append(f"**{label}, {key}** — " + "\n".join(cpu_table(x["cpu"])))
            section.extra.append("")
        section.commands.append(
            f"# {label}: raw HTTP baseline, then the load (the current build's round 1; the baseline's is the "
            f"same on its own port, with its own token and body)\n{runs['current'][0]['health']['command']}\n"
            f"{runs['current'][0]['submit']['command']}"
        )

    section.notes.append(
        "Ratio: current / baseline (above 1 is better for rates, below 1 for latencies and CPU). Each "
        "figure is the median of the rounds."
    )
    section.notes.append(
        "How the pairs were taken: per deployment, both builds were started side by side (each on its own "
        "fresh DATA_DIR, database and Redis queue, the same environment: WORKER_CONCURRENCY=8, "
        "WORKER_POLL_MS=10, two workers for Postgres + Redis), one warm-up load each, then GET /health and "
        "the measured load (wrk, then waiting for the queue to drain) for one build and right after for "
        "the other"
        + (", in rounds that alternate which goes first (two rounds: baseline, current, current, baseline)"
           if len(orders) > 1 else ", baseline first")
        + ". Each round's documents have their own document_type, so its figures count only its own. "
        "The other build's processes sat idle meanwhile; the CPU tables count them apart (\"idle partner\") "
        "and the CPU per document leaves them out."
    )
    return section


# --------------------------------------------------------------------------------------
# Scenario 2: PDF
# --------------------------------------------------------------------------------------


def scenario_pdf(args, run_dir: Path) -> Section:
    section = Section("2. PDF through the pipeline")
    count = args.pdf_count or (20 if args.quick else 500)
    cold_count = max(3, count // 2) if args.quick else max(10, count // 4)
    pool = 2
    extra = {"PDF_CONCURRENCY": str(pool), "WORKER_CONCURRENCY": "4", "WORKER_POLL_MS": "10"}
    deployment, store = new_deployment(run_dir, "pdf", extra, postgres=False)
    try:
        deployment.start_api("all")
        section.commands.append(
            f"# pipeline (embedded): environment\n{shown_env(deployment.env)}\n"
            + "\n".join(c.replace(str(BIN_DIR), "$CARGO_TARGET_DIR/release") for c in deployment.commands)
        )
        template_id = deployment.create_template("Invoice bench", "pdf", INVOICE, ttype="invoice")
        # The exact HTML the pipeline hands the engine: the same template rendered to HTML.
        html_id = deployment.generate(
            {"document_type": "probe", "template_id": template_id, "output_format": "html", "inline_context": INVOICE_CONTEXT}
        )
        deployment.wait_document(html_id)
        html_file = run_dir / "invoice.html"
        html_file.write_bytes(deployment.download(html_id))

        # Baseline A: cold CLI calls, one after the other (and two at a time, for reference).
        cli = ["wkhtmltopdf", "--javascript-delay", "0", "--disable-javascript", "--disable-local-file-access"]
        out_dir = run_dir / "cold"
        out_dir.mkdir()

        def cold(i: int) -> None:
            out = out_dir / f"out-{i}.pdf"
            subprocess.run(cli + [str(html_file), str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            with open(out, "rb") as f:
                if f.read(5) != b"%PDF-":
                    raise BenchError(f"cold wkhtmltopdf call {i} made no PDF")

        log(f"pdf: baseline A, {cold_count} cold wkhtmltopdf calls in a loop")
        started = time.monotonic()
        for i in range(cold_count):
            cold(i)
        cold_rate = cold_count / (time.monotonic() - started)
        log(f"pdf: cold loop {cold_rate:.2f}/s; now two at a time")
        started = time.monotonic()
        errors: list[Exception] = []

        def cold_lane(lane: int) -> None:
            try:
                for i in range(lane, cold_count, 2):
                    cold(1000 + i)
            except Exception as err:  # noqa: BLE001 - reported below
                errors.append(err)

        lanes = [threading.Thread(target=cold_lane, args=(lane,)) for lane in range(2)]
        for t in lanes:
            t.start()
        for t in lanes:
            t.join()
        if errors:
            raise errors[0]
        cold2_rate = cold_count / (time.monotonic() - started)
        shutil.rmtree(out_dir, ignore_errors=True)
        section.commands.append(
            f"# baseline A: {cold_count} cold calls, one after the other (then the same two at a time)\n"
            f"for i in $(seq {cold_count}); do {' '.join(cli)} invoice.html out-$i.pdf; done"
        )

        # Baseline B: the warm engine alone.
        argv = [str(EXAMPLE), "pdf", "--html", str(html_file), "--count", str(count), "--pool", str(pool)]
        log(f"pdf: baseline B, warm engine alone ({count} PDFs, pool {pool})")
        warm = json.loads(subprocess.run(argv, check=True, capture_output=True, text=True).stdout)
        section.commands.append(
            "# baseline B: the warm engine alone\n"
            + " ".join(shlex.quote(a) for a in argv).replace(str(run_dir), "<run dir>").replace(str(BIN_DIR), "$CARGO_TARGET_DIR/release")
        )

        # The pipeline, after one warm-up document per engine process.
        log("pdf: pipeline warm-up")
        warm_ids = [
            deployment.generate({"document_type": "warmup", "template_id": template_id, "inline_context": INVOICE_CONTEXT})
            for _ in range(pool)
        ]
        for doc_id in warm_ids:
            deployment.wait_document(doc_id)
        log(f"pdf: pipeline, submitting {count} PDF documents")
        body = json.dumps(
            {"document_type": "invoice", "template_id": template_id, "output_format": "pdf", "inline_context": INVOICE_CONTEXT}
        ).encode()
        cpu = CpuWindow().start()
        for _ in range(count):
            deployment.generate(body)
        drain = store.wait_drained(deployment, cpu)
        cpu_stats = cpu.stop(drain["cpu_end"])
        stats = pipeline_stats(store.rows("invoice"))
        log(f"pdf: pipeline {stats['per_second']:.2f}/s ({stats['failed']} failed)")
        section.commands.append(
            f"# pipeline: {count} × POST /api/v1/documents/generate "
            '{"document_type":"invoice","template_id":…,"output_format":"pdf","inline_context":{…}} '
            "as fast as one client sends them, then wait until none is queued or processing"
        )

        # The same documents as one batch, through the bulk lane.
        batch_count = 20 if args.quick else 1000
        log(f"pdf: a {batch_count}-item PDF batch")
        batch_started = time.time()
        batch, _ = submit_batch(deployment, deployment.token, {
            "document_type": "invoice-batch", "template_id": template_id, "output_format": "pdf",
            "inline_context": INVOICE_CONTEXT, "items": [{} for _ in range(batch_count)],
        })
        wait_batch(deployment, deployment.token, batch["id"])
        batch_rows = [r for r in store.rows("invoice-batch") if r[0] == "ready"]
        if len(batch_rows) != batch_count:
            raise BenchError(f"{len(batch_rows)} of {batch_count} batch PDFs ready")
        batch_rate = batch_count / (max(r[2] for r in batch_rows) - batch_started)
        log(f"pdf: batch {batch_rate:.2f}/s")
        section.commands.append(
            f"# batch: one POST /api/v1/document-batches of {batch_count} items (the same invoice), "
            "then poll the batch until it is finished"
        )
    finally:
        deployment.stop()

    rate = stats["per_second"]
    ratio_cold = rate / cold_rate
    overhead = 1 - rate / warm["per_second"]
    section.row(
        "PDFs per second through the pipeline",
        fmt_rate(rate),
        "≥ 3× cold CLI loop",
        f"cold CLI loop: {fmt_rate(cold_rate)}",
        f"{ratio_cold:.1f}×",
        ratio_cold >= 3,
    )
    section.row(
        "pipeline overhead over the warm engine alone",
        f"{100 * overhead:.1f}%",
        "≤ 15%",
        f"warm engine (pool {pool}): {fmt_rate(warm['per_second'])}",
        f"{rate / warm['per_second']:.2f}× warm",
        overhead <= 0.15,
    )
    section.row(
        f"{batch_count:,}-item one-page PDF batch, submission → all ready",
        fmt_rate(batch_rate),
        "≥ 0.85× the warm engine",
        f"warm engine (pool {pool}): {fmt_rate(warm['per_second'])}",
        f"{batch_rate / warm['per_second']:.2f}× warm",
        batch_rate >= 0.85 * warm["per_second"],
    )
    section.row(
        "pipeline latency submit → ready, p50 / p99",
        f"{stats['p50_ms']:,.0f} / {stats['p99_ms']:,.0f} ms",
        "—",
        "—",
        "—",
        None,
    )
    section.row(
        "cold CLI, two calls at a time (reference)",
        fmt_rate(cold2_rate),
        "—",
        f"cold CLI loop: {fmt_rate(cold_rate)}",
        f"pipeline = {rate / cold2_rate:.1f}× this",
        None,
    )
    section.row("failed documents", str(stats["failed"]), "0", "—", "—", stats["failed"] == 0)
    section.notes.append(
        f"{count} one-page invoices through the pipeline (embedded, PDF_CONCURRENCY={pool}, "
        f"WORKER_CONCURRENCY=4), {count} through the warm engine alone (pool {pool}, "
        f"{warm['mean_ms_per_pdf_per_process']:.0f} ms per PDF per process, {warm['restarts']} restarts), "
        f"{cold_count} cold CLI calls. All render the same HTML (the pipeline's own HTML output of the template)."
    )
    section.notes.append(
        f"The worker's own timings: queue wait p50 {stats['queue_p50_ms']:,.0f} ms, render (HTML + PDF) "
        f"{stats['render_mean_ms']:.1f} ms and store {stats['store_mean_ms']:.2f} ms on average, against "
        f"{warm['mean_ms_per_pdf_per_process']:.1f} ms per PDF per process for the warm engine alone."
    )
    if ratio_cold < 3:
        section.notes.append(f"**pipeline/cold target {missed_by(ratio_cold, 3, True)}×**.")
    if overhead > 0.15:
        section.notes.append(
            f"**overhead target missed by {100 * (overhead - 0.15):.1f} points** "
            f"({100 * overhead:.1f}% measured against ≤ 15%)."
        )
    section.extra.extend(cpu_table(cpu_stats))
    return section


# --------------------------------------------------------------------------------------
# Scenario 3: worker RSS during a 100,000-row XLSX
# --------------------------------------------------------------------------------------


def scenario_xlsx(args, run_dir: Path) -> Section:
    section = Section("3. Worker RSS during a large XLSX")
    rows = args.xlsx_rows or (10_000 if args.quick else 100_000)
    extra = {"MAX_BODY_BYTES": "30000000", "WORKER_POLL_MS": "10", "JOB_TIMEOUT_SECONDS": "600"}
    deployment, store = new_deployment(run_dir, "xlsx", extra, postgres=True)
    try:
        deployment.start_api("serve")
        worker = deployment.start_worker(0)
        section.commands.append(
            f"# Postgres + Redis, one worker: environment\n{shown_env(deployment.env)}\n"
            + "\n".join(c.replace(str(BIN_DIR), "$CARGO_TARGET_DIR/release") for c in deployment.commands)
        )
        template_id = deployment.create_template("Policies export", "xlsx", json.dumps(XLSX_SPEC), ttype="export")
        policies = [
            {
                "number": f"POL-{i:07d}",
                "premium": 50_000 + (i * 7919) % 450_000,
                "start": f"2024-{1 + i % 12:02d}-{1 + i % 28:02d}",
            }
            for i in range(rows)
        ]
        body = json.dumps(
            {"document_type": "export", "template_id": template_id, "output_format": "xlsx", "inline_context": {"policies": policies}}
        ).encode()
        log(f"xlsx: request body {len(body) / 1e6:.1f} MB, {rows:,} rows")
        time.sleep(1.0)
        idle = steady_rss_kb(worker.pid, 1.0)
        log(f"xlsx: worker idle RSS {mb(idle):.1f} MB; submitting")
        with RssSampler(worker.pid) as sampler:
            started = time.monotonic()
            doc_id = deployment.generate(body)
            doc = deployment.wait_document(doc_id, interval=0.1)
            elapsed = time.monotonic() - started
            time.sleep(0.2)
        hwm = rss_kb(worker.pid, "VmHWM")
        after = rss_kb(worker.pid)
        data = deployment.download(doc_id)
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            sheet = z.read("xl/worksheets/sheet1.xml")
        written = sheet.count(b"<row ")
        if written < rows + 2:
            raise BenchError(f"the workbook has {written} rows, expected {rows + 2}")
        section.commands.append(
            f"# one POST /api/v1/documents/generate with {rows:,} policies ({len(body) / 1e6:.1f} MB body); "
            f"VmRSS of the worker from /proc/<pid>/status every 20 ms until ready"
        )
    finally:
        deployment.stop()

    peak = sampler.peak_kb
    section.row(
        f"worker peak RSS during the {rows:,}-row XLSX job (VmRSS, 20 ms samples)",
        f"{mb(peak):.1f} MB",
        "≤ 150 MB",
        f"idle worker: {mb(idle):.1f} MB",
        f"+{mb(peak - idle):.1f} MB over idle",
        mb(peak) <= 150,
    )
    section.row("worker VmHWM at the end", f"{mb(hwm):.1f} MB", "≤ 150 MB", f"idle: {mb(idle):.1f} MB", "—", mb(hwm) <= 150)
    section.row("worker RSS after the job", f"{mb(after):.1f} MB", "—", f"idle: {mb(idle):.1f} MB", "—", None)
    section.notes.append(
        f"{rows:,} rows ({written:,} sheet rows with header and totals), workbook {len(data) / 1e6:.1f} MB, "
        f"request body {len(body) / 1e6:.1f} MB; submit → ready {elapsed:.1f} s; {len(sampler.samples)} RSS samples. "
        "The inline context travels in the database row, so the worker parses the whole "
        f"{len(body) / 1e6:.1f} MB of JSON before it writes the first row."
    )
    if mb(peak) > 150:
        section.notes.append(f"**RSS target {missed_by(mb(peak), 150, False)} MB**.")
    return section


# --------------------------------------------------------------------------------------
# Scenario 4: RSS growth while streaming a large encrypted download
# --------------------------------------------------------------------------------------


def scenario_download(args, run_dir: Path) -> Section:
    section = Section("4. API RSS growth while streaming a large encrypted download")
    target_mb = args.download_mb or (8 if args.quick else 50)
    total_rows = int(target_mb * 1_000_000 / BIG_TABLE_ROW_BYTES)
    rows_per_block = 1000
    blocks = max(1, total_rows // rows_per_block)
    extra = {
        "RENDER_FUEL": "2000000000",
        "MAX_OUTPUT_BYTES": "80000000",
        "JOB_TIMEOUT_SECONDS": "600",
        "WORKER_POLL_MS": "10",
    }
    deployment, _ = new_deployment(run_dir, "download", extra, postgres=False)
    measures = {}
    rate = "20M"
    try:
        deployment.start_api("all")
        section.commands.append(
            f"# embedded: environment\n{shown_env(deployment.env)}\n"
            + "\n".join(c.replace(str(BIN_DIR), "$CARGO_TARGET_DIR/release") for c in deployment.commands)
        )
        template_id = deployment.create_template("Big table", "html", BIG_TABLE, ttype="statement")
        docs = {}
        for kind, encrypt in (("plain", False), ("encrypted", True)):
            log(f"download: rendering the {kind} document (~{target_mb} MB)")
            doc_id = deployment.generate(
                {
                    "document_type": "statement",
                    "template_id": template_id,
                    "inline_context": {"blocks": blocks, "rows": rows_per_block},
                    "encrypt": encrypt,
                    "compress": False,
                }
            )
            docs[kind] = deployment.wait_document(doc_id, interval=0.2)
        pid = deployment.api.pid
        # 20 MB/s for 50 MB: slow enough to sample every 20 ms. curl's limit lets bursts
        # through (the loopback socket buffers take megabytes), so small documents get a
        # much lower rate to last about as long.
        rate = "20M" if target_mb >= 50 else "2M"
        for kind in ("plain", "encrypted"):
            doc = docs[kind]
            time.sleep(1.0)
            before = steady_rss_kb(pid, 1.0)
            url = f"{deployment.base}/api/v1/documents/{doc['id']}/download"
            argv = [
                "curl", "-s", "--noproxy", "*", "-o", "/dev/null", "--limit-rate", rate,
                "-H", f"Authorization: Bearer {deployment.token}",
                "-w", "%{http_code} %{size_download} %{time_total}", url,
            ]
            log(f"download: {kind}, RSS before {mb(before):.1f} MB")
            with RssSampler(pid) as sampler:
                result = subprocess.run(argv, capture_output=True, text=True)
            code, size, seconds = (result.stdout.split() + ["?", "0", "0"])[:3]
            log(f"download: {kind}: HTTP {code}, {size} bytes in {float(seconds):.2f} s")
            if code != "200" or int(size) != doc["size_bytes"]:
                raise BenchError(f"{kind} download: HTTP {code}, {size} bytes, expected {doc['size_bytes']}")
            after = rss_kb(pid)
            measures[kind] = {
                "before": before,
                "peak": sampler.peak_kb,
                "after": after,
                "growth": sampler.peak_kb - before,
                "bytes": int(size),
                "stored": doc.get("stored_bytes"),
                "seconds": float(seconds),
                "samples": len(sampler.samples),
            }
            log(f"download: {kind}, peak {mb(sampler.peak_kb):.1f} MB, growth {mb(sampler.peak_kb - before):.1f} MB")
        section.commands.append(
            "# the download, while VmRSS of the API process is read every 20 ms\n"
            f"curl -s --noproxy '*' -o /dev/null --limit-rate {rate} -H 'Authorization: Bearer <admin token>' "
            "http://127.0.0.1:<port>/api/v1/documents/<id>/download"
        )
    finally:
        deployment.stop()

    enc, plain = measures["encrypted"], measures["plain"]
    section.row(
        f"API RSS growth, encrypted download of {enc['bytes'] / 1e6:.1f} MB",
        f"{mb(enc['growth']):.1f} MB",
        "≤ 20 MB",
        f"unencrypted copy: {mb(plain['growth']):.1f} MB",
        f"{mb(enc['growth']) - mb(plain['growth']):+.1f} MB vs unencrypted",
        mb(enc["growth"]) <= 20,
    )
    section.row(
        "API RSS before / peak (encrypted)",
        f"{mb(enc['before']):.1f} / {mb(enc['peak']):.1f} MB",
        "—",
        f"unencrypted: {mb(plain['before']):.1f} / {mb(plain['peak']):.1f} MB",
        "—",
        None,
    )
    section.notes.append(
        f"Documents of {enc['bytes']:,} bytes of HTML ({blocks:,} × {rows_per_block:,} rows of pseudo-random "
        f"numbers), stored with compress=false; the encrypted object is {enc['stored'] or 0:,} bytes. "
        f"Downloads took {plain['seconds']:.1f} s (plain) and {enc['seconds']:.1f} s (encrypted) at "
        f"--limit-rate {rate}; {plain['samples']} and {enc['samples']} RSS samples."
    )
    if min(plain["seconds"], enc["seconds"]) < 1.0:
        section.notes.append(
            "A download lasted under a second: too short for the 20 ms samples to be sure to "
            "catch its peak. Use a larger --download-mb."
        )
    if mb(enc["growth"]) > 20:
        section.notes.append(f"**RSS growth target {missed_by(mb(enc['growth']), 20, False)} MB**.")
    return section


# --------------------------------------------------------------------------------------
# Scenario 5: batches
# --------------------------------------------------------------------------------------


def batch_agent(deployment: Deployment, email: str) -> str:
    """An agent of the deployment (created by its admin), logged in: its token."""
    password = "bench-agent-password"
    status, body = benchlib.http("POST", deployment.base + "/api/v1/users", deployment.token,
                                 {"email": email, "password": password, "role": "agent"})
    benchlib.expect(status, 201, f"create agent {email}", body)
    status, body = benchlib.http("POST", deployment.base + "/api/v1/auth/login",
                                 body={"email": email, "password": password})
    benchlib.expect(status, 200, f"login {email}", body)
    return body["access_token"]


def batch_body(template_id: str, document_type: str, count: int) -> dict:
    items = [{"reference": f"POL-{i:06d}", "inline_context": {"policy_number": f"POL-{i:06d}"}}
             for i in range(count)]
    return {"document_type": document_type, "template_id": template_id,
            "inline_context": ATTESTATION_CONTEXT, "items": items}


def submit_batch(deployment: Deployment, token: str, body: dict) -> tuple[dict, float]:
    """POSTs a batch; returns it and how long the request took."""
    started = time.monotonic()
    status, batch = benchlib.http("POST", deployment.base + "/api/v1/document-batches", token, body, timeout=300)
    took = time.monotonic() - started
    benchlib.expect(status, 202, "submit a batch", batch)
    return batch, took


def wait_batch(deployment: Deployment, token: str, batch_id: str, limit: float = 900) -> dict:
    deadline = time.monotonic() + limit
    while True:
        status, batch = benchlib.http("GET", f"{deployment.base}/api/v1/document-batches/{batch_id}", token)
        benchlib.expect(status, 200, "read a batch", batch)
        if batch.get("finished_at"):
            return batch
        deployment.check_alive()
        if time.monotonic() > deadline:
            raise BenchError(f"batch {batch_id} not finished after {limit:.0f} s: {batch}")
        time.sleep(0.05)


class Prober(threading.Thread):
    """Asks for single interactive documents one after another (each waited for) until
    stopped: what an agent sees while a batch runs."""

    def __init__(self, deployment: Deployment, token: str, template_id: str) -> None:
        super().__init__(daemon=True)
        self.deployment, self.token, self.template_id = deployment, token, template_id
        self.stopping = threading.Event()
        self.latencies_ms: list[float] = []

    def run(self) -> None:
        body = {"document_type": "probe", "template_id": self.template_id, "inline_context": ATTESTATION_CONTEXT}
        base = self.deployment.base
        while not self.stopping.is_set():
            started = time.monotonic()
            status, doc = benchlib.http("POST", base + "/api/v1/documents/generate", self.token, body)
            if status != 202:
                continue
            while True:
                status, doc = benchlib.http("GET", f"{base}/api/v1/documents/{doc['id']}", self.token)
                if doc.get("status") in ("ready", "failed"):
                    break
                time.sleep(0.005)
            self.latencies_ms.append(1000.0 * (time.monotonic() - started))
            time.sleep(0.05)


def scenario_batch(args, run_dir: Path) -> Section:
    section = Section("5. Batches: accepted, rendered, beside interactive work, shared fairly, archived")
    count = args.batch_items or (1000 if args.quick else 10_000)
    seconds = 3 if args.quick else args.duration
    rows = {}
    for mode in ("postgres", "embedded"):
        label = HTML_LABELS[mode]
        deployment = None
        try:
            deployment, store, template_id = html_start(run_dir, mode, suffix="-batch")
            section.commands.append(
                f"# {label}: environment\n{shown_env(deployment.env)}\n"
                + "\n".join(CURRENT.shown(c) for c in deployment.commands)
            )
            # Baseline, same deployment, same run: single documents under wrk.
            body = html_body(run_dir, f"batch-{mode}", template_id, "single")
            single, _, single_cpu, _ = html_submit(deployment, store, args, seconds, body, "single")
            agent = batch_agent(deployment, "batch-agent@example.com")
            other = batch_agent(deployment, "other-agent@example.com")

            # One big batch, with an agent asking for single documents meanwhile.
            log(f"{deployment.name}: a {count:,}-item batch")
            prober = Prober(deployment, other, template_id)
            cpu = CpuWindow().start()
            started = time.time()
            batch, accept_s = submit_batch(deployment, agent, batch_body(template_id, "batch", count))
            prober.start()
            done = wait_batch(deployment, agent, batch["id"])
            cpu_stats = cpu.stop()
            prober.stopping.set()
            prober.join()
            if done["ready"] != count:
                raise BenchError(f"the batch finished with {done['ready']} of {count} ready: {done}")
            finished = max(f for s, _, f, _ in store.rows("batch") if s == "ready")
            span = finished - started
            bench_cpu = max(0.0, cpu_stats["busy_s"] - cpu_stats["foreign_s"])
            log(f"{deployment.name}: accepted in {accept_s:.2f} s, all ready after {span:.1f} s; "
                f"{len(prober.latencies_ms)} interactive probes")

            # The archive of it, streamed: API RSS growth and speed.
            api_pid = deployment.api.pid
            idle = steady_rss_kb(api_pid, 1.0)
            request = urllib.request.Request(
                f"{deployment.base}/api/v1/document-batches/{batch['id']}/archive",
                headers={"Authorization": f"Bearer {agent}"},
            )
            with RssSampler(api_pid) as sampler:
                archive_started = time.monotonic()
                size = 0
                with benchlib.OPENER.open(request, timeout=600) as response:
                    while chunk := response.read(1 << 20):
                        size += len(chunk)
                archive_s = time.monotonic() - archive_started

            # Fairness: two agents' equal batches, submitted together.
            half = count // 2
            log(f"{deployment.name}: two agents' {half:,}-item batches at once")
            first, _ = submit_batch(deployment, agent, batch_body(template_id, "fair-a", half))
            second, _ = submit_batch(deployment, other, batch_body(template_id, "fair-b", half))
            ends = []
            for token, b in ((agent, first), (other, second)):
                finished = wait_batch(deployment, token, b["id"])
                ends.append(benchlib.parse_ts(finished["finished_at"]) - benchlib.parse_ts(b["created_at"]))
            rows[mode] = dict(label=label, single=single, single_cpu=single_cpu, accept_s=accept_s, span=span,
                              cpu_ms=1000.0 * bench_cpu / count, probes=prober.latencies_ms,
                              archive_mb=size / 1e6, archive_s=archive_s, rss_growth=sampler.peak_kb - idle,
                              ends=ends)
        finally:
            if deployment is not None:
                deployment.stop()

    for mode, r in rows.items():
        label, target_s = r["label"], (10.0 if mode == "postgres" else 15.0)
        single_rate = r["single"]["per_second"]
        single_target = 1000 if mode == "postgres" else 500
        section.row(f"{label}: {count:,}-item batch accepted (one request)", f"{r['accept_s']:.2f} s", "≤ 2 s",
                    "—", "—", r["accept_s"] <= 2.0)
        rate = count / r["span"]
        section.row(f"{label}: submission → every item ready", f"{r['span']:.1f} s ({fmt_rate(rate)})",
                    f"≤ {target_s:.0f} s", f"single documents under wrk, same deployment: {fmt_rate(single_rate)}",
                    f"{rate / single_rate:.2f}× single documents", r["span"] <= target_s)
        section.row(f"{label}: single HTML documents (wrk {args.connections} connections), submit → ready",
                    fmt_rate(single_rate), f"≥ {single_target:,}/s", "—", "—", single_rate >= single_target)
        single_cpu = r["single_cpu"]
        single_ms = 1000.0 * max(0.0, single_cpu["busy_s"] - single_cpu["foreign_s"]) / r["single"]["ready"]
        section.row(f"{label}: CPU per ready document (every bench process)",
                    f"batch {r['cpu_ms']:.2f} ms; single {single_ms:.2f} ms", "≤ 2 ms", "—", "—",
                    max(r["cpu_ms"], single_ms) <= 2.0)
        probes = r["probes"]
        if probes:
            p99 = percentile(probes, 99)
            section.row(f"{label}: interactive documents while the batch runs, submit → ready p50 / p99 "
                        f"({len(probes)} documents)", f"{percentile(probes, 50):.0f} / {p99:.0f} ms", "p99 ≤ 250 ms",
                        f"single documents under wrk, p50: {r['single']['p50_ms']:.0f} ms", "—", p99 <= 250)
        a, b = r["ends"]
        spread = abs(a - b) / max(a, b)
        section.row(f"{label}: two agents' {count // 2:,}-item batches started together, time to finish",
                    f"{a:.1f} s and {b:.1f} s", "within 20%", "—", f"{100 * spread:.0f}% apart", spread <= 0.2)
        speed = r["archive_mb"] / r["archive_s"]
        section.row(f"{label}: archive of the {count:,}-item batch ({r['archive_mb']:.1f} MB)",
                    f"{speed:.0f} MB/s; API RSS +{mb(r['rss_growth']):.1f} MB",
                    "≥ 50 MB/s; RSS growth ≤ 30 MB", "—", "—",
                    speed >= 50 and mb(r["rss_growth"]) <= 30)
    section.notes.append(
        "Each deployment as in scenario 1 (two workers of WORKER_CONCURRENCY 8 on Postgres + Redis; the embedded "
        "worker in the API's process), BULK_WINDOW at its default. The single-document baseline runs first on "
        "the same deployment; the batch's CPU window runs from its submission to its last item ready."
    )
    return section


class HookReceiver:
    """A webhook endpoint on loopback, in this process: answers 204 at once and records
    when each delivery arrived, by the document it is about.

    It stands in for an integrator's server, which would run on another machine: on this
    one it shares the two cores with the platform being measured, so it is kept light (one
    asyncio thread, keep-alive connections, the request read as bytes and only the event's
    id picked out) to take as little CPU from the platform as it can."""

    def __init__(self) -> None:
        import asyncio

        arrivals: dict[str, float] = {}
        lock = threading.Lock()
        # The event's only "id" key is its document's (`data.id`; the others are `…_id`).
        marker = re.compile(rb'"id"\s*:\s*"([^"]+)"')

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while True:
                    head = await reader.readuntil(b"\r\n\r\n")
                    length = 0
                    for line in head.split(b"\r\n"):
                        if line[:15].lower() == b"content-length:":
                            length = int(line[15:])
                    body = await reader.readexactly(length)
                    at = time.time()
                    found = marker.search(body)
                    if found:
                        with lock:
                            arrivals.setdefault(found.group(1).decode(), at)
                    writer.write(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")
                    await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError, ValueError):
                pass
            finally:
                writer.close()

        self.arrivals, self.lock = arrivals, lock
        self.loop = asyncio.new_event_loop()
        self.server = self.loop.run_until_complete(asyncio.start_server(serve, "127.0.0.1", 0))
        port = self.server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/hooks"
        threading.Thread(target=self.loop.run_forever, daemon=True).start()

    def received(self, ids: set[str]) -> dict[str, float]:
        with self.lock:
            return {i: t for i, t in self.arrivals.items() if i in ids}

    def close(self) -> None:
        # The loop runs on (a daemon thread) so that connections still open end cleanly.
        self.loop.call_soon_threadsafe(self.server.close)


PLATFORM_GROUPS = ("API process", "worker processes", "Postgres", "Redis")


def scenario_webhook(args, run_dir: Path) -> Section:
    section = Section("6. Webhooks: a document.ready delivery per document, to one endpoint on loopback")
    count = 200 if args.quick else 1000
    rows = {}
    for mode in ("postgres", "embedded"):
        label = HTML_LABELS[mode]
        deployment = None
        receiver = HookReceiver()
        try:
            env = {"WEBHOOK_ALLOW_PRIVATE_NETWORKS": "true"}
            deployment, store, template_id = html_start(run_dir, mode, suffix="-webhook", env=env)
            section.commands.append(
                f"# {label}: environment\n{shown_env(deployment.env)}\n"
                + "\n".join(CURRENT.shown(c) for c in deployment.commands)
            )
            agent = batch_agent(deployment, "hooks-agent@example.com")
            status, endpoint = benchlib.http("POST", deployment.base + "/api/v1/webhooks", agent,
                                             {"url": receiver.url, "events": ["document.ready"]})
            benchlib.expect(status, 201, "create a webhook endpoint", endpoint)
            endpoint_url = f"{deployment.base}/api/v1/webhooks/{endpoint['id']}"
            # Same-run pairs, in the order plain, hooks, hooks, plain, repeated: drift hits
            # both alike.
            results: dict[str, list[dict]] = {"plain": [], "hooks": []}
            every: list[dict] = []
            order = ("plain", "hooks", "hooks", "plain") * max(1, args.webhook_rounds)
            # One round of each first, unmeasured: the first round with webhooks on pays
            # once for what every later one finds ready (the HTTP connections, the database
            # files grown to the size this load keeps them at).
            rounds = [(kind, False) for kind in ("hooks", "plain")] + [(kind, True) for kind in order]
            for n, (kind, measured) in enumerate(rounds):
                status, body = benchlib.http("PATCH", endpoint_url, agent, {"is_active": kind == "hooks"})
                benchlib.expect(status, 200, "turn the endpoint on or off", body)
                document_type = f"hooks-{n}"
                log(f"{deployment.name}: {count:,} documents, webhooks {'on' if kind == 'hooks' else 'off'}"
                    + ("" if measured else " (warm-up, not measured)"))
                cpu = CpuWindow().start()
                started = time.time()
                batch, _ = submit_batch(deployment, agent, batch_body(template_id, document_type, count))
                wait_batch(deployment, agent, batch["id"])
                ids: set[str] = set()
                offset = 0
                while True:
                    status, page = benchlib.http(
                        "GET", f"{deployment.base}/api/v1/document-batches/{batch['id']}/documents?limit=200&offset={offset}",
                        agent)
                    benchlib.expect(status, 200, "list the batch's documents", page)
                    ids.update(d["id"] for d in page["items"])
                    offset += 200
                    if offset >= page["total"]:
                        break
                received: dict[str, float] = {}
                if kind == "hooks":
                    deadline = time.monotonic() + 120
                    while len(received := receiver.received(ids)) < len(ids):
                        deployment.check_alive()
                        if time.monotonic() > deadline:
                            raise BenchError(f"{len(received)} of {len(ids)} deliveries after 120 s")
                        time.sleep(0.01)
                stats = cpu.stop()
                if not measured:
                    continue
                last_ready = max(f for s, _, f, _ in store.rows(document_type) if s == "ready")
                platform_s = sum(stats["groups"].get(g, 0.0) for g in PLATFORM_GROUPS)
                results[kind].append(dict(
                    span=last_ready - started,
                    cpu_ms=1000.0 * platform_s / count,
                    lag=(max(received.values()) - last_ready) if received else None,
                    groups=stats["groups"],
                ))
                every.append(results[kind][-1])
            rows[mode] = dict(label=label, all=every, order=["on" if k == "hooks" else "off" for k in order],
                              **results)
        finally:
            receiver.close()
            if deployment is not None:
                deployment.stop()

    for mode, r in rows.items():
        label = r["label"]
        # Medians: one round in several can stall on something else (autovacuum, a
        # checkpoint, the machine), and every round is listed below.
        plain = statistics.median(x["cpu_ms"] for x in r["plain"])
        hooks = statistics.median(x["cpu_ms"] for x in r["hooks"])
        lag = max(x["lag"] for x in r["hooks"])
        section.row(f"{label}: last delivery received after the last document was ready",
                    f"{lag:.2f} s", "≤ 5 s", "—", "—", lag <= 5.0)
        added = hooks / plain - 1.0
        rounds = len(r["hooks"])
        section.row(f"{label}: CPU per document (API, workers, Postgres, Redis), webhooks on vs off "
                    f"(medians of {rounds} rounds each)",
                    f"{hooks:.2f} ms vs {plain:.2f} ms", "≤ +10%",
                    f"webhooks off, same deployment: {plain:.2f} ms", f"{100 * added:+.0f}%", added <= 0.10)
        mean_plain = statistics.mean(x["cpu_ms"] for x in r["plain"])
        mean_hooks = statistics.mean(x["cpu_ms"] for x in r["hooks"])
        every = ", ".join(f"{x['cpu_ms']:.2f}" for x in r["all"])
        section.notes.append(
            f"{label}: CPU ms per document, round by round ({', '.join(r['order'])}): {every}; means "
            f"{mean_hooks:.2f} vs {mean_plain:.2f} ms ({100 * (mean_hooks / mean_plain - 1):+.0f}%).")
        per_group = []
        for group in PLATFORM_GROUPS:
            on = statistics.mean(x["groups"].get(group, 0.0) for x in r["hooks"]) * 1000.0 / count
            off = statistics.mean(x["groups"].get(group, 0.0) for x in r["plain"]) * 1000.0 / count
            per_group.append(f"{group} {on:.2f} vs {off:.2f}")
        section.notes.append(f"{label}: CPU ms per document by process (means), webhooks on vs off: {'; '.join(per_group)}.")
        spans = ", ".join(f"{x['span']:.1f} s" for x in r["all"])
        section.notes.append(f"{label}: {count:,}-document batches, submission → last ready, round by round: {spans}.")
    section.notes.append(
        "Each deployment as in scenario 1. One agent's endpoint subscribes to `document.ready`; the receiver "
        "(this script, one asyncio thread answering 204) is left out of the CPU figures, which count the "
        "API, the workers, Postgres and Redis from a batch's submission to its last item ready (and, webhooks "
        "on, to its last delivery received). After one unmeasured round with webhooks on and one off, rounds run off, "
        "on, on, off (repeated `--webhook-rounds` times) on one "
        "deployment; the endpoint is "
        "turned off with `PATCH {\"is_active\": false}`, so the same rows and indexes exist in both."
    )
    return section


SCENARIOS = {
    "html": scenario_html,
    "pdf": scenario_pdf,
    "xlsx": scenario_xlsx,
    "download": scenario_download,
    "batch": scenario_batch,
    "webhook": scenario_webhook,
}
ALIASES = {"1": "html", "2": "pdf", "3": "xlsx", "4": "download", "5": "batch", "6": "webhook",
           "rss": "download"}


def main() -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench-pipeline", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run, not figures")
    parser.add_argument("--scenarios", default="html,pdf,xlsx,download,batch,webhook",
                        help="comma-separated: html,pdf,xlsx,download,batch (or 1,2,3,4,5)")
    parser.add_argument("--batch-items", type=int, default=0, help="items of the big batch (10000; quick 1000)")
    parser.add_argument("--results", type=Path, default=None,
                        help="results file (default bench/RESULTS.md; a --quick run writes none unless given)")
    parser.add_argument("--no-results", action="store_true", help="print the section, write no file")
    parser.add_argument("--duration", type=int, default=10, help="wrk seconds for the HTML scenario (10)")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections (16)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (2)")
    parser.add_argument("--pdf-count", type=int, default=0, help="PDFs per measurement (500; quick 20)")
    parser.add_argument("--xlsx-rows", type=int, default=0, help="XLSX rows (100000; quick 10000)")
    parser.add_argument("--download-mb", type=int, default=0, help="download size in MB (50; quick 8)")
    parser.add_argument("--keep", action="store_true", help="keep the run directory (logs, databases files)")
    parser.add_argument("--baseline", metavar="REV", default="",
                        help="same-run pairs for the html scenario: measure REV's binaries (in "
                        "$BENCH_BASELINE_BIN_DIR, built by the wrapper) and the current ones back to back; "
                        "other scenarios run with the current binaries only")
    parser.add_argument("--rounds", type=int, default=2,
                        help="with --baseline: pairs per figure, alternating which build goes first (2: ABBA)")
    parser.add_argument("--webhook-rounds", type=int, default=5,
                        help="webhook scenario: how many times to run its off, on, on, off rounds (5)")
    parser.add_argument("--command-line", default="scripts/bench-pipeline", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be 1 or more")

    chosen = []
    for name in args.scenarios.split(","):
        name = ALIASES.get(name.strip(), name.strip())
        if name not in SCENARIOS:
            parser.error(f"unknown scenario {name!r}: choose from {', '.join(SCENARIOS)}")
        if name not in chosen:
            chosen.append(name)
    base = None
    if args.baseline:
        base = benchlib.baseline_binaries(args.baseline)
        needed = [CURRENT.api, CURRENT.worker, base.api, base.worker]
        if "pdf" in chosen:
            needed.append(EXAMPLE)
        for binary in needed:
            if not binary.exists():
                raise BenchError(f"{binary} is missing: run scripts/bench-pipeline --baseline {args.baseline}, "
                                 "which builds it")
    else:
        for binary in (API_BIN, WORKER_BIN, EXAMPLE):
            if not binary.exists():
                raise BenchError(f"{binary} is missing: run scripts/bench-pipeline, which builds it")

    run_dir = start_run("monassurance-bench-", args.keep)
    log(f"run directory {run_dir}; scenarios {', '.join(chosen)}{' (quick)' if args.quick else ''}"
        + (f"; html paired against {base.label} ({base.dir}), {args.rounds} round(s)" if base else ""))

    facts = machine_facts()
    sections = []
    started = time.monotonic()
    for name in chosen:
        log(f"=== scenario {name} ===")
        if base and name == "html":
            sections.append(scenario_html_pair(args, run_dir, base))
        else:
            section = SCENARIOS[name](args, run_dir)
            if base:
                section.title += " — current build only (not paired)"
            sections.append(section)
    took = time.monotonic() - started

    day = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")
    kind = "quick smoke run" if args.quick else "full run"
    versus = f", {base.label} vs current" if base else ""
    md = [f"## {day} — {kind}{versus}: {', '.join(chosen)}", ""]
    if args.quick:
        md += ["_Smoke run with small sizes: proves the scenarios work; do not judge the targets on it._", ""]
    md += facts
    if base:
        md += benchlib.baseline_facts(base)
        unpaired = [n for n in chosen if n != "html"]
        if unpaired:
            md += [f"- Paired: html only; {', '.join(unpaired)} ran with the current binaries alone."]
    md += [f"- Command: `{args.command_line}` ({took / 60:.1f} min)", ""]
    missed = [f"{getattr(s, 'short', s.title.split(' ', 1)[1])}: {m}" for s in sections for m in s.missed]
    if missed:
        md += [("Targets the current build missed in this run: " if base else "Targets missed in this run: ")
               + "; ".join(missed) + ".", ""]
    elif base:
        md += ["The current build met every target in this run.", ""]
    else:
        md += ["Every target was met in this run.", ""]
    for section in sections:
        md += section.markdown()
    text = "\n".join(md)
    print(text)

    results = args.results
    if results is None and not args.quick:
        results = ROOT / "bench" / "RESULTS.md"
    if results is not None and not args.no_results:
        marker = f"{day} {'quick' if args.quick else 'full'} {','.join(chosen)}"
        if base:
            marker += f" vs-{base.label.split()[-1]}"
        write_results(results if results.is_absolute() else ROOT / results, marker, text)
        log(f"wrote {results}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as err:
        log(f"FAILED: {err}")
        sys.exit(1)
