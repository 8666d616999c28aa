"""Data files that only their owner may read: the database, the outbox, exports.

They hold students' questions and clinicians' judgments; under the usual umask 022 each new file
would be world-readable. ``restrict_umask`` makes every file a careloop process creates 0600 and
every directory 0700 (the CLI sets it for every command); the helpers below also set the modes
explicitly, for code that runs in other processes (tests, notebooks) and for files made before.
"""

from __future__ import annotations

import os
from pathlib import Path

PRIVATE_UMASK = 0o077


def restrict_umask() -> None:
    os.umask(PRIVATE_UMASK)


def private_dir(path: Path) -> Path:
    """``path`` as a directory only its owner may open (created if missing, tightened if not)."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.chmod(0o700)
    return path


def private_file(path: Path) -> Path:
    """``path`` as a file only its owner may read (created empty if missing, tightened if not).

    For a SQLite database, its journal files too: SQLite gives a new -wal or -shm file the mode of
    the database file, but files left from before keep theirs."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
    for each in (path, *(path.with_name(path.name + suffix) for suffix in ("-wal", "-shm", "-journal"))):
        if each.exists():
            each.chmod(0o600)
    return path


def restrict_tree(root: Path) -> None:
    """Every directory under ``root`` (itself included) 0700, every file 0600."""
    root.chmod(0o700)
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            os.chmod(os.path.join(folder, name), 0o700)
        for name in files:
            os.chmod(os.path.join(folder, name), 0o600)
