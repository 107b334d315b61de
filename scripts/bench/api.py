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

With --baseline REV (the wrapper builds REV's binaries into $BENCH_BASELINE_BIN_DIR), each
deployment is started twice side by side, REV's binaries and the current ones, and every
figure is measured for both back to back (--rounds, default 2: baseline, current, current,
baseline); the section shows both and the ratio current/baseline.

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
    CURRENT,
    ROOT,
    BenchError,
    CpuWindow,
    Binaries,
    Deployment,
    PairSection,
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


def argon2_example(bins: Binaries) -> Path | None:
    """The build's own examples/argon2_bench (its hash parameters), else the current one's
    (None when neither build has one)."""
    return bins.example("argon2_bench") or CURRENT.example("argon2_bench")


def argon2_baseline(args, bins: Binaries = CURRENT) -> tuple[dict, str]:
    example = argon2_example(bins)
    argv = [
        str(example),
        "--count", "10" if args.quick else "50",
        "--threads", str(args.cores),
        "--seconds", "1" if args.quick else "5",
    ]
    log(f"argon2 ({bins.label} build): bare verify cost (one thread, then every core)")
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0:
        raise BenchError(f"argon2_bench failed: {result.stderr.strip()}")
    stats = json.loads(result.stdout)
    log(
        f"argon2 ({stats['params']}): {stats['single_p50_ms']:.1f} ms per verify on one thread, "
        f"{stats['parallel_per_second']:.1f}/s on {stats['threads']} threads"
    )
    owner = bins if example.parent.parent == bins.dir else CURRENT
    stats["example_of"] = owner.label
    return stats, owner.shown(" ".join(shlex.quote(a) for a in argv))


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
            connections: int | None = None, script: Path = benchlib.WRK_LUA, warm: bool = True) -> dict:
    """A warm-up run (unless `warm` is false), then the measured run while the API's VmRSS
    is sampled."""
    conns = connections or args.connections
    threads = min(args.threads, conns)
    pid = deployment.api.pid
    # The peak under this load, not the start-up's or an earlier run's (argon2 alone
    # takes 19 MB per login).
    hwm_reset = reset_hwm(pid)
    if warm:
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
        results["start"] = CURRENT.shown(deployment.commands[0])
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


# --------------------------------------------------------------------------------------
# Same-run pairs against a baseline build (--baseline REV)
# --------------------------------------------------------------------------------------


def run_pair_mode(mode: str, args, run_dir: Path, builds: dict[str, Binaries]) -> dict[str, dict]:
    """Both builds' deployments of `mode`, started side by side (each on its own fresh
    DATA_DIR, database and queue); each figure is then measured for one build and the
    other back to back, in `args.rounds` rounds that alternate which goes first, while the
    other build's processes sit idle. Returns {"baseline": results, "current": results},
    each the median of its rounds, with the rounds themselves under "rounds"."""
    postgres = mode == "postgres"
    deps: dict[str, Deployment] = {}
    tokens: dict[str, str] = {}
    bodies: dict[str, Path] = {}
    out = {key: {"mode": mode, "rounds": [{} for _ in range(args.rounds)]} for key in builds}
    other = {"baseline": "current", "current": "baseline"}
    try:
        for key, bins in builds.items():
            deployment = benchlib.new_deployment(run_dir, f"api-{mode}-{key}", dict(LIMITS), postgres, bins)
            deps[key] = deployment
            deployment.start_api("serve" if postgres else "all")
            out[key]["env"] = shown_env(deployment.env)
            out[key]["start"] = bins.shown(deployment.commands[0])
            tokens[key], bodies[key] = prepare(deployment, args.clients)
            out[key]["idle_kb"] = rss_kb(deployment.api.pid)
        figures = ["health", "list", "argon", "login1", "login"]
        for figure in figures:
            for r, order in enumerate(benchlib.round_order(args.rounds)):
                for key in order:
                    d, bins = deps[key], builds[key]
                    log(f"--- {mode}: {figure}, round {r + 1}/{args.rounds}: {bins.label}")
                    with benchlib.idle_partner(deps[other[key]], builds[other[key]].label):
                        if figure == "argon":
                            stats, out[key]["argon_cmd"] = None, "(not measured: no examples/argon2_bench)"
                            if argon2_example(bins) is not None:
                                stats, out[key]["argon_cmd"] = argon2_baseline(args, bins)
                        elif figure == "health":
                            stats = measure(d, "GET /health", d.base + "/health", {"BENCH_METHOD": "GET"},
                                            args, warm=r == 0)
                        elif figure == "list":
                            stats = measure(
                                d, f"GET /api/v1/clients ({args.clients} rows)",
                                f"{d.base}/api/v1/clients?limit={args.clients}",
                                {"BENCH_METHOD": "GET", "BENCH_TOKEN": tokens[key]}, args, warm=r == 0,
                            )
                        else:
                            stats = measure(
                                d, "POST /api/v1/auth/login" + (", one connection" if figure == "login1" else ""),
                                d.base + "/api/v1/auth/login", {"BENCH_BODY_FILE": str(bodies[key])}, args,
                                connections=1 if figure == "login1" else None, script=LOGIN_LUA, warm=r == 0,
                            )
                    out[key]["rounds"][r][figure] = stats
        out["unknown_vars"] = benchlib.unknown_variables(builds["baseline"], list(deps.values()))
    finally:
        for d in deps.values():
            d.stop()
    for key in builds:
        out[key].update(benchlib.median_run(out[key]["rounds"]))
    return out


def api_cpu_us(stats: dict) -> float:
    """The API process's CPU time per request of a wrk run, in µs."""
    seconds = stats["cpu"]["groups"].get("API process", 0.0)
    return 1e6 * seconds / stats["requests"] if stats["requests"] else float("nan")


def build_pair_section(args, pairs: list[dict], base: Binaries) -> PairSection:
    pr = benchlib.pair_ratio
    section = PairSection(
        f"API, {base.label} vs current (wrk, {args.connections} connections, {args.seconds} s; "
        f"{args.rounds} round{'s' if args.rounds > 1 else ''})",
        base.label,
    )
    labels = {"embedded": "embedded (SQLite)", "postgres": "Postgres + Redis"}

    def both(fn):
        return fn(b), fn(c)

    def p50_p99(stats):
        return f"{fmt_ms(stats['latency_p50_us'])} / {fmt_ms(stats['latency_p99_us'])} ms"

    def lat_ratio(bs, cs):
        return f"p50 {pr(cs['latency_p50_us'], bs['latency_p50_us'])}, p99 {pr(cs['latency_p99_us'], bs['latency_p99_us'])}"

    def rss(stats):
        return f"{mb(stats['rss_peak_kb']):.1f} / {mb(stats['hwm_kb']):.1f} MB"

    def rss_max(stats):
        return max(stats["rss_peak_kb"], stats["hwm_kb"])

    for pair in pairs:
        b, c = pair["baseline"], pair["current"]
        label = labels[b["mode"]]
        hb, hc = both(lambda r: r["health"]["per_second"])
        section.pair(f"{label}: GET /health", fmt_rate(hb), fmt_rate(hc), pr(hc, hb),
                     f"≥ {TARGET_HEALTH:,.0f}/s", (hb >= TARGET_HEALTH, hc >= TARGET_HEALTH))
        section.pair(f"{label}: GET /health latency p50 / p99", p50_p99(b["health"]), p50_p99(c["health"]),
                     lat_ratio(b["health"], c["health"]))
        lb, lc = both(lambda r: r["list"]["per_second"])
        section.pair(f"{label}: GET /api/v1/clients, {args.clients} rows", fmt_rate(lb), fmt_rate(lc), pr(lc, lb),
                     f"≥ {TARGET_LIST:,.0f}/s", (lb >= TARGET_LIST, lc >= TARGET_LIST))
        section.pair(f"{label}: GET /api/v1/clients latency p50 / p99", p50_p99(b["list"]), p50_p99(c["list"]),
                     lat_ratio(b["list"], c["list"]), f"p99 ≤ {TARGET_LIST_P99_MS:.0f} ms",
                     both(lambda r: r["list"]["latency_p99_us"] / 1000.0 <= TARGET_LIST_P99_MS))
        ub, uc = both(lambda r: api_cpu_us(r["list"]))
        section.pair(f"{label}: API CPU per list request", f"{ub:,.0f} µs", f"{uc:,.0f} µs", pr(uc, ub))
        section.pair(f"{label}: API RSS under the list load: VmRSS peak / VmHWM", rss(b["list"]), rss(c["list"]),
                     pr(rss_max(c["list"]), rss_max(b["list"])), f"≤ {TARGET_RSS_MB:.0f} MB",
                     both(lambda r: mb(rss_max(r["list"])) <= TARGET_RSS_MB))
        section.pair(f"{label}: API RSS idle after setup", f"{mb(b['idle_kb']):.1f} MB", f"{mb(c['idle_kb']):.1f} MB",
                     pr(c["idle_kb"], b["idle_kb"]))
        section.pair(
            f"{label}: POST /api/v1/auth/login, one connection: p50 latency",
            f"{fmt_ms(b['login1']['latency_p50_us'])} ms", f"{fmt_ms(c['login1']['latency_p50_us'])} ms",
            pr(c["login1"]["latency_p50_us"], b["login1"]["latency_p50_us"]),
        )
        nan = float("nan")

        def shown_ms(value: float) -> str:
            return "not measured" if value != value else f"{value:+.2f} ms"

        ab, ac = both(lambda r: r["login1"]["latency_p50_us"] / 1000.0 - r["argon"]["single_p50_ms"]
                      if r["argon"] else nan)
        section.pair(f"{label}: … of which above the build's own bare argon2 verify (p50)",
                     shown_ms(ab), shown_ms(ac), shown_ms(ac - ab))
        gb, gc = both(lambda r: r["login"]["per_second"])
        section.pair(f"{label}: POST /api/v1/auth/login, {c['login']['conns']} connections", fmt_rate(gb),
                     fmt_rate(gc), pr(gc, gb))
        mb_, mc = both(lambda r: 1000.0 / r["login"]["per_second"] - 1000.0 / r["argon"]["parallel_per_second"]
                       if r["argon"] else nan)
        section.pair(f"{label}: … machine time per login above argon2 on every core",
                     shown_ms(mb_), shown_ms(mc), shown_ms(mc - mb_))
        section.pair(f"{label}: POST /api/v1/auth/login latency p50 / p99", p50_p99(b["login"]), p50_p99(c["login"]),
                     lat_ratio(b["login"], c["login"]))
        section.pair(f"{label}: API RSS under the login load: VmRSS peak / VmHWM", rss(b["login"]), rss(c["login"]),
                     pr(rss_max(c["login"]), rss_max(b["login"])))
        def argon(r):
            a = r["argon"]
            return f"{a['single_p50_ms']:.2f} ms; {fmt_rate(a['parallel_per_second'])}" if a else "not measured"

        section.pair(
            f"{label}: bare argon2 verify (the build's own example): one thread p50; every core",
            argon(b), argon(c),
            f"{pr(c['argon']['single_p50_ms'], b['argon']['single_p50_ms'])}; "
            f"{pr(c['argon']['parallel_per_second'], b['argon']['parallel_per_second'])}"
            if b["argon"] and c["argon"] else "—",
        )

        def errors(r):
            runs = [s for rnd in r["rounds"] for s in (rnd["health"], rnd["list"], rnd["login1"], rnd["login"])]
            return sum(s["non_2xx"] for s in runs), sum(s["socket_errors"] for s in runs)

        eb, ec = errors(b), errors(c)
        section.pair(f"{label}: non-2xx / socket errors (every run)", f"{eb[0]} / {eb[1]}", f"{ec[0]} / {ec[1]}", "—",
                     "0 / 0", (eb == (0, 0), ec == (0, 0)))

        if args.rounds > 1:
            per_round = []
            for name, key in (("/health", "health"), ("list", "list"), ("login×1", "login1"), ("login", "login")):
                ratios = [pr(rc[key]["per_second"], rb[key]["per_second"]) for rb, rc in zip(b["rounds"], c["rounds"])]
                per_round.append(f"{name} {', '.join(ratios)}")
            section.notes.append(f"{label}: current / baseline per round (req/s): " + "; ".join(per_round) + ".")
        def worst(r):
            return max(s["cpu"]["foreign_pct"] for rnd in r["rounds"] for s in rnd.values()
                       if isinstance(s, dict) and "cpu" in s)

        section.notes.append(
            f"{label}: processes that are not part of the bench took up to {worst(b):.0f}% of the machine "
            f"during a baseline window, up to {worst(c):.0f}% during a current one"
            + (" (**figures lower than a quiet machine gives; the pairs still compare like with like only as "
               "far as that load was steady**)." if max(worst(b), worst(c)) >= 10 else ".")
        )
        if not b["argon"] or not c["argon"]:
            section.notes.append(f"{label}: no `examples/argon2_bench` in either build: the bare argon2 "
                                 "baseline was not measured.")
        elif b["argon"].get("example_of") != base.label:
            section.notes.append(f"{label}: the baseline build has no `examples/argon2_bench`: the current "
                                 "one's was used for both (the current hash parameters).")
        if pair.get("unknown_vars"):
            section.notes.append(f"{label}: {pair['unknown_vars']}")
        for key, r in (("baseline", b), ("current", c)):
            cpu_lines = benchlib.cpu_table(r["list"]["cpu"])
            section.extra += [f"**{label}, {key}, GET /api/v1/clients** — " + cpu_lines[0]] + cpu_lines[1:] + [""]

    section.notes.append(
        "Ratio: current / baseline (above 1 is better for rates, below 1 for latencies, memory and CPU); "
        "\"above argon2\" rows show the difference instead. Each figure is the median of the rounds."
    )
    section.notes.append(
        "How the pairs were taken: per deployment, both builds were started side by side (each on its own "
        "fresh DATA_DIR, database and Redis names, the same environment), then each figure was measured "
        "for one build and right after for the other"
        + (", in rounds that alternate which goes first (two rounds: baseline, current, current, "
           "baseline), warm-up in the first round only" if args.rounds > 1 else ", baseline first")
        + ". The other build's processes sat idle meanwhile; the CPU tables count them apart "
        "(\"idle partner\"). The API's CPU per list request is the `API process` group's CPU seconds in the "
        "measured window over the requests wrk completed."
    )
    section.notes.append(
        "Limits as in the unpaired run: `RATE_LIMIT_ENABLED=false`, `LOGIN_ATTEMPTS_ENABLED=true` at its "
        "default budgets. Embedded runs `monassurance-api all`, Postgres + Redis `monassurance-api serve`."
    )
    for pair in pairs:
        label = labels[pair["current"]["mode"]]
        for key in ("baseline", "current"):
            r = pair[key]
            section.commands.append(f"# {label}, {key}: environment\n{r['env']}\n{r['start']}")
            section.commands.append(f"# argon2 baseline ({key})\n{r['argon_cmd']}")
        r = pair["current"]
        section.commands.append(f"# {label}: wrk, the same for both builds (each on its own port and token)")
        for key in ("health", "list", "login1", "login"):
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
    parser.add_argument("--baseline", metavar="REV", default="",
                        help="same-run pairs: measure REV's binaries (in $BENCH_BASELINE_BIN_DIR, built by "
                        "the wrapper) and the current ones back to back; one section with both and the ratio")
    parser.add_argument("--rounds", type=int, default=2,
                        help="with --baseline: pairs per figure, alternating which build goes first (2: ABBA)")
    parser.add_argument("--command-line", default="scripts/bench-api", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be 1 or more")
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
    base = None
    if args.baseline:
        base = benchlib.baseline_binaries(args.baseline)
        for binary in (CURRENT.api, base.api):
            if not binary.exists():
                raise BenchError(f"{binary} is missing: run scripts/bench-api --baseline {args.baseline}, which builds it")
        if argon2_example(CURRENT) is None:
            log(f"warning: no {CURRENT.dir / 'examples/argon2_bench'}: the bare argon2 baseline will not be measured")
    else:
        for binary in (CURRENT.api, argon2_example(CURRENT)):
            if binary is None or not binary.exists():
                raise BenchError(f"{binary or CURRENT.dir / 'examples/argon2_bench'} is missing: "
                                 "run scripts/bench-api, which builds it")

    run_dir = start_run("monassurance-bench-api-", args.keep)
    log(f"run directory {run_dir}; modes {', '.join(modes)}{' (quick)' if args.quick else ''}"
        + (f"; pairs against {base.label} ({base.dir}), {args.rounds} round(s)" if base else ""))

    facts = machine_facts()
    started = time.monotonic()
    runs = []
    for mode in modes:
        log(f"=== {mode} ===")
        if base:
            runs.append(run_pair_mode(mode, args, run_dir, {"baseline": base, "current": CURRENT}))
        else:
            runs.append(run_mode(mode, args, run_dir))
    took = time.monotonic() - started
    section = build_pair_section(args, runs, base) if base else build_section(args, runs)

    day = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")
    kind = "quick smoke run" if args.quick else "full run"
    label = f" ({args.label})" if args.label else ""
    versus = f", {base.label} vs current" if base else ""
    md = [f"## {day} — API, {kind}{label}{versus}: {', '.join(modes)}", ""]
    for note in args.note:
        md += [note, ""]
    if args.quick:
        md += ["_Smoke run with short wrk runs: proves the script works; do not judge the targets on it._", ""]
    md += facts
    if base:
        md += benchlib.baseline_facts(base)
    md += [f"- Command: `{args.command_line}` ({took / 60:.1f} min)", ""]
    if section.missed and base:
        md += ["Targets the current build missed in this run: " + "; ".join(section.missed) + ".", ""]
    elif section.missed:
        md += ["Targets missed in this run: " + "; ".join(section.missed) + ".", ""]
    elif base:
        md += ["The current build met every target in this run.", ""]
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
        if base:
            marker += f" vs-{base.label.split()[-1]}"
        write_results(results if results.is_absolute() else ROOT / results, marker, text, kind="bench-api")
        log(f"wrote {results}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as err:
        log(f"FAILED: {err}")
        sys.exit(1)
