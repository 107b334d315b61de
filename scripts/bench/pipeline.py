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

Python 3.9+ standard library only; needs wrk, psql, redis-cli, curl, wkhtmltopdf.
"""

from __future__ import annotations

import argparse
import atexit
import base64
import datetime as dt
import io
import json
import os
import re
import resource
import secrets
import shlex
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN_DIR = Path(os.environ.get("BENCH_BIN_DIR", ""))
EXAMPLE = BIN_DIR / "examples" / "pdf_engine_bench"
API_BIN = BIN_DIR / "monassurance-api"
WORKER_BIN = BIN_DIR / "monassurance-worker"
WRK_LUA = ROOT / "scripts" / "bench" / "wrk.lua"
PG_URL = os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379")
ADMIN_EMAIL = "bench-admin@example.com"
ADMIN_PASSWORD = "bench-admin-password-" + secrets.token_hex(4)
ORIGINAL_HTML_PER_SECOND = 138.0  # the Python original, rendering inside the request
CLK_TCK = os.sysconf("SC_CLK_TCK")

# An HTTP client that ignores any proxy variables: everything here is on 127.0.0.1.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def log(message: str) -> None:
    stamp = time.strftime("%H:%M:%S")
    print(f"[bench {stamp}] {message}", file=sys.stderr, flush=True)


class BenchError(Exception):
    pass


# --------------------------------------------------------------------------------------
# Everything started is registered here and undone at exit, whatever happens.
# --------------------------------------------------------------------------------------


class Cleanup:
    def __init__(self) -> None:
        self.processes: list[tuple[str, subprocess.Popen]] = []
        self.databases: list[str] = []
        self.queues: list[str] = []
        self.dirs: list[Path] = []
        self.keep = False
        self.done = False

    def stop_process(self, name: str, proc: subprocess.Popen, grace: float = 40.0) -> None:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                log(f"{name} (pid {proc.pid}) ignored SIGTERM for {grace:.0f} s; killing it")
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
        # Anything it started and left behind (a wkhtmltopdf of a crashed worker) is in its
        # process group, which outlives it only as long as such a member does.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.processes = [(n, p) for n, p in self.processes if p is not proc]

    def run(self) -> None:
        if self.done:
            return
        self.done = True
        for name, proc in reversed(list(self.processes)):
            self.stop_process(name, proc, grace=15.0)
        for db in self.databases:
            try:
                psql(PG_URL, f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
            except BenchError:
                psql(PG_URL, f"DROP DATABASE IF EXISTS {db}", check=False)
        for queue in self.queues:
            drop_redis_queue(queue)
        for path in self.dirs:
            if self.keep:
                log(f"kept {path}")
            else:
                shutil.rmtree(path, ignore_errors=True)


CLEANUP = Cleanup()


def on_signal(signum, _frame):
    log(f"signal {signum}: stopping everything")
    CLEANUP.run()
    sys.exit(128 + signum)


# --------------------------------------------------------------------------------------
# Small tools
# --------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def psql(url: str, sql: str, check: bool = True) -> str:
    result = subprocess.run(
        ["psql", "-X", "-Atq", "-v", "ON_ERROR_STOP=1", "-d", url, "-c", sql],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0 and check:
        raise BenchError(f"psql failed: {sql[:120]}: {result.stderr.strip()}")
    return result.stdout


def redis_cli(*args: str) -> str:
    return subprocess.run(
        ["redis-cli", "-u", REDIS_URL, *args], capture_output=True, text=True
    ).stdout


def drop_redis_queue(queue: str) -> None:
    keys = [k for k in redis_cli("--scan", "--pattern", f"*{queue}*").split() if k]
    for i in range(0, len(keys), 200):
        redis_cli("DEL", *keys[i : i + 200])


def fresh_database() -> str:
    name = "bench_" + secrets.token_hex(6)
    psql(PG_URL, f"CREATE DATABASE {name}")
    CLEANUP.databases.append(name)
    prefix, _ = PG_URL.rsplit("/", 1)
    return f"{prefix}/{name}"


def http(method: str, url: str, token: str | None = None, body=None, timeout: float = 60.0):
    """(status, parsed JSON or raw bytes)."""
    data = None
    headers = {}
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with OPENER.open(request, timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as err:
        status, raw = err.code, err.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw


def expect(status: int, wanted: int, what: str, body) -> None:
    if status != wanted:
        raise BenchError(f"{what}: HTTP {status} (expected {wanted}): {str(body)[:400]}")


def parse_ts(text: str) -> float:
    """RFC 3339 text (any number of fractional digits) to epoch seconds."""
    m = re.match(
        r"^(\d{4}-\d{2}-\d{2})[T ](\d{2}:\d{2}:\d{2})(?:\.(\d+))?(Z|[+-]\d{2}:?\d{2})?$",
        text.strip(),
    )
    if not m:
        raise BenchError(f"unexpected timestamp {text!r}")
    date, clock, frac, zone = m.groups()
    zone = "+00:00" if zone in (None, "Z") else zone
    if len(zone) == 5:
        zone = zone[:3] + ":" + zone[3:]
    base = dt.datetime.fromisoformat(f"{date}T{clock}{zone}").timestamp()
    return base + (float("0." + frac) if frac else 0.0)


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100.0
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def listening_ports(pid: int) -> list[int]:
    """The TCP ports a process listens on (from its socket inodes and /proc/net/tcp)."""
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:
        return []
    ports = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    if fields[3] == "0A" and fields[9] in inodes:
                        ports.append(int(fields[1].rsplit(":", 1)[1], 16))
        except OSError:
            continue
    return ports


def rss_kb(pid: int, field: str = "VmRSS") -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


class RssSampler:
    """Samples a process's VmRSS every `interval` seconds on a thread."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        self.pid, self.interval = pid, interval
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            value = rss_kb(self.pid)
            if value:
                self.samples.append(value)
            self._stop.wait(self.interval)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_kb(self) -> int:
        return max(self.samples, default=0)


def steady_rss_kb(pid: int, seconds: float = 1.0) -> int:
    samples = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        samples.append(rss_kb(pid))
        time.sleep(0.02)
    return int(statistics.median(samples))


def mb(kb: float) -> float:
    return kb / 1024.0


# --------------------------------------------------------------------------------------
# CPU accounting: where the cores went during a measured window
# --------------------------------------------------------------------------------------


def _proc_groups() -> dict[tuple[int, str], tuple[str, int]]:
    """(pid, start time) -> (name, CPU ticks) for every process."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                raw = f.read()
        except OSError:
            continue
        comm = raw[raw.index("(") + 1 : raw.rindex(")")]
        fields = raw[raw.rindex(")") + 2 :].split()
        ticks = int(fields[11]) + int(fields[12])
        # Keyed by pid and start time (a reused pid is another process); the name is kept
        # aside because kernel workers rename themselves as they go.
        found[(int(entry), fields[19])] = (comm, ticks)
    return found


def _classify(comm: str) -> str:
    if comm.startswith("monassurance-ap"):
        return "API process"
    if comm.startswith("monassurance-wo"):
        return "worker processes"
    if comm.startswith("tokio-runtime") or comm.startswith("monassurance"):
        return "API process"
    if comm.startswith("postgres"):
        return "Postgres"
    if comm.startswith("redis"):
        return "Redis"
    if comm.startswith("wkhtmltopdf"):
        return "wkhtmltopdf"
    if comm == "wrk":
        return "wrk (load generator)"
    if comm.startswith("python"):
        return "bench script"
    if comm in ("psql", "curl", "redis-cli"):
        return "bench script"
    # Anything else is not part of the bench (another user's build or tests, the system).
    return f"not the bench: {comm}"


def _system_ticks() -> tuple[int, int]:
    with open("/proc/stat") as f:
        parts = [int(x) for x in f.readline().split()[1:]]
    idle = parts[3] + parts[4]
    return sum(parts[:8]), idle


class CpuWindow:
    """CPU seconds per kind of process between start() and a later sample."""

    @staticmethod
    def sample() -> tuple:
        return (
            time.monotonic(),
            _system_ticks(),
            _proc_groups(),
            resource.getrusage(resource.RUSAGE_CHILDREN),
        )

    def start(self) -> "CpuWindow":
        self.begin = self.sample()
        return self

    def stop(self, end: tuple | None = None) -> dict:
        t0, (total0, idle0), procs0, children0 = self.begin
        t1, (total1, idle1), procs1, children1 = end or self.sample()
        wall = t1 - t0
        busy = ((total1 - total0) - (idle1 - idle0)) / CLK_TCK
        groups: dict[str, float] = {}
        for key, (comm, ticks) in procs1.items():
            group = _classify(comm)
            before = procs0.get(key, ("", 0))[1]
            groups[group] = groups.get(group, 0.0) + (ticks - before) / CLK_TCK
        # Children reaped inside the window (wrk, cold wkhtmltopdf calls) are no longer in
        # /proc: count them from our own rusage.
        reaped = (children1.ru_utime + children1.ru_stime) - (children0.ru_utime + children0.ru_stime)
        if reaped > 0.01:
            groups["reaped children (wrk, CLI calls)"] = reaped
        cores = os.cpu_count() or 1
        # Fold small outsiders together; keep the big ones by name.
        for name in [k for k in groups if k.startswith("not the bench: ")]:
            if groups[name] < 0.5:
                groups.pop(name)
        known = sum(groups.values())
        groups["not the bench: everything else (kernel, short-lived processes)"] = max(0.0, busy - known)
        foreign = sum(v for k, v in groups.items() if k.startswith("not the bench: "))
        return {
            "wall_s": wall,
            "cores": cores,
            "busy_s": busy,
            "busy_pct": 100.0 * busy / (wall * cores) if wall > 0 else 0.0,
            "foreign_s": foreign,
            "foreign_pct": 100.0 * foreign / (wall * cores) if wall > 0 else 0.0,
            "groups": {k: v for k, v in sorted(groups.items(), key=lambda kv: -kv[1]) if v >= 0.05},
        }


def cpu_table(cpu: dict) -> list[str]:
    lines = [
        f"CPU during the measured window: {cpu['busy_s']:.1f} s busy of "
        f"{cpu['wall_s'] * cpu['cores']:.1f} s available ({cpu['cores']} cores × "
        f"{cpu['wall_s']:.1f} s wall) = **{cpu['busy_pct']:.0f}% busy**.",
        "",
        "| process | CPU seconds | share of the machine |",
        "|---|---:|---:|",
    ]
    capacity = cpu["wall_s"] * cpu["cores"]
    for name, seconds in cpu["groups"].items():
        lines.append(f"| {name} | {seconds:.1f} | {100 * seconds / capacity:.0f}% |")
    if cpu["foreign_pct"] >= 10:
        lines += [
            "",
            f"**Processes that are not part of the bench took {cpu['foreign_pct']:.0f}% of the "
            "machine during this window**: the figures above are lower than a quiet machine gives.",
        ]
    return lines


# --------------------------------------------------------------------------------------
# Starting the application
# --------------------------------------------------------------------------------------


class Deployment:
    """One run of the binaries: an API (embedded worker or not) and worker processes."""

    def __init__(self, name: str, workdir: Path, env: dict[str, str]) -> None:
        self.name = name
        self.workdir = workdir
        self.env = env
        self.port = int(env["BIND_ADDR"].rsplit(":", 1)[1])
        self.base = f"http://127.0.0.1:{self.port}"
        self.api: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []
        self.token = ""
        self.commands: list[str] = []

    def _spawn(self, label: str, argv: list[str], extra: dict[str, str] | None = None):
        env = dict(self.env)
        env.update(extra or {})
        logfile = open(self.workdir / f"{label}.log", "wb")
        # cwd is the private directory: a developer's ./.env must not leak into the run.
        proc = subprocess.Popen(
            argv,
            cwd=self.workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=logfile,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        logfile.close()
        CLEANUP.processes.append((label, proc))
        shown = {k: v for k, v in (extra or {}).items()}
        self.commands.append(
            " ".join(f"{k}={shlex.quote(v)}" for k, v in shown.items())
            + (" " if shown else "")
            + " ".join(shlex.quote(str(a)) for a in argv)
        )
        return proc

    def log_tail(self, label: str, lines: int = 30) -> str:
        path = self.workdir / f"{label}.log"
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def start_api(self, mode: str) -> None:
        log(f"{self.name}: starting monassurance-api {mode} on {self.base}")
        self.api = self._spawn("api", [str(API_BIN), mode])
        self.wait_health(self.base + "/health", self.api, "api")
        status, body = http(
            "POST",
            self.base + "/api/v1/auth/login",
            body={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD},
        )
        expect(status, 200, "admin login", body)
        self.token = body["access_token"]

    def start_worker(self, index: int, extra: dict[str, str] | None = None) -> subprocess.Popen:
        label = f"worker-{index}"
        log(f"{self.name}: starting monassurance-worker #{index}")
        env = {"WORKER_HTTP_ADDR": "127.0.0.1:0"}
        env.update(extra or {})
        proc = self._spawn(label, [str(WORKER_BIN)], env)
        self.workers.append(proc)
        # It listens on a port of the kernel's choosing: find it, then wait for /health.
        deadline = time.monotonic() + 60.0
        while not (ports := listening_ports(proc.pid)):
            if proc.poll() is not None:
                raise BenchError(f"{label} exited ({proc.returncode}):\n{self.log_tail(label)}")
            if time.monotonic() > deadline:
                raise BenchError(f"{label} never listened:\n{self.log_tail(label)}")
            time.sleep(0.05)
        self.wait_health(f"http://127.0.0.1:{ports[0]}/health", proc, label)
        return proc

    def wait_health(self, url: str, proc: subprocess.Popen, label: str, limit: float = 60) -> None:
        deadline = time.monotonic() + limit
        while True:
            if proc.poll() is not None:
                raise BenchError(
                    f"{label} exited ({proc.returncode}) before answering {url}:\n"
                    + self.log_tail(label)
                )
            try:
                status, _ = http("GET", url, timeout=2)
                if status == 200:
                    return
            except (urllib.error.URLError, ConnectionError, socket.timeout, OSError):
                pass
            if time.monotonic() > deadline:
                raise BenchError(f"{url} did not answer within {limit:.0f} s:\n{self.log_tail(label)}")
            time.sleep(0.05)

    def stop(self) -> None:
        for i, proc in enumerate(self.workers):
            CLEANUP.stop_process(f"worker-{i}", proc)
        if self.api is not None:
            CLEANUP.stop_process("api", self.api)
        self.workers, self.api = [], None

    # --- API helpers -------------------------------------------------------------------

    def create_template(self, name: str, fmt: str, content: str, ttype: str = "attestation") -> str:
        status, body = http(
            "POST",
            self.base + "/api/v1/templates",
            self.token,
            {"name": name, "type": ttype, "format": fmt, "content": content},
        )
        expect(status, 201, f"create template {name}", body)
        return body["id"]

    def generate(self, body: dict | bytes) -> str:
        status, answer = http("POST", self.base + "/api/v1/documents/generate", self.token, body, timeout=300)
        expect(status, 202, "generate", answer)
        return answer["id"]

    def document(self, doc_id: str) -> dict:
        status, body = http("GET", f"{self.base}/api/v1/documents/{doc_id}", self.token)
        expect(status, 200, "read document", body)
        return body

    def wait_document(self, doc_id: str, limit: float = 900, interval: float = 0.05) -> dict:
        deadline = time.monotonic() + limit
        while True:
            doc = self.document(doc_id)
            if doc["status"] == "ready":
                return doc
            if doc["status"] == "failed":
                raise BenchError(f"document {doc_id} failed: {doc.get('error')}")
            self.check_alive()
            if time.monotonic() > deadline:
                raise BenchError(f"document {doc_id} not ready after {limit:.0f} s: {doc['status']}")
            time.sleep(interval)

    def download(self, doc_id: str) -> bytes:
        request = urllib.request.Request(
            f"{self.base}/api/v1/documents/{doc_id}/download",
            headers={"Authorization": f"Bearer {self.token}"},
        )
        with OPENER.open(request, timeout=300) as response:
            return response.read()

    def check_alive(self) -> None:
        for label, proc in [("api", self.api)] + [(f"worker-{i}", w) for i, w in enumerate(self.workers)]:
            if proc is not None and proc.poll() is not None:
                raise BenchError(f"{label} exited ({proc.returncode}):\n{self.log_tail(label)}")


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


def base_env(workdir: Path, port: int) -> dict[str, str]:
    data_dir = workdir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/tmp"),
        "TMPDIR": tempfile.gettempdir(),
        "ENVIRONMENT": "production",
        "BIND_ADDR": f"127.0.0.1:{port}",
        "PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
        "DATA_DIR": str(data_dir),
        "JWT_SECRET_KEY": secrets.token_urlsafe(48),
        "SIGNATURE_KEYS": json.dumps({"k1": secrets.token_urlsafe(48)}),
        "SIGNATURE_ACTIVE_KID": "k1",
        "ENCRYPTION_KEYS": json.dumps({"b1": base64.b64encode(secrets.token_bytes(32)).decode()}),
        "ENCRYPTION_ACTIVE_KID": "b1",
        "BOOTSTRAP_ADMIN_EMAIL": ADMIN_EMAIL,
        "BOOTSTRAP_ADMIN_PASSWORD": ADMIN_PASSWORD,
        "LOG_LEVEL": "warn",
        "MAX_QUEUED_DOCUMENTS": "1000000",
    }


SECRET_VARS = {"JWT_SECRET_KEY", "SIGNATURE_KEYS", "ENCRYPTION_KEYS", "BOOTSTRAP_ADMIN_PASSWORD"}


def shown_env(env: dict[str, str]) -> str:
    parts = []
    for key in sorted(env):
        if key in ("PATH", "HOME", "TMPDIR"):
            continue
        value = "<random>" if key in SECRET_VARS else env[key]
        if key in ("DATA_DIR", "STORAGE_DIR"):
            value = "<fresh temporary directory>" + ("/objects" if key == "STORAGE_DIR" else "")
        if key == "DATABASE_URL":
            value = re.sub(r"/bench_[0-9a-f]+$", "/bench_<random>", value)
        if key == "QUEUE_NAME":
            value = "bench-<random>"
        if key in ("BIND_ADDR", "PUBLIC_BASE_URL"):
            value = re.sub(r":\d+$", ":<free port>", value)
        parts.append(f"{key}={value}")
    return " ".join(parts)


def new_deployment(run_dir: Path, name: str, extra: dict[str, str], postgres: bool) -> tuple[Deployment, Store]:
    workdir = run_dir / name
    workdir.mkdir(parents=True)
    env = base_env(workdir, free_port())
    if postgres:
        queue = "bench-" + secrets.token_hex(6)
        CLEANUP.queues.append(queue)
        env.update(
            {
                "DATABASE_URL": fresh_database(),
                "REDIS_URL": REDIS_URL,
                "QUEUE_NAME": queue,
                "STORAGE_DIR": str(workdir / "data" / "objects"),
            }
        )
    env.update(extra)
    deployment = Deployment(name, workdir, env)
    if postgres:
        store = Store(pg_url=env["DATABASE_URL"])
    else:
        store = Store(sqlite_path=workdir / "data" / "monassurance.db")
    return deployment, store


# --------------------------------------------------------------------------------------
# wrk
# --------------------------------------------------------------------------------------


def run_wrk(url: str, seconds: float, connections: int, threads: int, env: dict[str, str]) -> dict:
    argv = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, int(round(seconds)))}s",
        "--latency",
        "-s",
        str(WRK_LUA),
        url,
    ]
    full_env = dict(os.environ)
    full_env.update(env)
    result = subprocess.run(argv, capture_output=True, text=True, env=full_env)
    if result.returncode != 0:
        raise BenchError(f"wrk failed ({result.returncode}): {result.stderr.strip()}")
    line = next((l for l in result.stdout.splitlines() if l.startswith("BENCH_JSON ")), None)
    if line is None:
        raise BenchError(f"wrk printed no summary:\n{result.stdout}\n{result.stderr}")
    stats = json.loads(line[len("BENCH_JSON ") :])
    stats["per_second"] = stats["requests"] / (stats["duration_us"] / 1e6)
    stats["non_2xx"] = stats["errors_status"]
    stats["socket_errors"] = sum(
        stats[k] for k in ("errors_connect", "errors_read", "errors_write", "errors_timeout")
    )
    shown = " ".join(f"{k}={shlex.quote(v if k != 'BENCH_TOKEN' else '<admin token>')}" for k, v in env.items())
    stats["command"] = f"{shown} {' '.join(shlex.quote(a) for a in argv)}".replace(str(ROOT) + "/", "")
    stats["command"] = re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:<port>", stats["command"])
    stats["command"] = re.sub(r"BENCH_BODY_FILE=\S+/", "BENCH_BODY_FILE=<run dir>/", stats["command"])
    return stats


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
# Results
# --------------------------------------------------------------------------------------


class Section:
    def __init__(self, title: str) -> None:
        self.title = title
        self.rows: list[list[str]] = []
        self.commands: list[str] = []
        self.notes: list[str] = []
        self.extra: list[str] = []
        self.missed: list[str] = []

    def row(self, figure: str, value: str, target: str, baseline: str, ratio: str, met: bool | None) -> None:
        mark = "—" if met is None else ("**yes**" if met else "**no**")
        self.rows.append([figure, value, target, baseline, ratio, mark])
        if met is False:
            self.missed.append(figure)

    def markdown(self) -> list[str]:
        out = [f"### {self.title}", ""]
        out.append("| figure | measured | target | baseline (same run) | ratio | met? |")
        out.append("|---|---:|---|---|---:|:-:|")
        for r in self.rows:
            out.append("| " + " | ".join(r) + " |")
        out.append("")
        if self.notes:
            for note in self.notes:
                out.append(f"- {note}")
            out.append("")
        out.extend(self.extra)
        if self.extra:
            out.append("")
        if self.commands:
            out.append("Commands:")
            out.append("")
            out.append("```")
            out.extend(self.commands)
            out.append("```")
            out.append("")
        return out


def fmt_rate(value: float) -> str:
    return f"{value:,.1f}/s" if value < 100 else f"{value:,.0f}/s"


def missed_by(value: float, target: float, higher_is_better: bool) -> str:
    if higher_is_better:
        return f"missed by {target - value:,.1f} ({100 * (target - value) / target:.0f}% short of {target:,.0f})"
    return f"missed by {value - target:,.1f} ({100 * (value - target) / target:.0f}% over {target:,.0f})"


# --------------------------------------------------------------------------------------
# Scenario 1: HTML end to end
# --------------------------------------------------------------------------------------


def scenario_html(args, run_dir: Path) -> Section:
    section = Section("1. HTML documents end to end (submit → ready)")
    seconds, warm = (3, 1) if args.quick else (args.duration, 2)
    conns, threads = args.connections, args.threads

    # Baseline: the bare work, synchronous, on one thread, no HTTP, database or queue.
    template_file = run_dir / "attestation.html.j2"
    template_file.write_text(ATTESTATION)
    context_file = run_dir / "attestation-context.json"
    context_file.write_text(json.dumps(ATTESTATION_CONTEXT))
    loop_count = 2000 if args.quick else 20000
    argv = [
        str(EXAMPLE),
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
    log(f"html: synchronous render+write loop baseline ({loop_count} documents, one thread)")
    sync = json.loads(subprocess.run(argv, check=True, capture_output=True, text=True).stdout)
    shutil.rmtree(run_dir / "html-loop", ignore_errors=True)
    section.commands.append(
        "# baseline: synchronous render + hash + write loop, one thread\n"
        + " ".join(shlex.quote(a) for a in argv).replace(str(run_dir), "<run dir>").replace(str(BIN_DIR), "$CARGO_TARGET_DIR/release")
    )

    results = {}
    for mode in ("embedded", "postgres"):
        postgres = mode == "postgres"
        label = "Postgres + Redis" if postgres else "embedded (SQLite)"
        extra = {"WORKER_CONCURRENCY": "8", "WORKER_POLL_MS": "10"}
        deployment, store = new_deployment(run_dir, f"html-{mode}", extra, postgres)
        try:
            deployment.start_api("serve" if postgres else "all")
            if postgres:
                for i in range(2):
                    deployment.start_worker(i)
            section.commands.append(
                f"# {label}: environment\n{shown_env(deployment.env)}\n"
                + "\n".join(c.replace(str(BIN_DIR), "$CARGO_TARGET_DIR/release") for c in deployment.commands)
            )
            template_id = deployment.create_template("Attestation bench", "html", ATTESTATION)
            bodies = {}
            for kind in ("warmup", "attestation"):
                path = run_dir / f"{mode}-{kind}.json"
                path.write_text(
                    json.dumps(
                        {"document_type": kind, "template_id": template_id, "inline_context": ATTESTATION_CONTEXT}
                    )
                )
                bodies[kind] = path
            generate_url = deployment.base + "/api/v1/documents/generate"
            # Baseline: raw HTTP capacity of the same process under the same wrk settings.
            log(f"html/{mode}: baseline wrk GET /health ({seconds} s)")
            health = run_wrk(deployment.base + "/health", seconds, conns, threads, {"BENCH_METHOD": "GET"})
            log(f"html/{mode}: warm-up ({warm} s)")
            run_wrk(
                generate_url,
                warm,
                conns,
                threads,
                {"BENCH_METHOD": "POST", "BENCH_TOKEN": deployment.token, "BENCH_BODY_FILE": str(bodies["warmup"])},
            )
            store.wait_drained(deployment)
            log(f"html/{mode}: wrk POST /documents/generate, {conns} connections, {threads} threads, {seconds} s")
            cpu = CpuWindow().start()
            submit = run_wrk(
                generate_url,
                seconds,
                conns,
                threads,
                {"BENCH_METHOD": "POST", "BENCH_TOKEN": deployment.token, "BENCH_BODY_FILE": str(bodies["attestation"])},
            )
            log(f"html/{mode}: {submit['requests']} submitted ({submit['per_second']:.0f}/s); waiting for the queue to drain")
            drain = store.wait_drained(deployment, cpu)
            cpu_stats = cpu.stop(drain["cpu_end"])
            stats = pipeline_stats(store.rows("attestation"))
            log(
                f"html/{mode}: {stats['ready']} ready in {stats['span_s']:.1f} s = {stats['per_second']:.0f}/s, "
                f"p50 {stats['p50_ms']:.0f} ms, p99 {stats['p99_ms']:.0f} ms, {stats['failed']} failed"
            )
            section.commands.append(f"# {label}: raw HTTP baseline\n{health['command']}")
            section.commands.append(f"# {label}: load\n{submit['command']}")
            results[mode] = (stats, submit, health, cpu_stats, drain, label)
        finally:
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
# Machine facts and the results file
# --------------------------------------------------------------------------------------


def sh(cmd: str) -> str:
    return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout.strip()


def machine_facts() -> list[str]:
    cpu = sh("lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -1") or "unknown"
    mem_kb = int(sh("awk '/^MemTotal/ {print $2}' /proc/meminfo") or 0)
    os_name = sh(". /etc/os-release 2>/dev/null && echo \"$PRETTY_NAME\"")
    commit = sh(f"git -C {shlex.quote(str(ROOT))} rev-parse --short HEAD 2>/dev/null") or "unknown"
    dirty = sh(f"git -C {shlex.quote(str(ROOT))} status --porcelain --untracked-files=no 2>/dev/null")
    return [
        f"- Date: `{sh('date -u')}`",
        f"- Machine: {cpu}, {os.cpu_count()} cores, {mem_kb / 1024 / 1024:.1f} GiB RAM, kernel {sh('uname -r')}, {os_name}",
        f"- Code: commit {commit}" + (" with uncommitted changes in tracked files" if dirty else ""),
        f"- Tools: {sh('wrk -v 2>&1 | head -1')}; {sh('wkhtmltopdf --version')}; "
        f"PostgreSQL {psql(PG_URL, 'SHOW server_version', check=False).strip()}; "
        f"Redis {sh('redis-server --version').split()[2].removeprefix('v=') if sh('redis-server --version') else '?'}; "
        f"Python {sys.version.split()[0]}",
    ]


HEADER = """# Benchmark results

Written by `scripts/bench-pipeline` (newest run first). Each run measures its baselines on
the same machine in the same run; a target it misses is marked **no**, with by how much.
Everything runs on the one machine: the API, the workers, Postgres, Redis, wkhtmltopdf and
the load generator share its cores, so every figure is a floor for a real deployment.
"""


def write_results(path: Path, marker: str, section_md: str) -> None:
    text = path.read_text() if path.exists() else HEADER
    begin = f"<!-- bench-pipeline:begin {marker} -->"
    end = f"<!-- bench-pipeline:end {marker} -->"
    block = f"{begin}\n{section_md.rstrip()}\n{end}\n"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        text = head + block + tail.lstrip("\n")
    else:
        first = text.find("<!-- bench-pipeline:begin ")
        if first == -1:
            text = text.rstrip("\n") + "\n\n" + block
        else:
            text = text[:first] + block + "\n" + text[first:]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


SCENARIOS = {
    "html": scenario_html,
    "pdf": scenario_pdf,
    "xlsx": scenario_xlsx,
    "download": scenario_download,
}
ALIASES = {"1": "html", "2": "pdf", "3": "xlsx", "4": "download", "rss": "download"}


def main() -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench-pipeline", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run, not figures")
    parser.add_argument("--scenarios", default="html,pdf,xlsx,download",
                        help="comma-separated: html,pdf,xlsx,download (or 1,2,3,4)")
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
    parser.add_argument("--command-line", default="scripts/bench-pipeline", help=argparse.SUPPRESS)
    args = parser.parse_args()

    chosen = []
    for name in args.scenarios.split(","):
        name = ALIASES.get(name.strip(), name.strip())
        if name not in SCENARIOS:
            parser.error(f"unknown scenario {name!r}: choose from {', '.join(SCENARIOS)}")
        if name not in chosen:
            chosen.append(name)
    for binary in (API_BIN, WORKER_BIN, EXAMPLE):
        if not binary.exists():
            raise BenchError(f"{binary} is missing: run scripts/bench-pipeline, which builds it")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    atexit.register(CLEANUP.run)
    run_dir = Path(tempfile.mkdtemp(prefix="monassurance-bench-"))
    CLEANUP.dirs.append(run_dir)
    CLEANUP.keep = args.keep
    log(f"run directory {run_dir}; scenarios {', '.join(chosen)}{' (quick)' if args.quick else ''}")

    facts = machine_facts()
    sections = []
    started = time.monotonic()
    for name in chosen:
        log(f"=== scenario {name} ===")
        sections.append(SCENARIOS[name](args, run_dir))
    took = time.monotonic() - started

    day = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")
    kind = "quick smoke run" if args.quick else "full run"
    md = [f"## {day} — {kind}: {', '.join(chosen)}", ""]
    if args.quick:
        md += ["_Smoke run with small sizes: proves the scenarios work; do not judge the targets on it._", ""]
    md += facts
    md += [f"- Command: `{args.command_line}` ({took / 60:.1f} min)", ""]
    missed = [f"{s.title.split(' ', 1)[1]}: {m}" for s in sections for m in s.missed]
    if missed:
        md += ["Targets missed in this run: " + "; ".join(missed) + ".", ""]
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
        write_results(results if results.is_absolute() else ROOT / results, marker, text)
        log(f"wrote {results}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as err:
        log(f"FAILED: {err}")
        sys.exit(1)
