"""jobs.heartbeat_at: a running job's lease, renewed by its runner, so a job of a live gateway is
never taken over and one of a dead (or cut off) gateway is, within the lease

Revision ID: 0010_jobs_lease
Revises: 0009_team_members_orgs
Create Date: 2026-11-30 15:10:00
"""
from alembic import op
import sqlalchemy as sa

revision = '0010_jobs_lease'
down_revision = '0009_team_members_orgs'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_column('heartbeat_at')
