#!/usr/bin/env python3
"""The outage drills behind scripts/chaos (run that, not this).

Starts a production-shaped deployment of the release binaries: one API
(`monassurance-api serve`) and N `monassurance-worker` processes on a private Postgres
(initdb into the run directory), a private Redis and a private s3s-fs, each on a free port
of its own, so no server someone else uses is ever stopped. Then, for each drill, submits
a fresh mixed batch (HTML and PDF documents) and breaks something while it is in flight:

  kill      kill -9 of one worker; the others must finish everything
  sigterm   SIGTERM to one worker: it drains (in-flight jobs finish) and exits
  redis     Redis killed, submissions go on during the outage (they must answer 202),
            Redis restarted empty on the same port after --redis-outage seconds
  postgres  Postgres stopped (pg_ctl stop -m fast) for --postgres-outage seconds, with
            list and generate requests sent meanwhile (503 expected, never 500)

Per drill it records: submitted, ready, failed, lost (neither ready nor failed
--lost-after seconds after the recovery), duplicates (documents logged "document ready"
twice by the workers; objects written more than once, from s3s-fs's log of PutObject
calls), the recovery time, the highest `attempts`, and every non-2xx answer to every
request it made, by status. A worker killed or drained is replaced between drills, so
each drill starts with N live workers.

Python 3.9+ standard library only; needs psql, redis-server, redis-cli, s3s-fs,
wkhtmltopdf and PostgreSQL's initdb/pg_ctl (/usr/lib/postgresql/<version>/bin). The
machinery it shares with the benchmarks is in benchlib.py.
"""

from __future__ import annotations

import argparse
import atexit
import datetime as dt
import hashlib
import json
import os
import re
import resource
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import benchlib
from benchlib import (
    CLEANUP,
    ROOT,
    BenchError,
    Binaries,
    Deployment,
    Section,
    base_env,
    free_port,
    http,
    log,
    machine_facts,
    parse_ts,
    psql,
    sh,
    shown_env,
    start_run,
    write_results,
)

BUCKET = "monassurance-chaos"
RECOVERY_GOAL_S = 30.0
DRILLS = ["kill", "sigterm", "redis", "postgres"]
ALIASES = {"1": "kill", "2": "sigterm", "3": "redis", "4": "postgres", "kill-9": "kill",
           "term": "sigterm", "pg": "postgres", "db": "postgres"}
NUMBER = {name: i + 1 for i, name in enumerate(DRILLS)}
# The share of the batch submitted when the fault is injected.
TRIGGER = {"kill": 0.4, "sigterm": 0.4, "redis": 0.4, "postgres": 0.5}

TEMPLATE = """<!doctype html>
<html lang="fr"><head><meta charset="utf-8"><title>Attestation</title>
<style>body { font-family: sans-serif; margin: 2em } th { text-align: left }</style></head>
<body>
<h1>Attestation d'assurance</h1>
<p>{{ inline_context.insurer }} atteste que <strong>{{ inline_context.insured }}</strong>
est couvert(e) par le contrat n° {{ inline_context.policy_number }}.</p>
<table>
<tr><th>Garanties</th><td>{{ inline_context.cover | join(", ") }}</td></tr>
<tr><th>Exercice</th><td>{{ inline_context.drill }} / {{ inline_context.n }}</td></tr>
</table>
<p>Document {{ document.id }} émis le {{ now }}.</p>
</body></html>
"""

CONTEXT = {
    "insurer": "MONASSURANCE Courtage",
    "insured": "Ada Lovelace",
    "policy_number": "POL-2024-004217",
    "cover": ["Responsabilité civile", "Vol", "Incendie"],
}


def bin_dir() -> tuple[Path, str]:
    """The binaries' directory (CHAOS_BIN_DIR, else $CARGO_TARGET_DIR/release) and how the
    results name it."""
    given = os.environ.get("CHAOS_BIN_DIR", "")
    target = os.environ.get("CARGO_TARGET_DIR", "")
    default = os.path.join(target, "release") if target else ""
    directory = given or default
    if not directory:
        raise BenchError("set CHAOS_BIN_DIR (or run scripts/chaos, which builds the binaries)")
    shown = "$CARGO_TARGET_DIR/release" if default and os.path.abspath(directory) == os.path.abspath(default) \
        else "$CHAOS_BIN_DIR"
    return Path(directory), shown


def wait_port(port: int, proc: subprocess.Popen | None, what: str, limit: float = 30.0) -> None:
    deadline = time.monotonic() + limit
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            pass
        if proc is not None and proc.poll() is not None:
            raise BenchError(f"{what} exited ({proc.returncode}) before listening on {port}")
        if time.monotonic() > deadline:
            raise BenchError(f"{what} did not listen on {port} within {limit:.0f} s")
        time.sleep(0.05)


def spawn(label: str, argv: list[str], logfile: Path, env: dict[str, str] | None = None,
          cwd: Path | None = None) -> subprocess.Popen:
    """A server process in a session of its own (Ctrl-C reaches only this script, which
    stops it), logging to `logfile` (appended: a restart keeps the first run's lines),
    registered for the cleanup."""
    with open(logfile, "ab") as out:
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    CLEANUP.processes.append((label, proc))
    return proc


class Footprint:
    """The machine's busy CPU time against this run's own between start() and stop(): this
    script and its descendants (the API, the workers, their wkhtmltopdf, Redis, s3s-fs,
    psql) and the private Postgres (every process whose command line names the run
    directory, and theirs). What is left is other people's work on the machine."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def _ours(self) -> dict[tuple[int, str], int]:
        table = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    raw = f.read()
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            fields = raw[raw.rindex(")") + 2:].split()
            table[int(entry)] = (int(fields[1]), fields[19], int(fields[11]) + int(fields[12]), cmdline)
        roots = {os.getpid()} | {pid for pid, (_, _, _, cmd) in table.items() if self.marker in cmd}
        ours = {}
        for pid, (ppid, start, ticks, _) in table.items():
            seen, cur = 0, pid
            while cur in table and cur not in roots and seen < 64:
                cur, seen = table[cur][0], seen + 1
            if cur in roots:
                ours[(pid, start)] = ticks
        return ours

    def sample(self) -> tuple:
        own = resource.getrusage(resource.RUSAGE_SELF)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        return (time.monotonic(), benchlib._system_ticks(), self._ours(),
                own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime)

    def start(self) -> "Footprint":
        self.begin = self.sample()
        return self

    def stop(self) -> dict:
        t0, (total0, idle0), ours0, reaped0 = self.begin
        t1, (total1, idle1), ours1, reaped1 = self.sample()
        tck = benchlib.CLK_TCK
        busy = ((total1 - total0) - (idle1 - idle0)) / tck
        # This process is a root: its own time is in RUSAGE_SELF, not counted twice.
        me = [k for k in ours1 if k[0] == os.getpid()]
        ours = sum(v - ours0.get(k, 0) for k, v in ours1.items() if k not in me) / tck + (reaped1 - reaped0)
        cores = os.cpu_count() or 1
        capacity = (t1 - t0) * cores
        foreign = max(0.0, busy - ours)
        return {"wall_s": t1 - t0, "cores": cores, "busy_pct": 100 * busy / capacity if capacity else 0.0,
                "ours_pct": 100 * ours / capacity if capacity else 0.0,
                "foreign_pct": 100 * foreign / capacity if capacity else 0.0}


# --------------------------------------------------------------------------------------
# Private servers
# --------------------------------------------------------------------------------------


class PrivatePostgres:
    """A cluster of the newest PostgreSQL under /usr/lib/postgresql, initdb'd into
    run_dir/postgres, on a free port of 127.0.0.1 with trust authentication and its unix
    socket in its own directory. Run as the `postgres` user when this script is root
    (initdb refuses root). Started and stopped with pg_ctl."""

    def __init__(self, run_dir: Path, max_connections: int) -> None:
        versions = sorted(
            (p for p in Path("/usr/lib/postgresql").glob("*/bin/initdb")),
            key=lambda p: [int(x) if x.isdigit() else 0 for x in p.parent.parent.name.split(".")],
        )
        if not versions:
            raise BenchError("no /usr/lib/postgresql/*/bin/initdb: install postgresql")
        self.bin = versions[-1].parent
        self.version = self.bin.parent.name
        self.root = run_dir / "postgres"
        self.data = self.root / "data"
        self.socket_dir = self.root / "socket"
        self.logfile = self.root / "postgres.log"
        self.port = free_port()
        self.max_connections = max_connections
        self.as_user: list[str] = []
        self.running = False
        self.commands: list[str] = []
        self.root.mkdir()
        self.socket_dir.mkdir()
        if os.geteuid() == 0:
            runuser = shutil.which("runuser")
            if not runuser:
                raise BenchError("running as root: runuser is needed to run initdb as the postgres user")
            import pwd

            try:
                owner = pwd.getpwnam("postgres")
            except KeyError:
                raise BenchError("running as root and there is no `postgres` user to run initdb as") from None
            # The run directory is root's (0700): let the postgres user through to its own.
            os.chmod(run_dir, 0o711)
            for path in (self.root, self.socket_dir):
                os.chown(path, owner.pw_uid, owner.pw_gid)
            self.as_user = [runuser, "-u", "postgres", "--"]

    @property
    def admin_url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/postgres?sslmode=disable"

    def url(self, database: str) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{database}?sslmode=disable"

    def _tool(self, *argv: str, timeout: float = 120.0, check: bool = True) -> subprocess.CompletedProcess:
        full = self.as_user + [str(self.bin / argv[0]), *argv[1:]]
        result = subprocess.run(full, cwd=self.root, stdin=subprocess.DEVNULL, capture_output=True,
                                text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise BenchError(f"{argv[0]} failed ({result.returncode}): {result.stderr.strip() or result.stdout.strip()}"
                             + (f"\n{self.log_tail()}" if argv[0] == "pg_ctl" else ""))
        return result

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no Postgres log)"

    def init(self) -> None:
        log(f"postgres: initdb (PostgreSQL {self.version}) into {self.data}")
        self._tool("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
                   "--no-locale", "--no-sync")
        conf = (
            f"\n# scripts/chaos: a private server\nport = {self.port}\nlisten_addresses = '127.0.0.1'\n"
            f"unix_socket_directories = '{self.socket_dir}'\nmax_connections = {self.max_connections}\n"
            "log_timezone = 'UTC'\nlog_line_prefix = '%m [%p] '\n"
        )
        with open(self.data / "postgresql.conf", "a") as f:
            f.write(conf)
        self.commands.append(
            f"initdb -D <run dir>/postgres/data -U postgres -A trust -E UTF8 --no-locale --no-sync\n"
            f"# postgresql.conf: port = <port>, listen_addresses = '127.0.0.1', "
            f"unix_socket_directories = '<run dir>/postgres/socket', max_connections = {self.max_connections}, "
            "log_timezone = 'UTC', log_line_prefix = '%m [%p] '\n"
            f"pg_ctl -D <run dir>/postgres/data -l <run dir>/postgres/postgres.log -w start"
        )

    def start(self) -> None:
        self._tool("pg_ctl", "-D", str(self.data), "-l", str(self.logfile), "-w", "-t", "120", "start")
        self.running = True

    def stop(self, mode: str = "fast") -> None:
        self._tool("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")
        self.running = False

    def ready_since(self, since: float) -> float | None:
        """When the server last said "ready to accept connections" in its log, at or after
        `since` (None when the log has no such line)."""
        found = None
        try:
            lines = self.logfile.read_text(errors="replace").splitlines()
        except OSError:
            return None
        for line in lines:
            if "ready to accept connections" not in line:
                continue
            m = re.match(r"^(\d{4}-\d{2}-\d{2}) (\d{2}:\d{2}:\d{2}(?:\.\d+)?) UTC", line)
            if m:
                t = parse_ts(f"{m.group(1)}T{m.group(2)}Z")
                if t >= since - 1.0:
                    found = t
        return found

    def answers(self) -> bool:
        try:
            return psql(self.admin_url, "SELECT 1").strip() == "1"
        except BenchError:
            return False

    def server_version(self) -> str:
        try:
            return psql(self.admin_url, "SHOW server_version").strip()
        except BenchError:
            return self.version

    def teardown(self) -> None:
        if self.running and (self.data / "postmaster.pid").exists():
            try:
                self._tool("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop", check=False)
            except subprocess.TimeoutExpired:
                self._tool("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop", check=False)
        self.running = False


class PrivateRedis:
    """redis-server on a free port, nothing saved (`--save "" --appendonly no`): a restart
    is an empty Redis."""

    def __init__(self, run_dir: Path) -> None:
        self.port = free_port()
        self.dir = run_dir / "redis"
        self.dir.mkdir()
        self.logfile = run_dir / "redis.log"
        self.proc: subprocess.Popen | None = None
        self.argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                     "--appendonly", "no", "--dir", str(self.dir)]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    @property
    def command(self) -> str:
        shown = " ".join(shlex.quote(a) for a in self.argv)
        return shown.replace(str(self.port), "<port>").replace(str(self.dir), "<run dir>/redis")

    def start(self) -> None:
        self.proc = spawn("redis", self.argv, self.logfile, cwd=self.dir)
        deadline = time.monotonic() + 30
        while not self.answers():
            if self.proc.poll() is not None:
                raise BenchError(f"redis-server exited ({self.proc.returncode}); see {self.logfile}")
            if time.monotonic() > deadline:
                raise BenchError(f"redis-server does not answer on port {self.port}")
            time.sleep(0.02)

    def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        CLEANUP.stop_process("redis", self.proc)
        self.proc = None

    def answers(self) -> bool:
        try:
            out = subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", str(self.port), "ping"],
                                 capture_output=True, text=True, timeout=5).stdout
        except subprocess.TimeoutExpired:
            return False
        return out.strip() == "PONG"

    def version(self) -> str:
        out = sh("redis-server --version")
        m = re.search(r"v=(\S+)", out)
        return m.group(1) if m else "?"


class PrivateS3:
    """s3s-fs (an S3 server that checks signatures) on a free port, one bucket in a
    temporary directory. It logs each request it accepts (`checked access`, target s3s::ops)
    and each object it has written in full (`write file`, target s3s_fs, after the rename
    into place): the writes per key are how objects written more than once are counted."""

    def __init__(self, run_dir: Path) -> None:
        self.binary = shutil.which("s3s-fs") or str(Path.home() / ".cargo" / "bin" / "s3s-fs")
        if not os.access(self.binary, os.X_OK):
            raise BenchError("s3s-fs is missing: scripts/tools --test installs it")
        self.port = free_port()
        self.root = run_dir / "s3"
        (self.root / BUCKET).mkdir(parents=True)
        self.logfile = run_dir / "s3s-fs.log"
        self.access_key = "chaos" + secrets.token_hex(6)
        self.secret_key = secrets.token_urlsafe(24)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def command(self) -> str:
        return ("RUST_LOG=warn,s3s::ops=debug,s3s_fs=debug s3s-fs --host 127.0.0.1 --port <port> --access-key <random> "
                "--secret-key <random> <run dir>/s3   # with <run dir>/s3/" + BUCKET)

    def start(self) -> None:
        env = dict(os.environ)
        env["RUST_LOG"] = "warn,s3s::ops=debug,s3s_fs=debug"
        env.pop("NO_COLOR", None)
        argv = [self.binary, "--host", "127.0.0.1", "--port", str(self.port), "--access-key", self.access_key,
                "--secret-key", self.secret_key, str(self.root)]
        proc = spawn("s3s-fs", argv, self.logfile, env=env)
        wait_port(self.port, proc, "s3s-fs")

    def writes(self) -> tuple[Counter, Counter] | None:
        """(PutObject requests accepted, objects written in full) per document id, from the
        log; None when it shows no accepted request at all (the logging did not work)."""
        try:
            text = self.logfile.read_text(errors="replace")
        except OSError:
            return None
        text = re.sub(r"\x1b\[[0-9;]*m", "", text)
        uuid = re.compile(r"documents/([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\.")
        puts: Counter = Counter()
        written: Counter = Counter()
        seen_any = False
        for line in text.splitlines():
            if "checked access" in line:
                seen_any = True
                op = re.search(r"\bop: (\w+)", line)
                key = uuid.search(line)
                if op and key and op.group(1) in ("PutObject", "CompleteMultipartUpload"):
                    puts[key.group(1)] += 1
            elif "write file" in line:
                key = uuid.search(line)
                if key:
                    written[key.group(1)] += 1
        return (puts, written) if seen_any else None

    def version(self) -> str:
        out = subprocess.run([self.binary, "--version"], capture_output=True, text=True).stdout.strip()
        return out or "s3s-fs"


# --------------------------------------------------------------------------------------
# Requests, each one counted
# --------------------------------------------------------------------------------------


class Tally:
    """Every answer to every request made during a drill: (time, what, status, code);
    status None when no answer came (refused connection, timeout)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.answers: list[tuple[float, str, int | None, str]] = []

    def add(self, what: str, status: int | None, code: str = "") -> None:
        with self.lock:
            self.answers.append((time.time(), what, status, code))

    def statuses(self, start: float | None = None, end: float | None = None,
                 what: str | None = None) -> Counter:
        with self.lock:
            answers = list(self.answers)
        return Counter(
            (s, c) for t, w, s, c in answers
            if (start is None or t >= start) and (end is None or t <= end) and (what is None or w == what)
        )

    def total(self, **kw) -> int:
        return sum(self.statuses(**kw).values())


def show_statuses(counts: Counter, only_non_2xx: bool = True) -> str:
    """'503 database_unavailable × 40, no answer × 2' (non-2xx only by default), or 'none'."""
    merged: Counter = Counter()
    for (status, code), n in counts.items():
        if only_non_2xx and status is not None and 200 <= status < 300:
            continue
        label = "no answer" if status is None else f"{status}" + (f" {code}" if code else "")
        merged[label] += n
    if not merged:
        return "none"
    return ", ".join(f"{label} × {n}" for label, n in sorted(merged.items()))


class App:
    """The API as the drills' client sees it: a bearer token and a tally of answers."""

    def __init__(self, deployment: Deployment) -> None:
        self.deployment = deployment
        self.tally = Tally()

    def call(self, method: str, path: str, body=None, what: str = "", timeout: float = 30.0):
        try:
            status, answer = http(method, self.deployment.base + path, self.deployment.token, body,
                                  timeout=timeout)
        except Exception as err:  # refused, reset, timed out: no HTTP answer
            self.tally.add(what or f"{method} {path}", None)
            return None, str(err)
        code = answer.get("code", "") if isinstance(answer, dict) and not 200 <= status < 300 else ""
        self.tally.add(what or f"{method} {path}", status, str(code or ""))
        return status, answer


# --------------------------------------------------------------------------------------
# A batch, submitted at a steady pace by client threads
# --------------------------------------------------------------------------------------


class Batch:
    """`total` documents of type chaos-<drill> (every (100/pdf_percent)th one a PDF),
    submitted over `spread` seconds by `threads` client threads. A 503, a 429 or no answer
    is retried every `retry_every` seconds for up to `retry_for` seconds (a client that
    retries); any other refusal is final. Every answer goes to the app's tally."""

    def __init__(self, app: App, drill: str, template_id: str, total: int, spread: float,
                 pdf_percent: int, threads: int, retry_every: float = 1.0, retry_for: float = 180.0) -> None:
        self.app = app
        self.doc_type = f"chaos-{drill}"
        self.drill = drill
        self.template_id = template_id
        self.total = total
        self.interval = spread / max(1, total)
        self.formats = ["pdf" if (i + 1) * pdf_percent // 100 > i * pdf_percent // 100 else "html"
                        for i in range(total)]
        self.threads = threads
        self.retry_every = retry_every
        self.retry_for = retry_for
        self.lock = threading.Lock()
        self.next = 0
        self.ids: dict[str, str] = {}  # id -> format
        self.accepted_at: dict[str, float] = {}
        self.refused: list[tuple[int, int | None, str]] = []
        self.settled = 0
        self.done = threading.Event()
        self.started = 0.0
        self.ended = 0.0
        self._workers: list[threading.Thread] = []

    def body(self, i: int) -> dict:
        context = dict(CONTEXT, drill=self.drill, n=i)
        return {"document_type": self.doc_type, "template_id": self.template_id,
                "inline_context": context, "output_format": self.formats[i]}

    def start(self) -> "Batch":
        self.started = time.monotonic()
        for _ in range(self.threads):
            t = threading.Thread(target=self._run, daemon=True)
            t.start()
            self._workers.append(t)
        threading.Thread(target=self._watch, daemon=True).start()
        return self

    def _watch(self) -> None:
        for t in self._workers:
            t.join()
        self.ended = time.time()
        self.done.set()

    def _run(self) -> None:
        while True:
            with self.lock:
                i = self.next
                self.next += 1
            if i >= self.total:
                return
            delay = self.started + i * self.interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            self.submit(i)
            with self.lock:
                self.settled += 1

    def submit(self, i: int, what: str = "generate") -> str | None:
        give_up = time.monotonic() + self.retry_for
        while True:
            status, answer = self.app.call("POST", "/api/v1/documents/generate", self.body(i), what=what)
            if status == 202 and isinstance(answer, dict) and "id" in answer:
                with self.lock:
                    self.ids[answer["id"]] = self.formats[i]
                    self.accepted_at[answer["id"]] = time.time()
                return answer["id"]
            if status in (None, 429, 503) and time.monotonic() < give_up:
                time.sleep(self.retry_every)
                continue
            with self.lock:
                self.refused.append((i, status, str(answer)[:200]))
            return None

    @property
    def submitted(self) -> int:
        with self.lock:
            return len(self.ids)

    def wait_share(self, share: float) -> None:
        """Until `share` of the batch has been answered (accepted or refused)."""
        while not self.done.is_set():
            with self.lock:
                if self.settled >= share * self.total:
                    return
            time.sleep(0.02)


# --------------------------------------------------------------------------------------
# What the workers logged
# --------------------------------------------------------------------------------------


def json_lines(path: Path):
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            yield json.loads(line)
        except ValueError:
            continue


def document_id(entry: dict) -> str | None:
    span = entry.get("span")
    if isinstance(span, dict) and span.get("document_id"):
        return str(span["document_id"])
    for span in entry.get("spans") or []:
        if isinstance(span, dict) and span.get("document_id"):
            return str(span["document_id"])
    value = entry.get("document_id")
    return str(value) if value else None


def entry_time(entry: dict) -> float | None:
    try:
        return parse_ts(entry.get("timestamp", ""))
    except (BenchError, TypeError):
        return None


HANDED_BACK = "a job was abandoned midway; its document goes back to the reconciler"
KEPT = "an earlier attempt stored this document before it stopped; its object is kept"
TERMINAL = ("document ready", "document failed", "attempt failed; retrying later",
            "another attempt finished this document first; result discarded", HANDED_BACK)


class WorkerLog:
    """One worker's JSON log, read again on each call (small files)."""

    def __init__(self, label: str, path: Path) -> None:
        self.label, self.path = label, path

    def entries(self):
        return json_lines(self.path)

    def in_flight(self) -> set[str]:
        """Documents it started rendering and has not finished (per its log)."""
        running: set[str] = set()
        for e in self.entries():
            doc = document_id(e)
            if not doc:
                continue
            message = e.get("message") or (e.get("fields") or {}).get("message")
            if message == "rendering":
                running.add(doc)
            elif message in TERMINAL:
                running.discard(doc)
        return running

    def drain(self, signalled: float) -> tuple[int, int]:
        """(jobs in flight at `signalled`, of which finished after it), by the log's times."""
        running: set[str] = set()
        finished: set[str] = set()
        for e in self.entries():
            doc, message, t = document_id(e), e.get("message"), entry_time(e) or 0.0
            if not doc:
                continue
            if t <= signalled:
                if message == "rendering":
                    running.add(doc)
                elif message in TERMINAL:
                    running.discard(doc)
            elif doc in running and message in TERMINAL:
                finished.add(doc)
        return len(running), len(finished)


def log_account(logs: list[WorkerLog], ids: set[str], start: float, end: float) -> dict:
    """Per document of `ids`: 'document ready' lines, renders, discarded results, jobs that
    found nothing to do; and the reconciler's re-enqueued jobs logged between start and end."""
    ready: Counter = Counter()
    renders: Counter = Counter()
    discarded: Counter = Counter()
    noop: Counter = Counter()
    db_waits: Counter = Counter()
    handed_back: Counter = Counter()
    kept: Counter = Counter()
    reconciled = 0
    abandoned: dict[str, set[str]] = {}
    renderers: dict[str, list[str]] = {}
    for wl in logs:
        running: set[str] = set()
        dropped: set[str] = set()
        for e in wl.entries():
            message = e.get("message")
            doc = document_id(e)
            if message == "lost jobs enqueued again":
                t = entry_time(e)
                if t is not None and start <= t <= end:
                    reconciled += int(e.get("count", 0) or 0)
                continue
            if doc not in ids:
                continue
            if message == "rendering":
                if doc in running:
                    dropped.add(doc)  # rendered again with no outcome logged for the first time
                running.add(doc)
                renderers.setdefault(doc, []).append(wl.label)
            elif message in TERMINAL or message == "the database is unavailable; the job waits for it":
                running.discard(doc)
            if message == "document ready":
                ready[doc] += 1
            elif message == "rendering":
                renders[doc] += 1
            elif message == "another attempt finished this document first; result discarded":
                discarded[doc] += 1
            elif message == "document already finished or deleted; nothing to do":
                noop[doc] += 1
            elif message == "the database is unavailable; the job waits for it":
                db_waits[doc] += 1
            elif message == HANDED_BACK:
                handed_back[doc] += 1
            elif message == KEPT:
                kept[doc] += 1
        if running or dropped:
            abandoned[wl.label] = running | dropped
    # `abandoned`: per worker, renders it started and never logged an outcome for (the job
    # died with its worker, or was dropped by it).
    return {"ready": ready, "renders": renders, "discarded": discarded, "noop": noop,
            "db_waits": db_waits, "handed_back": handed_back, "kept": kept,
            "reconciled": reconciled, "abandoned": abandoned, "renderers": renderers}


# --------------------------------------------------------------------------------------
# The deployment and the drills
# --------------------------------------------------------------------------------------


class Chaos:
    def __init__(self, args, run_dir: Path, bins: Binaries) -> None:
        self.args = args
        self.run_dir = run_dir
        self.bins = bins
        self.pg = PrivatePostgres(run_dir, max(100, 12 * (args.workers + 3)))
        self.redis = PrivateRedis(run_dir)
        self.s3 = PrivateS3(run_dir)
        self.deployment: Deployment | None = None
        self.app: App | None = None
        self.template_id = ""
        self.worker_logs: list[WorkerLog] = []
        self.next_worker = 0
        self.db_url = ""
        self.commands: list[str] = []
        # Every worker process started, in order, beside its log (self.worker_logs).
        self.started_workers: list[subprocess.Popen] = []

    # --- setting up ---------------------------------------------------------------------

    def start(self) -> None:
        log(f"starting s3s-fs, Redis and Postgres (private, on free ports) in {self.run_dir}")
        self.s3.start()
        self.redis.start()
        self.pg.init()
        self.pg.start()
        psql(self.pg.admin_url, "CREATE DATABASE monassurance")
        self.db_url = self.pg.url("monassurance")
        workdir = self.run_dir / "app"
        workdir.mkdir()
        env = base_env(workdir, free_port())
        env.update({
            "DATABASE_URL": self.db_url,
            "REDIS_URL": self.redis.url,
            "QUEUE_NAME": "chaos-" + secrets.token_hex(4),
            "STORAGE_URL": f"s3://{BUCKET}",
            "S3_ENDPOINT": self.s3.endpoint,
            "S3_ACCESS_KEY_ID": self.s3.access_key,
            "S3_SECRET_ACCESS_KEY": self.s3.secret_key,
            "LOG_JSON": "true",
            # Every ready document is downloaded once after its drill, to check its bytes.
            "DOWNLOAD_RATE_LIMIT_PER_MINUTE": "1000000",
        })
        self.deployment = Deployment("chaos", workdir, env, self.bins)
        self.app = App(self.deployment)
        self.deployment.start_api("serve")
        for _ in range(self.args.workers):
            self.start_worker()
        self.template_id = self.deployment.create_template("Attestation chaos", "html", TEMPLATE)
        self.commands.append("# private servers (each on a free port, in the run directory)\n"
                             + self.s3.command + "\n" + self.redis.command + "\n" + "\n".join(self.pg.commands)
                             + "\npsql -d postgres://postgres@127.0.0.1:<port>/postgres -c 'CREATE DATABASE monassurance'")
        shown = shown_env(env)
        for secret in (self.s3.access_key, self.s3.secret_key):
            shown = shown.replace(secret, "<random>")
        shown = re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:<port>", shown)
        shown = re.sub(r"QUEUE_NAME=\S+", "QUEUE_NAME=chaos-<random>", shown)
        first_worker = next(c for c in self.deployment.commands if c.endswith("monassurance-worker"))
        self.commands.append(
            "# the deployment: environment, then one API and "
            f"{self.args.workers} workers\n{shown}\n"
            + self.bins.shown(next(c for c in self.deployment.commands if c.endswith(" serve"))) + "\n"
            + self.bins.shown(first_worker) + f"   # × {self.args.workers}"
        )

    def start_worker(self) -> subprocess.Popen:
        index = self.next_worker
        self.next_worker += 1
        self.worker_logs.append(WorkerLog(f"worker-{index}", self.deployment.workdir / f"worker-{index}.log"))
        self.started_workers.append(None)
        proc = self.deployment.start_worker(index, {"LOG_LEVEL": "info"})
        self.started_workers[-1] = proc
        return proc

    def live_workers(self) -> list[subprocess.Popen]:
        return [w for w in self.deployment.workers if w.poll() is None]

    def forget_worker(self, proc: subprocess.Popen) -> None:
        """A worker that exited (killed or drained): out of the deployment, its leftover
        children (a wkhtmltopdf of a killed worker) killed with its process group."""
        label = self.label_of(proc)
        if proc in self.deployment.workers:
            self.deployment.workers.remove(proc)
        CLEANUP.stop_process(label, proc)

    def label_of(self, proc: subprocess.Popen) -> str:
        return self._log_of(proc).label

    def top_up(self) -> list[str]:
        """Starts workers until N are live; returns what it found and did."""
        notes = []
        for proc in list(self.deployment.workers):
            if proc.poll() is not None:
                notes.append(f"{self.label_of(proc)} had exited ({proc.returncode})")
                self.forget_worker(proc)
        while len(self.live_workers()) < self.args.workers:
            self.start_worker()
        return notes

    def check_api(self) -> None:
        api = self.deployment.api
        if api is not None and api.poll() is not None:
            raise BenchError(f"the API exited ({api.returncode}):\n{self.deployment.log_tail('api')}")

    # --- reading the documents ----------------------------------------------------------

    def progress(self, doc_type: str) -> Counter | None:
        try:
            out = psql(self.db_url, f"SELECT status, count(*) FROM generated_documents "
                                    f"WHERE document_type = '{doc_type}' GROUP BY status")
        except BenchError:
            return None
        counts: Counter = Counter()
        for line in out.splitlines():
            if "|" in line:
                status, n = line.split("|")
                counts[status] = int(n)
        return counts

    def wait_settled(self, batch: Batch, deadline: float, label: str) -> bool:
        """Until every accepted document is ready or failed (True), or wall time `deadline`."""
        last_log = 0.0
        while True:
            self.check_api()
            counts = self.progress(batch.doc_type) if batch.done.is_set() else None
            if counts is not None:
                pending = counts.get("queued", 0) + counts.get("processing", 0)
                finished = counts.get("ready", 0) + counts.get("failed", 0)
                if pending == 0 and finished >= batch.submitted:
                    return True
            now = time.time()
            if now > deadline:
                return False
            if now - last_log > 5:
                c = counts if counts is not None else self.progress(batch.doc_type)
                shown = ", ".join(f"{k} {v}" for k, v in sorted(c.items())) if c is not None else "database not answering"
                log(f"{label}: {batch.submitted} accepted; {shown}")
                last_log = now
            time.sleep(0.25)

    def fetch(self, ids: list[str]) -> dict[str, dict]:
        """Every document as GET /api/v1/documents/{id} answers it."""

        def one(doc_id: str):
            status, body = self.app.call("GET", f"/api/v1/documents/{doc_id}", what="read")
            return doc_id, body if status == 200 and isinstance(body, dict) else {"status": f"HTTP {status}"}

        with ThreadPoolExecutor(max_workers=8) as pool:
            return dict(pool.map(one, ids))

    def verify(self, docs: dict[str, dict]) -> dict:
        """Downloads every ready document and compares its SHA-256 with the row's checksum:
        a stored object that is not the finishing attempt's shows here."""

        def one(item):
            doc_id, doc = item
            status, body = self.app.call("GET", f"/api/v1/documents/{doc_id}/download", what="download",
                                         timeout=120)
            if status != 200 or not isinstance(body, (bytes, bytearray)):
                return doc_id, f"HTTP {status}"
            return doc_id, "ok" if hashlib.sha256(body).hexdigest() == doc.get("checksum") else "mismatch"

        ready = [(i, d) for i, d in docs.items() if d.get("status") == "ready"]
        with ThreadPoolExecutor(max_workers=8) as pool:
            outcome = dict(pool.map(one, ready))
        return {"checked": len(outcome), "ok": sum(1 for v in outcome.values() if v == "ok"),
                "bad": {i: v for i, v in outcome.items() if v != "ok"}}

    # --- one drill ----------------------------------------------------------------------

    def run_drill(self, name: str) -> dict:
        args = self.args
        notes = self.top_up()
        # Nothing left over from the last drill: the queue is empty when this one starts.
        self.app.tally = Tally()
        self.deployment.token = self._login()
        log(f"=== drill {NUMBER[name]}: {name} ({args.documents} documents, {len(self.live_workers())} workers) ===")
        started = time.time()
        batch = Batch(self.app, name, self.template_id, args.documents, args.spread, args.pdf_percent,
                      args.threads).start()
        fault = getattr(self, f"fault_{name}")(batch)
        reference = fault["reference"]
        deadline = reference + args.lost_after
        settled = self.wait_settled(batch, deadline, name)
        batch.done.wait(timeout=max(0.0, deadline - time.time()) + 5)
        if not settled:
            log(f"{name}: documents still unfinished {args.lost_after:.0f} s after the recovery: counted as lost")
        if fault.get("after"):
            fault["after"]()
        time.sleep(1.0)  # the worker logs "document ready" just after committing the row
        ended = time.time()
        ids = list(batch.ids)
        docs = self.fetch(ids)
        verified = self.verify(docs)
        rows = self.progress(batch.doc_type) or Counter()
        account = log_account(self.worker_logs, set(ids), started, ended)
        writes = self.s3.writes()
        result = {
            "name": name, "batch": batch, "docs": docs, "fault": fault, "account": account, "writes": writes, "verified": verified,
            "tally": self.app.tally, "rows": rows, "notes": notes, "started": started, "ended": ended,
        }
        self.summarise(result)
        return result

    def _login(self) -> str:
        status, body = self.app.call("POST", "/api/v1/auth/login",
                                     {"email": benchlib.ADMIN_EMAIL, "password": benchlib.ADMIN_PASSWORD},
                                     what="login")
        if status != 200:
            raise BenchError(f"admin login: HTTP {status}: {str(body)[:300]}")
        return body["access_token"]

    def _busy_worker(self, limit: float = 5.0) -> tuple[subprocess.Popen, set[str]]:
        """The first live worker with a job in flight per its log (waiting up to `limit`
        seconds for one; else the first live worker)."""
        deadline = time.monotonic() + limit
        while True:
            for proc in self.live_workers():
                running = self._log_of(proc).in_flight()
                if running:
                    return proc, running
            if time.monotonic() > deadline:
                proc = self.live_workers()[0]
                return proc, set()
            time.sleep(0.05)

    def _log_of(self, proc: subprocess.Popen) -> WorkerLog:
        index = next(i for i, p in enumerate(self.started_workers) if p is proc)
        return self.worker_logs[index]

    def fault_kill(self, batch: Batch) -> dict:
        batch.wait_share(TRIGGER["kill"])
        proc, running = self._busy_worker()
        label = self._log_of(proc).label
        before = batch.submitted
        t = time.time()
        log(f"kill: kill -9 {label} (pid {proc.pid}), {len(running)} job(s) in flight per its log")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        interrupted = self._log_of(proc).in_flight()
        self.forget_worker(proc)
        return {"reference": t, "event": "the kill", "label": label, "in_flight": len(interrupted),
                "submitted_before": before}

    def fault_sigterm(self, batch: Batch) -> dict:
        batch.wait_share(TRIGGER["sigterm"])
        proc, running = self._busy_worker()
        wl = self._log_of(proc)
        before = batch.submitted
        t = time.time()
        log(f"sigterm: SIGTERM to {wl.label} (pid {proc.pid}), {len(running)} job(s) in flight per its log")
        os.kill(proc.pid, signal.SIGTERM)
        limit = self.args.drain_limit
        try:
            proc.wait(timeout=limit)
            exited = time.time()
            killed = False
        except subprocess.TimeoutExpired:
            log(f"sigterm: {wl.label} still running {limit:.0f} s after SIGTERM: kill -9")
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            exited = time.time()
            killed = True
        left = wl.in_flight()
        at_signal, drained = wl.drain(t)
        log(f"sigterm: {wl.label} exited ({proc.returncode}) {exited - t:.2f} s after SIGTERM; "
            f"{at_signal} job(s) in flight at the signal, {drained} finished after it")
        code = proc.returncode
        self.forget_worker(proc)
        return {"reference": t, "event": "SIGTERM", "label": wl.label, "in_flight": at_signal,
                "drain_s": exited - t, "exit_code": code, "killed": killed, "left_unfinished": len(left),
                "finished_in_drain": drained, "submitted_before": before}

    def fault_redis(self, batch: Batch) -> dict:
        batch.wait_share(TRIGGER["redis"])
        down = time.time()
        log(f"redis: kill -9 redis-server (pid {self.redis.proc.pid}); Redis down for {self.args.redis_outage:.0f} s, "
            "submissions go on")
        self.redis.kill()
        before = batch.submitted
        time.sleep(max(0.0, down + self.args.redis_outage - time.time()))
        restarted = time.time()
        self.redis.start()
        back = time.time()
        log(f"redis: restarted empty on the same port; answering {back - restarted:.2f} s after the start")
        during = self.app.tally.statuses(start=down, end=back, what="generate")
        accepted_during = sum(1 for t in batch.accepted_at.values() if down <= t <= back)
        return {"reference": back, "event": "Redis answering again", "down": down, "back": back,
                "outage_s": back - down, "during": during, "accepted_during": accepted_during,
                "submitted_before": before}

    def fault_postgres(self, batch: Batch) -> dict:
        batch.wait_share(TRIGGER["postgres"])
        before = batch.submitted
        down = time.time()
        log(f"postgres: pg_ctl stop -m fast; down for {self.args.postgres_outage:.0f} s, with requests meanwhile")
        self.pg.stop("fast")
        stopped = time.time()
        stop = threading.Event()
        state = {"back": None, "oks": [], "probe_accepted": 0}

        def probe(kind: str) -> None:
            # One request at a time, every 0.5 s, until the first 2xx after Postgres is back.
            n = 0
            while not stop.is_set():
                if kind == "list":
                    status, _ = self.app.call("GET", "/api/v1/documents?limit=5", what="list (probe)")
                else:
                    i = n % batch.total
                    status, answer = self.app.call("POST", "/api/v1/documents/generate", batch.body(i),
                                                   what="generate (probe)")
                    if status == 202 and isinstance(answer, dict) and "id" in answer:
                        with batch.lock:
                            batch.ids[answer["id"]] = batch.formats[i]
                            batch.accepted_at[answer["id"]] = time.time()
                        state["probe_accepted"] += 1
                if status is not None and 200 <= status < 300:
                    state["oks"].append(time.time())
                    if state["back"] is not None:
                        return
                n += 1
                stop.wait(0.5)

        threads = [threading.Thread(target=probe, args=(kind,), daemon=True) for kind in ("list", "generate")]
        for t in threads:
            t.start()
        time.sleep(max(0.0, down + self.args.postgres_outage - time.time()))
        start_at = time.time()
        self.pg.start()
        while not self.pg.answers():
            time.sleep(0.05)
        observed = time.time()
        # "Answering again" is when the server says it accepts connections (its log, UTC,
        # this machine's clock): pg_ctl start -w and the first psql only see it later, and
        # the API's pools may already be served by then.
        ready = self.pg.ready_since(start_at)
        back = ready if ready is not None and start_at <= ready <= observed else observed
        state["back"] = back
        log(f"postgres: started again; ready {back - start_at:.2f} s after pg_ctl start "
            f"(down {back - down:.1f} s)")
        for t in threads:
            t.join(timeout=60)
        stop.set()
        tally = self.app.tally
        # The outage, as far as answers go: from pg_ctl stop's return (the server is down)
        # to its readiness; the moments pg_ctl stop is still running are left out.
        window = {"start": stopped, "end": back}
        return {"reference": back, "event": "Postgres answering again", "down": down, "back": back,
                "stop_s": stopped - down, "outage_s": back - down, "down_s": back - stopped,
                "observed_s": observed - back, "from_log": back != observed,
                "during": tally.statuses(**window),
                "during_list": tally.statuses(what="list (probe)", **window),
                "during_generate": tally.statuses(what="generate", **window)
                + tally.statuses(what="generate (probe)", **window),
                "first_ok_s": min((t - back for t in state["oks"] if t >= back), default=None),
                "probe_accepted": state["probe_accepted"],
                "submitted_before": before}

    def follow_lost(self, results: list[dict], limit: float) -> None:
        """Watches the lost documents of every drill for up to `limit` seconds more, and
        records in each result what became of them (late, or still unfinished)."""
        lost = {doc_id: r for r in results for doc_id, d in r["docs"].items()
                if d.get("status") not in ("ready", "failed")}
        if not lost:
            return
        self.app.tally = Tally()  # these reads belong to no drill
        log(f"{len(lost)} lost document(s): watching them for up to {limit:.0f} s more")
        deadline = time.time() + limit
        while True:
            docs = self.fetch(list(lost))
            unfinished = [d for d in docs.values() if d.get("status") not in ("ready", "failed")]
            if not unfinished or time.time() >= deadline:
                break
            time.sleep(2.0)
        for r in results:
            mine = {doc_id: docs[doc_id] for doc_id in lost if lost[doc_id] is r}
            if not mine:
                continue
            done = [parse_ts(d["finished_at"]) for d in mine.values()
                    if d.get("status") in ("ready", "failed") and d.get("finished_at")]
            r["late"] = {
                "lost": len(mine),
                "finished": len(done),
                "last_s": (max(done) - r["fault"]["reference"]) if done else None,
                "still": Counter(d.get("status") for d in mine.values() if d.get("status") not in ("ready", "failed")),
                "watched_s": limit,
                "attempts": max((int(d.get("attempts") or 0) for d in mine.values()), default=0),
            }

    # --- the figures ----------------------------------------------------------------------

    def summarise(self, r: dict) -> None:
        docs, batch, fault, account = r["docs"], r["batch"], r["fault"], r["account"]
        statuses = Counter(d.get("status") for d in docs.values())
        ready = [d for d in docs.values() if d.get("status") == "ready"]
        finished = [parse_ts(d["finished_at"]) for d in ready if d.get("finished_at")]
        r["submitted"] = batch.submitted
        r["ready"] = statuses.get("ready", 0)
        r["failed"] = statuses.get("failed", 0)
        r["lost"] = len(docs) - r["ready"] - r["failed"]
        r["lost_statuses"] = {k: v for k, v in statuses.items() if k not in ("ready", "failed")}
        r["errors"] = Counter((d.get("error") or "")[:160] for d in docs.values() if d.get("status") == "failed")
        r["last_ready"] = max(finished) if finished else None
        r["recovery_s"] = (r["last_ready"] - fault["reference"]) if finished else None
        attempts = [int(d.get("attempts") or 0) for d in docs.values()]
        r["max_attempts"] = max(attempts, default=0)
        r["retried"] = sum(1 for a in attempts if a > 1)
        r["finished_twice"] = sorted(d for d, n in account["ready"].items() if n > 1)
        r["no_ready_line"] = sum(1 for doc_id, d in docs.items()
                                 if d.get("status") == "ready" and account["ready"].get(doc_id, 0) == 0)
        r["rendered_twice"] = sorted(d for d, n in account["renders"].items() if n > 1)
        if r["writes"] is not None:
            puts, written = r["writes"]
            r["written_twice"] = sorted(d for d, n in written.items() if n > 1 and d in docs)
            r["put_twice"] = sorted(d for d, n in puts.items() if n > 1 and d in docs)
            r["written"] = sum(n for d, n in written.items() if d in docs)
            r["puts"] = sum(n for d, n in puts.items() if d in docs)
        else:
            r["written_twice"] = None
        r["all_statuses"] = r["tally"].statuses()
        r["http500"] = sum(n for (s, _), n in r["all_statuses"].items() if s == 500)
        r["requests"] = r["tally"].total()
        log(f"{r['name']}: submitted {r['submitted']}, ready {r['ready']}, failed {r['failed']}, lost {r['lost']}, "
            f"finished twice {len(r['finished_twice'])}, "
            f"objects written twice {'?' if r['written_twice'] is None else len(r['written_twice'])}, "
            f"recovery {secs(r['recovery_s'])}, "
            f"non-2xx: {show_statuses(r['all_statuses'])}")


# --------------------------------------------------------------------------------------
# The results
# --------------------------------------------------------------------------------------


class DrillSection(Section):
    """A table of figure, measured, goal, met?"""

    def goal(self, figure: str, value: str, goal: str, met: bool | None) -> None:
        mark = "—" if met is None else ("**yes**" if met else "**no**")
        self.rows.append([figure, value, goal, mark])
        if met is False:
            self.missed.append(figure)

    def markdown(self) -> list[str]:
        out = super().markdown()
        swap = {"| figure |": "| figure | measured | goal | met? |", "|---|---:|---|---|": "|---|---:|---|:-:|"}
        return [next((v for k, v in swap.items() if line.startswith(k)), line) for line in out]


TITLES = {
    "kill": "kill -9 of one worker mid-batch",
    "sigterm": "SIGTERM to one worker mid-batch (it drains)",
    "redis": "Redis killed mid-batch, restarted empty",
    "postgres": "Postgres stopped mid-batch",
}


def secs(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f} s"


def section_for(r: dict, args) -> DrillSection:
    name, fault, batch = r["name"], r["fault"], r["batch"]
    title = TITLES[name]
    if name == "redis":
        title += f" after {args.redis_outage:.0f} s"
    if name == "postgres":
        title += f" for {args.postgres_outage:.0f} s"
    s = DrillSection(f"{NUMBER[name]}. {title}")
    s.short = title
    pdfs = sum(1 for f in batch.ids.values() if f == "pdf")
    s.goal("documents submitted (202)", f"{r['submitted']:,} ({r['submitted'] - pdfs:,} HTML, {pdfs:,} PDF"
           + (f"; {fault['probe_accepted']} by the probe" if fault.get("probe_accepted") else "") + ")",
           f"the batch: {batch.total:,}", r["submitted"] >= batch.total)
    s.goal("ready", f"{r['ready']:,}", "all submitted", r["ready"] == r["submitted"])
    s.goal("failed", f"{r['failed']:,}", "0", r["failed"] == 0)
    s.goal(f"lost (neither ready nor failed {args.lost_after:.0f} s after {fault['event']})", f"{r['lost']:,}", "0",
           r["lost"] == 0)
    s.goal("duplicates: documents finished twice (\"document ready\" logged twice)",
           f"{len(r['finished_twice'])}", "0", not r["finished_twice"])
    if r["written_twice"] is not None:
        s.goal("duplicates: objects written more than once (completed writes per key, s3s-fs log)",
               f"{len(r['written_twice'])} ({r['written']:,} writes, {r['puts']:,} PUT requests)", "0",
               not r["written_twice"])
    else:
        s.goal("duplicates: documents rendered more than once (worker logs; approximates objects written "
               "more than once)", f"{len(r['rendered_twice'])}", "0", None)
    v = r["verified"]
    s.goal("ready documents whose download matches the row's SHA-256", f"{v['ok']:,} of {v['checked']:,}",
           "all", v["ok"] == v["checked"])
    s.goal("answers of 500 (every request of the drill)", f"{r['http500']}", "0", r["http500"] == 0)
    s.goal(f"non-2xx answers by status (of {r['requests']:,} requests)", show_statuses(r["all_statuses"]),
           "none" if name != "postgres" else "503 during the outage only", None)
    recovery = r["recovery_s"]
    shown_recovery = secs(recovery) + (f" ({r['lost']} not ready within {args.lost_after:.0f} s)" if r["lost"] else "")
    if name in ("redis", "postgres"):
        service = "Redis" if name == "redis" else "Postgres"
        met = recovery is not None and recovery <= RECOVERY_GOAL_S and r["lost"] == 0
        s.goal(f"recovery: last document ready − {service} answering again", shown_recovery,
               f"≤ {RECOVERY_GOAL_S:.0f} s", met)
        if recovery is not None and recovery > RECOVERY_GOAL_S:
            s.notes.append(f"**Recovery goal missed by {recovery - RECOVERY_GOAL_S:.1f} s** ({recovery:.1f} s "
                           f"against ≤ {RECOVERY_GOAL_S:.0f} s).")
        elif r["lost"]:
            s.notes.append(f"**Recovery goal missed: {r['lost']} document(s) not ready {args.lost_after:.0f} s "
                           f"after {service} answered again** (the others were, within {secs(recovery)}).")
    else:
        s.goal(f"recovery: last document ready − {fault['event']}", shown_recovery, "—", None)
    s.goal("highest `attempts` (GET /documents/{id}); documents attempted more than once",
           f"{r['max_attempts']}; {r['retried']:,}", "—", None)

    if name == "kill":
        s.goal(f"jobs in flight in {fault['label']} when killed (rendering, unfinished, per its log)",
               f"{fault['in_flight']}", "—", None)
    killed = fault.get("label") if name == "kill" else None
    dropped = {label: docs for label, docs in r["account"]["abandoned"].items() if label != killed}
    s.goal("renders a live worker started and logged no outcome for (jobs dropped)",
           ", ".join(f"{label}: {len(d)}" for label, d in sorted(dropped.items())) or "0", "—", None)
    if name == "sigterm":
        s.goal(f"drain: {fault['label']} exits − SIGTERM", f"{fault['drain_s']:.2f} s",
               f"≤ DRAIN_TIMEOUT_SECONDS (30 s)", fault["drain_s"] <= 30.0 and not fault["killed"])
        s.goal("jobs in flight at the signal / finished during the drain / left unfinished",
               f"{fault['in_flight']} / {fault['finished_in_drain']} / {fault['left_unfinished']}",
               "— / — / 0", fault["left_unfinished"] == 0)
        s.goal("its exit status", "killed after the limit" if fault["killed"] else f"{fault['exit_code']}", "0",
               fault["exit_code"] == 0 and not fault["killed"])
    if name == "redis":
        during = fault["during"]
        non2xx = sum(n for (st, _), n in during.items() if st is None or not 200 <= st < 300)
        s.goal("generate answers while Redis was down (non-2xx by status)",
               f"{sum(during.values())} answers: {show_statuses(during)}", "all 202", non2xx == 0)
        s.goal("documents accepted while Redis was down / Redis down for",
               f"{fault['accepted_during']} / {fault['outage_s']:.1f} s", "—", None)
    if name == "postgres":
        during = fault["during"]
        bad = sum(n for (st, _), n in during.items() if st is None or st != 503 and not 200 <= st < 300)
        s.goal("answers while Postgres was down (pg_ctl stop returned → ready again): GET /documents",
               show_statuses(fault["during_list"], only_non_2xx=False), "503", None)
        s.goal("answers while Postgres was down: generate",
               show_statuses(fault["during_generate"], only_non_2xx=False), "503", None)
        ok = sum(n for (st, _), n in during.items() if st is not None and 200 <= st < 300)
        s.goal("answers while Postgres was down other than 503 (500s, 2xx, no answer)", f"{bad + ok}", "0",
               bad + ok == 0)
        s.goal("first 2xx of the API after Postgres answers again",
               "—" if fault["first_ok_s"] is None else f"{fault['first_ok_s']:.2f} s", "—", None)

    acc = r["account"]
    s.notes.append(
        f"{r['submitted']:,} documents accepted, {fault['submitted_before']:,} of them before "
        f"{'the fault' if name in ('kill', 'sigterm') else 'the outage began'}; "
        f"{batch.threads} client threads, pace {args.spread:.0f} s for the batch; a 503, 429 or no answer is retried "
        "every second (a client that retries). "
        + (f"{sum(r['rows'].values()):,} rows of this drill's type in the database. " if r["rows"] else "")
        + f"The workers' logs: {sum(acc['renders'].values()):,} renders of {len(acc['renders']):,} documents, "
        f"{len(r['rendered_twice'])} rendered more than once; "
        f"results discarded (another attempt finished first): {sum(acc['discarded'].values())}; "
        f"deliveries of an already finished document (nothing done): {sum(acc['noop'].values())}; "
        f"jobs re-enqueued by the reconcilers: {acc['reconciled']}"
        + (f"; jobs that waited for the database: {sum(acc['db_waits'].values())}" if acc["db_waits"] else "")
        + (f"; jobs cut short that handed their document back at once: {sum(acc['handed_back'].values())}"
           if acc["handed_back"] else "")
        + (f"; objects an earlier attempt stored, kept by the next one instead of written again: "
           f"{sum(acc['kept'].values())}" if acc["kept"] else "")
        + "."
    )
    if r["written_twice"] is None:
        s.notes.append("s3s-fs's log showed no request, so objects written more than once are approximated by "
                       "documents rendered more than once (each render that reaches the store writes the "
                       "object, under the same key).")
    elif r["written_twice"]:
        renderers = r["account"]["renderers"]
        shown = [f"{d} (rendered by {', '.join(renderers.get(d, ['?']))})" for d in r["written_twice"][:5]]
        by_killed = sum(1 for d in r["written_twice"] if killed and killed in renderers.get(d, []))
        by_wait = sum(1 for d in r["written_twice"] if r["account"]["db_waits"].get(d))
        s.notes.append(f"Objects written more than once: {'; '.join(shown)}"
                       + (" …" if len(r["written_twice"]) > 5 else "")
                       + (f". {by_killed} of them had been written by the killed worker before it died, then "
                          "again by the attempt that finished" if by_killed else "")
                       + (f". {by_wait} of them met the database outage after storing: the job waited for "
                          "the database and ran again (a second attempt, same key)" if by_wait else "")
                       + ". A retry writes the same key, so the object is whichever write came last; the "
                         "downloads above say whether that is the finishing attempt's.")
    if r["finished_twice"]:
        s.notes.append(f"**Documents finished twice**: {', '.join(r['finished_twice'][:5])}"
                       + (" …" if len(r["finished_twice"]) > 5 else "") + ".")
    if dropped:
        docs_dropped = sorted(set().union(*dropped.values()))
        s.notes.append(f"**{len(docs_dropped)} job(s) dropped by a worker that kept running**: a \"rendering\" line "
                       "and no outcome after it (ready, failed, retry or discarded) in that worker's log: "
                       + ", ".join(docs_dropped[:5]) + (" …" if len(docs_dropped) > 5 else "")
                       + ". Such a row stays `processing` until its lease (JOB_TIMEOUT_SECONDS + 5 s) runs out "
                       "and a reconciler hands it out again.")
    if r["no_ready_line"]:
        s.notes.append(f"{r['no_ready_line']} ready document(s) have no \"document ready\" line (the job died with "
                       "its worker, or was dropped, between committing the row and logging it).")
    if r["lost"]:
        s.notes.append(f"**Lost**: {r['lost']} document(s), by status: "
                       + ", ".join(f"{k} × {v}" for k, v in sorted(r['lost_statuses'].items(), key=str)) + ".")
        late = r.get("late")
        if late:
            text = (f"Watched after the drills: {late['finished']} of the {late['lost']} lost finished later"
                    + (f", the last {late['last_s']:.1f} s after {fault['event']}" if late["last_s"] is not None else "")
                    + (f"; still unfinished at the end of the run: "
                       + ", ".join(f"{k} × {v}" for k, v in late["still"].items()) if late["still"] else "")
                    + f" (highest `attempts` {late['attempts']}).")
            s.notes.append(text)
    if r["failed"]:
        s.notes.append("**Failed**: " + "; ".join(f"{e or '(no error)'} × {n}" for e, n in r["errors"].most_common(5))
                       + ".")
    refused = batch.refused
    if refused:
        by = Counter(st for _, st, _ in refused)
        s.notes.append(f"**{len(refused)} documents of the batch were never accepted** (final answers: "
                       + ", ".join(f"{'no answer' if k is None else k} × {v}" for k, v in by.items()) + ").")
    if r["notes"]:
        s.notes.append("Before the drill: " + "; ".join(r["notes"]) + " (replaced).")
    if name == "kill":
        s.notes.append("The killed worker is not restarted during the drill: the other worker(s) finish its jobs "
                       "(after 15 s of missed heartbeats, else when their lease runs out); it is replaced before "
                       "the next drill.")
    if name == "redis":
        s.notes.append(f"Redis down from the kill to the first PONG of its restart: {fault['outage_s']:.1f} s; "
                       "restarted with nothing saved, so the queue and its marker were gone.")
    if name == "postgres":
        s.notes.append(f"`pg_ctl stop -m fast` took {fault['stop_s']:.1f} s; Postgres down {fault['down_s']:.1f} s "
                       f"from its return to the server's \"ready to accept connections\""
                       + (" (its log)" if fault["from_log"] else " (first `SELECT 1`: the log said nothing)")
                       + (f", which the first `SELECT 1` saw {fault['observed_s']:.2f} s later" if fault["from_log"] else "")
                       + ". Meanwhile two probes sent GET /api/v1/documents and POST generate, each every 0.5 s, "
                       "beside the batch's own retried submissions"
                       + (f"; {fault['probe_accepted']} of the probe's generate requests were answered 202 once "
                          "Postgres was back and are counted in the drill" if fault["probe_accepted"] else "")
                       + ".")
    return s


def main() -> int:
    parser = argparse.ArgumentParser(prog="scripts/chaos", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2, help="worker processes (2)")
    parser.add_argument("--documents", type=int, default=0, help="documents per drill (400; quick 60)")
    parser.add_argument("--drills", default=",".join(DRILLS),
                        help="comma-separated, run in this order: kill,sigterm,redis,postgres (or 1,2,3,4)")
    parser.add_argument("--quick", action="store_true",
                        help="60 documents, shorter outages (Redis 5 s, Postgres 10 s): a smoke run")
    parser.add_argument("--keep", action="store_true", help="keep the run directory (logs, database files)")
    parser.add_argument("--results", type=Path, default=None,
                        help="results file (default bench/RESULTS.md; a --quick run writes none unless given)")
    parser.add_argument("--no-results", action="store_true", help="print the section, write no file")
    parser.add_argument("--pdf-percent", type=int, default=20, help="share of PDF documents in a batch (20)")
    parser.add_argument("--spread", type=float, default=0, help="seconds over which a batch is submitted (10; quick 4)")
    parser.add_argument("--threads", type=int, default=8, help="client threads submitting a batch (8)")
    parser.add_argument("--redis-outage", type=float, default=0, help="seconds Redis stays down (10; quick 5)")
    parser.add_argument("--postgres-outage", type=float, default=0, help="seconds Postgres stays down (25; quick 10)")
    parser.add_argument("--lost-after", type=float, default=120,
                        help="a document neither ready nor failed this long after the recovery is lost (120)")
    parser.add_argument("--late-wait", type=float, default=-1,
                        help="after the drills, seconds to keep watching lost documents, to tell late from "
                        "never (150; quick 0)")
    parser.add_argument("--drain-limit", type=float, default=90,
                        help="seconds to wait for a SIGTERM'd worker before kill -9 (90)")
    parser.add_argument("--command-line", default="scripts/chaos", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.documents = args.documents or (60 if args.quick else 400)
    args.spread = args.spread or (4.0 if args.quick else 10.0)
    args.redis_outage = args.redis_outage or (5.0 if args.quick else 10.0)
    args.postgres_outage = args.postgres_outage or (10.0 if args.quick else 25.0)
    if args.late_wait < 0:
        args.late_wait = 0.0 if args.quick else 150.0
    if args.workers < 2:
        parser.error("--workers must be 2 or more: the kill and SIGTERM drills need a worker left")
    if not 0 <= args.pdf_percent <= 100:
        parser.error("--pdf-percent is a percentage")
    if args.documents < 5:
        parser.error("--documents must be 5 or more")
    chosen = []
    for name in args.drills.split(","):
        name = ALIASES.get(name.strip(), name.strip())
        if name not in DRILLS:
            parser.error(f"unknown drill {name!r}: choose from {', '.join(DRILLS)}")
        if name not in chosen:
            chosen.append(name)
    chosen.sort(key=DRILLS.index)

    directory, shown = bin_dir()
    bins = Binaries(directory, "current", shown)
    for binary in (bins.api, bins.worker):
        if not binary.exists():
            raise BenchError(f"{binary} is missing: run scripts/chaos, which builds it (or set CHAOS_BIN_DIR)")
    for tool in ("psql", "redis-server", "redis-cli", "wkhtmltopdf"):
        if not shutil.which(tool):
            raise BenchError(f"{tool} is missing: run scripts/chaos, which installs it")

    run_dir = start_run("monassurance-chaos-", args.keep)
    chaos = Chaos(args, run_dir, bins)

    def teardown() -> None:
        # The application first (a worker drains while Redis and Postgres still answer),
        # then the servers it used: Redis and s3s-fs, Postgres (pg_ctl's, not a child);
        # the run directory last.
        app_first = sorted(reversed(list(CLEANUP.processes)),
                           key=lambda item: 0 if item[0] == "api" or item[0].startswith("worker") else 1)
        for label, proc in app_first:
            CLEANUP.stop_process(label, proc, grace=15.0)
        try:
            chaos.pg.teardown()
        except Exception as err:  # keep cleaning up
            log(f"could not stop the private Postgres: {err}")
        CLEANUP.run()

    def on_signal(signum, _frame):
        log(f"signal {signum}: stopping everything")
        teardown()
        sys.exit(128 + signum)

    atexit.register(teardown)  # runs before benchlib's own (registered earlier)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, on_signal)
    log(f"run directory {run_dir}; drills {', '.join(chosen)}{' (quick)' if args.quick else ''}; "
        f"{args.workers} workers; {args.documents} documents per drill")

    began = time.monotonic()
    chaos.start()
    benchlib.PG_URL = chaos.pg.admin_url  # machine facts: this run's server, not the machine's
    facts = machine_facts()
    footprint = Footprint(str(run_dir)).start()
    results = [chaos.run_drill(name) for name in chosen]
    load = footprint.stop()
    chaos.follow_lost(results, args.late_wait)
    took = time.monotonic() - began

    commit = sh(f"git -C {shlex.quote(str(ROOT))} rev-parse --short HEAD 2>/dev/null") or "unknown"
    dirty = sh(f"git -C {shlex.quote(str(ROOT))} status --porcelain --untracked-files=no 2>/dev/null")
    home = os.environ.get("HOME") or "~"
    where = str(directory).replace(home, "$HOME", 1) if str(directory).startswith(home + "/") else str(directory)
    built = os.environ.get("CHAOS_BUILT") == "1"
    for i, line in enumerate(facts):
        if line.startswith("- Code:"):
            facts[i] = (f"- Code: commit {commit}" + (" with uncommitted changes in tracked files" if dirty else "")
                        + (f"; binaries built by this run into `{where}`" if built
                           else f"; binaries: the ones in `{where}` ({shown}, not built by this run)"))
        if line.startswith("- Tools:"):
            facts[i] = (f"- Servers (private, started by the run): PostgreSQL {chaos.pg.server_version()}, "
                        f"Redis {chaos.redis.version()}, {chaos.s3.version()}; "
                        + (f"{sh('wkhtmltopdf --version')}; " if shutil.which("wkhtmltopdf") else "")
                        + f"Python {sys.version.split()[0]}")
    day = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")
    kind = "quick smoke run" if args.quick else "full run"
    md = [f"## {day} — chaos, {kind}: {', '.join(chosen)}", ""]
    if args.quick:
        md += ["_Smoke run with a small batch and short outages: proves the drills work; do not judge the "
               "goals on it._", ""]
    md += facts
    md += [
        f"- Deployment: one API (`monassurance-api serve`) and {args.workers} `monassurance-worker` processes "
        "(default settings: WORKER_CONCURRENCY 4, PDF_CONCURRENCY 2, JOB_TIMEOUT_SECONDS 120, "
        "RECONCILE_INTERVAL_MS 5000; DOWNLOAD_RATE_LIMIT_PER_MINUTE raised for the checking downloads), on a "
        "private Postgres, Redis and s3s-fs the run starts on free ports",
        f"- Each drill: a fresh batch of {args.documents:,} documents ({100 - args.pdf_percent}% HTML, "
        f"{args.pdf_percent}% PDF from the same HTML template), submitted as the admin over {args.spread:.0f} s; "
        "the fault once " + ", ".join(f"{int(100 * TRIGGER[n])}% ({n})" for n in chosen) + " were answered",
        f"- Machine during the drills ({load['wall_s'] / 60:.1f} min): {load['busy_pct']:.0f}% busy, of which this "
        f"run's processes {load['ours_pct']:.0f}%, "
        + (f"**processes not part of the run {load['foreign_pct']:.0f}%** (other work on the machine: the "
           "recovery times are longer than a quiet machine gives)" if load["foreign_pct"] >= 10
           else f"processes not part of the run {load['foreign_pct']:.0f}%"),
        f"- Command: `{args.command_line}` ({took / 60:.1f} min)",
        "",
    ]
    sections = [section_for(r, args) for r in results]
    missed = [f"{s.short}: {m}" for s in sections for m in s.missed]
    md += (["Goals missed in this run: " + "; ".join(missed) + ".", ""] if missed
           else ["Every goal was met in this run.", ""])
    for s in sections:
        md += s.markdown()
    md += ["Commands:", "", "```", *chaos.commands,
           "# the faults",
           "kill -9 <worker pid>                          # kill",
           "kill -TERM <worker pid>                       # sigterm",
           f"kill -9 <redis pid>; sleep {args.redis_outage:.0f}; redis-server …   # redis: same port, nothing saved",
           f"pg_ctl -D <run dir>/postgres/data -m fast -w stop; sleep {args.postgres_outage:.0f}; "
           "pg_ctl -D <run dir>/postgres/data -l … -w start   # postgres",
           "```", ""]
    text = "\n".join(md)
    print(text)

    results_path = args.results
    if results_path is None and not args.quick:
        results_path = ROOT / "bench" / "RESULTS.md"
    if results_path is not None and not args.no_results:
        marker = f"{day} {'quick' if args.quick else 'full'} {','.join(chosen)}"
        path = results_path if results_path.is_absolute() else ROOT / results_path
        write_results(path, marker, text, kind="chaos")
        log(f"wrote {results_path}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as err:
        log(f"FAILED: {err}")
        sys.exit(1)
