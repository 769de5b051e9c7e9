"""Ground truth for tests/e2e/test_sim_protocol_more.py: what vLLM's own API layer answers.

Not a test: run it with a Python that has vllm 0.33.0 installed (no GPU or model needed):

    /path/to/vllm-venv/bin/python vllm_errors.py CASES.json OUT.json

CASES.json is a list of ``[route, body]``. Each body goes through vLLM's real routers and
exception handlers (chat_completion/api_router.py, responses/api_router.py,
serve/exception_handling/register.py init_exception_handler) in a FastAPI app without an
engine: a body that fails validation gets vLLM's exact 400; one that passes reaches the
handler, which answers 501 (no serving object). Chat bodies that pass are then rendered as
renderers/mistral.py MistralRenderer.render_messages does (chat_message.py
parse_chat_messages, content_format "string"), and an exception is rendered with
error_response.py create_error_response, as serving does. (Media loading needs a real model
config: errors from it are artefacts of the stand-in and were not used.)
"""

from __future__ import annotations

import json
import sys
import types
from unittest.mock import MagicMock

from fastapi import FastAPI
from fastapi.testclient import TestClient
from vllm.entrypoints.openai.chat_completion.api_router import router as chat_router
from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
from vllm.entrypoints.openai.responses.api_router import router as responses_router
from vllm.entrypoints.serve.exception_handling.error_response import create_error_response
from vllm.entrypoints.serve.exception_handling.register import init_exception_handler
from vllm.renderers.chat_utils.chat_message import parse_chat_messages


def main(cases_path: str, out_path: str) -> None:
    app = FastAPI()
    app.include_router(chat_router)
    app.include_router(responses_router)
    init_exception_handler(app)
    app.state.args = types.SimpleNamespace(log_error_stack=False)
    app.state.openai_serving_chat = None
    app.state.openai_serving_responses = None
    client = TestClient(app, raise_server_exceptions=False)
    out = []
    with open(cases_path) as f:
        cases = json.load(f)
    for route, body in cases:
        reply = client.post(route, json=body)
        row = {"route": route, "body": body, "status": reply.status_code, "resp": reply.json()}
        if reply.status_code == 501 and route == "/v1/chat/completions":
            request = ChatCompletionRequest.model_validate(body)
            config = MagicMock()
            config.multimodal_config = None
            try:
                parse_chat_messages(request.messages, config, content_format="string")
                row["rendered"] = "ok"
            except Exception as exc:
                row["rendered"] = create_error_response(exc).model_dump()
        out.append(row)
    with open(out_path, "w") as f:
        json.dump(out, f, indent=1, default=str)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
