"""spend_logs: cache_read_tokens and cache_creation_tokens, the prompt tokens an upstream read from
or wrote to its prompt cache (OpenAI's prompt_tokens_details.cached_tokens, Anthropic's
cache_read_input_tokens / cache_creation_input_tokens); rows written before have 0.

Revision ID: 0011_usage_cache_tokens
Revises: 0010_jobs_lease
Create Date: 2026-11-30 15:00:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0011_usage_cache_tokens'
down_revision = '0010_jobs_lease'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('spend_logs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('cache_read_tokens', sa.Integer(), nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('cache_creation_tokens', sa.Integer(), nullable=False, server_default='0'))


def downgrade() -> None:
    with op.batch_alter_table('spend_logs', schema=None) as batch_op:
        batch_op.drop_column('cache_creation_tokens')
        batch_op.drop_column('cache_read_tokens')
