"""Messages and review items: the request screen's category when it screened a student's question
(``bot.screen``, issue 30, 3), so history, reviewers and exports know the model was not asked. Null:
not screened (every row before this).

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = '0017'
down_revision = '0016'
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table in ('messages', 'review_items'):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column('screened', sa.String(length=32), nullable=True))


def downgrade() -> None:
    for table in ('review_items', 'messages'):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column('screened')
