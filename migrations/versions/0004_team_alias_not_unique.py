"""teams.team_alias is not unique, as in LiteLLM (two teams may share a display name)

On SQLite the table is copied without the constraint (batch mode), which drops its triggers: the
auth change feed's triggers on teams (0003_auth_changes) are read before and created again after.

Revision ID: 0004_team_alias_not_unique
Revises: 0003_auth_changes
Create Date: 2026-11-30 12:10:00
"""
from alembic import op
from sqlalchemy import text

revision = '0004_team_alias_not_unique'
down_revision = '0003_auth_changes'
branch_labels = None
depends_on = None

# SQLite reflects the inline UNIQUE of 0001 without a name; this convention names it for batch mode.
NAMING = {"uq": "uq_%(table_name)s_%(column_0_name)s"}


def _recreate_teams(change) -> None:
    triggers = op.get_bind().execute(
        text("SELECT sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'teams'")).scalars().all()
    with op.batch_alter_table('teams', naming_convention=NAMING, recreate='always') as batch_op:
        change(batch_op)
    for sql in triggers:
        op.execute(sql)


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.drop_constraint('teams_team_alias_key', 'teams', type_='unique')
    else:
        _recreate_teams(lambda batch_op: batch_op.drop_constraint('uq_teams_team_alias', type_='unique'))


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.create_unique_constraint('teams_team_alias_key', 'teams', ['team_alias'])
    else:
        _recreate_teams(lambda batch_op: batch_op.create_unique_constraint('uq_teams_team_alias', ['team_alias']))
