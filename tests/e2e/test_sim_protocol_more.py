"""Mistyped chat messages and Responses input items: the simulator answers as vLLM 0.33's API
layer does. The expected answers in sim_ground_truth/vllm033_errors.json are vLLM's own,
produced by sim_ground_truth/vllm_errors.py (vLLM's routers, exception handlers and
chat_message.py, run with vllm 0.33.0); paths below are inside the vllm 0.33.0 wheel.

The simulator runs on a background thread of this process (SimulatorThread, port 0).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from msmall.httpclient import new_client
from msmall.simulator import SimulatorConfig, SimulatorThread

MODEL = "mistral-small-3.1"
# A 1x1 PNG.
DOT = (
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA"
    "60e6kgAAAABJRU5ErkJggg=="
)
TRUTH = json.loads((Path(__file__).parent / "sim_ground_truth" / "vllm033_errors.json").read_text())


@pytest.fixture(scope="module")
def vllm() -> Iterator[httpx.Client]:
    config = SimulatorConfig(port=0, quiet=True, max_model_len=4000)
    with (
        SimulatorThread(config) as sim,
        new_client(sim.base_url, timeout=10) as http,
    ):
        yield http


def _cases(group: str) -> list:
    return [pytest.param(case, id=name) for name, case in TRUTH[group].items()]


@pytest.mark.parametrize("case", _cases("validation"))
def test_mistyped_messages_fail_validation_like_vllm(vllm: httpx.Client, case: dict) -> None:
    """``messages: list[ChatCompletionMessageParam]`` (chat_completion/protocol.py
    ChatCompletionRequest; renderers/chat_utils/types.py: openai's six message TypedDicts |
    CustomChatCompletionMessageParam | openai_harmony Message), rendered by
    serve/exception_handling/handlers/validation.py validation_exception_handler. Includes
    the "after" validator _materialize_tool_calls_after, where a lazily checked tool_calls
    fails with a loc relative to the iterator ("body.0...."), and
    _normalize_messages_before's ``list(tool_calls)`` (TypeError for a number: 400
    BadRequestError via handlers/exception.py)."""
    reply = vllm.post("/v1/chat/completions", json={"model": MODEL, "messages": case["messages"]})
    assert reply.status_code == case["status"]
    assert reply.json()["error"] == case["error"]


@pytest.mark.parametrize("case", _cases("rendering"))
def test_bad_content_parts_fail_while_rendering_like_vllm(vllm: httpx.Client, case: dict) -> None:
    """Parts that pydantic accepted (lazily, for openai's ``Iterable`` content, or through
    CustomChatCompletionMessageParam) fail in renderers/chat_utils/chat_message.py
    parse_chat_message_content_parts / parse_chat_message_content_mm_part ("... validation
    errors for ValidatorIterator", _ImageParser's ChatCompletionContentPartImageParam error,
    "Unsupported chat content part type", "Missing 'type' field", "Invalid 'type' field"), and
    serving answers them through error_response.py create_error_response: 400
    BadRequestError."""
    body = {"model": MODEL, "messages": case["messages"]}
    reply = vllm.post("/v1/chat/completions", json=body)
    assert reply.status_code == 400
    assert reply.json()["error"] == case["error"]
    # Streaming changes nothing: rendering fails before the first byte (serving.py
    # _create_chat_completion returns the ErrorResponse).
    reply = vllm.post("/v1/chat/completions", json={**body, "stream": True})
    assert reply.status_code == 400
    assert reply.json()["error"] == case["error"]


@pytest.mark.parametrize(
    "messages",
    [
        # An extra key on a part is kept and ignored (OpenAIBaseModel extra="allow").
        [{"role": "user", "content": [{"type": "text", "text": "hi", "extra": 1}]}],
        # An unknown key of the wrong type is not validated (reasoning_content -> reasoning).
        [{"role": "user", "content": "hi", "reasoning_content": 5}],
        # A plain string among the parts: CustomChatCompletionMessageParam takes it and
        # chat_message.py parse_chat_message_content_part reads it as text (400 on main).
        [{"role": "user", "content": [{"type": "text", "text": "a"}, "b"]}],
    ],
    ids=["extra_part_key", "reasoning_content_int", "string_part"],
)
def test_messages_vllm_accepts_are_answered(vllm: httpx.Client, messages: list) -> None:
    """What vLLM 0.33 lets through validation and rendering (the ground-truth run answered
    these with its handler's 501 / a rendered conversation) is served."""
    reply = vllm.post("/v1/chat/completions", json={"model": MODEL, "messages": messages})
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"][0]["message"]["role"] == "assistant"


@pytest.mark.parametrize("case", _cases("template"))
def test_mistral_template_checks_like_vllm(vllm: httpx.Client, case: dict) -> None:
    """After chat_message.py, vLLM applies the Mistral chat template (renderers/mistral.py
    safe_apply_chat_template: every exception becomes a ValueError, 400 BadRequestError):
    tokenizers/mistral.py _validate_apply_chat_template_args (last message from the
    assistant with add_generation_prompt, the default; continue_final_message without one),
    the conversion to mistral_common messages (unknown role; a tool message without
    tool_call_id is a KeyError), mistral_common validator.py (role order, 9-character tool
    call ids) and the encoder (an empty assistant message). Conversations it accepts are
    served."""
    body = {"model": MODEL, "messages": case["messages"], **case["flags"]}
    reply = vllm.post("/v1/chat/completions", json=body)
    if case["error"] is None:
        assert reply.status_code == 200, reply.text
        return
    assert reply.status_code == 400
    assert reply.json()["error"] == case["error"]


@pytest.mark.parametrize("case", _cases("responses_exact"))
def test_responses_input_type_errors_like_vllm(vllm: httpx.Client, case: dict) -> None:
    """responses/protocol.py ResponsesRequest.input ``str | list[ResponseInputOutputItem]``
    (with BeforeValidator _default_input_image_details): a number fails both branches; a bad
    item fails every member of the union (openai's 33 ResponseInputItemParam TypedDicts and
    28 ResponseOutputItem models: 62 errors for a number, 200-odd for an object), shown 10 at
    a time with the total by validation.py validation_exception_handler."""
    reply = vllm.post("/v1/responses", json={"model": MODEL, "input": case["input"]})
    assert reply.status_code == case["status"]
    assert reply.json()["error"] == case["error"]


@pytest.mark.parametrize(
    "item",
    [
        {"role": "user", "content": "hi"},
        # function_call_output without call_id passes vLLM's validation (ground-truth run).
        {"type": "function_call_output", "output": "x"},
        {"role": "user", "content": [{"type": "input_text", "text": "hi"}]},
        # A replayed output message (ResponseOutputMessageParam) and a reasoning item.
        {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "status": "completed",
            "content": [{"type": "output_text", "text": "hi", "annotations": []}],
        },
        {"type": "reasoning", "id": "r1", "summary": []},
        {"role": "user", "content": [{"type": "input_image", "image_url": DOT}]},
    ],
    ids=[
        "easy_message",
        "output_without_call_id",
        "input_text_part",
        "output_message_replay",
        "reasoning",
        "input_image_without_detail",
    ],
)
def test_responses_items_vllm_accepts_are_answered(vllm: httpx.Client, item: dict) -> None:
    """Items the ground-truth run let through ResponsesRequest's validation (its route's 501)
    are served."""
    reply = vllm.post(
        "/v1/responses", json={"model": MODEL, "input": [item, {"role": "user", "content": "q"}]}
    )
    assert reply.status_code == 200, reply.text
    assert reply.json()["object"] == "response"
