"""Load test of the job API on loopback: job creation and status polling, against a baseline measured in the same run.

It starts its own production server (the command of docker/Dockerfile.web: gunicorn with uvicorn workers, ASGI, DEBUG
off, a database pool per process as docker/compose.yaml sets it; `--server wsgi` runs the earlier gunicorn gthread
server instead, for comparison) on a fresh PostgreSQL database and Redis namespace,
with files in a temporary folder, creates users with tokens, then runs three phases, each bounded by a request
count and a time limit:

  baseline  GET /healthz                 (the cost of the stack itself: server, middleware, no database)
  create    POST /api/v1/jobs/           (multipart image; validation, normalisation, storage, row, queue message)
  poll      GET /api/v1/jobs/<id>/       (what pages and clients do while a job runs: row, queue position, ETA)
  list      GET /api/v1/jobs/?page_size=20 (a page of the job list: queue positions and ETAs of 20 jobs)

`--create-rate` and `--list-rate` pace those phases at a fixed arrival rate (requests per second, open loop): each
request is due at start + i / rate, and its latency counts from when it was due, so a server that falls behind
shows it in the percentiles instead of slowing the load down (no coordinated omission). 0 sends as fast as the
client threads can.

No worker consumes the queue, so jobs stay QUEUED; the per-user active-job limit and the submission rate limit are
lifted for the run (they would turn the load into 429s). Prints a table and writes bench/results/load_api-*.json.

    .venv/bin/python bench/load_api.py --concurrency 8 --creates 200 --polls 2000
    .venv/bin/python bench/load_api.py --creates 200 --create-rate 20 --lists 500 --list-rate 50   # issue 15's targets
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import re
import secrets
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import requests
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
# docker/compose.yaml's default for the web service.
POOL_SIZE = "20"


def production_command(port: int, workers: int) -> list[str]:
    """docker/Dockerfile.web's CMD, on loopback with `workers` processes (the same server production runs)."""
    text = (REPO / "docker" / "Dockerfile.web").read_text()
    command = json.loads(re.search(r"^CMD (\[.*\])$", text, re.MULTILINE).group(1))
    line = (command[2].removeprefix("exec ").replace("0.0.0.0:${PORT}", f"127.0.0.1:{port}")
            .replace("${WEB_CONCURRENCY:-3}", str(workers)))
    argv = shlex.split(line)
    # The image logs each request; a load test would measure its terminal instead.
    for flag in ("--access-logfile", "--error-logfile"):
        if flag in argv:
            del argv[argv.index(flag):argv.index(flag) + 2]
    return [sys.executable, "-m", *argv, "--keep-alive", "30", "--log-level", "warning"]


def wsgi_command(port: int, workers: int, threads: int) -> list[str]:
    """The server docker/Dockerfile.web ran before it moved to ASGI: gunicorn gthread, WSGI."""
    return [sys.executable, "-m", "gunicorn", "turbosite.wsgi:application", "--bind", f"127.0.0.1:{port}",
            "--workers", str(workers), "--threads", str(threads), "--worker-class", "gthread",
            "--keep-alive", "30", "--log-level", "warning"]


@dataclass
class PhaseResult:
    name: str
    requests: int = 0
    errors: int = 0
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list, repr=False)
    error_samples: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        ordered = sorted(self.latencies_ms)

        def pct(p: float) -> float:
            if not ordered:
                return float("nan")
            return round(ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))], 2)

        return {
            "requests": self.requests,
            "errors": self.errors,
            "seconds": round(self.seconds, 3),
            "throughput_rps": round(self.requests / self.seconds, 1) if self.seconds else 0.0,
            "mean_ms": round(statistics.fmean(ordered), 2) if ordered else float("nan"),
            "p50_ms": pct(50),
            "p90_ms": pct(90),
            "p99_ms": pct(99),
            "max_ms": round(ordered[-1], 2) if ordered else float("nan"),
            "error_samples": self.error_samples[:5],
        }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def sample_png(size: int) -> bytes:
    buffer = io.BytesIO()
    Image.radial_gradient("L").resize((size, size)).convert("RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def run_phase(name: str, sessions: list[requests.Session], count: int, max_seconds: float,
              send: Callable[[requests.Session, int], requests.Response], expected: int,
              rate: float = 0.0) -> PhaseResult:
    """`count` requests (or until `max_seconds`) spread over one thread per session; paced at `rate` per second
    when given (latency then counts from each request's due time)."""
    result = PhaseResult(name)
    lock = threading.Lock()
    issued = iter(range(count))
    deadline = time.monotonic() + max_seconds
    began_at = time.perf_counter()

    def loop(session: requests.Session) -> None:
        while time.monotonic() < deadline:
            with lock:
                index = next(issued, None)
            if index is None:
                return
            start = time.perf_counter()
            if rate > 0:
                due = began_at + index / rate
                if due > start:
                    time.sleep(due - start)
                start = due
            try:
                response = send(session, index)
                ok, detail = response.status_code == expected, f"HTTP {response.status_code}: {response.text[:160]}"
            except requests.RequestException as exc:
                ok, detail = False, f"{type(exc).__name__}: {exc}"
            elapsed = (time.perf_counter() - start) * 1000
            with lock:
                result.requests += 1
                result.latencies_ms.append(elapsed)
                if not ok:
                    result.errors += 1
                    result.error_samples.append(detail)

    threads = [threading.Thread(target=loop, args=(session,)) for session in sessions]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    result.seconds = time.perf_counter() - began
    return result


class Site:
    """A throwaway deployment: database, Redis namespace, data folder and the web server."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.run_id = f"{os.getpid()}"
        self.db_name = f"turbosite_bench_{self.run_id}"
        self.data_dir = Path(tempfile.mkdtemp(prefix="turbosite-bench-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server: subprocess.Popen | None = None
        self.env = {key: value for key, value in os.environ.items() if not key.startswith(("S3_", "DATABASE_"))}
        self.env.update({
            "DATABASE_URL": f"{args.postgres.rstrip('/')}/{self.db_name}",
            "REDIS_URL": args.redis,
            "QUEUE_NAMESPACE": f"turbosite-bench-{self.run_id}",
            "TURBO_DATA_DIR": str(self.data_dir),
            "DEBUG": "0",
            "SECRET_KEY": secrets.token_urlsafe(40),
            "ALLOWED_HOSTS": "127.0.0.1,localhost",
            "SECURE_SSL_REDIRECT": "0",
            "TURBO_MAX_ACTIVE_JOBS": "0",
            "TURBO_JOB_CREATE_RATE": "1000000/min",
            "TURBO_EMBEDDED_WORKER": "0",
            "LOG_LEVEL": "WARNING",
            "DJANGO_SETTINGS_MODULE": "turbosite.settings",
        })
        if args.server == "asgi":
            self.env["DB_POOL_MAX_SIZE"] = POOL_SIZE

    def _manage(self, *argv: str) -> str:
        done = subprocess.run([sys.executable, "manage.py", *argv], cwd=REPO, env=self.env, capture_output=True,
                              text=True, timeout=300)
        if done.returncode:
            raise RuntimeError(f"manage.py {' '.join(argv)} failed:\n{done.stdout}\n{done.stderr}")
        return done.stdout

    def _psql(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(f"{self.args.postgres.rstrip('/')}/postgres", autocommit=True) as conn:
            conn.execute(sql)

    def start(self, users: int) -> list[str]:
        self._psql(f'CREATE DATABASE "{self.db_name}"')
        self._manage("migrate", "--noinput", "-v", "0")
        code = ("import json; from django.contrib.auth import get_user_model; "
                "from rest_framework.authtoken.models import Token; User = get_user_model(); "
                f"print(json.dumps([Token.objects.create(user=User.objects.create_user(f'bench{{i}}', "
                f"password='bench-pass-{self.run_id}-x')).key for i in range({users})]))")
        tokens = json.loads(self._manage("shell", "-c", code).strip().splitlines()[-1])
        command = (production_command(self.port, self.args.workers) if self.args.server == "asgi"
                   else wsgi_command(self.port, self.args.workers, self.args.threads))
        self.server = subprocess.Popen(command, cwd=REPO, env=self.env, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return tokens
            except requests.RequestException:
                pass
            if self.server.poll() is not None:
                raise RuntimeError(f"the server exited: {self.server.stderr.read() if self.server.stderr else ''}")
            time.sleep(0.3)
        raise RuntimeError("the server did not answer /healthz within 60 s")

    def stop(self) -> None:
        if self.server is not None and self.server.poll() is None:
            self.server.terminate()
            try:
                self.server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.server.kill()
        try:
            import redis

            client = redis.Redis.from_url(self.args.redis)
            keys = list(client.scan_iter(f"{self.env['QUEUE_NAMESPACE']}*"))
            if keys:
                client.delete(*keys)
        except Exception as exc:
            print(f"warning: could not clean the Redis namespace: {exc}", file=sys.stderr)
        try:
            self._psql(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')
        except Exception as exc:
            print(f"warning: could not drop {self.db_name}: {exc}", file=sys.stderr)
        subprocess.run(["rm", "-rf", str(self.data_dir)], check=False)


def print_table(phases: dict[str, dict[str, Any]], baseline_p50: float) -> None:
    header = f"{'phase':<10}{'requests':>10}{'errors':>8}{'req/s':>9}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}" \
             f"{'max ms':>9}{'p50/base':>10}"
    print(header)
    print("-" * len(header))
    for name, row in phases.items():
        ratio = row["p50_ms"] / baseline_p50 if baseline_p50 else float("nan")
        print(f"{name:<10}{row['requests']:>10}{row['errors']:>8}{row['throughput_rps']:>9.1f}{row['p50_ms']:>9.1f}"
              f"{row['p90_ms']:>9.1f}{row['p99_ms']:>9.1f}{row['max_ms']:>9.1f}{ratio:>10.1f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, default=8, help="client threads (one user and session each)")
    parser.add_argument("--baseline", type=int, default=1000, help="GET /healthz requests")
    parser.add_argument("--creates", type=int, default=200, help="POST /api/v1/jobs/ requests")
    parser.add_argument("--polls", type=int, default=2000, help="GET /api/v1/jobs/<id>/ requests")
    parser.add_argument("--lists", type=int, default=0, help="GET /api/v1/jobs/?page_size=20 requests")
    parser.add_argument("--create-rate", type=float, default=0.0, help="creates per second (0: as fast as possible)")
    parser.add_argument("--list-rate", type=float, default=0.0, help="list pages per second (0: as fast as possible)")
    parser.add_argument("--max-seconds", type=float, default=60.0, help="time limit per phase")
    parser.add_argument("--image-size", type=int, default=256, help="side of the square PNG uploaded")
    parser.add_argument("--server", choices=("asgi", "wsgi"), default="asgi",
                        help="asgi: docker/Dockerfile.web's command (production); wsgi: the earlier gunicorn gthread")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn worker processes")
    parser.add_argument("--threads", type=int, default=4, help="threads per gunicorn worker (--server wsgi only; "
                        "under ASGI Django runs each request in a thread of its own)")
    parser.add_argument("--postgres", default="postgres://postgres@127.0.0.1:5432", help="server URL, no database")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--output", type=Path, default=None, help="JSON path (default bench/results/...)")
    args = parser.parse_args(argv)

    site = Site(args)
    image = sample_png(args.image_size)
    try:
        tokens = site.start(args.concurrency)
        sessions = []
        for token in tokens:
            session = requests.Session()
            session.headers["Authorization"] = f"Token {token}"
            sessions.append(session)
        api = f"{site.url}/api/v1"
        created: list[str] = []
        created_lock = threading.Lock()

        def healthz(session: requests.Session, index: int) -> requests.Response:
            return session.get(f"{site.url}/healthz", timeout=30)

        def create(session: requests.Session, index: int) -> requests.Response:
            response = session.post(f"{api}/jobs/", data={"prompt": f"load test {index}", "model": "tiny",
                                                          "num_frames": "5", "num_steps": "1"},
                                    files={"image": ("load.png", image, "image/png")}, timeout=60)
            if response.status_code == 201:
                with created_lock:
                    created.append((session.headers["Authorization"], response.json()["id"]))
            return response

        def poll(session: requests.Session, index: int) -> requests.Response:
            mine = [job for owner, job in created if owner == session.headers["Authorization"]]
            return session.get(f"{api}/jobs/{mine[index % len(mine)]}/", timeout=30)

        def job_list(session: requests.Session, index: int) -> requests.Response:
            return session.get(f"{api}/jobs/", params={"page_size": 20}, timeout=30)

        healthz(sessions[0], 0)  # warm the connection pools before timing
        phases = {
            "baseline": run_phase("baseline", sessions, args.baseline, args.max_seconds, healthz, 200),
            "create": run_phase("create", sessions, args.creates, args.max_seconds, create, 201,
                                rate=args.create_rate),
        }
        if not all(any(owner == s.headers["Authorization"] for owner, _ in created) for s in sessions):
            raise RuntimeError(f"some users created no job; create errors: {phases['create'].error_samples[:3]}")
        phases["poll"] = run_phase("poll", sessions, args.polls, args.max_seconds, poll, 200)
        if args.lists:
            phases["list"] = run_phase("list", sessions, args.lists, args.max_seconds, job_list, 200,
                                       rate=args.list_rate)
    finally:
        site.stop()

    summaries = {name: result.summary() for name, result in phases.items()}
    baseline_p50 = summaries["baseline"]["p50_ms"]
    server = (f"gunicorn + uvicorn workers (ASGI) x {args.workers}, database pool {POOL_SIZE} per process"
              if args.server == "asgi" else f"gunicorn gthread {args.workers} workers x {args.threads} threads")
    print(f"TurboSite API load test: {args.concurrency} clients, {server}, "
          f"{os.cpu_count()} CPUs, loopback, PostgreSQL + Redis, local files")
    print_table(summaries, baseline_p50)
    report = {
        "benchmark": "load_api",
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "environment": {"host": platform.node(), "python": platform.python_version(), "cpus": os.cpu_count(),
                        "server": server,
                        "database": "PostgreSQL (loopback)", "broker": "Redis (loopback)", "storage": "local folder"},
        "config": {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()},
        "phases": summaries,
        "p50_relative_to_baseline": {name: round(row["p50_ms"] / baseline_p50, 2) if baseline_p50 else None
                                     for name, row in summaries.items()},
        "jobs_created": len(created),
    }
    output = args.output or RESULTS / f"load_api-{time.strftime('%Y%m%d-%H%M%S')}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2, default=lambda o: asdict(o)))
    print(f"wrote {output}")
    return 0 if all(row["errors"] == 0 for row in summaries.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
