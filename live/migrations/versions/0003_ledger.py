"""the ledger: accounts, operations, transfers, holds, outbox, audit log, spending caps

Revision ID: 0003
Revises: 0002
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: Sequence[str] | None = None
depends_on: Sequence[str] | None = None

TABLES = (
    "ledger_accounts",
    "ledger_operations",
    "ledger_transfers",
    "ledger_holds",
    "ledger_outbox",
    "audit_log",
    "ledger_daily_spend",
    "spending_limits",
    "checkouts",
    "payment_events",
)


def upgrade() -> None:
    with op.batch_alter_table("rooms") as batch:
        batch.add_column(sa.Column("teacher_id", sa.String(64), nullable=True))
    with op.batch_alter_table("questions") as batch:
        batch.add_column(sa.Column("paid", sa.BigInteger, nullable=False, server_default="0"))
    op.create_table(
        "ledger_accounts",
        sa.Column("id", sa.String(96), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("owner", sa.String(64), nullable=True),
        sa.Column("balance", sa.BigInteger, nullable=False),
        sa.Column("may_go_negative", sa.Boolean, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.CheckConstraint(
            "kind IN ('wallet', 'held', 'earnings', 'platform', 'world')", name="ck_ledger_accounts_kind"
        ),
        sa.CheckConstraint("may_go_negative OR balance >= 0", name="ck_ledger_accounts_not_negative"),
    )
    op.create_table(
        "ledger_operations",
        sa.Column("key", sa.String(160), primary_key=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("body_hash", sa.String(64), nullable=False),
        sa.Column("result", sa.Text, nullable=False),
        sa.Column("actor", sa.String(64), nullable=False),
        sa.Column("actor_name", sa.String(64), nullable=True),
        sa.Column("room_id", sa.String(64), nullable=True),
        sa.Column("created_at", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "ledger_transfers",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("op_key", sa.String(160), sa.ForeignKey("ledger_operations.key"), nullable=False),
        sa.Column("debit", sa.String(96), sa.ForeignKey("ledger_accounts.id"), nullable=False),
        sa.Column("credit", sa.String(96), sa.ForeignKey("ledger_accounts.id"), nullable=False),
        sa.Column("amount", sa.BigInteger, nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("room_id", sa.String(64), nullable=True),
        sa.Column("reverses", sa.Integer, sa.ForeignKey("ledger_transfers.id"), nullable=True, unique=True),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.CheckConstraint("debit <> credit", name="ck_ledger_transfers_two_accounts"),
        sa.CheckConstraint("amount > 0", name="ck_ledger_transfers_positive"),
    )
    op.create_index("ix_ledger_transfers_op", "ledger_transfers", ["op_key"])
    op.create_index("ix_ledger_transfers_room", "ledger_transfers", ["room_id", "created_at"])
    op.create_index("ix_ledger_transfers_credit", "ledger_transfers", ["credit", "created_at"])
    op.create_index("ix_ledger_transfers_debit", "ledger_transfers", ["debit", "created_at"])
    op.create_table(
        "ledger_holds",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("op_key", sa.String(160), sa.ForeignKey("ledger_operations.key"), nullable=False),
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("amount", sa.BigInteger, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("room_id", sa.String(64), nullable=True),
        sa.Column("purpose", sa.String(64), nullable=True),
        sa.Column("expires_at", sa.BigInteger, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("closed_at", sa.BigInteger, nullable=True),
        sa.CheckConstraint("amount > 0", name="ck_ledger_holds_positive"),
        sa.CheckConstraint("status IN ('held', 'captured', 'voided', 'expired')", name="ck_ledger_holds_status"),
    )
    op.create_index("ix_ledger_holds_open", "ledger_holds", ["status", "expires_at"])
    op.create_table(
        "ledger_outbox",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("room_id", sa.String(64), nullable=False),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("data", sa.Text, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("published_at", sa.BigInteger, nullable=True),
    )
    op.create_index("ix_ledger_outbox_unpublished", "ledger_outbox", ["published_at", "created_at"])
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("actor", sa.String(64), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("target", sa.String(160), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "ledger_daily_spend",
        sa.Column("owner", sa.String(64), primary_key=True),
        sa.Column("day", sa.Integer, primary_key=True),
        sa.Column("spent", sa.BigInteger, nullable=False),
        sa.CheckConstraint("spent >= 0", name="ck_ledger_daily_spend_positive"),
    )
    op.create_table(
        "spending_limits",
        sa.Column("owner", sa.String(64), primary_key=True),
        sa.Column("per_transfer", sa.BigInteger, nullable=True),
        sa.Column("daily", sa.BigInteger, nullable=True),
        sa.Column("hide_on_boards", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "checkouts",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("provider", sa.String(16), nullable=False),
        sa.Column("user_id", sa.String(64), nullable=False),
        sa.Column("room_id", sa.String(64), nullable=True),
        sa.Column("pack", sa.String(32), nullable=False),
        sa.Column("coins", sa.BigInteger, nullable=False),
        sa.Column("amount_minor", sa.BigInteger, nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("paid_at", sa.BigInteger, nullable=True),
        sa.CheckConstraint("status IN ('open', 'paid')", name="ck_checkouts_status"),
    )
    op.create_table(
        "payment_events",
        sa.Column("id", sa.String(128), primary_key=True),
        sa.Column("provider", sa.String(16), nullable=False),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("received_at", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    for name in reversed(TABLES):
        op.drop_table(name)
    with op.batch_alter_table("questions") as batch:
        batch.drop_column("paid")
    with op.batch_alter_table("rooms") as batch:
        batch.drop_column("teacher_id")
