"""keys teams users spend logs

Revision ID: 0001
Revises: 
Create Date: 2026-11-24 19:05:16.865577
"""
from alembic import op
import sqlalchemy as sa


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table('spend_logs',
    sa.Column('request_id', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('key_hash', sa.String(length=64), nullable=True),
    sa.Column('user_id', sa.String(length=64), nullable=True),
    sa.Column('team_id', sa.String(length=64), nullable=True),
    sa.Column('model', sa.String(length=255), nullable=False),
    sa.Column('deployment', sa.String(length=255), nullable=True),
    sa.Column('route', sa.String(length=64), nullable=False),
    sa.Column('prompt_tokens', sa.Integer(), nullable=False),
    sa.Column('completion_tokens', sa.Integer(), nullable=False),
    sa.Column('cost', sa.Float(), nullable=False),
    sa.Column('latency_ms', sa.Float(), nullable=False),
    sa.Column('ttft_ms', sa.Float(), nullable=True),
    sa.Column('status', sa.Integer(), nullable=False),
    sa.Column('error_type', sa.String(length=64), nullable=True),
    sa.Column('streamed', sa.Boolean(), nullable=False),
    sa.PrimaryKeyConstraint('request_id')
    )
    with op.batch_alter_table('spend_logs', schema=None) as batch_op:
        batch_op.create_index('ix_spend_logs_key_time', ['key_hash', 'created_at'], unique=False)
        batch_op.create_index('ix_spend_logs_team_time', ['team_id', 'created_at'], unique=False)
        batch_op.create_index('ix_spend_logs_time', ['created_at'], unique=False)
        batch_op.create_index('ix_spend_logs_user_time', ['user_id', 'created_at'], unique=False)

    op.create_table('teams',
    sa.Column('team_id', sa.String(length=64), nullable=False),
    sa.Column('team_alias', sa.String(length=255), nullable=True),
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
    sa.PrimaryKeyConstraint('team_id'),
    sa.UniqueConstraint('team_alias')
    )
    op.create_table('users',
    sa.Column('user_id', sa.String(length=64), nullable=False),
    sa.Column('user_email', sa.String(length=320), nullable=True),
    sa.Column('user_role', sa.String(length=32), nullable=False),
    sa.Column('team_id', sa.String(length=64), nullable=True),
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
    sa.ForeignKeyConstraint(['team_id'], ['teams.team_id'], ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('user_id')
    )
    op.create_table('keys',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('key_prefix', sa.String(length=32), nullable=False),
    sa.Column('key_alias', sa.String(length=255), nullable=True),
    sa.Column('key_type', sa.String(length=16), nullable=False),
    sa.Column('user_id', sa.String(length=64), nullable=True),
    sa.Column('team_id', sa.String(length=64), nullable=True),
    sa.Column('aliases', sa.JSON(), nullable=False),
    sa.Column('model_rpm_limit', sa.JSON(), nullable=False),
    sa.Column('model_tpm_limit', sa.JSON(), nullable=False),
    sa.Column('expires', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_used_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('previous_hash', sa.String(length=64), nullable=True),
    sa.Column('previous_valid_until', sa.DateTime(timezone=True), nullable=True),
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
    sa.ForeignKeyConstraint(['team_id'], ['teams.team_id'], ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['user_id'], ['users.user_id'], ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('key_alias'),
    sa.UniqueConstraint('previous_hash'),
    sa.UniqueConstraint('token_hash')
    )
    with op.batch_alter_table('keys', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_keys_team_id'), ['team_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_keys_user_id'), ['user_id'], unique=False)




def downgrade() -> None:

    with op.batch_alter_table('keys', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_keys_user_id'))
        batch_op.drop_index(batch_op.f('ix_keys_team_id'))

    op.drop_table('keys')
    op.drop_table('users')
    op.drop_table('teams')
    with op.batch_alter_table('spend_logs', schema=None) as batch_op:
        batch_op.drop_index('ix_spend_logs_user_time')
        batch_op.drop_index('ix_spend_logs_time')
        batch_op.drop_index('ix_spend_logs_team_time')
        batch_op.drop_index('ix_spend_logs_key_time')

    op.drop_table('spend_logs')

