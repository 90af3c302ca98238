"""add order status

Revision ID: 8d3f6b2a9c11
Revises: 5c9a1e7b2f40
Create Date: 2026-11-25 01:06:02.769793

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '8d3f6b2a9c11'
down_revision: Union[str, Sequence[str], None] = '5c9a1e7b2f40'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    op.add_column(
        "orders",
        sa.Column("status", sa.String(20), nullable=False, server_default="placed"),
    )
    op.create_index("ix_orders_status", "orders", ["status"])


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_index("ix_orders_status", table_name="orders")
    op.drop_column("orders", "status")
