"""the ledger: accounts, operations, transfers, holds, outbox, audit log, spending caps

Revision ID: 0003
Revises: 0002
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from gifting.tables import metadata

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
    # The tables as gifting/tables.py declares them at this revision (constraints and indexes included).
    bind = op.get_bind()
    for name in TABLES:
        metadata.tables[name].create(bind)


def downgrade() -> None:
    bind = op.get_bind()
    for name in reversed(TABLES):
        metadata.tables[name].drop(bind)
    with op.batch_alter_table("questions") as batch:
        batch.drop_column("paid")
    with op.batch_alter_table("rooms") as batch:
        batch.drop_column("teacher_id")
