"""SQL tables of the ledger (SQLAlchemy Core). Amounts are integer coins; times are ms since the epoch.

Rules the database itself enforces, not only Python: an account that may not go negative cannot (CHECK),
a transfer moves a positive amount between two different accounts (CHECK), an idempotency key is used
once (primary key), and a transfer is reversed at most once (UNIQUE ``reverses``).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    false,
)

metadata = MetaData()

accounts = Table(
    "ledger_accounts",
    metadata,
    Column("id", String(96), primary_key=True),
    Column("kind", String(16), nullable=False),
    Column("owner", String(64), nullable=True),
    Column("balance", BigInteger, nullable=False),
    #: The outside world (top-ups, payouts) is the only kind of account allowed below zero.
    Column("may_go_negative", Boolean, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    CheckConstraint("may_go_negative OR balance >= 0", name="ck_ledger_accounts_not_negative"),
    CheckConstraint("kind IN ('wallet', 'held', 'earnings', 'platform', 'world')", name="ck_ledger_accounts_kind"),
)

# One row per accepted operation (a set of linked transfers), keyed by the caller's idempotency key.
operations = Table(
    "ledger_operations",
    metadata,
    Column("key", String(160), primary_key=True),
    Column("kind", String(32), nullable=False),
    #: sha256 of the canonical request body: the same key with another body is refused.
    Column("body_hash", String(64), nullable=False),
    Column("result", Text, nullable=False),
    Column("actor", String(64), nullable=False),
    #: The actor's display name at the time (contribution boards show it).
    Column("actor_name", String(64), nullable=True),
    Column("room_id", String(64), nullable=True),
    Column("created_at", BigInteger, nullable=False),
)

transfers = Table(
    "ledger_transfers",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("op_key", String(160), ForeignKey("ledger_operations.key"), nullable=False),
    Column("debit", String(96), ForeignKey("ledger_accounts.id"), nullable=False),
    Column("credit", String(96), ForeignKey("ledger_accounts.id"), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("kind", String(32), nullable=False),
    Column("room_id", String(64), nullable=True),
    Column("reverses", Integer, ForeignKey("ledger_transfers.id"), nullable=True, unique=True),
    Column("created_at", BigInteger, nullable=False),
    CheckConstraint("amount > 0", name="ck_ledger_transfers_positive"),
    CheckConstraint("debit <> credit", name="ck_ledger_transfers_two_accounts"),
    Index("ix_ledger_transfers_op", "op_key"),
    Index("ix_ledger_transfers_debit", "debit", "created_at"),
    Index("ix_ledger_transfers_credit", "credit", "created_at"),
    Index("ix_ledger_transfers_room", "room_id", "created_at"),
)

# Two-phase holds: coins moved from a wallet to the owner's ``held`` account, then captured (to their
# destination), voided or expired (back to the wallet). ``status`` changes once, guarded in SQL.
holds = Table(
    "ledger_holds",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("op_key", String(160), ForeignKey("ledger_operations.key"), nullable=False),
    Column("owner", String(64), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("status", String(16), nullable=False),
    Column("room_id", String(64), nullable=True),
    Column("purpose", String(64), nullable=True),
    Column("expires_at", BigInteger, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("closed_at", BigInteger, nullable=True),
    CheckConstraint("amount > 0", name="ck_ledger_holds_positive"),
    CheckConstraint("status IN ('held', 'captured', 'voided', 'expired')", name="ck_ledger_holds_status"),
    Index("ix_ledger_holds_open", "status", "expires_at"),
)

# Room events written in the same transaction as the money that they announce, published after commit.
outbox = Table(
    "ledger_outbox",
    metadata,
    Column("id", String(32), primary_key=True),  # chosen by the writer, which publishes its own rows
    Column("room_id", String(64), nullable=False),
    Column("type", String(32), nullable=False),
    Column("data", Text, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("published_at", BigInteger, nullable=True),
    Index("ix_ledger_outbox_unpublished", "published_at", "created_at"),
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("actor", String(64), nullable=False),
    Column("action", String(32), nullable=False),
    Column("target", String(160), nullable=False),
    Column("reason", Text, nullable=False),
    Column("created_at", BigInteger, nullable=False),
)

# Coins each wallet spent per UTC day (gifts, tips, paid messages and holds), for the daily cap.
daily_spend = Table(
    "ledger_daily_spend",
    metadata,
    Column("owner", String(64), primary_key=True),
    Column("day", Integer, primary_key=True),  # days since the epoch, UTC
    Column("spent", BigInteger, nullable=False),
    CheckConstraint("spent >= 0", name="ck_ledger_daily_spend_positive"),
)

# A user's own spending caps, lower than the platform's (NULL: the platform's).
spending_limits = Table(
    "spending_limits",
    metadata,
    Column("owner", String(64), primary_key=True),
    Column("per_transfer", BigInteger, nullable=True),
    Column("daily", BigInteger, nullable=True),
    #: The user's own opt-out from being shown on contribution boards.
    Column("hide_on_boards", Boolean, nullable=False, server_default=false()),
    Column("updated_at", BigInteger, nullable=False),
)

# Top-ups: a checkout at a payment provider, fulfilled once by its verified webhook.
checkouts = Table(
    "checkouts",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("provider", String(16), nullable=False),
    Column("user_id", String(64), nullable=False),
    Column("room_id", String(64), nullable=True),
    Column("pack", String(32), nullable=False),
    Column("coins", BigInteger, nullable=False),
    Column("amount_minor", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("status", String(16), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("paid_at", BigInteger, nullable=True),
    CheckConstraint("status IN ('open', 'paid')", name="ck_checkouts_status"),
)

# Webhook events already handled, by the provider's event id: a redelivered event changes nothing.
payment_events = Table(
    "payment_events",
    metadata,
    Column("id", String(128), primary_key=True),
    Column("provider", String(16), nullable=False),
    Column("type", String(64), nullable=False),
    Column("received_at", BigInteger, nullable=False),
)
