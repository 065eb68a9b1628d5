"""proxy_models: models added through POST /model/new; model_revision: their change counter

Revision ID: 0008_models
Revises: 0007_response_id
Create Date: 2026-11-30 15:00:00
"""
from alembic import op
import sqlalchemy as sa

revision = '0008_models'
down_revision = '0007_response_id'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('proxy_models',
    sa.Column('model_id', sa.String(length=255), nullable=False),
    sa.Column('model_name', sa.String(length=255), nullable=False),
    sa.Column('litellm_params', sa.JSON(), nullable=False),
    sa.Column('model_info', sa.JSON(), nullable=False),
    sa.Column('created_by', sa.String(length=255), nullable=True),
    sa.Column('updated_by', sa.String(length=255), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('model_id')
    )
    revisions = op.create_table('model_revision',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('revision', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.bulk_insert(revisions, [{'id': 1, 'revision': 0}])


def downgrade() -> None:
    op.drop_table('model_revision')
    op.drop_table('proxy_models')
