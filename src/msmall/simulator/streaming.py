"""TokenStream: Starlette's StreamingResponse without an anyio task group per response.

For ASGI servers older than spec 2.4 (uvicorn says "2.3"), StreamingResponse runs the stream
and a disconnect listener in an anyio task group; opening and cancelling that group costs
more than everything else in a short streamed request (its cancel formats the task's repr,
measured at ~0.1 ms a request under a profiler, docs/benchmarks.md "Simulator speed"). A
load test of 64 requests at once waits for that 64 times over. TokenStream does the same with
one plain asyncio task: a listener that waits for ``http.disconnect`` and cancels the stream,
so a client that goes away still ends its sequence at once and frees its place in the batch
(as vLLM aborts a request whose client disconnected, serving.py ``await
request.is_disconnected()`` / ``engine_client.abort``).
"""

from __future__ import annotations

import asyncio

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

DONE = b"data: [DONE]\n\n"


class TokenStream(StreamingResponse):
    async def stream_response(self, send: Send) -> None:
        # Starlette's, except that the chunk ending in the OpenAI stream's last event,
        # ``data: [DONE]``, is sent as the end of the body: uvicorn's httptools protocol then
        # writes it and the terminating zero-length chunk at once (httptools_impl.py
        # RequestResponseCycle.send; h11_impl.py still writes them apart), one write instead of
        # two for each of the streams that end together in a load test.
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        ended = False
        async for chunk in self.body_iterator:
            if not isinstance(chunk, bytes | memoryview):
                chunk = chunk.encode(self.charset)
            if ended:
                continue  # nothing follows [DONE]; the generator still runs to its end
            ended = bytes(chunk[-len(DONE) :]) == DONE
            await send({"type": "http.response.body", "body": chunk, "more_body": not ended})
        if not ended:
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        task = asyncio.current_task()
        gone = False

        async def listen() -> None:
            nonlocal gone
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    break
            gone = True
            if task is not None:
                task.cancel()

        listener = asyncio.ensure_future(listen())
        try:
            await self.stream_response(send)
        except asyncio.CancelledError:
            if not gone:
                raise
            # Our own cancel (the client went away): the response simply ends.
            uncancel = getattr(task, "uncancel", None)  # Python 3.11+
            if uncancel is not None:
                uncancel()
        except OSError:
            pass  # the connection broke while writing
        finally:
            if not listener.done():
                listener.cancel()
        if self.background is not None and not gone:
            await self.background()
