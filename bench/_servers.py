"""Starting, watching and stopping what the benchmark runs: Redis, PostgreSQL databases,
our server instances and the Node.js reference."""

from __future__ import annotations

import asyncio
import atexit
import base64
import getpass
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
REFERENCE_DIR = BENCH_DIR / "reference"
PG_DSN_BASE = "postgresql://{user}@127.0.0.1:5432/{db}"
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_STARTED: list[Proc] = []


@atexit.register
def _stop_leftovers() -> None:
    """Last resort if the normal cleanup did not run (e.g. an exception while unwinding)."""
    for proc in _STARTED:
        proc.stop(timeout=3)


@dataclass
class Proc:
    """A child process with its output in a log file. It runs in its own session, so a Ctrl-C in the
    terminal reaches only the benchmark, which then stops it in order."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    _stopped: bool = field(default=False, repr=False)

    @classmethod
    def start(
        cls, name: str, argv: list[str], log_dir: Path, env: dict[str, str] | None = None, cwd: Path | None = None
    ) -> Proc:
        log_path = log_dir / f"{name}.log"
        with open(log_path, "wb") as out:
            popen = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        proc = cls(name, popen, log_path)
        _STARTED.append(proc)
        return proc

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 25) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 8.0) -> None:
        """SIGTERM, then SIGKILL; the child runs in its own session, so its own children go too."""
        if self._stopped:
            return
        self._stopped = True
        if self.popen.poll() is not None:
            return
        try:
            os.killpg(self.popen.pid, signal.SIGTERM)
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(5)
        except ProcessLookupError:
            pass


# --------------------------------------------------------------------------- CPU accounting


def _proc_stat(pid: int) -> tuple[int, float] | None:
    """(ppid, utime + stime in seconds) of a live process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()  # the command name may contain spaces
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / _CLK_TCK


def tree_cpu_seconds(roots: list[int]) -> dict[int, float]:
    """CPU seconds of each root process plus its live descendants (e.g. worker processes),
    from one pass over /proc."""
    stats: dict[int, tuple[int, float]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := _proc_stat(int(entry))) is not None:
            stats[int(entry)] = st
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    totals = {}
    for root in roots:
        tree, frontier = {root}, [root]
        while frontier:
            for child in children.get(frontier.pop(), []):
                if child not in tree:
                    tree.add(child)
                    frontier.append(child)
        totals[root] = sum(stats[pid][1] for pid in tree if pid in stats)
    return totals


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


# --------------------------------------------------------------------------- readiness


async def wait_ready(url: str, procs: list[Proc], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = "no answer"
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            for p in procs:
                if not p.alive():
                    raise RuntimeError(f"{p.name} exited with {p.popen.returncode}:\n{p.tail()}")
            try:
                async with session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as resp:
                    if resp.status == 200:
                        return
                    last = f"{resp.status} {(await resp.text())[:300]}"
            except (TimeoutError, aiohttp.ClientError) as exc:
                last = repr(exc)
            await asyncio.sleep(0.2)
    tails = "\n".join(f"--- {p.name}\n{p.tail()}" for p in procs)
    raise RuntimeError(f"{url} not ready after {timeout:.0f}s (last: {last})\n{tails}")


# --------------------------------------------------------------------------- Redis


def start_redis(log_dir: Path) -> tuple[Proc, int]:
    port = free_port()
    proc = Proc.start(
        f"redis-{port}",
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        log_dir,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"redis-server exited:\n{proc.tail()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return proc, port
        except OSError:
            time.sleep(0.05)
    proc.stop()
    raise RuntimeError("redis-server did not answer PING")


# --------------------------------------------------------------------------- PostgreSQL


async def _pg_admin_connect() -> tuple[object, str]:
    import asyncpg

    errors = []
    for user in dict.fromkeys(("postgres", getpass.getuser())):
        try:
            return await asyncpg.connect(PG_DSN_BASE.format(user=user, db="test")), user
        except Exception as exc:
            errors.append(f"{user}: {exc}")
    raise RuntimeError("cannot reach PostgreSQL at 127.0.0.1:5432 db test: " + "; ".join(errors))


async def create_pg_database() -> tuple[str, str]:
    """A fresh database; returns (name, url for LIVE_DATABASE_URL)."""
    conn, user = await _pg_admin_connect()
    name = f"lc_bench_{secrets.token_hex(6)}"
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')  # type: ignore[attr-defined]
    finally:
        await conn.close()  # type: ignore[attr-defined]
    return name, PG_DSN_BASE.format(user=user, db=name)


async def drop_pg_database(name: str) -> None:
    conn, _ = await _pg_admin_connect()
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # type: ignore[attr-defined]
    finally:
        await conn.close()  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- servers


def live_server_argv(port: int) -> list[str]:
    return [sys.executable, "-m", "live.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]


def start_live_instances(n: int, env_extra: dict[str, str], log_dir: Path) -> list[tuple[Proc, int]]:
    env = {**os.environ, **env_extra, "PYTHONUNBUFFERED": "1"}
    started = []
    for i in range(n):
        port = free_port()
        started.append((Proc.start(f"live-{i}-{port}", live_server_argv(port), log_dir, env, REPO_DIR), port))
    return started


def ensure_reference_installed() -> None:
    """npm ci into bench/reference unless node_modules already matches the lock file."""
    marker = REFERENCE_DIR / "node_modules" / ".package-lock.json"
    lock = REFERENCE_DIR / "package-lock.json"
    if marker.exists() and lock.exists() and marker.stat().st_mtime >= lock.stat().st_mtime:
        return
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm not found; the reference server needs node 18+ and npm")
    argv = [npm, "ci" if lock.exists() else "install", "--no-audit", "--no-fund", "--loglevel=error"]
    log(f"installing the reference server: {' '.join(argv[1:])} in {REFERENCE_DIR}")
    subprocess.run(argv, cwd=REFERENCE_DIR, check=True, stdout=sys.stderr)


def start_reference_instances(n: int, redis_url: str, log_dir: Path) -> list[tuple[Proc, int]]:
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("node not found")
    started = []
    for i in range(n):
        port = free_port()
        env = {**os.environ, "PORT": str(port), "REDIS_URL": redis_url, "NODE_ENV": "production"}
        started.append((Proc.start(f"reference-{i}-{port}", [node, "server.js"], log_dir, env, REFERENCE_DIR), port))
    return started


async def py_spy(pid: int, output: Path, seconds: float) -> asyncio.subprocess.Process:
    """``py-spy record`` of process ``pid`` for at most ``seconds`` (SIGINT stops it early, and it still
    writes), raw collapsed stacks into ``output``: what the benchmarks' ``--profile`` runs. py-spy is not a
    dependency: ``.venv/bin/pip install py-spy``."""
    exe = Path(sys.executable).with_name("py-spy")
    argv = [str(exe if exe.exists() else "py-spy"), "record", "--pid", str(pid), "--rate", "250"]
    argv += ["--duration", str(max(1, round(seconds))), "--format", "raw", "--nonblocking", "--output", str(output)]
    return await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )


def server_env(
    db_url: str, data_dir: Path, redis_url: str | None = None, **extra: str
) -> tuple[dict[str, str], str, str]:
    """The environment of a benchmark's instances (fresh secrets, quiet logs, ``extra`` settings on top),
    with its token secret and admin API secret (the admin API key is ``bench``)."""
    secret, api_secret = secrets.token_urlsafe(48)[:48], secrets.token_urlsafe(24)
    env = {
        "LIVE_DATABASE_URL": db_url,
        "LIVE_SECRET": secret,
        "LIVE_API_KEY": "bench",
        "LIVE_API_SECRET": api_secret,
        "LIVE_DATA_DIR": str(data_dir),
        "LIVE_LOG_LEVEL": "WARNING",
        **({"LIVE_REDIS_URL": redis_url} if redis_url else {}),
        **extra,
    }
    return env, secret, api_secret


def admin_auth(api_secret: str, key: str = "bench") -> str:
    """The ``Authorization`` header value for the admin API (HTTP Basic)."""
    return "Basic " + base64.b64encode(f"{key}:{api_secret}".encode()).decode()
