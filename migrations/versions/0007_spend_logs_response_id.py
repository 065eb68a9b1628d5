"""spend_logs.response_id: the answer's own `id` (`chatcmpl-…`), which LiteLLM's /spend/logs calls
`request_id` and filters on; request_id stays the gateway's id (the answer's x-request-id)

Revision ID: 0007_response_id
Revises: 0006_deployments
Create Date: 2026-11-30 15:00:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0007_response_id'
down_revision = '0006_deployments'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('spend_logs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('response_id', sa.String(length=255), nullable=True))
        batch_op.create_index('ix_spend_logs_response_id', ['response_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('spend_logs', schema=None) as batch_op:
        batch_op.drop_index('ix_spend_logs_response_id')
        batch_op.drop_column('response_id')
