"""The medical library answers are grounded in: MedQuAD's NIH and CDC pages shipped in
``data/library`` plus documents admins add (``library.documents``), cut into passages
(``library.corpus``), searched lexically with bm25s (``library.index``: ``Library.search``) or
PostgreSQL's full-text search (``library.postgres``), which ``library.index.Retriever`` chooses between,
and turned into grounded prompts with numbered citations (``library.grounding``).

The bot and the trainer use this package; it uses only ``careloop`` (settings, database, audit).
Importing it never imports torch.
"""
