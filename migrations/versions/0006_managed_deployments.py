"""managed_deployments: models deployed through POST /api/v1/deploy, restored at startup

Revision ID: 0006_deployments
Revises: 0005_jobs
Create Date: 2026-11-30 12:20:00
"""
from alembic import op
import sqlalchemy as sa

revision = '0006_deployments'
down_revision = '0005_jobs'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('managed_deployments',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('api_name', sa.String(length=255), nullable=False),
    sa.Column('model_id', sa.String(length=1000), nullable=True),
    sa.Column('api_base', sa.String(length=1000), nullable=True),
    sa.Column('params', sa.JSON(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('error', sa.String(length=2000), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('managed_deployments', schema=None) as batch_op:
        batch_op.create_index('ix_managed_deployments_status', ['status'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('managed_deployments', schema=None) as batch_op:
        batch_op.drop_index('ix_managed_deployments_status')
    op.drop_table('managed_deployments')
