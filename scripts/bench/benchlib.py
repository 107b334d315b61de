"""Machinery shared by the benchmark scripts (scripts/bench-pipeline, scripts/bench-api).

Starting the release binaries on a fresh DATA_DIR, a fresh Postgres database and a private
Redis queue name; cleaning all of it up at exit or on a signal; running wrk and parsing its
summary; sampling RSS; CPU accounting; machine facts; and writing a dated section between
markers into bench/RESULTS.md. Python 3.9+ standard library only.
"""

from __future__ import annotations

import atexit
import base64
import datetime as dt
import json
import os
import re
import resource
import secrets
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


class Binaries:
    """One build's binaries: the API, the worker and the examples, in `directory` (a
    cargo profile directory such as $CARGO_TARGET_DIR/release). `shown` is how commands
    written into RESULTS.md name the directory."""

    def __init__(self, directory: Path, label: str, shown: str, rev: str = "") -> None:
        self.dir = directory
        self.label = label
        self.shown_dir = shown
        self.rev = rev
        self.api = directory / "monassurance-api"
        self.worker = directory / "monassurance-worker"

    def example(self, name: str) -> Path | None:
        """examples/NAME, or None when the build has none (the NAME-<hash> files of a debug
        `cargo test` there are test harnesses, not the example)."""
        exact = self.dir / "examples" / name
        return exact if exact.is_file() and os.access(exact, os.X_OK) else None

    def shown(self, text: str) -> str:
        return text.replace(str(self.dir), self.shown_dir) if str(self.dir) else text


BIN_DIR = Path(os.environ.get("BENCH_BIN_DIR", ""))
CURRENT = Binaries(
    BIN_DIR,
    "current",
    "$CARGO_TARGET_DIR/release"
    if str(BIN_DIR) == os.path.join(os.environ.get("CARGO_TARGET_DIR", "-"), "release")
    else "$BENCH_BIN_DIR",
)
API_BIN = CURRENT.api
WORKER_BIN = CURRENT.worker
WRK_LUA = ROOT / "scripts" / "bench" / "wrk.lua"
PG_URL = os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379")
ADMIN_EMAIL = "bench-admin@example.com"
ADMIN_PASSWORD = "bench-admin-password-" + secrets.token_hex(4)
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


def start_run(prefix: str, keep: bool) -> Path:
    """A fresh run directory; everything the run starts or creates is removed at exit or
    on SIGTERM, SIGINT and SIGHUP (the directory is kept with `keep`)."""
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, on_signal)
    atexit.register(CLEANUP.run)
    run_dir = Path(tempfile.mkdtemp(prefix=prefix))
    CLEANUP.dirs.append(run_dir)
    CLEANUP.keep = keep
    return run_dir


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
    """A new database's URL, without TLS when the server is on this machine: encrypting
    loopback traffic protects nothing and cost the API and Postgres about 9% of the list's
    throughput (measured with scripts/bench-api)."""
    name = "bench_" + secrets.token_hex(6)
    psql(PG_URL, f"CREATE DATABASE {name}")
    CLEANUP.databases.append(name)
    prefix, _ = PG_URL.split("?", 1)[0].rsplit("/", 1)
    loopback = re.search(r"@(127\.0\.0\.1|localhost|\[::1\])(:\d+)?$", prefix)
    return f"{prefix}/{name}" + ("?sslmode=disable" if loopback else "")


def http(
    method: str,
    url: str,
    token: str | None = None,
    body=None,
    timeout: float = 60.0,
    headers: dict[str, str] | None = None,
):
    """(status, parsed JSON or raw bytes)."""
    data = None
    headers = dict(headers or {})
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


def reset_hwm(pid: int) -> bool:
    """Resets the process's VmHWM to its current VmRSS (Linux 4.0+: `5` to clear_refs), so
    that a later VmHWM is the peak since now; False when the kernel refuses."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


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


# Processes of the bench that are not the ones measured (in a paired run, the other
# build's deployment, idle meanwhile): pid -> the group their CPU time is counted in.
IDLE_PARTNER = "idle partner: "
IDLE_PIDS: dict[int, str] = {}


class idle_partner:
    """`with idle_partner(deployment, "baseline 0f12a53"):` counts that deployment's
    processes as the idle partner's in every CpuWindow sampled meanwhile."""

    def __init__(self, deployment, label: str) -> None:
        self.pids = deployment.pids() if deployment is not None else []
        self.label = IDLE_PARTNER + f"the {label} build's processes (not measured)"

    def __enter__(self) -> "idle_partner":
        for pid in self.pids:
            IDLE_PIDS[pid] = self.label
        return self

    def __exit__(self, *exc) -> None:
        for pid in self.pids:
            IDLE_PIDS.pop(pid, None)


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
            group = IDLE_PIDS.get(key[0]) or _classify(comm)
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
        partner = sum(v for k, v in groups.items() if k.startswith(IDLE_PARTNER))
        return {
            "partner_s": partner,
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

    def __init__(self, name: str, workdir: Path, env: dict[str, str], bins: Binaries = CURRENT) -> None:
        self.name = name
        self.bins = bins
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
        self.api = self._spawn("api", [str(self.bins.api), mode])
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
        proc = self._spawn(label, [str(self.bins.worker)], env)
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

    def pids(self) -> list[int]:
        return [p.pid for p in [self.api, *self.workers] if p is not None and p.poll() is None]

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
            value = re.sub(r"/bench_[0-9a-f]+", "/bench_<random>", value)
        if key == "QUEUE_NAME":
            value = "bench-<random>"
        if key in ("BIND_ADDR", "PUBLIC_BASE_URL"):
            value = re.sub(r":\d+$", ":<free port>", value)
        parts.append(f"{key}={value}")
    return " ".join(parts)


def new_deployment(run_dir: Path, name: str, extra: dict[str, str], postgres: bool,
                   bins: Binaries = CURRENT) -> Deployment:
    """A Deployment (not started) in run_dir/name: embedded (SQLite files under a fresh
    DATA_DIR, in-process queue) or, with `postgres`, a fresh database bench_<random> and a
    private Redis queue name, both removed at exit."""
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
    return Deployment(name, workdir, env, bins)


# --------------------------------------------------------------------------------------
# wrk
# --------------------------------------------------------------------------------------


def run_wrk(url: str, seconds: float, connections: int, threads: int, env: dict[str, str],
            script: Path = WRK_LUA, token_label: str = "<admin token>") -> dict:
    argv = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, int(round(seconds)))}s",
        "--latency",
        "-s",
        str(script),
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
    if "statuses" in stats:  # a script that counts every status (login.lua): 1xx/3xx too
        stats["non_2xx"] = sum(n for code, n in stats["statuses"].items() if not code.startswith("2"))
    stats["socket_errors"] = sum(
        stats[k] for k in ("errors_connect", "errors_read", "errors_write", "errors_timeout")
    )
    shown = " ".join(f"{k}={(shlex.quote(v) if k != 'BENCH_TOKEN' else repr(token_label))}" for k, v in env.items())
    stats["command"] = f"{shown} {' '.join(shlex.quote(a) for a in argv)}".replace(str(ROOT) + "/", "")
    stats["command"] = re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:<port>", stats["command"])
    stats["command"] = re.sub(r"BENCH_BODY_FILE=\S+/", "BENCH_BODY_FILE=<run dir>/", stats["command"])
    return stats


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
    home = os.environ.get("HOME") or "~"
    given = str(CURRENT.dir).replace(home, "$HOME", 1) if str(CURRENT.dir).startswith(home + "/") else str(CURRENT.dir)
    return [
        f"- Date: `{sh('date -u')}`",
        f"- Machine: {cpu}, {os.cpu_count()} cores, {mem_kb / 1024 / 1024:.1f} GiB RAM, kernel {sh('uname -r')}, {os_name}",
        f"- Code: commit {commit}" + (" with uncommitted changes in tracked files" if dirty else "")
        + (f"; binaries: the ones in `{given}` (BENCH_BIN_DIR, not built by this run)"
           if CURRENT.shown_dir == "$BENCH_BIN_DIR" else ""),
        f"- Tools: {sh('wrk -v 2>&1 | head -1')}; "
        + (f"{sh('wkhtmltopdf --version')}; " if shutil.which("wkhtmltopdf") else "")
        + f"PostgreSQL {psql(PG_URL, 'SHOW server_version', check=False).strip()}; "
        f"Redis {sh('redis-server --version').split()[2].removeprefix('v=') if sh('redis-server --version') else '?'}; "
        f"Python {sys.version.split()[0]}",
    ]


HEADER = """# Benchmark results

Written by `scripts/bench-api` and `scripts/bench-pipeline` (each kind of run grouped,
newest first). Each run measures its baselines on the same machine in the same run; a
target it misses is marked **no**, with by how much.
Everything runs on the one machine: the API, the workers, Postgres, Redis, wkhtmltopdf and
the load generator share its cores, so every figure is a floor for a real deployment.
"""


def write_results(path: Path, marker: str, section_md: str, kind: str = "bench-pipeline") -> None:
    """Writes a section between `<!-- {kind}:begin {marker} -->` and its end marker:
    replaces the section of that marker when there is one, else puts it before the newest
    section of the same kind (newest first), else before the first section of any kind,
    else at the end. Sections of other kinds are left as they are."""
    text = path.read_text() if path.exists() else HEADER
    begin = f"<!-- {kind}:begin {marker} -->"
    end = f"<!-- {kind}:end {marker} -->"
    block = f"{begin}\n{section_md.rstrip()}\n{end}\n"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        text = head + block + tail.lstrip("\n")
    else:
        first = text.find(f"<!-- {kind}:begin ")
        if first == -1:
            any_kind = re.search(r"<!-- [a-z-]+:begin ", text)
            first = any_kind.start() if any_kind else -1
        if first == -1:
            text = text.rstrip("\n") + "\n\n" + block
        else:
            text = text[:first] + block + "\n" + text[first:]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


# --------------------------------------------------------------------------------------
# Same-run pairs against a baseline build (--baseline REV)
# --------------------------------------------------------------------------------------


def git(*args: str) -> str:
    result = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise BenchError(f"git {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout.strip()


def baseline_binaries(rev: str) -> Binaries:
    """The baseline build's binaries: REV's, in $BENCH_BASELINE_BIN_DIR (the wrappers
    build REV there; set it by hand to reuse binaries already built)."""
    directory = os.environ.get("BENCH_BASELINE_BIN_DIR", "")
    if not directory:
        raise BenchError("--baseline needs BENCH_BASELINE_BIN_DIR: run the wrapper (scripts/bench-…), which builds REV")
    try:
        full = git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    except BenchError:
        raise BenchError(f"--baseline {rev}: not a commit of this repository") from None
    bins = Binaries(Path(directory), f"baseline {git('rev-parse', '--short', full)}", "$BENCH_BASELINE_BIN_DIR", full)
    bins.subject = git("log", "-1", "--format=%s", full)
    return bins


def baseline_facts(base: Binaries) -> list[str]:
    """The lines that say what a paired run compared, for the top of its section."""
    current = sh(f"git -C {shlex.quote(str(ROOT))} rev-parse --short HEAD 2>/dev/null") or "unknown"
    origin = os.environ.get("BENCH_BASELINE_ORIGIN", "")
    rev = base.label.split()[-1]
    home = os.environ.get("HOME") or "~"

    def at(path: Path) -> str:
        return str(path).replace(home, "$HOME", 1) if str(path).startswith(home + "/") else str(path)

    where = {
        "built": f"built by the wrapper from a temporary worktree of {rev} into `{at(base.dir)}`",
        "reused": f"found in `{at(base.dir)}`, built there from a temporary worktree of {rev} by an earlier run",
    }.get(origin, f"taken as found in `{at(base.dir)}` (BENCH_BASELINE_BIN_DIR, not built by this run)")
    try:
        stamp = (base.dir / "monassurance-baseline.commit").read_text().strip()
    except OSError:
        stamp = ""
    if stamp and stamp != base.rev:
        where += f"; **that directory says it holds a build of {stamp[:12]}, not of {rev}**"
    return [
        f"- Baseline: commit {rev} (\"{base.subject[:100]}\"), its binaries {where}",
        f"- Harness: this commit's scripts ({current}) drive both builds; only the binaries are "
        f"{rev}'s. Its own `scripts/bench` may differ and was not used.",
    ]


def names_known_to(rev: str) -> set[str] | None:
    """Every quoted upper-case name in REV's Rust sources: a superset of the environment
    variables its binaries read (None when git cannot tell)."""
    try:
        out = git("grep", "-ohE", r'"[A-Z][A-Z0-9_]{2,}"', rev, "--", "*.rs")
    except BenchError:
        return None
    return {line.strip('"') for line in out.splitlines()}


STANDARD_VARS = {"PATH", "HOME", "TMPDIR"}


def unknown_variables(base: Binaries, deployments: list) -> str | None:
    """A note naming the variables the harness set that REV's sources never mention (its
    binaries ignore them), or None when there are none."""
    known = names_known_to(base.rev)
    names = set()
    for d in deployments:
        names |= set(d.env) - STANDARD_VARS
        if d.workers:
            names.add("WORKER_HTTP_ADDR")
    if known is None:
        return (f"Could not read {base.label}'s sources to check which of the variables set here "
                f"its binaries know: {', '.join(sorted(names))}.")
    missing = sorted(names - known)
    if not missing:
        return None
    return (f"**Set for both builds but unknown to {base.label}** (its sources never name them, so "
            f"its binaries ignore them): {', '.join(f'`{n}`' for n in missing)}.")


def median_run(runs: list):
    """The median of each number across rounds' results (nested dicts alike); anything
    else is the first round's."""
    first = runs[0]
    if isinstance(first, dict):
        return {k: median_run([r[k] for r in runs if isinstance(r, dict) and k in r]) for k in first}
    if isinstance(first, (int, float)) and not isinstance(first, bool) and all(
        isinstance(r, (int, float)) and not isinstance(r, bool) for r in runs
    ):
        return first if all(r == first for r in runs) else statistics.median(runs)
    return first


def round_order(rounds: int) -> list[list[str]]:
    """Which build goes first in each round: baseline then current, then the reverse, and
    so on (two rounds are ABBA, which cancels a drift that is linear in time)."""
    return [["baseline", "current"] if r % 2 == 0 else ["current", "baseline"] for r in range(rounds)]


def pair_ratio(current: float, baseline: float) -> str:
    if not baseline or baseline != baseline or current != current:
        return "—"
    return f"{current / baseline:.2f}×"


class PairSection(Section):
    """A table of figures measured with both builds: baseline, current, current/baseline."""

    def __init__(self, title: str, baseline_label: str) -> None:
        super().__init__(title)
        self.baseline_label = baseline_label

    def pair(self, figure: str, base: str, cur: str, ratio: str, target: str = "—",
             met: tuple[bool | None, bool | None] = (None, None)) -> None:
        def mark(m):
            return "—" if m is None else ("**yes**" if m else "**no**")

        shown = "—" if met == (None, None) else f"{mark(met[0])} / {mark(met[1])}"
        self.rows.append([figure, base, cur, ratio, target, shown])
        if met[1] is False:
            self.missed.append(figure)

    def markdown(self) -> list[str]:
        out = super().markdown()
        header = (f"| figure | {self.baseline_label} | current | current / baseline | target | "
                  "met? baseline / current |")
        swap = {"| figure |": header, "|---|---:|---|": "|---|---:|---:|---:|---|:-:|"}
        return [next((v for k, v in swap.items() if line.startswith(k)), line) for line in out]
