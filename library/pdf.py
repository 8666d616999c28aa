"""A PDF's text, read in a child process with limits on its memory, time, pages and characters.

A few kilobytes of PDF can hold gigabytes of text (pages sharing one compressed stream) or nest
arrays deeper than the reader can recurse: read in the bot's or the CLI's own process, such
a file took seconds, hundreds of MB and a share of the library, or raised a bare ``RecursionError``.
Here ``python -m library.pdf`` reads the file with its address space and CPU time capped, stops as
soon as the text has more characters or the file more pages than allowed, and answers with the text
or a one-line reason; the parent kills it at the time limit. Every way the child can fail (a limit,
a crash, a kill) becomes a reason, which ``library.documents`` prefixes with the file's name.
"""

from __future__ import annotations

import io
import json
import math
import resource
import signal
import subprocess
import sys
from pathlib import Path


class PdfUnreadable(Exception):
    """The PDF's text could not be had within the limits; the message is why, without the file name."""


def pdf_text(data: bytes, *, max_chars: int, max_pages: int, timeout_seconds: float,
             memory_bytes: int) -> tuple[str, str]:
    """``(title, text)`` of the PDF ``data``, read in a child process, or ``PdfUnreadable`` saying why."""
    cpu_seconds = math.ceil(timeout_seconds) + 1  # a backstop: the wall clock below comes first
    command = [sys.executable, "-m", "library.pdf", str(max_chars), str(max_pages), str(memory_bytes),
               str(cpu_seconds)]
    too_slow = f"could not be read within {timeout_seconds:g} s (CARELOOP_LIBRARY_PDF_TIMEOUT_SECONDS)"
    try:
        # Run from the directory holding this package, so ``-m`` finds it however careloop is installed.
        child = subprocess.run(command, input=data, capture_output=True, timeout=timeout_seconds,
                               cwd=Path(__file__).resolve().parent.parent, check=False)
    except subprocess.TimeoutExpired:  # the child is killed by then
        raise PdfUnreadable(too_slow) from None
    except OSError as exc:
        raise PdfUnreadable(f"cannot be read now: the PDF reader did not start ({exc.strerror or exc})") from None
    if child.returncode == -signal.SIGXCPU:
        raise PdfUnreadable(too_slow)
    if child.returncode != 0:
        last = (child.stderr.decode(errors="replace").strip().splitlines() or [""])[-1][:120]
        status = f"signal {-child.returncode}" if child.returncode < 0 else f"exit status {child.returncode}"
        raise PdfUnreadable(f"is not a readable PDF (its reader stopped: {last or status})")
    answer = json.loads(child.stdout)
    if "refused" in answer:
        raise PdfUnreadable(answer["refused"])
    return answer["title"], answer["text"]


class _TooLong(BaseException):  # not an Exception: pypdf swallows those raised while it reads a form
    pass


def _read(data: bytes, max_chars: int, max_pages: int, memory_bytes: int) -> tuple[str, str]:
    """What the child does: the text page by page, stopped at the first character over ``max_chars``."""
    import logging

    from pypdf import PdfReader

    logging.getLogger("pypdf").setLevel(logging.ERROR)  # its warnings on a broken file repeat our reason
    too_long = f"its text is over {max_chars:,} characters (CARELOOP_LIBRARY_MAX_DOCUMENT_CHARS)"
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            raise PdfUnreadable("is an encrypted PDF; add a copy without a password")
        if (page_count := len(reader.pages)) > max_pages:
            raise PdfUnreadable(f"has {page_count:,} pages, over the limit of {max_pages:,} "
                                "(CARELOOP_LIBRARY_MAX_PDF_PAGES)")
        pages: list[str] = []
        read = 0

        def count(text: str, *_: object) -> None:  # called for each piece of text as a page is read
            nonlocal read
            read += len(text)
            if read > max_chars:
                raise _TooLong

        for page in reader.pages:
            pages.append(page.extract_text(visitor_text=count) or "")
            read = sum(map(len, pages)) + 2 * (len(pages) - 1)  # as joined below
            if read > max_chars:
                raise _TooLong
        title = str((reader.metadata or {}).get("/Title") or "")[:1024]
    except _TooLong:
        raise PdfUnreadable(too_long) from None
    except RecursionError:
        raise PdfUnreadable("its content is nested too deeply to read") from None
    except MemoryError:
        raise PdfUnreadable(f"needs more than {memory_bytes / 2**20:,.0f} MiB of memory to read "
                            "(CARELOOP_LIBRARY_PDF_MEMORY_BYTES)") from None
    except PdfUnreadable:
        raise
    except Exception as exc:  # whatever the reader trips on, the file is not readable
        first_line = (str(exc).splitlines() or [""])[0][:120]
        raise PdfUnreadable(f"is not a readable PDF ({first_line or type(exc).__name__})") from None
    return title, "\n\n".join(pages)


def main() -> None:
    """``python -m library.pdf MAX_CHARS MAX_PAGES MEMORY_BYTES CPU_SECONDS`` < file.pdf: one JSON object
    on stdout, ``{"title", "text"}`` or ``{"refused": reason}``."""
    max_chars, max_pages, memory_bytes, cpu_seconds = map(int, sys.argv[1:5])
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))
    data = sys.stdin.buffer.read()
    try:
        title, text = _read(data, max_chars, max_pages, memory_bytes)
        answer = {"title": title, "text": text}
    except PdfUnreadable as exc:
        answer = {"refused": str(exc)}
    sys.stdout.write(json.dumps(answer))


if __name__ == "__main__":
    main()
