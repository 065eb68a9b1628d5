"""jobs: the async job API's queue and results (POST /run, GET /status/{id})

Revision ID: 0005_jobs
Revises: 0004_team_alias_not_unique
Create Date: 2026-11-30 12:40:00
"""
from alembic import op
import sqlalchemy as sa

revision = '0005_jobs'
down_revision = '0004_team_alias_not_unique'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('jobs',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('owner', sa.String(length=96), nullable=False),
    sa.Column('model', sa.String(length=255), nullable=False),
    sa.Column('route', sa.String(length=64), nullable=False),
    sa.Column('request', sa.JSON(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('output', sa.JSON(), nullable=True),
    sa.Column('error', sa.String(length=2000), nullable=True),
    sa.Column('runner', sa.String(length=64), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.create_index('ix_jobs_status_created', ['status', 'created_at'], unique=False)
        batch_op.create_index('ix_jobs_owner_status', ['owner', 'status'], unique=False)
        batch_op.create_index('ix_jobs_finished', ['finished_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_index('ix_jobs_finished')
        batch_op.drop_index('ix_jobs_owner_status')
        batch_op.drop_index('ix_jobs_status_created')
    op.drop_table('jobs')
