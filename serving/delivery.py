"""How a generation's answer reaches the client, shared by the OpenAI and TGI routes: server-sent
events for a streamed answer (``sse``), and for one sent whole, the wait for its result with the
client's hang-up cancelling the generation (``result_or_cancel``; a stream is cancelled by its
generator's ``finally``).
"""

from __future__ import annotations

import asyncio

from fastapi import Request

from serving.engine import Finished, RequestHandle


def sse(payload: str) -> bytes:
    return f"data: {payload}\n\n".encode()


async def _watch_disconnect(request: Request, handle: RequestHandle) -> None:
    while not await request.is_disconnected():
        await asyncio.sleep(0.2)
    handle.cancel()


async def result_or_cancel(request: Request, handle: RequestHandle) -> Finished:
    """Wait for a non-streaming result; a client that hangs up cancels its generation."""
    watcher = asyncio.create_task(_watch_disconnect(request, handle))
    try:
        return await handle.result()
    finally:
        watcher.cancel()
