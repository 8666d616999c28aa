"""One word per thing in the feedback tables: the adapter version that wrote an answer is its
``version_a`` / ``version_b`` (was ``source_a`` / ``source_b``), the library passages an answer was
given are ``passages`` (was ``sources``), where a review item's question came from is its
``prompt_origin`` (was ``prompt_source``) and the student's question it was made from its
``student_message_id`` (was ``source_message_id``). Renames only: no row changes.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07
"""

from alembic import op

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None

RENAMES = {
    'comparisons': [('source_a', 'version_a'), ('source_b', 'version_b')],
    'messages': [('sources', 'passages')],
    'review_items': [('source_a', 'version_a'), ('source_b', 'version_b'), ('sources', 'passages'),
                     ('prompt_source', 'prompt_origin'), ('source_message_id', 'student_message_id')],
}


def _rename(backwards: bool) -> None:
    """``ALTER TABLE ... RENAME COLUMN`` on both databases (SQLite has it since 3.25): no table is
    copied, so the migration writes a few pages, not every table (a copy through SQLite's WAL filled a
    1 MiB disk that had room for the data)."""
    postgresql = op.get_bind().dialect.name == "postgresql"
    for table, pairs in RENAMES.items():
        for old, new in pairs:
            old, new = (new, old) if backwards else (old, new)
            op.execute(f'ALTER TABLE {table} RENAME COLUMN "{old}" TO "{new}"')
            # The unique constraint is named for its column; SQLite keeps a constraint's name in the
            # table's own definition, so there it is renamed by the one copy below.
            if not old.endswith("message_id"):
                continue
            if postgresql:
                op.execute(f'ALTER TABLE {table} RENAME CONSTRAINT "uq_{table}_{old}" TO "uq_{table}_{new}"')
            else:
                with op.batch_alter_table(table) as batch_op:
                    batch_op.drop_constraint(f"uq_{table}_{old}", type_="unique")
                    batch_op.create_unique_constraint(f"uq_{table}_{new}", [new])


def upgrade() -> None:
    _rename(backwards=False)


def downgrade() -> None:
    _rename(backwards=True)
