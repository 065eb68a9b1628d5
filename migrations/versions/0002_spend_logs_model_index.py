"""spend_logs: index (model, created_at); planner statistics for the by-day report on Postgres

Measured with bench/spend_queries.py at 10M rows: /spend/logs?model=<a model with no rows in the
window> scanned the whole table (724 ms -> 1 ms with the index); the report by day over all keys
misestimated its groups (767,030 instead of 8) and sorted on disk (563 -> 333 ms with the statistics).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24 22:00:00
"""
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None

# Must match the SQL of proxy.db.spend.utc_day on Postgres, or the planner will not use it.
UTC_DAY = "to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')"


def upgrade() -> None:
    with op.batch_alter_table('spend_logs', schema=None) as batch_op:
        batch_op.create_index('ix_spend_logs_model_time', ['model', 'created_at'], unique=False)
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"CREATE STATISTICS IF NOT EXISTS spend_logs_utc_day ON ({UTC_DAY}) FROM spend_logs")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP STATISTICS IF EXISTS spend_logs_utc_day")
    with op.batch_alter_table('spend_logs', schema=None) as batch_op:
        batch_op.drop_index('ix_spend_logs_model_time')
