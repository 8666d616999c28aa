"""The whole shipped library indexed once, cached across runs in pytest's cache directory like the
tiny model (a small library for what needs a fresh index each time is in tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from filelock import FileLock
from support import LIBRARY_DIR


@pytest.fixture(scope="session")
def medquad_library(request):
    """The shipped MedQuAD library's index, built once (about 10 s) and cached across runs."""
    from library.corpus import medquad_chunks
    from library.index import Library, library_key

    out = Path(request.config.cache.mkdir("careloop")) / f"library-{library_key(LIBRARY_DIR, 'medquad-only')}"
    with FileLock(f"{out}.lock"):
        if not (out / "chunks.jsonl").is_file():
            library = Library.build(medquad_chunks(LIBRARY_DIR))
            out.mkdir(parents=True, exist_ok=True)
            library.save(out)
            return library
    return Library.load(out)
