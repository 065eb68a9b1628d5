"""auth_changes.value: the spend an admin set (/key/update, /user/update with `spend`), carried by the
change-feed row itself, so every process sets its budget counter to that value; reading the row's
spend instead picked up usage written after the set (requests made before it) and undid a reset

Revision ID: 0012_auth_change_value
Revises: 0011_usage_cache_tokens
Create Date: 2026-11-30 16:25:00
"""
from alembic import op
import sqlalchemy as sa

revision = '0012_auth_change_value'
down_revision = '0011_usage_cache_tokens'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('auth_changes', sa.Column('value', sa.Float(), nullable=True))  # ALTER TABLE on both


def downgrade() -> None:
    # Plain ALTER on SQLite too (3.35+): a batch copy of auth_changes would break the triggers naming it.
    op.execute('ALTER TABLE auth_changes DROP COLUMN value')
