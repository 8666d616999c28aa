"""Build the tiny test model: a byte-level BPE tokenizer and a ~1M-parameter Llama pretrained on the seed corpus.

The tests use it for mechanics that need no language ability (batching, adapters, promotion, the
loop's plumbing): it builds in ~30 s and answers in milliseconds, but writes word salad. The result
is a normal Hugging Face checkpoint, so serving and training use exactly the code path a hub model
uses; its ``careloop_build.json`` marks it unfit for clinical use. The real offline default is
SmolLM2-135M-Instruct (careloop.base_model.default).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from tqdm import tqdm
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from careloop.base_model.build import BUILD_INFO_FILE, read_build_info
from careloop.seed import ChatExample, ReferenceQA, load_seed

BUILDER_VERSION = 2  # 2: its generation config samples (careloop.decoding reads it)

BOS, EOS, PAD = "<|endoftext|>", "<|im_end|>", "<|pad|>"
SPECIAL_TOKENS = [PAD, BOS, "<|im_start|>", EOS]

# ChatML with {% generation %} markers so TRL's assistant_only_loss can mask everything but answers.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' }}{% generation %}{{- message['content'] + '<|im_end|>' }}"
    "{% endgeneration %}{{- '\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


@dataclass(frozen=True)
class DemoSize:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    context_length: int
    block_size: int
    batch_size: int
    steps: int
    learning_rate: float


SIZES: dict[str, DemoSize] = {
    # ~1M parameters: what the tests use; ~30 s on 2 CPU cores.
    "tiny": DemoSize(2048, 128, 384, 4, 4, 2, 512, 128, 16, 120, 3e-3),
}


@dataclass(frozen=True)
class BuildResult:
    path: Path
    cached: bool
    parameters: int
    perplexity_before: float
    perplexity_after: float
    seconds: float


def chat_texts(examples: list[ChatExample]) -> list[str]:
    """Render conversations exactly as the chat template does, without needing a tokenizer yet."""
    out = []
    for example in examples:
        parts = [f"<|im_start|>{m.role}\n{m.content}{EOS}\n" for m in example.messages]
        out.append("".join(parts))
    return out


def _corpus(seed_dir: Path) -> tuple[list[str], list[str]]:
    train = chat_texts(load_seed(seed_dir, "sft") + load_seed(seed_dir, "safety_sft"))  # type: ignore[arg-type]
    held_out: list[ReferenceQA] = load_seed(seed_dir, "eval")  # type: ignore[assignment]
    held_out_texts = chat_texts(
        [
            ChatExample(
                id=item.id,
                messages=[
                    {"role": "user", "content": item.question},
                    {"role": "assistant", "content": item.reference},
                ],
            )
            for item in held_out
        ]
    )
    return train, held_out_texts


def _train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=None
    )
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


def _blocks(tokenizer: PreTrainedTokenizerFast, texts: list[str], block_size: int) -> torch.Tensor:
    """Concatenate documents (separated by BOS) and cut them into equal training blocks."""
    stream: list[int] = []
    for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        stream.extend(ids)
        stream.append(tokenizer.bos_token_id)
    usable = len(stream) // block_size * block_size
    return torch.tensor(stream[:usable], dtype=torch.long).view(-1, block_size)


@torch.no_grad()
def _perplexity(model: LlamaForCausalLM, blocks: torch.Tensor, batch_size: int) -> float:
    model.eval()
    losses = [
        model(input_ids=batch, labels=batch).loss.item() for batch in blocks.split(batch_size)
    ]
    model.train()
    return math.exp(sum(losses) / len(losses))


def _build_key(size: str, seed: int, seed_dir: Path, steps: int) -> dict:
    digest = hashlib.sha256()
    for name in ("medqa_sft.jsonl", "safety_sft.jsonl", "medqa_eval.jsonl"):
        digest.update((seed_dir / name).read_bytes())
    return {
        "builder_version": BUILDER_VERSION,
        "size": size,
        "seed": seed,
        "steps": steps,
        "corpus_sha256": digest.hexdigest(),
    }


def build_demo_model(
    out: Path,
    size: str = "tiny",
    seed: int = 0,
    seed_dir: Path | None = None,
    steps: int | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> BuildResult:
    """Build (or reuse, if an identical build is cached at ``out``) the tiny test model."""
    from careloop.settings import REPO_ROOT

    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of {', '.join(SIZES)}")
    spec = SIZES[size]
    steps = spec.steps if steps is None else steps
    seed_dir = seed_dir or REPO_ROOT / "data" / "seed"
    out = Path(out)
    key = _build_key(size, seed, seed_dir, steps)

    info = read_build_info(out)
    if info and info.get("key") == key:
        return BuildResult(out, True, info["parameters"], info["perplexity_before"],
                           info["perplexity_after"], 0.0)

    started = time.perf_counter()
    torch.manual_seed(seed)
    train_texts, held_out_texts = _corpus(seed_dir)
    log(f"Training a {spec.vocab_size}-token byte-level BPE tokenizer on {len(train_texts)} documents")
    tokenizer = _train_tokenizer(train_texts, spec.vocab_size)
    train_blocks = _blocks(tokenizer, train_texts, spec.block_size)
    eval_blocks = _blocks(tokenizer, held_out_texts, spec.block_size)[:64]

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        max_position_embeddings=spec.context_length,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    parameters = sum(p.numel() for p in model.parameters())
    ppl_before = _perplexity(model, eval_blocks, spec.batch_size)
    log(f"Model: Llama, {parameters / 1e6:.2f}M parameters; held-out perplexity before: {ppl_before:.1f}")

    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.learning_rate, weight_decay=0.1)
    warmup = max(1, steps // 20)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: min(1.0, (step + 1) / warmup)
        * 0.5 * (1 + math.cos(math.pi * min(step, steps) / steps)),
    )
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(train_blocks), generator=generator)
    model.train()
    bar = tqdm(range(steps), desc=f"pretraining {size}", disable=not progress, unit="step")
    for step in bar:
        start = (step * spec.batch_size) % len(order)
        index = order[start : start + spec.batch_size]
        if len(index) < spec.batch_size:  # wrapped around: reshuffle for the next epoch
            order = torch.randperm(len(train_blocks), generator=generator)
            index = order[: spec.batch_size]
        batch = train_blocks[index]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 10 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    ppl_after = _perplexity(model, eval_blocks, spec.batch_size)
    log(f"Held-out perplexity after: {ppl_after:.1f} (before: {ppl_before:.1f})")

    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    # Sampled at transformers' temperature 1.0: it writes word salad however it is decoded, and at
    # careloop's low default temperature two answers to one question are mostly the same words, which
    # leaves the review tests nothing to compare (careloop.decoding takes a model's own setting first).
    model.generation_config.do_sample = True
    seconds = time.perf_counter() - started
    info = {
        "demo_model": True,
        "key": key,
        "parameters": parameters,
        "perplexity_before": ppl_before,
        "perplexity_after": ppl_after,
        "seconds": round(seconds, 1),
        "spec": asdict(spec) | {"steps": steps},
    }
    # Write into a temporary sibling and rename, so a crash never leaves a half-built cache.
    staging = out.with_name(out.name + f".building-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    (staging / "README.md").write_text(_model_card(size, parameters, ppl_before, ppl_after, steps))
    (staging / BUILD_INFO_FILE).write_text(json.dumps(info, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    return BuildResult(out, False, parameters, ppl_before, ppl_after, seconds)


def _model_card(size: str, parameters: int, ppl_before: float, ppl_after: float, steps: int) -> str:
    return f"""---
tags: [careloop, demo-model, not-for-clinical-use]
---
# careloop DEMO model ({size}) — not a medical model

**This is a demo model.** It is a {parameters / 1e6:.2f}M-parameter Llama-architecture model
pretrained for {steps} steps on a few megabytes of public medical Q&A (MedQuAD, PubMedQA,
MedSafetyBench; see careloop's data/seed/ATTRIBUTION.md) so that careloop can run and be
tested on a machine without internet access. Its answers are often wrong. It must never be
used for medical decisions, education or advice.

Held-out perplexity (K-QA + MedQuAD eval references): {ppl_before:.1f} before, {ppl_after:.1f} after.

For real use set `CARELOOP_BASE_MODEL` to an instruct model from the Hugging Face hub.
"""
