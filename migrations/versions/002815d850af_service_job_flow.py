"""Service job flow: fetch chunks, per-URL outcomes and scores, heartbeat, result summary.

Revision ID: 002815d850af
Revises: 2f984e0b9877
Create Date: 2026-11-23 16:19:47.547892

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '002815d850af'
down_revision = '2f984e0b9877'
branch_labels = None
depends_on = None


def upgrade():
    # Server defaults fill the rows that exist already; the models supply values from then on.
    with op.batch_alter_table('candidates', schema=None) as batch_op:
        batch_op.add_column(sa.Column('meta', sa.JSON(), nullable=False, server_default='{}'))
        batch_op.add_column(sa.Column('chunk', sa.Integer(), nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('fetched', sa.Boolean(), nullable=False, server_default=sa.true()))
        batch_op.add_column(sa.Column('extra', sa.JSON(), nullable=False, server_default='{}'))

    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('chunk_attempts', sa.JSON(), nullable=False, server_default='{}'))
        batch_op.add_column(sa.Column('result', sa.JSON(), nullable=False, server_default='{}'))
        batch_op.add_column(sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=True))


def downgrade():
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_column('heartbeat_at')
        batch_op.drop_column('result')
        batch_op.drop_column('chunk_attempts')

    with op.batch_alter_table('candidates', schema=None) as batch_op:
        batch_op.drop_column('extra')
        batch_op.drop_column('fetched')
        batch_op.drop_column('chunk')
        batch_op.drop_column('meta')
