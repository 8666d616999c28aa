"""The library's term statistics kept as passages come and go (``library.postgres``): ``library_terms``
counts every passage holding each lexeme, admins' passages included, and ``library_loads.all_passages``
the passages searched, both kept by triggers on ``library_passages`` as an admin's document is added
or removed (a load counts everything itself). A search then reads its question's counts by primary
key, where it counted admins' passages per question word: with 17,000 of them, a 4,000-character
question took over 7 s of the server's CPU (issue 31, 6). PostgreSQL only, as migration 0011.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07
"""

from alembic import op

revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("ALTER TABLE library_loads ADD COLUMN all_passages integer NOT NULL DEFAULT 0")
    # What is loaded now, counted as a load counts it from now on.
    op.execute("UPDATE library_loads SET all_passages = (SELECT count(*) FROM library_passages)")
    op.execute("DELETE FROM library_terms")
    op.execute("""
        INSERT INTO library_terms (lexeme, passages)
        SELECT word.lexeme, count(*) FROM library_passages AS p, unnest(p.search) AS word GROUP BY word.lexeme""")
    # One function for both statements, through the transition table both name ``changed``. The load
    # row is updated first: it serializes the writers of counts (no two lock lexemes in opposite
    # orders), and where there is none the library is not loaded yet and its load will count.
    op.execute("""
        CREATE FUNCTION library_terms_counted() RETURNS trigger LANGUAGE plpgsql AS $$
        DECLARE
            sign integer := CASE TG_OP WHEN 'INSERT' THEN 1 ELSE -1 END;
        BEGIN
            IF current_setting('careloop.library_load', true) = 'on' THEN
                RETURN NULL;
            END IF;
            UPDATE library_loads SET all_passages = all_passages + sign * (SELECT count(*) FROM changed);
            IF NOT FOUND THEN
                RETURN NULL;
            END IF;
            INSERT INTO library_terms AS terms (lexeme, passages)
            SELECT word.lexeme, sign * count(*) FROM changed, unnest(changed.search) AS word
            GROUP BY word.lexeme ORDER BY word.lexeme
            ON CONFLICT (lexeme) DO UPDATE SET passages = terms.passages + excluded.passages;
            IF sign < 0 THEN
                DELETE FROM library_terms WHERE passages <= 0
                    AND lexeme IN (SELECT word.lexeme FROM changed, unnest(changed.search) AS word);
            END IF;
            RETURN NULL;
        END $$""")
    op.execute("""
        CREATE TRIGGER library_passages_added AFTER INSERT ON library_passages
        REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION library_terms_counted()""")
    op.execute("""
        CREATE TRIGGER library_passages_removed AFTER DELETE ON library_passages
        REFERENCING OLD TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION library_terms_counted()""")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER library_passages_removed ON library_passages")
    op.execute("DROP TRIGGER library_passages_added ON library_passages")
    op.execute("DROP FUNCTION library_terms_counted()")
    # 0011's counts: the shipped passages' only.
    op.execute("DELETE FROM library_terms")
    op.execute("""
        INSERT INTO library_terms (lexeme, passages)
        SELECT word.lexeme, count(*) FROM library_passages AS p, unnest(p.search) AS word
        WHERE p.document_id IS NULL GROUP BY word.lexeme""")
    op.execute("ALTER TABLE library_loads DROP COLUMN all_passages")
