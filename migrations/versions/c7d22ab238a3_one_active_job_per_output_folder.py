"""One unfinished job per output folder: a partial unique index on jobs(out_dir).

Concurrent submissions naming the same folder all passed the API's check before any committed;
the index makes the claim atomic (the losers' inserts fail and the API answers 409).

Revision ID: c7d22ab238a3
Revises: 002815d850af
Create Date: 2026-11-24 10:00:00.000000

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'c7d22ab238a3'
down_revision = '002815d850af'
branch_labels = None
depends_on = None

ACTIVE = "status IN ('queued', 'running', 'cancelling')"


def upgrade():
    # Jobs that already share a folder (the race this index closes) would block it: the oldest keeps
    # the folder, the others fail with a reason.
    op.execute(f"""
        UPDATE jobs SET status = 'failed', finished_at = now(),
               error = 'another unfinished job writes to the same output folder; submit it again with another output'
        WHERE {ACTIVE} AND id NOT IN (
            SELECT DISTINCT ON (out_dir) id FROM jobs WHERE {ACTIVE} ORDER BY out_dir, created_at, id)
    """)
    op.create_index('ix_jobs_out_dir_active', 'jobs', ['out_dir'], unique=True, postgresql_where=sa.text(ACTIVE))


def downgrade():
    op.drop_index('ix_jobs_out_dir_active', table_name='jobs', postgresql_where=sa.text(ACTIVE))
