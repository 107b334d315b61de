#!/usr/bin/env python3
"""The API benchmark behind scripts/bench-api (run that, not this).

For each deployment (--modes, comma-separated; default both):
  embedded  `monassurance-api all` on a fresh DATA_DIR: SQLite, no services
  postgres  `monassurance-api serve` on a fresh Postgres database bench_<random> with
            Redis (limits and queue under a private name): the production configuration

it registers an agent, creates its clients through the HTTP API, then drives with wrk on
loopback (--connections, default 16; a warm-up run first, then the measured run):
  GET /health                         the framework's ceiling in the same run
  GET /api/v1/clients?limit=100       authenticated, 100 rows (the agent's own clients)
  POST /api/v1/auth/login             one connection, then 16
while it samples the API's VmRSS every 20 ms and reads its VmHWM. The bare argon2 verify
cost (the app's own function and parameters, examples/argon2_bench in common/) is
measured in the same run, so that the time per login above it is a real difference.
The original (Python/FastAPI) is only quoted. Figures go to bench/RESULTS.md between
`<!-- bench-api:begin … -->` markers, newest first.

Python 3.9+ standard library only; needs wrk, psql, redis-cli. The machinery it shares
with scripts/bench-pipeline is in benchlib.py.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import benchlib
from benchlib import (
    API_BIN,
    BIN_DIR,
    ROOT,
    BenchError,
    CpuWindow,
    Deployment,
    RssSampler,
    reset_hwm,
    Section,
    cpu_table,
    expect,
    fmt_rate,
    http,
    log,
    machine_facts,
    mb,
    missed_by,
    rss_kb,
    run_wrk,
    shown_env,
    start_run,
    write_results,
)

ARGON2_EXAMPLE = BIN_DIR / "examples" / "argon2_bench"
LOGIN_LUA = ROOT / "scripts" / "bench" / "login.lua"

# The original (Python/FastAPI), measured the same way on this kind of machine: quoted only.
ORIGINAL_HEALTH = 1206.0
ORIGINAL_LIST = 89.0
ORIGINAL_LIST_P99_MS = 328.0
ORIGINAL_RSS_MB = 142.0

TARGET_LIST = 2670.0  # ≥ 30× the original
TARGET_LIST_P99_MS = 15.0
TARGET_HEALTH = 30150.0  # ≥ 25× the original
TARGET_RSS_MB = 60.0

AGENT_EMAIL = "bench-agent@example.com"
AGENT_PASSWORD = "bench-agent-password-0123"

# What the limits are set to, and why (written into RESULTS.md).
LIMITS = {
    # The generic per-IP limiter is off by default (limit at the reverse proxy); on, its
    # `auth` group allows 10 requests per minute per IP, and every wrk connection shares
    # 127.0.0.1.
    "RATE_LIMIT_ENABLED": "false",
    # The brute-force guard stays on at its defaults: it is part of what a login costs (a
    # peek at the IP's and the account's budgets, in Redis in production). It only spends
    # budget on failed logins, and every benchmarked login succeeds.
    "LOGIN_ATTEMPTS_ENABLED": "true",
}


def fmt_ms(us: float) -> str:
    ms = us / 1000.0
    return f"{ms:,.2f}" if ms < 10 else f"{ms:,.1f}"


# --------------------------------------------------------------------------------------
# The argon2 baseline
# --------------------------------------------------------------------------------------


def argon2_baseline(args) -> tuple[dict, str]:
    argv = [
        str(ARGON2_EXAMPLE),
        "--count", "10" if args.quick else "50",
        "--threads", str(args.cores),
        "--seconds", "1" if args.quick else "5",
    ]
    log("argon2: bare verify cost (one thread, then every core)")
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0:
        raise BenchError(f"argon2_bench failed: {result.stderr.strip()}")
    stats = json.loads(result.stdout)
    log(
        f"argon2 ({stats['params']}): {stats['single_p50_ms']:.1f} ms per verify on one thread, "
        f"{stats['parallel_per_second']:.1f}/s on {stats['threads']} threads"
    )
    return stats, " ".join(shlex.quote(a) for a in argv).replace(str(BIN_DIR), "$CARGO_TARGET_DIR/release")


# --------------------------------------------------------------------------------------
# One deployment
# --------------------------------------------------------------------------------------


def prepare(deployment: Deployment, clients: int) -> tuple[str, Path]:
    """Registers the agent, creates its clients, returns its token and the login body."""
    base = deployment.base
    status, body = http(
        "POST",
        base + "/api/v1/auth/register",
        body={"email": AGENT_EMAIL, "password": AGENT_PASSWORD, "full_name": "Bench Agent"},
    )
    expect(status, 201, "register the agent", body)
    status, body = http("POST", base + "/api/v1/auth/login", body={"email": AGENT_EMAIL, "password": AGENT_PASSWORD})
    expect(status, 200, "agent login", body)
    token = body["access_token"]
    log(f"{deployment.name}: creating {clients} clients through POST /api/v1/clients")
    for i in range(clients):
        status, body = http(
            "POST",
            base + "/api/v1/clients",
            token,
            {
                "first_name": f"Prénom{i:03d}",
                "last_name": f"Nom-{i:03d}",
                "email": f"client{i:03d}@example.com",
                "phone": f"+237 6 99 {i:02d} {i % 100:02d} {i % 7:02d}",
                "address": f"{i} rue de la Réunification, Douala, Cameroun",
            },
        )
        expect(status, 201, f"create client {i}", body)
    status, body = http("GET", base + f"/api/v1/clients?limit={clients}", token)
    expect(status, 200, "list clients", body)
    if len(body["items"]) != clients or body["total"] != clients:
        raise BenchError(f"the list has {len(body['items'])} items, total {body['total']}; expected {clients}")
    login_body = deployment.workdir / "login.json"
    login_body.write_text(json.dumps({"email": AGENT_EMAIL, "password": AGENT_PASSWORD}))
    return token, login_body


def measure(deployment: Deployment, what: str, url: str, env: dict[str, str], args,
            connections: int | None = None, script: Path = benchlib.WRK_LUA) -> dict:
    """A warm-up run, then the measured run while the API's VmRSS is sampled."""
    conns = connections or args.connections
    threads = min(args.threads, conns)
    pid = deployment.api.pid
    # The peak under this load, not the start-up's or an earlier run's (argon2 alone
    # takes 19 MB per login).
    hwm_reset = reset_hwm(pid)
    log(f"{deployment.name}: {what}: warm-up {args.warmup} s")
    run_wrk(url, args.warmup, conns, threads, env, script=script, token_label="<agent token>")
    deployment.check_alive()
    log(f"{deployment.name}: {what}: {args.seconds} s, {conns} connections")
    cpu = CpuWindow().start()
    with RssSampler(pid) as sampler:
        stats = run_wrk(url, args.seconds, conns, threads, env, script=script, token_label="<agent token>")
    stats["cpu"] = cpu.stop()
    deployment.check_alive()
    stats["rss_peak_kb"] = sampler.peak_kb
    stats["rss_samples"] = len(sampler.samples)
    stats["hwm_kb"] = rss_kb(pid, "VmHWM")
    stats["hwm_reset"] = hwm_reset
    stats["conns"] = conns
    log(
        f"{deployment.name}: {what}: {stats['per_second']:,.0f}/s, p50 {fmt_ms(stats['latency_p50_us'])} ms, "
        f"p99 {fmt_ms(stats['latency_p99_us'])} ms, non-2xx {stats['non_2xx']}, socket errors "
        f"{stats['socket_errors']}, VmRSS peak {mb(stats['rss_peak_kb']):.1f} MB, VmHWM {mb(stats['hwm_kb']):.1f} MB"
    )
    return stats


def run_mode(mode: str, args, run_dir: Path) -> dict:
    postgres = mode == "postgres"
    deployment = benchlib.new_deployment(run_dir, f"api-{mode}", dict(LIMITS), postgres)
    results: dict = {"mode": mode}
    try:
        deployment.start_api("serve" if postgres else "all")
        results["env"] = shown_env(deployment.env)
        results["start"] = deployment.commands[0].replace(str(BIN_DIR), "$CARGO_TARGET_DIR/release")
        token, login_body = prepare(deployment, args.clients)
        results["idle_kb"] = rss_kb(deployment.api.pid)
        base = deployment.base
        results["health"] = measure(deployment, "GET /health", base + "/health", {"BENCH_METHOD": "GET"}, args)
        results["list"] = measure(
            deployment,
            f"GET /api/v1/clients ({args.clients} rows)",
            f"{base}/api/v1/clients?limit={args.clients}",
            {"BENCH_METHOD": "GET", "BENCH_TOKEN": token},
            args,
        )
        # The bare argon2 cost right before the logins, so both see the same machine.
        results["argon"], results["argon_cmd"] = argon2_baseline(args)
        results["login1"] = measure(
            deployment, "POST /api/v1/auth/login, one connection", base + "/api/v1/auth/login",
            {"BENCH_BODY_FILE": str(login_body)}, args, connections=1, script=LOGIN_LUA,
        )
        results["login"] = measure(
            deployment, "POST /api/v1/auth/login", base + "/api/v1/auth/login",
            {"BENCH_BODY_FILE": str(login_body)}, args, script=LOGIN_LUA,
        )
    finally:
        deployment.stop()
    return results


# --------------------------------------------------------------------------------------
# The section
# --------------------------------------------------------------------------------------


def ratio(value: float, baseline: float) -> str:
    return f"{value / baseline:,.1f}×" if baseline else "—"


def build_section(args, runs: list[dict]) -> Section:
    section = Section(f"API throughput, latency and memory (wrk, {args.connections} connections, {args.seconds} s)")
    labels = {"embedded": "embedded (SQLite)", "postgres": "Postgres + Redis"}
    for r in runs:
        label = labels[r["mode"]]
        h, l, g, g1, argon = r["health"], r["list"], r["login"], r["login1"], r["argon"]
        section.row(
            f"{label}: GET /health",
            fmt_rate(h["per_second"]),
            f"≥ {TARGET_HEALTH:,.0f}/s (25×)",
            f"original (quoted): {ORIGINAL_HEALTH:,.0f}/s",
            f"{ratio(h['per_second'], ORIGINAL_HEALTH)} the original",
            h["per_second"] >= TARGET_HEALTH,
        )
        section.row(
            f"{label}: GET /health latency p50 / p99",
            f"{fmt_ms(h['latency_p50_us'])} / {fmt_ms(h['latency_p99_us'])} ms",
            "—", "—", "—", None,
        )
        section.row(
            f"{label}: GET /api/v1/clients, {args.clients} rows",
            fmt_rate(l["per_second"]),
            f"≥ {TARGET_LIST:,.0f}/s (30×)",
            f"original (quoted): {ORIGINAL_LIST:,.0f}/s; GET /health: {fmt_rate(h['per_second'])}",
            f"{ratio(l['per_second'], ORIGINAL_LIST)} the original; {l['per_second'] / h['per_second']:.2f}× /health",
            l["per_second"] >= TARGET_LIST,
        )
        section.row(
            f"{label}: GET /api/v1/clients latency p50 / p99",
            f"{fmt_ms(l['latency_p50_us'])} / {fmt_ms(l['latency_p99_us'])} ms",
            f"p99 ≤ {TARGET_LIST_P99_MS:.0f} ms",
            f"original p99 (quoted): {ORIGINAL_LIST_P99_MS:.0f} ms; /health p99: {fmt_ms(h['latency_p99_us'])} ms",
            "—",
            l["latency_p99_us"] / 1000.0 <= TARGET_LIST_P99_MS,
        )
        list_rss = max(l["rss_peak_kb"], l["hwm_kb"])
        section.row(
            f"{label}: API RSS under the list load: VmRSS peak (20 ms samples) / VmHWM",
            f"{mb(l['rss_peak_kb']):.1f} / {mb(l['hwm_kb']):.1f} MB",
            f"≤ {TARGET_RSS_MB:.0f} MB",
            f"original (quoted): {ORIGINAL_RSS_MB:.0f} MB; idle after setup: {mb(r['idle_kb']):.1f} MB",
            f"{mb(list_rss) / ORIGINAL_RSS_MB:.2f}× the original",
            mb(list_rss) <= TARGET_RSS_MB,
        )
        above_single = g1["latency_p50_us"] / 1000.0 - argon["single_p50_ms"]
        section.row(
            f"{label}: POST /api/v1/auth/login, one connection: p50 latency",
            f"{fmt_ms(g1['latency_p50_us'])} ms ({fmt_rate(g1['per_second'])})",
            "—",
            f"bare argon2 verify, one thread: {argon['single_p50_ms']:.2f} ms",
            f"**{above_single:+.2f} ms per login above argon2**",
            None,
        )
        machine_login = 1000.0 / g["per_second"]
        machine_argon = 1000.0 / argon["parallel_per_second"]
        section.row(
            f"{label}: POST /api/v1/auth/login, {g['conns']} connections",
            fmt_rate(g["per_second"]),
            "—",
            f"bare argon2 verify on {argon['threads']} threads: {fmt_rate(argon['parallel_per_second'])}",
            f"{g['per_second'] / argon['parallel_per_second']:.2f}× argon2 alone; "
            f"**{machine_login - machine_argon:+.2f} ms of machine time per login above argon2** "
            f"({machine_login:.2f} vs {machine_argon:.2f} ms)",
            None,
        )
        section.row(
            f"{label}: POST /api/v1/auth/login latency p50 / p99 ({g['conns']} connections)",
            f"{fmt_ms(g['latency_p50_us'])} / {fmt_ms(g['latency_p99_us'])} ms",
            "—", "—", "—", None,
        )
        section.row(
            f"{label}: API RSS under the login load: VmRSS peak / VmHWM",
            f"{mb(g['rss_peak_kb']):.1f} / {mb(g['hwm_kb']):.1f} MB",
            "—", "—", "—", None,
        )
        counts = [
            f"{name} {s['non_2xx']} / {s['socket_errors']}"
            for name, s in (("health", h), ("list", l), ("login×1", g1), ("login", g))
        ]
        zero = all(s["non_2xx"] == 0 and s["socket_errors"] == 0 for s in (h, l, g1, g))
        section.row(
            f"{label}: non-2xx / socket errors",
            "; ".join(counts),
            "0 / 0",
            "—", "—", zero,
        )
        for name, s, target, higher in (
            ("GET /health", h["per_second"], TARGET_HEALTH, True),
            ("list req/s", l["per_second"], TARGET_LIST, True),
            ("list p99 (ms)", l["latency_p99_us"] / 1000.0, TARGET_LIST_P99_MS, False),
            ("API RSS (MB)", mb(list_rss), TARGET_RSS_MB, False),
        ):
            if (s < target) if higher else (s > target):
                section.notes.append(f"{label}: **{name} target {missed_by(s, target, higher)}**.")
        statuses = ", ".join(f"{k}: {v:,}" for k, v in sorted(g.get("statuses", {}).items()))
        section.notes.append(
            f"{label}: login answers by status: {statuses or 'none'} "
            f"({g['requests']:,} logins in {g['duration_us'] / 1e6:.1f} s, each opening a session row and "
            "writing an audit row)."
        )
        section.notes.append(
            f"{label}: processes that are not part of the bench took "
            + " / ".join(f"{s['cpu']['foreign_pct']:.0f}%" for s in (h, l, g1, g))
            + " of the machine during the /health, list, login×1 and login runs"
            + (" (**the figures of those runs are lower than a quiet machine gives**)."
               if max(s["cpu"]["foreign_pct"] for s in (h, l, g1, g)) >= 10 else ".")
        )
        cpu_lines = cpu_table(l["cpu"])
        section.extra += [f"**{label}, GET /api/v1/clients** — " + cpu_lines[0]] + cpu_lines[1:] + [""]

    for r in runs:
        argon = r["argon"]
        section.notes.append(
            f"{labels[r['mode']]}: argon2 baseline, run right before the logins "
            f"(`examples/argon2_bench` of `common`: the app's own hash and verify functions, "
            f"parameters `{argon['params']}`): {argon['single_p50_ms']:.2f} ms per verify on one "
            f"thread (p99 {argon['single_p99_ms']:.2f} ms, {argon['count']} verifies); "
            f"{argon['parallel_per_second']:.1f}/s with {argon['threads']} threads for "
            f"{argon['parallel_seconds']:.1f} s."
        )
    section.notes.append(
        "\"Per login above argon2\": with one connection, the login's p50 latency minus one "
        "verify's p50; with all connections, the machine's time per login (1 / logins per "
        "second) minus its time per verify (1 / verifies per second on every core)."
    )
    section.notes.append(
        "Limits: `RATE_LIMIT_ENABLED=false` (the default: the generic per-IP limiter would "
        "allow 10 auth requests per minute to 127.0.0.1, which every wrk connection shares); "
        "`LOGIN_ATTEMPTS_ENABLED=true` at its default budgets (30 per IP, 10 per account per "
        "minute): the brute-force guard is measured as part of each login (it only peeks at "
        "the budgets, in Redis for Postgres + Redis, in memory embedded) and spends them only "
        "on failed logins, of which there are none."
    )
    section.notes.append(
        f"The agent's {args.clients} clients are created through `POST /api/v1/clients`; the list "
        f"is the agent's own (`?limit={args.clients}`, one page, with the total). Each figure is the "
        f"second of two wrk runs (warm-up {args.warmup} s, then {args.seconds} s measured); VmRSS is "
        "sampled every 20 ms during the measured run, and VmHWM (the kernel's exact peak) is reset "
        "before each warm-up and read right after the measured run, so it covers that load alone "
        "(without the reset, the list's VmHWM would include start-up and the setup's argon2 logins, "
        "19 MB each). The RSS target is judged on the larger of the two."
    )
    if not all(r[k]["hwm_reset"] for r in runs for k in ("health", "list", "login1", "login")):
        section.notes.append(
            "This kernel refused to reset VmHWM (`/proc/<pid>/clear_refs`): some VmHWM figures are "
            "the peak since the process started."
        )
    section.notes.append(
        "Embedded runs `monassurance-api all` (the API and the document worker in one process, as "
        "`scripts/run` does); Postgres + Redis runs `monassurance-api serve` (an API replica alone)."
    )
    for r in runs:
        label = labels[r["mode"]]
        section.commands.append(f"# {label}: environment\n{r['env']}\n{r['start']}")
        for key in ("health", "list"):
            section.commands.append(r[key]["command"])
        section.commands.append(f"# argon2 baseline\n{r['argon_cmd']}")
        for key in ("login1", "login"):
            section.commands.append(r[key]["command"])
    return section


def main() -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench-api", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short runs: a smoke run, not figures")
    parser.add_argument("--modes", default="embedded,postgres", help="comma-separated: embedded,postgres")
    parser.add_argument("--results", type=Path, default=None,
                        help="results file (default bench/RESULTS.md; a --quick run writes none unless given)")
    parser.add_argument("--no-results", action="store_true", help="print the section, write no file")
    parser.add_argument("--label", default="", help="a word for the section title and marker (e.g. before)")
    parser.add_argument("--note", action="append", default=[], help="a paragraph put under the title")
    parser.add_argument("--duration", type=int, default=10, help="measured wrk seconds (10; quick 3)")
    parser.add_argument("--warmup", type=int, default=0, help="warm-up wrk seconds (3; quick 1)")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections (16)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (2)")
    parser.add_argument("--clients", type=int, default=100, help="clients in the list (100)")
    parser.add_argument("--keep", action="store_true", help="keep the run directory (logs, database files)")
    parser.add_argument("--command-line", default="scripts/bench-api", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.seconds = 3 if args.quick else args.duration
    args.warmup = args.warmup or (1 if args.quick else 3)
    args.cores = os.cpu_count() or 1

    modes = []
    for name in args.modes.split(","):
        name = {"sqlite": "embedded", "pg": "postgres"}.get(name.strip(), name.strip())
        if name not in ("embedded", "postgres"):
            parser.error(f"unknown mode {name!r}: choose from embedded, postgres")
        if name not in modes:
            modes.append(name)
    for binary in (API_BIN, ARGON2_EXAMPLE):
        if not binary.exists():
            raise BenchError(f"{binary} is missing: run scripts/bench-api, which builds it")

    run_dir = start_run("monassurance-bench-api-", args.keep)
    log(f"run directory {run_dir}; modes {', '.join(modes)}{' (quick)' if args.quick else ''}")

    facts = machine_facts()
    started = time.monotonic()
    runs = []
    for mode in modes:
        log(f"=== {mode} ===")
        runs.append(run_mode(mode, args, run_dir))
    took = time.monotonic() - started
    section = build_section(args, runs)

    day = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")
    kind = "quick smoke run" if args.quick else "full run"
    label = f" ({args.label})" if args.label else ""
    md = [f"## {day} — API, {kind}{label}: {', '.join(modes)}", ""]
    for note in args.note:
        md += [note, ""]
    if args.quick:
        md += ["_Smoke run with short wrk runs: proves the script works; do not judge the targets on it._", ""]
    md += facts
    md += [f"- Command: `{args.command_line}` ({took / 60:.1f} min)", ""]
    if section.missed:
        md += ["Targets missed in this run: " + "; ".join(section.missed) + ".", ""]
    else:
        md += ["Every target was met in this run.", ""]
    md += section.markdown()
    text = "\n".join(md)
    print(text)

    results = args.results
    if results is None and not args.quick:
        results = ROOT / "bench" / "RESULTS.md"
    if results is not None and not args.no_results:
        marker = f"{day} {'quick' if args.quick else 'full'} {','.join(modes)}" + (f" {args.label}" if args.label else "")
        write_results(results if results.is_absolute() else ROOT / results, marker, text, kind="bench-api")
        log(f"wrote {results}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as err:
        log(f"FAILED: {err}")
        sys.exit(1)
