"""The library's passages in PostgreSQL for its full-text search (``library.postgres``): a generated
``tsvector`` under a GIN index (text search configuration ``careloop_english``), the shipped passages'
lexeme counts, and which shipped library is loaded. PostgreSQL only: on
SQLite the library is searched with the embedded bm25s index, and this migration creates nothing.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06
"""

from alembic import op

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    # PostgreSQL's English configuration (its parser, the Snowball English stemmer) without its stopword
    # list: the question words ("how many", "who is at risk") tell a page's sections apart, as in the
    # bm25s index: with the list Recall@5 was 0.92, without it 0.97 (the same ranking; BENCHMARKS.md, "Retrieval").
    op.execute("CREATE TEXT SEARCH DICTIONARY careloop_english_stem (TEMPLATE = snowball, LANGUAGE = english)")
    op.execute("CREATE TEXT SEARCH CONFIGURATION careloop_english (COPY = english)")
    op.execute("ALTER TEXT SEARCH CONFIGURATION careloop_english ALTER MAPPING REPLACE english_stem "
               "WITH careloop_english_stem")
    # Title and heading (the question a MedQuAD page answers) weigh A, the text D: ts_rank weights
    # them 1.0 and 0.1 by default, as the bm25s index counts them twice ahead of the text.
    op.execute("""
        CREATE TABLE library_passages (
            id bigint GENERATED ALWAYS AS IDENTITY CONSTRAINT pk_library_passages PRIMARY KEY,
            doc_id varchar(128) NOT NULL,
            document_id integer CONSTRAINT fk_library_passages_document_id_library_documents
                REFERENCES library_documents (id) ON DELETE CASCADE,
            title text NOT NULL,
            heading text NOT NULL,
            publisher text NOT NULL,
            url text NOT NULL,
            text text NOT NULL,
            search tsvector GENERATED ALWAYS AS (
                setweight(to_tsvector('careloop_english'::regconfig, title || ' ' || heading), 'A')
                || setweight(to_tsvector('careloop_english'::regconfig, text), 'D')) STORED
        )""")
    op.execute("CREATE INDEX ix_library_passages_search ON library_passages USING gin (search)")
    op.execute("CREATE INDEX ix_library_passages_document_id ON library_passages (document_id)")
    # How many of the shipped library's passages hold each lexeme (its IDF; admins' passages are
    # counted as searched), and which shipped library is loaded: one row.
    op.execute("""
        CREATE TABLE library_terms (
            lexeme text CONSTRAINT pk_library_terms PRIMARY KEY,
            passages integer NOT NULL
        )""")
    op.execute("""
        CREATE TABLE library_loads (
            key varchar(64) CONSTRAINT pk_library_loads PRIMARY KEY,
            passages integer NOT NULL,
            seconds real NOT NULL,
            loaded_at timestamptz NOT NULL DEFAULT now()
        )""")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TABLE library_loads")
    op.execute("DROP TABLE library_terms")
    op.execute("DROP TABLE library_passages")
    op.execute("DROP TEXT SEARCH CONFIGURATION careloop_english")
    op.execute("DROP TEXT SEARCH DICTIONARY careloop_english_stem")
