"""teams.team_alias is not unique, as in LiteLLM (two teams may share a display name)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30 12:10:00
"""
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

# SQLite reflects the inline UNIQUE of 0001 without a name; this convention names it for batch mode.
NAMING = {"uq": "uq_%(table_name)s_%(column_0_name)s"}


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.drop_constraint('teams_team_alias_key', 'teams', type_='unique')
        return
    with op.batch_alter_table('teams', naming_convention=NAMING, recreate='always') as batch_op:
        batch_op.drop_constraint('uq_teams_team_alias', type_='unique')


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.create_unique_constraint('teams_team_alias_key', 'teams', ['team_alias'])
        return
    with op.batch_alter_table('teams', naming_convention=NAMING, recreate='always') as batch_op:
        batch_op.create_unique_constraint('uq_teams_team_alias', ['team_alias'])
