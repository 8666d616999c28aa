"""Each library passage's sentence embedding beside its text (``library.postgres``): a search ranks
the passages by meaning as well as by their words (issue 30, 2). A ``bytea`` of 384 float16 values,
not pgvector's type: Debian's PostgreSQL 15 has no pgvector package, and the similarity of a
question to 40,000 passages takes milliseconds in numpy in the searching process. Null where the
library was loaded with CARELOOP_RETRIEVAL_DENSE off. The loaded library is loaded again, with them
(its key changes). PostgreSQL only, as migration 0011.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-07
"""

from alembic import op

revision = '0016'
down_revision = '0015'
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("ALTER TABLE library_passages ADD COLUMN embedding bytea")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("ALTER TABLE library_passages DROP COLUMN embedding")
