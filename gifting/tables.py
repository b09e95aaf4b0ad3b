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
    UniqueConstraint,
    false,
    text,
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
    #: A coin pack's id, or ``course`` for a course order's checkout (``order_id``).
    Column("pack", String(32), nullable=False),
    Column("coins", BigInteger, nullable=False),
    Column("order_id", String(40), nullable=True),
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

# In-stream course sales (issue 7). Prices are integer minor units of ``currency``.

courses = Table(
    "courses",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("title", String(200), nullable=False),
    Column("description", Text, nullable=False),
    Column("cover_url", String(500), nullable=True),
    Column("price_minor", BigInteger, nullable=False),
    #: What members pay instead of the list price (NULL: no member price).
    Column("member_price_minor", BigInteger, nullable=True),
    Column("currency", String(3), nullable=False),
    #: Seats in all (NULL: unlimited) and seats taken by pending and paid orders.
    Column("seats", Integer, nullable=True),
    Column("seats_taken", Integer, nullable=False),
    #: Who earns from the course (NULL: the teacher of the room where it is sold).
    Column("teacher_id", String(64), nullable=True),
    Column("refund_days", Integer, nullable=False),
    #: A student may ask for a refund only while they have consumed at most this share (percent).
    Column("refund_max_consumed_pct", Integer, nullable=False),
    Column("active", Boolean, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    CheckConstraint("price_minor >= 0", name="ck_courses_price"),
    CheckConstraint("member_price_minor IS NULL OR member_price_minor >= 0", name="ck_courses_member_price"),
    CheckConstraint("seats IS NULL OR seats_taken <= seats", name="ck_courses_seats"),
    CheckConstraint("seats_taken >= 0", name="ck_courses_seats_taken"),
)

# Which courses a room may sell.
room_courses = Table(
    "room_courses",
    metadata,
    Column("room_id", String(64), primary_key=True),
    Column("course_id", String(64), ForeignKey("courses.id"), primary_key=True),
    Column("added_at", BigInteger, nullable=False),
)

# Each time a course card was pinned into a room, with the head count then (card impressions).
card_pins = Table(
    "card_pins",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("room_id", String(64), nullable=False),
    Column("course_id", String(64), ForeignKey("courses.id"), nullable=False),
    Column("audience", Integer, nullable=False),
    Column("pinned_by", String(64), nullable=False),
    Column("pinned_at", BigInteger, nullable=False),
    Column("unpinned_at", BigInteger, nullable=True),
    Index("ix_card_pins_room", "room_id", "pinned_at"),
)

flash_sales = Table(
    "flash_sales",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("room_id", String(64), nullable=False),
    Column("course_id", String(64), ForeignKey("courses.id"), nullable=False),
    Column("price_minor", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False),
    #: The countdown starts at ``starts_at``; seats can be bought from ``opens_at`` until ``ends_at``.
    Column("starts_at", BigInteger, nullable=False),
    Column("opens_at", BigInteger, nullable=False),
    Column("ends_at", BigInteger, nullable=False),
    Column("seats", Integer, nullable=False),
    Column("seats_taken", Integer, nullable=False),
    Column("per_student_limit", Integer, nullable=False),
    #: Set when ended by hand before ``ends_at``.
    Column("stopped_at", BigInteger, nullable=True),
    Column("created_by", String(64), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    CheckConstraint("price_minor >= 0", name="ck_flash_sales_price"),
    CheckConstraint("seats > 0 AND seats_taken >= 0 AND seats_taken <= seats", name="ck_flash_sales_seats"),
    CheckConstraint("per_student_limit > 0", name="ck_flash_sales_limit"),
    CheckConstraint("starts_at <= opens_at AND opens_at < ends_at", name="ck_flash_sales_times"),
    Index("ix_flash_sales_room", "room_id", "created_at"),
)

coupons = Table(
    "coupons",
    metadata,
    Column("id", String(40), primary_key=True),
    #: The room whose live it may be claimed in (coupons are claimable only while that room is live).
    Column("room_id", String(64), nullable=False),
    #: The course it applies to (NULL: any course the room sells).
    Column("course_id", String(64), ForeignKey("courses.id"), nullable=True),
    Column("title", String(100), nullable=False),
    #: fixed: ``amount_off``; percent: ``percent_off``; threshold: ``amount_off`` from ``min_spend`` on.
    Column("kind", String(16), nullable=False),
    Column("amount_off", BigInteger, nullable=True),
    Column("percent_off", Integer, nullable=True),
    Column("min_spend", BigInteger, nullable=True),
    Column("currency", String(3), nullable=True),
    Column("quota", Integer, nullable=False),
    Column("claimed", Integer, nullable=False),
    Column("per_student", Integer, nullable=False),
    Column("created_by", String(64), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("stopped_at", BigInteger, nullable=True),
    CheckConstraint("kind IN ('fixed', 'percent', 'threshold')", name="ck_coupons_kind"),
    CheckConstraint("claimed >= 0 AND claimed <= quota", name="ck_coupons_quota"),
    CheckConstraint("per_student > 0", name="ck_coupons_per_student"),
    Index("ix_coupons_room", "room_id", "created_at"),
)

# A student's claims of a coupon, numbered 1..per_student (the UNIQUE makes the per-student limit exact).
coupon_claims = Table(
    "coupon_claims",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("coupon_id", String(40), ForeignKey("coupons.id"), nullable=False),
    Column("user_id", String(64), nullable=False),
    Column("n", Integer, nullable=False),
    Column("order_id", String(40), nullable=True),
    Column("claimed_at", BigInteger, nullable=False),
    UniqueConstraint("coupon_id", "user_id", "n", name="uq_coupon_claims_slot"),
    Index("ix_coupon_claims_user", "user_id", "coupon_id"),
)

orders = Table(
    "orders",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("buyer", String(64), nullable=False),
    Column("buyer_name", String(64), nullable=False),
    #: The buyer's idempotency key and the hash of the request it came with.
    Column("key", String(64), nullable=False),
    Column("body_hash", String(64), nullable=False),
    Column("room_id", String(64), nullable=False),
    Column("course_id", String(64), ForeignKey("courses.id"), nullable=False),
    Column("sale_id", String(40), ForeignKey("flash_sales.id"), nullable=True),
    Column("claim_id", String(40), nullable=True),
    Column("teacher_id", String(64), nullable=False),
    Column("teacher_share_bp", Integer, nullable=False),
    Column("list_price_minor", BigInteger, nullable=False),
    Column("discount_minor", BigInteger, nullable=False),
    Column("amount_minor", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False),
    #: wallet (coins, at ``coins_per_minor``), or a payment provider's checkout.
    Column("method", String(16), nullable=False),
    Column("coins_per_minor", Integer, nullable=True),
    Column("checkout_id", String(64), nullable=True),
    #: The provider's payment (Stripe's payment intent), for refunds.
    Column("payment_ref", String(128), nullable=True),
    Column("status", String(16), nullable=False),
    Column("refunded_minor", BigInteger, nullable=False),
    #: The refund policy accepted at checkout.
    Column("refund_days", Integer, nullable=False),
    Column("refund_max_consumed_pct", Integer, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=False),
    Column("paid_at", BigInteger, nullable=True),
    Column("closed_at", BigInteger, nullable=True),
    CheckConstraint("status IN ('pending', 'paid', 'expired', 'refunded')", name="ck_orders_status"),
    CheckConstraint("method IN ('wallet', 'checkout')", name="ck_orders_method"),
    CheckConstraint(
        "amount_minor >= 0 AND discount_minor >= 0 AND amount_minor + discount_minor <= list_price_minor",
        name="ck_orders_amounts",
    ),
    CheckConstraint("refunded_minor >= 0 AND refunded_minor <= amount_minor", name="ck_orders_refunds"),
    UniqueConstraint("buyer", "key", name="uq_orders_buyer_key"),
    #: The truth behind the seat gate: one order that is not expired per student and sale.
    Index(
        "uq_orders_sale_buyer",
        "sale_id",
        "buyer",
        unique=True,
        sqlite_where=text("status <> 'expired'"),
        postgresql_where=text("status <> 'expired'"),
    ),
    Index("ix_orders_room", "room_id", "created_at"),
    Index("ix_orders_pending", "status", "expires_at"),
    Index("ix_orders_checkout", "checkout_id"),
)

# Who may follow which course: granted by a paid order, revoked by its full refund.
entitlements = Table(
    "entitlements",
    metadata,
    Column("user_id", String(64), primary_key=True),
    Column("course_id", String(64), ForeignKey("courses.id"), primary_key=True),
    Column("order_id", String(40), nullable=False),
    Column("status", String(16), nullable=False),
    #: How much of the course the user consumed, in percent, as the host reports it.
    Column("consumed_pct", Integer, nullable=False),
    Column("granted_at", BigInteger, nullable=False),
    Column("revoked_at", BigInteger, nullable=True),
    CheckConstraint("status IN ('active', 'revoked')", name="ck_entitlements_status"),
    CheckConstraint("consumed_pct >= 0 AND consumed_pct <= 100", name="ck_entitlements_consumed"),
)

# Refunds of an order, each reserved before its money moves (so concurrent refunds cannot exceed it).
refunds = Table(
    "refunds",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("order_id", String(40), ForeignKey("orders.id"), nullable=False),
    Column("amount_minor", BigInteger, nullable=False),
    Column("reason", Text, nullable=False),
    Column("actor", String(64), nullable=False),
    Column("status", String(16), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    CheckConstraint("amount_minor > 0", name="ck_refunds_positive"),
    CheckConstraint("status IN ('pending', 'done', 'failed')", name="ck_refunds_status"),
    Index("ix_refunds_order", "order_id"),
)

# Webhooks to the host, written in the same transaction as what they announce, delivered with retries.
host_webhooks = Table(
    "host_webhooks",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("type", String(32), nullable=False),
    Column("body", Text, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", BigInteger, nullable=True),
    Column("delivered_at", BigInteger, nullable=True),
    Column("last_error", String(300), nullable=True),
    Index("ix_host_webhooks_due", "next_attempt_at"),
)
