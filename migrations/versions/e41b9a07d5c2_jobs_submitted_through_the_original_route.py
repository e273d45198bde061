"""Remember which jobs came through the original tool's POST /api/run.

Such a job answers in the original's words (status `running` until it is final) and its DELETE
keeps the dataset, as the original's page promises its users.

Revision ID: e41b9a07d5c2
Revises: c7d22ab238a3
Create Date: 2026-12-01 03:30:00.000000

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'e41b9a07d5c2'
down_revision = 'c7d22ab238a3'
branch_labels = None
depends_on = None


def upgrade():
    op.add_column('jobs', sa.Column('original_route', sa.Boolean(), server_default=sa.false(), nullable=False))


def downgrade():
    op.drop_column('jobs', 'original_route')
