"""team_members and organizations (LiteLLM's members_with_roles, max_budget_in_team, /organization/*)

- `organizations`: limits, budget and models like a team's; `teams.organization_id` points at one.
- `team_members`: (team_id, user_id) with a role (admin | user), max_budget_in_team and its spend.

Both feed the auth change feed (0003_auth_changes) like keys, users and teams do: a membership
change is a change of its team (kind 'team': cached keys of that team are dropped), an
organization change is kind 'org'. Spend accrual fires nothing. The teams triggers are dropped
and made again with organization_id among their columns (on SQLite the table copy that adds the
foreign key would drop them anyway).

Revision ID: 0009_team_members_orgs
Revises: 0008_models
Create Date: 2026-11-30 15:00:00
"""
from alembic import op
import sqlalchemy as sa

revision = '0009_team_members_orgs'
down_revision = '0008_models'
branch_labels = None
depends_on = None

LIMITS = ["models", "rpm_limit", "tpm_limit", "max_parallel_requests", "max_budget", "budget_duration",
          "budget_reset_at", "blocked"]
TEAM_COLUMNS = ["team_id", *LIMITS]
# table -> (kind, id column, the columns whose update is a change)
NEW = {
    "team_members": ("team", "team_id", ["team_id", "user_id", "max_budget_in_team"]),
    "organizations": ("org", "organization_id", ["organization_id", *LIMITS]),
}


def _limits() -> list[sa.Column]:
    return [
        sa.Column('models', sa.JSON(), nullable=False),
        sa.Column('rpm_limit', sa.Integer(), nullable=True),
        sa.Column('tpm_limit', sa.Integer(), nullable=True),
        sa.Column('max_parallel_requests', sa.Integer(), nullable=True),
        sa.Column('max_budget', sa.Float(), nullable=True),
        sa.Column('budget_duration', sa.String(length=16), nullable=True),
        sa.Column('budget_reset_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('spend', sa.Float(), nullable=False),
        sa.Column('metadata', sa.JSON(), nullable=False),
        sa.Column('blocked', sa.Boolean(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    ]


def _sqlite_insert(kind: str, op_name: str, value: str) -> str:
    return (f"INSERT INTO auth_changes (kind, op, ident, changed_at) "
            f"VALUES ('{kind}', '{op_name}', {value}, strftime('%Y-%m-%d %H:%M:%f', 'now'));")


def _triggers(table: str, kind: str, id_column: str, columns: list[str]) -> None:
    """The change-feed triggers of one table (the same as 0003's)."""
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"CREATE TRIGGER {table}_auth_change AFTER INSERT OR DELETE OR UPDATE OF {', '.join(columns)} "
                   f"ON {table} FOR EACH ROW EXECUTE FUNCTION keystile_auth_change('{kind}', '{id_column}')")
        return
    op.execute(f"CREATE TRIGGER {table}_auth_insert AFTER INSERT ON {table} BEGIN "
               f"{_sqlite_insert(kind, 'insert', f'NEW.{id_column}')} END")
    op.execute(f"CREATE TRIGGER {table}_auth_delete AFTER DELETE ON {table} BEGIN "
               f"{_sqlite_insert(kind, 'delete', f'OLD.{id_column}')} END")
    op.execute(f"CREATE TRIGGER {table}_auth_update AFTER UPDATE OF {', '.join(columns)} ON {table} BEGIN "
               f"{_sqlite_insert(kind, 'update', f'OLD.{id_column}')} "
               f"INSERT INTO auth_changes (kind, op, ident, changed_at) SELECT '{kind}', 'insert', "
               f"NEW.{id_column}, strftime('%Y-%m-%d %H:%M:%f', 'now') "
               f"WHERE NEW.{id_column} IS NOT OLD.{id_column}; END")


def _drop_triggers(table: str) -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"DROP TRIGGER IF EXISTS {table}_auth_change ON {table}")
    else:
        for what in ("insert", "delete", "update"):
            op.execute(f"DROP TRIGGER IF EXISTS {table}_auth_{what}")


def _alter_teams(change) -> None:
    """Change teams (copied on SQLite, which cannot add a foreign key in place)."""
    sqlite = op.get_bind().dialect.name != "postgresql"
    with op.batch_alter_table('teams', recreate='always' if sqlite else 'auto') as batch_op:
        change(batch_op)


def upgrade() -> None:
    op.create_table('organizations',
    sa.Column('organization_id', sa.String(length=64), nullable=False),
    sa.Column('organization_alias', sa.String(length=255), nullable=True),
    *_limits(),
    sa.PrimaryKeyConstraint('organization_id'),
    )
    op.create_table('team_members',
    sa.Column('team_id', sa.String(length=64), nullable=False),
    sa.Column('user_id', sa.String(length=64), nullable=False),
    sa.Column('role', sa.String(length=16), nullable=False),
    sa.Column('max_budget_in_team', sa.Float(), nullable=True),
    sa.Column('spend', sa.Float(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    sa.ForeignKeyConstraint(['team_id'], ['teams.team_id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['user_id'], ['users.user_id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('team_id', 'user_id'),
    )
    op.create_index('ix_team_members_user', 'team_members', ['user_id'], unique=False)
    _drop_triggers('teams')

    def add(batch_op) -> None:
        batch_op.add_column(sa.Column('organization_id', sa.String(length=64), nullable=True))
        batch_op.create_index('ix_teams_organization_id', ['organization_id'], unique=False)
        batch_op.create_foreign_key('fk_teams_organization_id', 'organizations', ['organization_id'],
                                    ['organization_id'])
    _alter_teams(add)
    _triggers('teams', 'team', 'team_id', [*TEAM_COLUMNS, 'organization_id'])
    for table, (kind, id_column, columns) in NEW.items():
        _triggers(table, kind, id_column, columns)


def downgrade() -> None:
    for table in NEW:
        _drop_triggers(table)
    _drop_triggers('teams')

    def remove(batch_op) -> None:
        batch_op.drop_constraint('fk_teams_organization_id', type_='foreignkey')
        batch_op.drop_index('ix_teams_organization_id')
        batch_op.drop_column('organization_id')
    _alter_teams(remove)
    _triggers('teams', 'team', 'team_id', TEAM_COLUMNS)
    op.drop_index('ix_team_members_user', table_name='team_members')
    op.drop_table('team_members')
    op.drop_table('organizations')
