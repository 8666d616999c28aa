"""What the tests share besides fixtures: the test accounts, the seed corpus's path, a tiny LoRA
fine-tune, the bot stack's handle, a disk filler, and storing a clinician's label. Fixtures live in
the conftest files; processes the tests start live in processes.py."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from processes import TOKEN, Server

REPO_ROOT = Path(__file__).resolve().parent.parent
SEED_DIR = REPO_ROOT / "data" / "seed"
LIBRARY_DIR = REPO_ROOT / "data" / "library"

PASSWORD = "correct-horse-battery"
ACCOUNTS = {"stu.dent": "student", "nurse.a": "nurse", "nurse.b": "nurse", "dr.p": "physician", "ad.min": "admin"}
# 5 s, not 3: under the full suite a page took over 3 s to load (reads only, which keep no session alive)
# and its session ended before it showed (CI, stop 35).
SHORT_SESSION_IDLE, SHORT_SESSION_MAX = 5.0, 20.0
LIMITED_IDLE = 8.0  # the limited bot's idle limit: longer than its 1 s status refresh, and than the old 5 s timer
SCORES = {"accuracy": 4, "helpfulness": 3, "relevance": 5, "comprehensiveness": 2}
LIBRARY_UPLOAD_LIMIT = 256 * 1024  # the shared bot's CARELOOP_LIBRARY_MAX_DOCUMENT_BYTES: over it costs little to send


def ensure_postgres_running() -> None:
    clusters = Path("/etc/postgresql")
    if clusters.is_dir():
        for version in os.listdir(clusters):
            subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "start"],
                           capture_output=True, timeout=60)


def train_adapter(base_dir: Path, out: Path, answer: str, seed: int) -> Path:
    """A real (if tiny) LoRA fine-tune: a few steps teaching the model one answer."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir),
                           LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "o_proj"],
                                      task_type="CAUSAL_LM"))
    text = tokenizer.apply_chat_template([{"role": "user", "content": "What is hypertension?"},
                                          {"role": "assistant", "content": answer}], tokenize=False)
    batch = tokenizer([text] * 4, return_tensors="pt")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-2)
    for _ in range(25):
        model(**batch, labels=batch["input_ids"]).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(out)
    return out


@dataclass
class BotStack:
    url: str
    database_url: str
    redis_url: str
    home: Path
    server: Server
    model_dir: Path
    sessions: object  # sessionmaker on database_url
    bot: object  # processes.Bot
    worker: object  # processes.Worker

    def settings(self, **overrides):
        """Settings for code in the test process that talks to the same system."""
        from careloop.settings import load_settings

        return load_settings(**{"home": self.home / "tests", "database_url": self.database_url,
                                "redis_url": self.redis_url, "serving_url": self.server.url, "control_token": TOKEN,
                                "base_model": str(self.model_dir), "adapter_dir": self.server.adapter_dir,
                                **overrides})


def fill_disk(directory: Path) -> Path:
    """Write a file in ``directory`` until its filesystem is full; returns it (delete it to make room)."""
    filler = directory / "filler"
    with filler.open("wb", buffering=0) as out:
        try:
            while True:
                out.write(b"\0" * 4096)
        except OSError:
            pass
    return filler


def label(sessions, item_id: int | None, annotator: str, choice: str, **fields) -> None:
    """Store one comparison through the same path the worker uses."""
    from feedback import schemas
    from feedback.store import store_event

    item = {"prompt": "What lowers blood pressure?", "response_a": "Salt restriction and exercise.",
            "response_b": "Nothing.", "version_a": "med-v0002", "version_b": "med-v0001"}
    if item_id is not None:  # the item's texts come from the queue
        from feedback.store import ReviewItem

        with sessions() as session:
            stored = session.get(ReviewItem, item_id)
            item = {"prompt": stored.prompt, "response_a": stored.response_a, "response_b": stored.response_b,
                    "version_a": stored.version_a, "version_b": stored.version_b}
    store_event(sessions, schemas.ComparisonEvent(review_item_id=item_id, annotator=annotator, choice=choice,
                                             shown_order="ab", scores_a=SCORES, scores_b=SCORES,
                                             **{**item, **fields}))


def medquad_sample(count: int, seed: int = 0) -> list[dict]:
    """``count`` of the shipped library's MedQuAD pages, the same ones for the same seed."""
    import random

    from library.corpus import medquad_records

    return random.Random(seed).sample(medquad_records(LIBRARY_DIR), count)


def page_csrf_token(browser) -> str:
    """The CSRF token of the Sign out form the page gets when it loads (the page's start-up handler,
    called the way the page calls it), for a signed-in ``httpx.Client``."""
    import json
    import re
    import uuid

    dependencies = browser.get("/config").json()["dependencies"]
    on_load = next(d["id"] for d in dependencies if any(t[1] == "load" for t in d["targets"]))
    session_hash = uuid.uuid4().hex[:11]
    joined = browser.post("/gradio_api/queue/join",
                          json={"data": [], "fn_index": on_load, "session_hash": session_hash})
    assert joined.status_code == 200, joined.text
    with browser.stream("GET", "/gradio_api/queue/data", params={"session_hash": session_hash}) as events:
        for line in events.iter_lines():
            message = json.loads(line[5:]) if line.startswith("data:") else {}
            if message.get("msg") == "process_completed":
                found = [value for value in message["output"]["data"]
                         if isinstance(value, str) and re.fullmatch("[0-9a-f]{64}", value)]
                assert found, message["output"]
                return found[0]
    raise AssertionError("the page's start-up handler gave no answer")


def migrated_sqlite(directory: Path):
    """(url, session factory) of a fresh SQLite file in ``directory`` at the latest schema."""
    from careloop import db

    url = f"sqlite:///{directory / 'careloop.db'}"
    db.upgrade(url)
    return url, db.session_factory(db.make_engine(url))


def tiny_train_config(path: Path, steps: int, examples: int, pairs: int, eval_items: int) -> Path:
    """A training config for the tiny model's mechanics: ``steps`` of SFT and of DPO on seed data only."""
    import yaml

    path.write_text(yaml.safe_dump({
        "sft": {"max_steps": steps, "max_examples": examples, "max_length": 128},
        "dpo": {"max_steps": steps, "max_length": 128, "max_pairs": pairs, "contrast_share": 0, "micro_batch_size": 2},
        "eval": {"max_items": eval_items, "confirm_items": eval_items, "max_pairs": eval_items, "eval_fraction": 0.1}}))
    return path


# ----- library documents: what an admin adds, good and bad -----

LIMIT = 64 * 1024  # CARELOOP_LIBRARY_MAX_DOCUMENT_BYTES in the library tests


def pdf_bytes(text: str | None, title: str = "") -> bytes:
    """A real one-page PDF (fonts, content stream and cross-reference table), with ``text`` on it or no text."""
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode() if text else b""
    info = f"<< /Title ({title}) >>".encode() if title else b"<< >>"
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
               (b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
                b"/Resources << /Font << /F1 5 0 R >> >> >>"),
               b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream),
               b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>", info]
    return pdf_file(objects, b" /Info 6 0 R")


def pdf_file(objects: list[bytes], trailer: bytes = b"") -> bytes:
    """A PDF of ``objects`` (numbered from 1, the catalog first) with its cross-reference table."""
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R%s >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, trailer, xref)
    return bytes(out)


def encrypted_pdf() -> bytes:
    """A PDF that opens only with a password (RC4: pypdf writes it without extra packages)."""
    import io

    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(pdf_bytes("Ward notes behind a password"))))
    writer.encrypt(user_password="ward", algorithm="RC4-128")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


# Every kind of file the library refuses, with the reason's start: (content, reason).
BAD_FILES = {
    "slides.docx": (b"PK\x03\x04 a Word file", "slides.docx: not a Markdown, plain-text or PDF file"),
    "binary.txt": (b"text\x00\x01\x02 with binary data", "binary.txt: is not text (it holds binary data)"),
    "latin1.md": ("Fièvre et céphalée".encode("latin-1"), "latin1.md: is not text (not UTF-8)"),
    "broken.pdf": (b"%PDF-1.4\nthis is not really a PDF", "broken.pdf: is not a readable PDF"),
    "scanned.pdf": (pdf_bytes(None), "scanned.pdf: has no text to index (a scanned PDF needs OCR first)"),
    "locked.pdf": (encrypted_pdf(), "locked.pdf: is an encrypted PDF; add a copy without a password"),
    "empty.md": (b"   \n\n", "empty.md: has no text to index"),
    "huge.txt": (b"fever " * (LIMIT // 6 + 10),
                 "huge.txt: 0.1 MiB is over the 0.1 MiB limit (CARELOOP_LIBRARY_MAX_DOCUMENT_BYTES)"),
}
