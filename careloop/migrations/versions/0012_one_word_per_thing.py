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
    for table, pairs in RENAMES.items():
        if backwards:
            pairs = [(new, old) for old, new in pairs]
        unique = [(old, new) for old, new in pairs if old.endswith('message_id')]  # named for its column
        # Three steps: SQLite's batch mode (a copy of the table) loses a constraint added in the
        # same batch as its column's rename.
        if unique:
            with op.batch_alter_table(table, schema=None) as batch_op:
                for old, _ in unique:
                    batch_op.drop_constraint(f'uq_{table}_{old}', type_='unique')
        with op.batch_alter_table(table, schema=None) as batch_op:
            for old, new in pairs:
                batch_op.alter_column(old, new_column_name=new)
        if unique:
            with op.batch_alter_table(table, schema=None) as batch_op:
                for _, new in unique:
                    batch_op.create_unique_constraint(f'uq_{table}_{new}', [new])


def upgrade() -> None:
    _rename(backwards=False)


def downgrade() -> None:
    _rename(backwards=True)
