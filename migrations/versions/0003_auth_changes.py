"""auth_changes: a change feed of keys, users and teams, written by triggers

Every gateway process polls this table once a second (proxy/auth/changes.py) and drops the cache
entries a change touches, so a block, delete or update is refused everywhere within a second,
with or without Redis, at the cost of one indexed query per second per process (before: one
reload per active key per second). Triggers rather than application code, so that cascades
(deleting a team sets its users' team_id to NULL) and changes made with SQL by an operator are
seen too. Updates fire only for the columns authentication depends on, never for spend accrual
(spend, last_used_at, updated_at), or every usage batch would empty the caches.

Note for later migrations: SQLite's batch mode (move and copy) drops a table's triggers; a
migration that alters keys, users or teams on SQLite must create these triggers again.

Revision ID: 0003_auth_changes
Revises: 0002
Create Date: 2026-11-30 12:00:00
"""
from alembic import op
import sqlalchemy as sa

revision = '0003_auth_changes'
down_revision = '0002'
branch_labels = None
depends_on = None

LIMITS = ["models", "rpm_limit", "tpm_limit", "max_parallel_requests", "max_budget", "budget_duration",
          "budget_reset_at", "blocked"]
# table -> (kind, id column, the columns whose update is a change)
TABLES = {
    "keys": ("key", "token_hash", ["token_hash", "key_type", "user_id", "team_id", "aliases", "model_rpm_limit",
                                   "model_tpm_limit", "expires", "previous_hash", "previous_valid_until", *LIMITS]),
    "users": ("user", "user_id", ["user_id", "user_role", "team_id", *LIMITS]),
    "teams": ("team", "team_id", ["team_id", *LIMITS]),
}

PG_FUNCTION = """
CREATE OR REPLACE FUNCTION keystile_auth_change() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    old_id text;
    new_id text;
BEGIN
    IF TG_OP <> 'INSERT' THEN old_id := to_jsonb(OLD) ->> TG_ARGV[1]; END IF;
    IF TG_OP <> 'DELETE' THEN new_id := to_jsonb(NEW) ->> TG_ARGV[1]; END IF;
    IF TG_OP <> 'INSERT' THEN
        INSERT INTO auth_changes (kind, op, ident, changed_at) VALUES (TG_ARGV[0], lower(TG_OP), old_id, clock_timestamp());
    END IF;
    IF TG_OP = 'INSERT' OR (TG_OP = 'UPDATE' AND new_id IS DISTINCT FROM old_id) THEN
        INSERT INTO auth_changes (kind, op, ident, changed_at) VALUES (TG_ARGV[0], 'insert', new_id, clock_timestamp());
    END IF;
    RETURN NULL;
END $$
"""


def _sqlite_insert(kind: str, op_name: str, value: str) -> str:
    return (f"INSERT INTO auth_changes (kind, op, ident, changed_at) "
            f"VALUES ('{kind}', '{op_name}', {value}, strftime('%Y-%m-%d %H:%M:%f', 'now'));")


def upgrade() -> None:
    op.create_table('auth_changes',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('kind', sa.String(length=8), nullable=False),
    sa.Column('op', sa.String(length=8), nullable=False),
    sa.Column('ident', sa.String(length=64), nullable=True),
    sa.Column('changed_at', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sqlite_autoincrement=True,
    )
    with op.batch_alter_table('auth_changes', schema=None) as batch_op:
        batch_op.create_index('ix_auth_changes_time', ['changed_at'], unique=False)
    if op.get_bind().dialect.name == "postgresql":
        op.execute(PG_FUNCTION)
        for table, (kind, id_column, columns) in TABLES.items():
            op.execute(f"CREATE TRIGGER {table}_auth_change AFTER INSERT OR DELETE OR UPDATE OF {', '.join(columns)} "
                       f"ON {table} FOR EACH ROW EXECUTE FUNCTION keystile_auth_change('{kind}', '{id_column}')")
        return
    for table, (kind, id_column, columns) in TABLES.items():
        op.execute(f"CREATE TRIGGER {table}_auth_insert AFTER INSERT ON {table} BEGIN "
                   f"{_sqlite_insert(kind, 'insert', f'NEW.{id_column}')} END")
        op.execute(f"CREATE TRIGGER {table}_auth_delete AFTER DELETE ON {table} BEGIN "
                   f"{_sqlite_insert(kind, 'delete', f'OLD.{id_column}')} END")
        op.execute(f"CREATE TRIGGER {table}_auth_update AFTER UPDATE OF {', '.join(columns)} ON {table} BEGIN "
                   f"{_sqlite_insert(kind, 'update', f'OLD.{id_column}')} "
                   f"INSERT INTO auth_changes (kind, op, ident, changed_at) SELECT '{kind}', 'insert', "
                   f"NEW.{id_column}, strftime('%Y-%m-%d %H:%M:%f', 'now') "
                   f"WHERE NEW.{id_column} IS NOT OLD.{id_column}; END")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table in TABLES:
            op.execute(f"DROP TRIGGER IF EXISTS {table}_auth_change ON {table}")
        op.execute("DROP FUNCTION IF EXISTS keystile_auth_change()")
    else:
        for table in TABLES:
            for what in ("insert", "delete", "update"):
                op.execute(f"DROP TRIGGER IF EXISTS {table}_auth_{what}")
    with op.batch_alter_table('auth_changes', schema=None) as batch_op:
        batch_op.drop_index('ix_auth_changes_time')
    op.drop_table('auth_changes')
