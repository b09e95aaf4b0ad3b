"""Server configuration, read from ``LIVE_*`` environment variables.

Every variable is documented in ``docs/operations.md``. Bad values raise :class:`ConfigError` with the
variable's name, so the server refuses to start rather than running half-configured.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from sqlalchemy.engine import make_url

from gifting.policy import DEFAULT_CATALOGUE, Gift, GiftPolicy, SalesPolicy
from rooms.identity import Role
from rooms.policy import ChatPolicy, QaPolicy

MIN_SECRET_LENGTH = 32


class ConfigError(ValueError):
    """A ``LIVE_*`` variable is missing or malformed."""


@dataclass(frozen=True)
class Settings:
    """Everything the server needs to run; build it with :meth:`from_env`."""

    secret: str
    api_key: str
    api_secret: str
    data_dir: Path
    database_url: str
    redis_url: str | None = None
    public_url: str | None = None
    allowed_origins: tuple[str, ...] = ()
    host: str = "127.0.0.1"
    port: int = 8080
    instance_id: str = field(default_factory=lambda: f"{socket.gethostname()}-{secrets.token_hex(3)}")
    history_size: int = 500
    history_ttl_s: int = 86_400
    max_event_bytes: int = 4096
    socket_events_per_s: float = 20.0
    socket_event_burst: int = 40
    chat: ChatPolicy = field(default_factory=ChatPolicy)
    qa: QaPolicy = field(default_factory=QaPolicy)
    gifts: GiftPolicy = field(default_factory=GiftPolicy)
    sales: SalesPolicy = field(default_factory=SalesPolicy)
    payment_provider: str = "sandbox"
    sandbox_secret: str = ""
    stripe_api_key: str = ""
    stripe_webhook_secret: str = ""
    log_level: str = "INFO"
    media_republish_grace_s: int = 15
    media_workers: int = 0
    media_fanout_threads: int = 1
    ice_servers: tuple[str, ...] = ()

    @property
    def engine_name(self) -> str:
        return "redis" if self.redis_url else "memory"

    def base_url(self) -> str:
        """The URL that links point at: ``LIVE_PUBLIC_URL`` or the bound host and port."""
        if self.public_url:
            return self.public_url.rstrip("/")
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{host}:{self.port}"

    def page_link(self, role: Role, token: str) -> str:
        """The page a token opens: the studio for staff roles, the room for students."""
        page = "studio" if role.is_staff else "room"
        return f"{self.base_url()}/{page}#token={token}"

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides: object) -> Settings:
        """Read ``LIVE_*`` variables from ``env`` (default ``os.environ``); ``overrides`` win."""
        env = dict(os.environ if env is None else env)
        data_dir = Path(env.get("LIVE_DATA_DIR", ".live")).resolve()
        secret = env.get("LIVE_SECRET") or _local_secret(data_dir, "secret")
        if len(secret) < MIN_SECRET_LENGTH:
            raise ConfigError(f"LIVE_SECRET must be at least {MIN_SECRET_LENGTH} characters")
        api_key = env.get("LIVE_API_KEY", "admin")
        api_secret = env.get("LIVE_API_SECRET") or _local_secret(data_dir, "api_secret")
        redis_url = env.get("LIVE_REDIS_URL") or None
        if redis_url and urlsplit(redis_url).scheme not in ("redis", "rediss", "unix"):
            raise ConfigError("LIVE_REDIS_URL must be a redis://, rediss:// or unix:// URL")
        database_url = normalize_database_url(env.get("LIVE_DATABASE_URL") or f"sqlite:///{data_dir / 'live.db'}")
        public_url = env.get("LIVE_PUBLIC_URL") or None
        if public_url and urlsplit(public_url).scheme not in ("http", "https"):
            raise ConfigError("LIVE_PUBLIC_URL must be an http:// or https:// URL")
        origins = tuple(o.strip().rstrip("/") for o in env.get("LIVE_ALLOWED_ORIGINS", "").split(",") if o.strip())
        for origin in origins:
            if urlsplit(origin).scheme not in ("http", "https") or not urlsplit(origin).netloc:
                raise ConfigError(f"LIVE_ALLOWED_ORIGINS: {origin!r} is not an origin like https://example.com")
        provider = _choice(env, "LIVE_PAYMENT_PROVIDER", "sandbox", ("sandbox", "stripe"))
        if provider == "stripe" and not env.get("LIVE_STRIPE_WEBHOOK_SECRET"):
            raise ConfigError("LIVE_PAYMENT_PROVIDER=stripe needs LIVE_STRIPE_WEBHOOK_SECRET (and LIVE_STRIPE_API_KEY)")
        values: dict[str, object] = {
            "payment_provider": provider,
            "sandbox_secret": env.get("LIVE_SANDBOX_SECRET") or _local_secret(data_dir, "sandbox_secret"),
            "stripe_api_key": env.get("LIVE_STRIPE_API_KEY", ""),
            "stripe_webhook_secret": env.get("LIVE_STRIPE_WEBHOOK_SECRET", ""),
            "secret": secret,
            "api_key": api_key,
            "api_secret": api_secret,
            "data_dir": data_dir,
            "database_url": database_url,
            "redis_url": redis_url,
            "public_url": public_url,
            "allowed_origins": origins,
            "host": env.get("LIVE_HOST", "127.0.0.1"),
            "port": _int(env, "LIVE_PORT", 8080, 1, 65535),
            "history_size": _int(env, "LIVE_HISTORY_SIZE", 500, 10, 100_000),
            "history_ttl_s": _int(env, "LIVE_HISTORY_TTL_S", 86_400, 60, 30 * 86_400),
            "max_event_bytes": _int(env, "LIVE_MAX_EVENT_BYTES", 4096, 256, 65_536),
            "chat": ChatPolicy(max_chars=_int(env, "LIVE_CHAT_MAX_CHARS", 500, 1, 5000)),
            "qa": QaPolicy(
                max_chars=_int(env, "LIVE_QA_MAX_CHARS", 300, 1, 2000),
                ask_interval_s=_int(env, "LIVE_QA_ASK_INTERVAL_S", 60, 0, 3600),
                vote_flush_ms=_int(env, "LIVE_QA_VOTE_FLUSH_MS", 50, 0, 5000),
            ),
            "gifts": GiftPolicy(
                catalogue=_catalogue(env),
                teacher_share_bp=_int(env, "LIVE_TEACHER_SHARE_PCT", 70, 0, 100) * 100,
                per_transfer_cap=_int(env, "LIVE_SPEND_CAP_PER_TRANSFER", 10_000, 1, 10**12),
                daily_cap=_int(env, "LIVE_SPEND_CAP_DAILY", 50_000, 1, 10**12),
                combo_window_ms=_int(env, "LIVE_GIFT_COMBO_MS", 3000, 100, 60_000),
            ),
            "sales": SalesPolicy(
                coins_per_minor=_coin_rates(env),
                order_hold_s=_int(env, "LIVE_ORDER_HOLD_S", 600, 10, 86_400),
                teacher_share_bp=_int(env, "LIVE_COURSE_TEACHER_SHARE_PCT", 70, 0, 100) * 100,
                refund_days=_int(env, "LIVE_REFUND_DAYS", 7, 0, 365),
                refund_max_consumed_pct=_int(env, "LIVE_REFUND_MAX_CONSUMED_PCT", 20, 0, 100),
                host_webhook_url=_webhook_url(env),
                host_webhook_secret=env.get("LIVE_HOST_WEBHOOK_SECRET") or _local_secret(data_dir, "webhook_secret"),
            ),
            "media_republish_grace_s": _int(env, "LIVE_MEDIA_REPUBLISH_GRACE_S", 15, 0, 600),
            "media_workers": _media_workers(env),
            "media_fanout_threads": _int(env, "LIVE_MEDIA_FANOUT_THREADS", 1, 1, 64),
            "ice_servers": _ice_servers(env),
            "log_level": _choice(env, "LIVE_LOG_LEVEL", "INFO", ("DEBUG", "INFO", "WARNING", "ERROR")),
        }
        if env.get("LIVE_INSTANCE_ID"):
            values["instance_id"] = env["LIVE_INSTANCE_ID"]
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]


def normalize_database_url(url: str) -> str:
    """Map plain ``sqlite://`` and ``postgresql://`` URLs onto their asyncio drivers."""
    scheme, _, rest = url.partition("://")
    if not rest:
        raise ConfigError("LIVE_DATABASE_URL must look like sqlite:///path or postgresql://user@host/db")
    base = scheme.split("+", 1)[0]
    if base == "sqlite":
        if _sqlite_in_memory(rest):
            # Each connection to an in-memory database has its own; the server opens several (the ledger
            # writes on its own thread's), so they would not see each other's data.
            raise ConfigError("LIVE_DATABASE_URL: SQLite must be a file (sqlite:///path), not in memory")
        return f"sqlite+aiosqlite://{rest}"
    if base in ("postgresql", "postgres"):
        return f"postgresql+asyncpg://{rest}"
    raise ConfigError(f"LIVE_DATABASE_URL: unsupported database {scheme!r} (use sqlite or postgresql)")


def _sqlite_in_memory(rest: str) -> bool:
    """Whether ``sqlite://{rest}`` names an in-memory database (no path, ``:memory:``, or a URI one)."""
    url = make_url(f"sqlite://{rest}")
    database = url.database or ""
    return database in ("", ":memory:") or database.startswith("file::memory:") or url.query.get("mode") == "memory"


def _media_workers(env: dict[str, str]) -> int:
    """``LIVE_MEDIA_WORKERS``: media worker processes (0: forward in the server process), or ``auto``: one per core."""
    if env.get("LIVE_MEDIA_WORKERS", "").strip().lower() == "auto":
        return max(1, os.cpu_count() or 1)
    return _int(env, "LIVE_MEDIA_WORKERS", 0, 0, 256)


def _catalogue(env: dict[str, str]) -> tuple[Gift, ...]:
    raw = env.get("LIVE_GIFT_CATALOGUE")
    if not raw:
        return DEFAULT_CATALOGUE
    try:
        items = json.loads(raw)
        gifts = tuple(Gift(str(g["id"]), str(g["name"]), int(g["coins"]), int(g["tier"])) for g in items)
    except (ValueError, TypeError, KeyError) as exc:
        raise ConfigError(
            f'LIVE_GIFT_CATALOGUE must be a JSON list of {{"id", "name", "coins", "tier"}}: {exc}'
        ) from None
    if not gifts or any(g.coins <= 0 or not 1 <= g.tier <= 3 or not g.id for g in gifts):
        raise ConfigError("LIVE_GIFT_CATALOGUE: every gift needs an id, coins > 0 and a tier of 1-3")
    if len({g.id for g in gifts}) != len(gifts):
        raise ConfigError("LIVE_GIFT_CATALOGUE: gift ids must be unique")
    return gifts


def _coin_rates(env: dict[str, str]) -> tuple[tuple[str, int], ...]:
    """``LIVE_COIN_RATES``: ``usd:1,eur:1`` (coins per minor unit of each currency wallets pay in)."""
    raw = env.get("LIVE_COIN_RATES", "usd:1,eur:1")
    rates = []
    for part in (p.strip() for p in raw.split(",") if p.strip()):
        code, _, rate = part.partition(":")
        if (
            len(code) != 3
            or not code.isalpha()
            or not code.islower()
            or not rate.isdigit()
            or not 1 <= int(rate) <= 10_000
        ):
            raise ConfigError(f"LIVE_COIN_RATES: {part!r} is not like usd:1 (a lowercase currency and 1-10000 coins)")
        rates.append((code, int(rate)))
    return tuple(rates)


def _webhook_url(env: dict[str, str]) -> str | None:
    url = env.get("LIVE_HOST_WEBHOOK_URL") or None
    if url is not None and urlsplit(url).scheme not in ("http", "https"):
        raise ConfigError("LIVE_HOST_WEBHOOK_URL must be an http:// or https:// URL")
    return url


def _ice_servers(env: dict[str, str]) -> tuple[str, ...]:
    """STUN/TURN URLs offered to clients (browser pages, WHIP ``Link`` headers), comma separated."""
    urls = tuple(u.strip() for u in env.get("LIVE_ICE_SERVERS", "").split(",") if u.strip())
    for url in urls:
        if not url.startswith(("stun:", "stuns:", "turn:", "turns:")) or any(c in url for c in '<>" '):
            raise ConfigError(f"LIVE_ICE_SERVERS: {url!r} is not a stun: or turn: URL")
    return urls


def _int(env: dict[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if not low <= value <= high:
        raise ConfigError(f"{name} must be between {low} and {high}, got {value}")
    return value


def _choice(env: dict[str, str], name: str, default: str, allowed: tuple[str, ...]) -> str:
    """One of ``allowed``, matched without regard to case."""
    raw = env.get(name) or default
    value = next((a for a in allowed if a.lower() == raw.lower()), None)
    if value is None:
        raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {env.get(name)!r}")
    return value


def _local_secret(data_dir: Path, name: str) -> str:
    """A random secret kept in the data directory, so a local setup needs no configuration.

    Created once with mode 0600; ``serve``, ``token`` and ``demo`` on the same data directory share it.
    Production deployments set ``LIVE_SECRET`` and ``LIVE_API_SECRET`` instead.
    """
    path = data_dir / name
    if path.exists():
        return path.read_text().strip()
    data_dir.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(48)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        # Another process sharing the data directory created it first: use theirs once it is written.
        for _ in range(100):
            existing = path.read_text().strip()
            if existing:
                return existing
            time.sleep(0.01)
        raise ConfigError(f"{path} exists but is empty") from None
    with os.fdopen(fd, "w") as f:
        f.write(value)
    return value
