#!/usr/bin/env python3
"""Fuzzes the running API against its own OpenAPI description (run scripts/schemathesis).

For each deployment asked for (embedded: SQLite and the in-process worker; postgres:
Postgres + Redis), starts the debug `monassurance-api all` on a fresh DATA_DIR and a free
port, seeds one of everything (a template, a client, a policy, a ready document, so list
answers carry real items for the schema checks), then runs schemathesis on
/api/v1/openapi.json as the admin. Fails when schemathesis reports anything, or when the
server logged a panic or an internal error.

Checks: no 5xx (`not_a_server_error`), every status, content type, header and body
described by the document (`status_code_conformance`, `content_type_conformance`,
`response_headers_conformance`, `response_schema_conformance`). Negative cases (invalid
input) are generated too; their answers must be documented and never 5xx, but an invalid
request that is accepted is not flagged. (`negative_data_rejection`
is not used: schemathesis 4.32.5 wrongly counts an optional property as required in
some bodies, e.g. `scope` of POST /templates.) The two operations that end the caller's own session
(`POST /auth/revoke-all`, `DELETE /auth/devices/{id}`) run last, each in a pass of its own
with a fresh token, so that neither turns another operation into a run of 401s.

A run depends on its seed alone, so CI's fixed seed repeats the same cases and a random
seed a person's run prints replays its finding (`--seed N`): one schemathesis worker (with
two, which operation runs first, and so what the server already holds, varies), no
Hypothesis example database and no schemathesis cache (both would replay what earlier runs
on this machine found), this directory's schemathesis.toml and no other, a fixed Python
hash seed, and schemathesis started in the run's own empty directory without the caller's
HYPOTHESIS_* or SCHEMATHESIS_* variables. Two runs of a seed then send the same requests
in the same order, but for what the server made up (ids, times, which later cases reuse)
and multipart boundaries.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from benchlib import free_port, http  # noqa: E402  (the bench scripts' HTTP helpers)

CONFIG = Path(__file__).resolve().parent / "schemathesis.toml"
#: CI's seed (scripts/test): every run repeats the same cases.
FIXED_SEED = 20261125
DEFAULT_MAX_EXAMPLES = 25
ADMIN_EMAIL = "fuzz-admin@example.com"
ADMIN_PASSWORD = "fuzz-admin-password"
CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
    ]
)


def log(message: str) -> None:
    print(f"[schemathesis] {message}", flush=True)


def login(base: str) -> str:
    status, tokens = http("POST", base + "/api/v1/auth/login", body={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}
    )
    assert status == 200, f"admin login: {status} {tokens}"
    return tokens["access_token"]


def populate(base: str) -> str:
    """Creates one of everything as the admin; returns the admin's token."""
    token = login(base)

    def ok(status, body, what):
        assert status in (200, 201, 202), f"seeding {what}: {status} {body}"
        return body

    template = ok(
        *http("POST", base + "/api/v1/templates",
            token,
            {
                "name": "Attestation",
                "type": "attestation",
                "format": "html",
                "content": "<h1>{{ client.last_name }}</h1><p>{{ policy.policy_number }}</p>",
            },
        ),
        "a template",
    )
    company = ok(
        *http("POST", base + "/api/v1/companies", token, {"name": "Insurer", "code": "INS"}),
        "a company",
    )
    client = ok(
        *http("POST", base + "/api/v1/clients",
            token,
            {"first_name": "Jane", "last_name": "Doe", "email": "jane@example.com"},
        ),
        "a client",
    )
    policy = ok(
        *http("POST", base + "/api/v1/policies",
            token,
            {
                "policy_number": "POL-1",
                "client_id": client["id"],
                "company_id": company["id"],
                "product_name": "Auto",
                "premium_amount": 125000,
                "effective_date": "2026-01-01T00:00:00Z",
                "expiry_date": "2027-01-01T00:00:00Z",
            },
        ),
        "a policy",
    )
    document = ok(
        *http("POST", base + "/api/v1/documents/generate",
            token,
            {"document_type": "attestation", "template_id": template["id"], "policy_id": policy["id"]},
            headers={"Prefer": "wait=20"},
        ),
        "a document",
    )
    assert document["status"] == "ready", f"seed document: {document}"
    return token


def logged_error(line: str) -> bool:
    """Whether a JSON log line is an error (or not JSON at all, e.g. a panic message)."""
    try:
        entry = json.loads(line)
    except ValueError:
        return bool(line.strip())
    return entry.get("level") == "ERROR"


def schemathesis(
    base: str, token: str, flag: str, operations: list[str], args, seed: int, deployment: str, work: Path
) -> bool:
    command = [
        str(args.schemathesis),
        "--config-file",
        str(CONFIG),
        "run",
        f"{base}/api/v1/openapi.json",
        "--checks",
        CHECKS,
        "--header",
        f"Authorization: Bearer {token}",
        *[part for operation in operations for part in (flag, operation)],
        "--max-examples",
        str(args.max_examples),
        "--seed",
        str(seed),
        "--generation-database",
        "none",
        "--workers",
        "1",
        "--request-timeout",
        "40",
        "--phases",
        "examples,coverage,fuzzing",
        "--suppress-health-check",
        "all",
        *args.extra,
    ]
    shown = " ".join("Authorization: Bearer <admin>" if "Bearer" in c else c for c in command)
    log(f"{deployment}: {shown}")
    env = {key: value for key, value in os.environ.items() if not key.startswith(("HYPOTHESIS_", "SCHEMATHESIS_"))}
    env["PYTHONHASHSEED"] = "0"
    return subprocess.run(command, cwd=work, env=env).returncode == 0


def run(deployment: str, args, seed: int) -> bool:
    work = Path(tempfile.mkdtemp(prefix=f"schemathesis-{deployment}-"))
    port = free_port()
    # Nothing from the caller's environment or a `.env` (the server runs in the run's own
    # directory, where there is none) may point it at a real database, queue or bucket.
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DATABASE_", "QUEUE_", "REDIS_", "STORAGE_", "AWS_", "RATE_LIMIT", "LOGIN_"))
    }
    env.update(
        {
            "DATA_DIR": str(work / "data"),
            "BIND_ADDR": f"127.0.0.1:{port}",
            "PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
            "BOOTSTRAP_ADMIN_EMAIL": ADMIN_EMAIL,
            "BOOTSTRAP_ADMIN_PASSWORD": ADMIN_PASSWORD,
            "LOG_LEVEL": "warn",
            "ENVIRONMENT": "development",
            "LOG_JSON": "true",
            # The login guard would refuse the later passes' logins after the first pass
            # fuzzed POST /auth/login (its 429 is tested in api/tests/api/limits.rs).
            "LOGIN_ATTEMPTS_ENABLED": "false",
        }
    )
    database = None
    queue = None
    if deployment == "postgres":
        database = "mona_fuzz_" + secrets.token_hex(4)
        subprocess.run(
            ["psql", args.database_url, "-qc", f"CREATE DATABASE {database}"], check=True
        )
        queue = "fuzz-" + secrets.token_hex(4)
        env.update(
            {
                "DATABASE_URL": args.database_url.rsplit("/", 1)[0] + "/" + database,
                "REDIS_URL": args.redis_url,
                "QUEUE_NAME": queue,
            }
        )
    log_path = work / "api.log"
    with open(log_path, "wb") as log_file:
        server = subprocess.Popen(
            [str(args.api_binary), "all"], env=env, cwd=work, stdout=log_file, stderr=subprocess.STDOUT
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(base + "/health", timeout=1):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the API did not start:\n{log_path.read_text()}")
                time.sleep(0.1)
        ok = True
        # The operations that end the caller's own session (every device, or the one the
        # token belongs to, whose id GET /auth/devices shows) run last, each with a fresh
        # token: in one pass, the first would leave the other only 401s.
        session_enders = ["revoke_all", "revoke_device"]
        token = populate(base)
        fuzz = work / "schemathesis"
        fuzz.mkdir()
        ok = schemathesis(base, token, "--exclude-operation-id", session_enders, args, seed, deployment, fuzz)
        for operation in session_enders:
            token = login(base)
            ok = schemathesis(base, token, "--include-operation-id", [operation], args, seed, deployment, fuzz) and ok
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        if database:
            subprocess.run(["psql", args.database_url, "-qc", f"DROP DATABASE IF EXISTS {database} WITH (FORCE)"])
        if queue:
            keys = subprocess.run(
                ["redis-cli", "-u", args.redis_url, "--scan", "--pattern", f"*{queue}*"],
                capture_output=True,
                text=True,
            ).stdout.split()
            if keys:
                subprocess.run(["redis-cli", "-u", args.redis_url, "DEL", *keys], capture_output=True)
    server_log = log_path.read_text(errors="replace")
    problems = [line for line in server_log.splitlines() if logged_error(line)]
    if problems:
        log(f"{deployment}: the server logged {len(problems)} error(s):")
        for line in problems[:20]:
            print("    " + line)
        ok = False
    if ok:
        shutil.rmtree(work, ignore_errors=True)
        log(f"{deployment}: clean")
    else:
        log(f"{deployment}: FAILED (server log kept in {log_path})")
    return ok


def replay_command(seed: int, deployment: str, args) -> str:
    """The command that repeats one deployment's run of `seed`."""
    command = ["scripts/schemathesis", "--seed", str(seed), "--deployments", deployment]
    if args.max_examples != DEFAULT_MAX_EXAMPLES:
        command += ["--max-examples", str(args.max_examples)]
    if args.extra:
        command += ["--", *args.extra]
    return " ".join(command)


def fuzz_once(args, seed: int) -> bool:
    """Fuzzes every deployment asked for with `seed`; says how each went."""
    log(f"seed {seed}")
    results = {d: run(d, args, seed) for d in args.deployments.split(",") if d}
    for deployment, ok in results.items():
        log(f"{deployment}: {'passed' if ok else 'FAILED'} with seed {seed}")
        if not ok:
            log(f"  replay: {replay_command(seed, deployment, args)}")
    return all(results.values())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--deployments", default="embedded,postgres", help="embedded, postgres or both (comma-separated)")
    parser.add_argument("--max-examples", type=int, default=DEFAULT_MAX_EXAMPLES, help="test cases per operation and phase")
    seeds = parser.add_mutually_exclusive_group()
    seeds.add_argument("--seed", type=int, default=FIXED_SEED, help=f"schemathesis seed (default {FIXED_SEED}, CI's)")
    seeds.add_argument("--random", action="store_true", help="a fresh random seed for each run, printed to replay a finding")
    parser.add_argument("--runs", type=int, default=1, help="with --random: runs in a row, stopping at the first finding")
    parser.add_argument("--api-binary", type=Path, required=True)
    parser.add_argument("--schemathesis", type=Path, default=Path("schemathesis"), help="the schemathesis executable")
    parser.add_argument("--database-url", default=os.environ.get("TEST_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres"))
    parser.add_argument("--redis-url", default=os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379"))
    parser.add_argument("extra", nargs="*", help="more schemathesis arguments (after --)")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if args.runs != 1 and not args.random:
        parser.error("--runs needs --random (a fixed seed repeats the same run)")
    if not args.random:
        return 0 if fuzz_once(args, args.seed) else 1
    history = []
    for number in range(1, args.runs + 1):
        seed = secrets.randbelow(2**32)
        log(f"random run {number} of {args.runs}")
        ok = fuzz_once(args, seed)
        history.append((seed, ok))
        if not ok:
            break
    for number, (seed, ok) in enumerate(history, 1):
        log(f"run {number}: seed {seed} {'clean' if ok else 'FAILED'}")
    return 0 if all(ok for _, ok in history) else 1


if __name__ == "__main__":
    sys.exit(main())
