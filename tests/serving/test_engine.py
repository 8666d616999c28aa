"""The engine in-process: continuous batching and coalesced streaming keep every answer intact."""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import replace

import pytest

from serving.engine import Engine, Finished, SamplingParams, TextDelta, settled_text

QUESTIONS = ["What is hypertension?", "How is asthma treated?", "What causes anemia?"]


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    running = Engine(str(tiny_model_dir), "careloop-demo-tiny", True, max_batch=4)
    yield running
    running.shutdown()


def _prompt(engine: Engine, question: str) -> list[int]:
    return engine.chat_prompt_ids([{"role": "user", "content": question}])


def _params(tokens: int, seed: int) -> SamplingParams:
    return SamplingParams(max_tokens=tokens, temperature=1.0, top_p=0.9, seed=seed, ignore_eos=True)


def _tokens(index: int) -> int:
    # The first request is long, so it is still decoding when the others (24 tokens) arrive.
    return 200 if index == 0 else 24


def test_requests_joining_a_running_batch_get_the_answer_they_get_alone(engine):
    async def scenario() -> tuple[list[str], list[str]]:
        alone = []
        for index, question in enumerate(QUESTIONS):
            alone.append((await engine.submit(_prompt(engine, question), None,
                                              _params(_tokens(index), index)).result()).text)
        before = replace(engine.stats)
        # The first request is already decoding when the others arrive, one by one.
        first = engine.submit(_prompt(engine, QUESTIONS[0]), None, _params(_tokens(0), 0))
        stream = first.__aiter__()
        assert isinstance(await stream.__anext__(), TextDelta | Finished)
        joined = [first]
        for index, question in enumerate(QUESTIONS[1:], start=1):
            joined.append(engine.submit(_prompt(engine, question), None, _params(_tokens(index), index)))
            await asyncio.sleep(0.01)
        texts = []
        async for event in stream:
            if isinstance(event, Finished):
                texts.append(event.text)
        texts += [(await handle.result()).text for handle in joined[1:]]
        # The engine's own counters: both later requests were prefilled into the decoding batch.
        assert engine.stats.joined_running_batch - before.joined_running_batch == 2
        assert engine.stats.batched_steps - before.batched_steps >= 24
        return alone, texts

    alone, together = asyncio.run(scenario())
    assert together == alone
    assert len(set(alone)) == 3


def test_a_students_question_is_admitted_before_queued_background_answers(engine):
    """Issue 29, 9: review fills queue their answers behind the running batch; a student's question
    (priority 0) that arrives after them is admitted at the first free row, before them (priority 1)."""
    background = lambda tokens: SamplingParams(max_tokens=tokens, temperature=0, ignore_eos=True, priority=1)  # noqa: E731

    async def scenario() -> list[str]:
        finished: list[str] = []

        async def run(name: str, handle) -> None:
            await handle.result()
            finished.append(name)

        prompt = _prompt(engine, QUESTIONS[0])
        # A full batch (4 rows) of background answers ending one after another...
        # (long enough that none ends before the rest is submitted, on a loaded machine too)
        running = [run(f"running {n}", engine.submit(prompt, None, background(200 + 20 * n))) for n in range(4)]
        tasks = [asyncio.create_task(job) for job in running]
        await asyncio.sleep(0.05)
        # ...three more background answers waiting, then the student's question, submitted in the same turn:
        # a row freed between them (a loaded CI machine) let "queued 0" in before the student was there.
        queued = [asyncio.create_task(run(f"queued {n}", engine.submit(prompt, None, background(8)))) for n in range(3)]
        student = asyncio.create_task(run("student", engine.submit(
            prompt, None, SamplingParams(max_tokens=8, temperature=0, ignore_eos=True))))
        await asyncio.gather(*tasks, *queued, student)
        return finished

    order = asyncio.run(scenario())
    assert [name for name in order if not name.startswith("running")][0] == "student", order


def test_a_slow_consumer_gets_text_coalesced_and_complete(engine):
    async def scenario() -> tuple[list, Finished]:
        handle = engine.submit(_prompt(engine, QUESTIONS[1]), None, _params(20, 5))
        # The consumer is busy until the engine has generated all 20 tokens and let the request go.
        deadline = time.monotonic() + 60
        while engine.stats.queued or engine.stats.running:
            assert time.monotonic() < deadline, "the engine did not finish 20 tokens in 60 s"
            await asyncio.sleep(0.01)
        await asyncio.sleep(0)  # the engine thread's last events reach this loop
        events = [event async for event in handle.coalesced()]
        return events[:-1], events[-1]

    deltas, finished = asyncio.run(scenario())
    assert finished.completion_tokens == 20
    assert "".join(d.text for d in deltas) == finished.text
    assert len(deltas) == 1  # the piled-up tokens come as one chunk, not twenty


def test_no_streamed_piece_or_answer_holds_a_broken_character(engine):
    """Issue 19, 7: a "�" appeared in an answer. The tiny model's tokenizer, like SmolLM2's, spreads
    a character over byte tokens ("°" is two, an emoji four); sampled hot and cut after a few tokens,
    generations end mid-character and put stray bytes between characters. No piece streamed and no
    finished text may carry U+FFFD, and the pieces add up to the text."""
    async def generate(seed: int, tokens: int) -> tuple[list[str], Finished]:
        params = SamplingParams(max_tokens=tokens, temperature=8.0, top_p=1.0, seed=seed, ignore_eos=True)
        events = [event async for event in engine.submit(_prompt(engine, "Fever of 38 °C?"), None, params)]
        return [event.text for event in events[:-1]], events[-1]

    async def scenario() -> list[tuple[list[str], Finished]]:
        return await asyncio.gather(*(generate(seed, 1 + seed % 6) for seed in range(48)))

    for pieces, finished in asyncio.run(scenario()):
        assert "\ufffd" not in finished.text and not any("\ufffd" in piece for piece in pieces), (pieces, finished)
        assert "".join(pieces) == finished.text


def test_a_character_split_across_tokens_streams_whole(engine):
    """The same with known tokens: every prefix of a text with "°", "µ" and an emoji, token by
    token, settles to a prefix of the text without a broken character."""
    text = "Fever of 38 °C, 5 µg, 🌡 done"
    tokens = engine.tokenizer(text, add_special_tokens=False)["input_ids"]
    shown = [settled_text(engine.tokenizer, tokens[:end]) for end in range(1, len(tokens) + 1)]
    assert len(tokens) > len(text.encode()) // 2, "the tokenizer splits the characters into byte tokens"
    assert shown[-1] == text
    for before, after in itertools.pairwise(shown):
        assert "\ufffd" not in before and after.startswith(before), (before, after)


def test_greedy_answers_with_a_repetition_penalty_are_the_ones_transformers_generates(engine, tiny_model_dir):
    """The evaluation decodes with transformers' ``generate`` and students are answered by the engine:
    with the same decoding (here greedy, penalty 1.3, as careloop.decoding sends it) the tokens must be
    the same, or the gate scores answers students never read (issue 30)."""
    import torch
    from transformers import AutoModelForCausalLM

    async def served(question: str, penalty: float) -> str:
        return (await engine.submit(_prompt(engine, question), None, SamplingParams(
            max_tokens=40, temperature=0.0, repetition_penalty=penalty, ignore_eos=True)).result()).text

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).eval()
    for question in QUESTIONS:
        prompt = _prompt(engine, question)
        for penalty in (1.0, 1.3):
            with torch.inference_mode():
                output = model.generate(torch.tensor([prompt]), max_new_tokens=40, min_new_tokens=40,
                                        do_sample=False, repetition_penalty=penalty)
            expected = settled_text(engine.tokenizer, output[0, len(prompt):].tolist())
            assert asyncio.run(served(question, penalty)) == expected, (question, penalty)
    assert asyncio.run(served(QUESTIONS[0], 1.0)) != asyncio.run(served(QUESTIONS[0], 1.3)), \
        "the penalty changed nothing: it is not applied"


def test_the_engine_serves_in_float32_unless_asked_for_bfloat16(engine, tiny_model_dir):
    """CARELOOP_SERVING_DTYPE: float32 by default; asked for bfloat16, the engine's greedy answers are
    the ones transformers generates from the same bfloat16 weights."""
    import torch
    from transformers import AutoModelForCausalLM

    assert engine.dtype == engine.model.dtype == torch.float32
    bf16 = Engine(str(tiny_model_dir), "careloop-demo-tiny", True, max_batch=4, dtype=torch.bfloat16)
    try:
        assert bf16.model.dtype == torch.bfloat16
        model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.bfloat16).eval()
        for question in QUESTIONS:
            prompt = _prompt(bf16, question)
            with torch.inference_mode():
                output = model.generate(torch.tensor([prompt]), max_new_tokens=24, min_new_tokens=24,
                                        do_sample=False)
            served = asyncio.run(_answer(bf16, prompt, SamplingParams(max_tokens=24, temperature=0.0,
                                                                      ignore_eos=True)))
            assert served == settled_text(bf16.tokenizer, output[0, len(prompt):].tolist()), question
    finally:
        bf16.shutdown()


async def _answer(engine: Engine, prompt: list[int], params: SamplingParams) -> str:
    return (await engine.submit(prompt, None, params).result()).text
