"""Q&A: questions, their votes, and per-room Q&A settings

Revision ID: 0002
Revises: 0001
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: Sequence[str] | None = None
depends_on: Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("rooms") as batch:
        batch.add_column(sa.Column("qa_auto_approve", sa.Boolean, nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("qa_ask_interval_s", sa.Integer, nullable=True))
        batch.create_check_constraint(
            "ck_rooms_qa_interval", "qa_ask_interval_s IS NULL OR qa_ask_interval_s BETWEEN 0 AND 3600"
        )
    op.create_table(
        "questions",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("room_id", sa.String(64), sa.ForeignKey("rooms.id"), nullable=False),
        sa.Column("user_id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("anonymous", sa.Boolean, nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("answer_text", sa.Text, nullable=True),
        sa.Column("answer_private", sa.Boolean, nullable=True),
        sa.Column("answer_live", sa.Boolean, nullable=True),
        sa.Column("answered_by", sa.String(64), nullable=True),
        sa.Column("answered_by_name", sa.String(64), nullable=True),
        sa.Column("answered_at", sa.BigInteger, nullable=True),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("published_at", sa.BigInteger, nullable=True),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.CheckConstraint(
            "state IN ('pending', 'published', 'answered', 'dismissed', 'hidden')", name="ck_questions_state"
        ),
    )
    op.create_index("ix_questions_room_created", "questions", ["room_id", "created_at"])
    op.create_table(
        "question_votes",
        sa.Column("question_id", sa.String(32), primary_key=True),
        sa.Column("user_id", sa.String(64), primary_key=True),
        sa.Column("room_id", sa.String(64), nullable=False),
        sa.Column("voted", sa.Boolean, nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_question_votes_room", "question_votes", ["room_id"])


def downgrade() -> None:
    op.drop_table("question_votes")
    op.drop_table("questions")
    with op.batch_alter_table("rooms") as batch:
        batch.drop_constraint("ck_rooms_qa_interval", type_="check")
        batch.drop_column("qa_ask_interval_s")
        batch.drop_column("qa_auto_approve")
