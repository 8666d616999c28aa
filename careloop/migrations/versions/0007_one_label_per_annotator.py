"""One judgment per (review item, annotator), one rating per (answer, user), and the events set aside.

Existing duplicates are resolved before the constraints go on, and each one removed is recorded in
``superseded_events`` with the reason: of a clinician's judgments of one item the first stands (a
second one is refused from now on); of a user's ratings of one answer the latest stands. Each
review assignment gets the event id its judgment will carry.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

import uuid
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None

_comparisons = sa.table("comparisons", sa.column("id", sa.Integer), sa.column("event_id", sa.Uuid),
                        sa.column("review_item_id", sa.Integer), sa.column("annotator", sa.String))
_ratings = sa.table("ratings", sa.column("id", sa.Integer), sa.column("event_id", sa.Uuid),
                    sa.column("message_id", sa.Uuid), sa.column("user", sa.String),
                    sa.column("created_at", sa.DateTime(timezone=True)))
_assignments = sa.table("review_assignments", sa.column("id", sa.Integer), sa.column("event_id", sa.Uuid))


def upgrade() -> None:
    superseded = op.create_table('superseded_events',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('event_id', sa.Uuid(), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_superseded_events')),
    sa.UniqueConstraint('event_id', name=op.f('uq_superseded_events_event_id'))
    )
    with op.batch_alter_table('superseded_events', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_superseded_events_created_at'), ['created_at'], unique=False)

    bind = op.get_bind()
    now = datetime.now(UTC)
    removed: list[tuple[sa.Table, int, dict]] = []
    first_label: dict[tuple, int] = {}
    for row in bind.execute(sa.select(_comparisons).where(_comparisons.c.review_item_id.is_not(None))
                            .order_by(_comparisons.c.id)):
        key = (row.review_item_id, row.annotator)
        if key in first_label:
            removed.append((_comparisons, row.id, {
                "event_id": row.event_id, "kind": "comparison",
                "reason": f"item {row.review_item_id} was already judged by {row.annotator}; "
                          "the first judgment stands"}))
        else:
            first_label[key] = row.id
    latest: dict[tuple, object] = {}
    for row in bind.execute(sa.select(_ratings).order_by(_ratings.c.created_at.desc(), _ratings.c.id.desc())):
        key = (row.message_id, row.user)
        if key in latest:
            removed.append((_ratings, row.id, {
                "event_id": row.event_id, "kind": "rating",
                "reason": f"replaced by the same user's later rating {latest[key]}"}))
        else:
            latest[key] = row.event_id
    for table, row_id, record in removed:
        bind.execute(superseded.insert().values(**record, created_at=now))
        bind.execute(table.delete().where(table.c.id == row_id))

    with op.batch_alter_table('comparisons', schema=None) as batch_op:
        batch_op.create_unique_constraint(batch_op.f('uq_comparisons_review_item_id'), ['review_item_id', 'annotator'])
    with op.batch_alter_table('ratings', schema=None) as batch_op:
        batch_op.create_unique_constraint(batch_op.f('uq_ratings_message_id'), ['message_id', 'user'])

    with op.batch_alter_table('review_assignments', schema=None) as batch_op:
        batch_op.add_column(sa.Column('event_id', sa.Uuid(), nullable=True))
    for (row_id,) in bind.execute(sa.select(_assignments.c.id)).all():
        bind.execute(_assignments.update().where(_assignments.c.id == row_id).values(event_id=uuid.uuid4()))
    with op.batch_alter_table('review_assignments', schema=None) as batch_op:
        batch_op.alter_column('event_id', existing_type=sa.Uuid(), nullable=False)
        batch_op.create_unique_constraint(batch_op.f('uq_review_assignments_event_id'), ['event_id'])


def downgrade() -> None:
    with op.batch_alter_table('review_assignments', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('uq_review_assignments_event_id'), type_='unique')
        batch_op.drop_column('event_id')
    with op.batch_alter_table('ratings', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('uq_ratings_message_id'), type_='unique')
    with op.batch_alter_table('comparisons', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('uq_comparisons_review_item_id'), type_='unique')
    op.drop_table('superseded_events')
