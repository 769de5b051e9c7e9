"""The simulator driven by the real client libraries a user's CI uses: openai, ollama-python,
litellm (hosted_vllm/ and ollama_chat/), langchain-openai.

Each test is a client call that broke on the simulator before issue 10 and works on vLLM 0.33 /
Ollama. The simulators run as real subprocesses on 127.0.0.1 with --port 0 (the port is read
back from the engine's startup line).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import BaseModel

from conftest import SECRET_VARS
from msmall.httpclient import new_client
from msmall.simulator.harness import EngineProcess, simulator_argv
from msmall.simulator.images import png_data_url, solid_png

# One xdist worker runs the whole file: spread over four, each worker started its own pair of
# module-scoped simulators and imported litellm, anthropic and langchain itself (about 15 s of
# CPU per worker for the imports alone, measured with `python -c "import litellm"` etc.).
pytestmark = pytest.mark.xdist_group("sim_clients")

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no download at import
os.environ.setdefault("LITELLM_TELEMETRY", "False")

MODEL = "mistral-small-3.1"
TAG = "mistral-small3.1:24b-instruct-2503-q4_K_M"
RED_PNG = solid_png(32, 32, (220, 20, 20))
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
        },
    },
}
TIME_TOOL = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "The time in a timezone",
        "parameters": {
            "type": "object",
            "properties": {"timezone": {"type": "string"}},
            "required": ["timezone"],
        },
    },
}
PORT_LINES = {"vllm": "Starting vLLM server on http://", "ollama": "Listening on "}


class Address(BaseModel):
    street: str
    city: str


class Person(BaseModel):
    name: str
    age: int
    tags: list[str]
    home: Address
    role: str  # plain string; enums come in Pet


class Pet(BaseModel):
    kind: str
    legs: int


def sim_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (*SECRET_VARS, "OLLAMA_HOST")}
    env.update(HOME=str(home), NO_COLOR="1", PYTHONUNBUFFERED="1")
    return env


def start_sim(home: Path, *args: str, flavor: str = "vllm") -> tuple[EngineProcess, int]:
    """The simulator as a subprocess on port 0; the port comes from its own startup line."""
    engine = EngineProcess(
        simulator_argv("--flavor", flavor, "--port", "0", *args), sim_env(home)
    ).start()
    try:
        line = engine.wait_for_line(PORT_LINES[flavor], timeout=20)
        port = int(line.split(PORT_LINES[flavor], 1)[1].split()[0].rsplit(":", 1)[1])
        if flavor == "vllm":
            engine.wait_for_line("Application startup complete.", timeout=20)
    except BaseException:
        engine.stop()
        raise
    return engine, port


@pytest.fixture(scope="module")
def vllm_base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    engine, port = start_sim(
        tmp_path_factory.mktemp("home"), "--served-model-name", MODEL, "mistral-alias"
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        engine.stop()


@pytest.fixture(scope="module")
def ollama_base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    engine, port = start_sim(tmp_path_factory.mktemp("home"), "--pulled", flavor="ollama")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        engine.stop()


@pytest.fixture
def oai(vllm_base: str):
    import openai

    client = openai.OpenAI(base_url=vllm_base + "/v1", api_key="none", max_retries=0)
    yield client
    client.close()


def ask(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


# openai ----------------------------------------------------------------------------------------


def test_openai_sync_plain_answer_has_no_tool_calls(oai) -> None:
    reply = oai.chat.completions.create(model=MODEL, messages=ask("Reply with 'OK'"))
    message = reply.choices[0].message
    assert message.content == "OK"
    # vLLM drops an empty tool_calls list (ChatMessage._serialize); the simulator sent [].
    assert message.tool_calls is None
    assert reply.system_fingerprint and reply.system_fingerprint.startswith("vllm-0.33.0-")
    assert reply.choices[0].finish_reason == "stop"


def test_openai_response_model_is_the_served_name_and_model_is_optional(vllm_base: str) -> None:
    import openai

    client = openai.OpenAI(base_url=vllm_base + "/v1", api_key="none", max_retries=0)
    alias = client.chat.completions.create(model="mistral-alias", messages=ask("hi"))
    assert alias.model == MODEL  # serving.py: models.model_name(), the first served name
    with new_client(vllm_base) as http:
        no_model = http.post("/v1/chat/completions", json={"messages": ask("Say 'yes'")})
    assert no_model.status_code == 200, no_model.text
    assert no_model.json()["choices"][0]["message"]["content"] == "yes"


def test_openai_async_parse_and_stream(vllm_base: str) -> None:
    import openai

    async def run() -> tuple[Person | None, str, list]:
        client = openai.AsyncOpenAI(base_url=vllm_base + "/v1", api_key="none", max_retries=0)
        async with client:
            parsed = await client.chat.completions.parse(
                model=MODEL, messages=ask("Invent a person"), response_format=Person
            )
            stream = await client.chat.completions.create(
                model=MODEL,
                messages=ask("Reply with 'one two three'"),
                stream=True,
                stream_options={"include_usage": True, "continuous_usage_stats": True},
            )
            text, chunks = "", []
            async for chunk in stream:
                chunks.append(chunk)
                if chunk.choices:
                    text += chunk.choices[0].delta.content or ""
            return parsed.choices[0].message.parsed, text, chunks

    person, streamed, chunks = asyncio.run(run())
    assert isinstance(person, Person) and streamed == "one two three"
    # continuous_usage_stats: every chunk carries the usage so far; the last one the total,
    # the EOS token included (vLLM v1 counts it: three words and the EOS).
    assert all(c.usage is not None for c in chunks)
    assert chunks[-1].usage.completion_tokens == 4 and chunks[-1].system_fingerprint


def test_openai_tools_auto_named_required_none(oai) -> None:
    tools = [WEATHER, TIME_TOOL]
    auto = oai.chat.completions.create(
        model=MODEL, messages=ask("What's the weather in Paris?"), tools=tools
    )
    assert auto.choices[0].finish_reason == "tool_calls"
    assert auto.choices[0].message.tool_calls[0].function.name == "get_weather"
    named = oai.chat.completions.create(
        model=MODEL,
        messages=ask("What's the weather in Paris?"),
        tools=tools,
        tool_choice={"type": "function", "function": {"name": "get_time"}},
    )
    # resolve_finish_reason: a forced named tool finishes with "stop"; forced calls have "".
    assert named.choices[0].finish_reason == "stop"
    assert named.choices[0].message.content == ""
    assert named.choices[0].message.tool_calls[0].function.name == "get_time"
    required = oai.chat.completions.create(
        model=MODEL, messages=ask("Weather in Oslo"), tools=tools, tool_choice="required"
    )
    assert required.choices[0].message.content == ""
    assert json.loads(required.choices[0].message.tool_calls[0].function.arguments)["city"] == (
        "Oslo"
    )
    none = oai.chat.completions.create(
        model=MODEL, messages=ask("Weather in Oslo"), tools=tools, tool_choice="none"
    )
    assert none.choices[0].message.tool_calls is None and none.choices[0].message.content


def test_openai_streamed_tool_call_reassembles(oai) -> None:
    stream = oai.chat.completions.create(
        model=MODEL, messages=ask("Weather in Rome?"), tools=[WEATHER], stream=True
    )
    name, arguments, finish = "", "", None
    for chunk in stream:
        choice = chunk.choices[0]
        for call in choice.delta.tool_calls or []:
            name += call.function.name or ""
            arguments += call.function.arguments or ""
        finish = choice.finish_reason or finish
    assert name == "get_weather" and json.loads(arguments) == {"city": "Rome", "unit": "celsius"}
    assert finish == "tool_calls"
    # serving.py: the fingerprint rides on the terminal chunk (no include_usage).
    assert chunk.system_fingerprint and chunk.system_fingerprint.startswith("vllm-0.33.0-")


def test_openai_image(oai) -> None:
    content = [
        {"type": "text", "text": "What colour is this?"},
        {"type": "image_url", "image_url": {"url": png_data_url(RED_PNG)}},
    ]
    reply = oai.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": content}], logprobs=True
    )
    assert "red" in reply.choices[0].message.content
    tokens = reply.choices[0].logprobs.content
    assert "".join(t.token for t in tokens) == reply.choices[0].message.content


def test_openai_parse_with_a_pydantic_model(oai) -> None:
    parsed = oai.chat.completions.parse(
        model=MODEL, messages=ask("Invent a person."), response_format=Person
    )
    person = parsed.choices[0].message.parsed
    assert isinstance(person, Person) and isinstance(person.home, Address)
    assert person.tags and all(isinstance(t, str) for t in person.tags)
    mode = oai.chat.completions.create(
        model=MODEL, messages=ask("JSON please"), response_format={"type": "json_object"}
    )
    assert isinstance(json.loads(mode.choices[0].message.content), dict)


def test_openai_n_logprobs_stop_and_lengths(oai) -> None:
    two = oai.chat.completions.create(model=MODEL, messages=ask("Say 'hi there'"), n=2)
    assert [c.index for c in two.choices] == [0, 1]
    logprobs = oai.chat.completions.create(
        model=MODEL, messages=ask("Say 'a b c'"), logprobs=True, top_logprobs=2
    )
    content = logprobs.choices[0].logprobs.content
    assert [t.token for t in content] == ["a", " b", " c"]
    assert all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in content)
    stop = oai.chat.completions.create(
        model=MODEL, messages=ask("Reply with 'alpha beta gamma'"), stop=[" gamma"]
    )
    assert stop.choices[0].message.content == "alpha beta"
    assert stop.choices[0].model_extra["stop_reason"] == " gamma"
    exact = oai.chat.completions.create(
        model=MODEL,
        messages=ask("hi"),
        max_tokens=50,
        extra_body={"ignore_eos": True},
    )
    assert exact.usage.completion_tokens == 50 and exact.choices[0].finish_reason == "length"
    at_least = oai.chat.completions.create(
        model=MODEL, messages=ask("Say 'x'"), extra_body={"min_tokens": 9}
    )
    assert at_least.usage.completion_tokens == 10  # nine, then the EOS (counted by vLLM)
    short = oai.chat.completions.create(
        model=MODEL, messages=ask("Tell me a long story"), max_completion_tokens=3
    )
    assert short.usage.completion_tokens == 3 and short.choices[0].finish_reason == "length"


def test_openai_legacy_completions(oai) -> None:
    reply = oai.completions.create(
        model=MODEL, prompt="Once upon a time", max_tokens=16, extra_body={"ignore_eos": True}
    )
    assert reply.object == "text_completion" and reply.usage.completion_tokens == 16
    assert reply.choices[0].text and reply.choices[0].finish_reason == "length"
    streamed = oai.completions.create(
        model=MODEL, prompt="Once", max_tokens=8, stream=True, extra_body={"ignore_eos": True}
    )
    assert sum(1 for chunk in streamed if chunk.choices and chunk.choices[0].text) == 8


def test_openai_responses_api(oai) -> None:
    reply = oai.responses.create(model=MODEL, input="Reply with 'responses'")
    assert reply.output_text == "responses" and reply.status == "completed"
    assert reply.usage.output_tokens == 2  # the word and the EOS token
    text, final = "", None
    for event in oai.responses.create(model=MODEL, input="Say 'a b c'", stream=True):
        if event.type == "response.output_text.delta":
            text += event.delta
        if event.type == "response.completed":
            final = event.response
    assert text == "a b c" and final is not None and final.output_text == "a b c"


def _responses_tool(tool: dict) -> dict:
    # The Responses API's flat function tool (responses/utils.py
    # convert_tool_responses_to_completions_format reads it back into a chat tool).
    return {"type": "function", **tool["function"]}


def test_openai_responses_tools_round_trip_stream_and_image(oai) -> None:
    tools = [_responses_tool(WEATHER), _responses_tool(TIME_TOOL)]
    question = "What is the weather in Rome?"
    reply = oai.responses.create(model=MODEL, input=question, tools=tools)
    calls = [item for item in reply.output if item.type == "function_call"]
    assert len(calls) == 1 and len(reply.output) == 1 and reply.status == "completed"
    call = calls[0]
    assert call.name == "get_weather" and json.loads(call.arguments) == {
        "city": "Rome",
        "unit": "celsius",
    }
    assert len(call.call_id) == 9 and call.call_id.isalnum()  # parser/mistral.py MistralToolCall
    # The call and its output go back as input items (utils.py
    # construct_chat_messages_with_tool_call): the model answers from the tool's output.
    follow = oai.responses.create(
        model=MODEL,
        tools=tools,
        input=[
            {"role": "user", "content": question},
            {"type": "function_call", "call_id": call.call_id, "name": call.name,
             "arguments": call.arguments},
            {"type": "function_call_output", "call_id": call.call_id, "output": "22 C, sunny"},
        ],
    )  # fmt: skip
    assert "22 C, sunny" in follow.output_text
    assert all(item.type == "message" for item in follow.output)
    forced = oai.responses.create(
        model=MODEL, input="hi", tools=tools, tool_choice={"type": "function", "name": "get_time"}
    )
    assert [item.name for item in forced.output] == ["get_time"]
    args, done, final = "", None, None
    for event in oai.responses.create(model=MODEL, input=question, tools=tools, stream=True):
        if event.type == "response.function_call_arguments.delta":
            args += event.delta
        elif event.type == "response.output_item.done":
            done = event.item
        elif event.type == "response.completed":
            final = event.response
    assert json.loads(args) == {"city": "Rome", "unit": "celsius"}
    assert done is not None and done.type == "function_call" and done.arguments == args
    assert final is not None and final.output[0].call_id == done.call_id
    image = oai.responses.create(
        model=MODEL,
        input=[
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "What colour is this?"},
                    {"type": "input_image", "image_url": png_data_url(RED_PNG)},
                ],
            }
        ],
    )
    assert "red" in image.output_text


# anthropic -------------------------------------------------------------------------------------


def _anthropic_tool(tool: dict) -> dict:
    function = tool["function"]
    return {
        "name": function["name"],
        "description": function["description"],
        "input_schema": function["parameters"],
    }


def test_anthropic_messages_tools_round_trip_stream_image_errors(vllm_base: str) -> None:
    import base64

    import anthropic

    client = anthropic.Anthropic(base_url=vllm_base, api_key="none", max_retries=0)
    tools = [_anthropic_tool(WEATHER), _anthropic_tool(TIME_TOOL)]
    question = {"role": "user", "content": "What is the weather in Rome?"}
    message = client.messages.create(model=MODEL, max_tokens=100, tools=tools, messages=[question])
    assert message.stop_reason == "tool_use" and message.role == "assistant"
    [use] = message.content
    assert use.type == "tool_use" and use.name == "get_weather"
    assert use.input == {"city": "Rome", "unit": "celsius"}
    follow = client.messages.create(
        model=MODEL,
        max_tokens=100,
        tools=tools,
        messages=[
            question,
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": use.id, "name": use.name, "input": use.input}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": use.id, "content": "22 C, sunny"}]},
        ],
    )  # fmt: skip
    assert follow.stop_reason == "end_turn" and "22 C, sunny" in follow.content[0].text
    forced = client.messages.create(
        model=MODEL,
        max_tokens=100,
        tools=tools,
        tool_choice={"type": "tool", "name": "get_time"},
        messages=[{"role": "user", "content": "hi"}],
    )
    assert forced.stop_reason == "tool_use" and forced.content[0].name == "get_time"
    # The SDK assembles the streamed input_json_delta pieces into the block's input.
    with client.messages.stream(
        model=MODEL, max_tokens=100, tools=tools, messages=[question]
    ) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    assert final.content[0].input == {"city": "Rome", "unit": "celsius"}
    with client.messages.stream(
        model=MODEL, max_tokens=20, messages=[{"role": "user", "content": "Say 'a b c'"}]
    ) as stream:
        text = "".join(stream.text_stream)
        done = stream.get_final_message()
    assert text == "a b c" and done.stop_reason == "end_turn"
    image = client.messages.create(
        model=MODEL,
        max_tokens=50,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                                 "data": base64.b64encode(RED_PNG).decode()}},
                    {"type": "text", "text": "What colour is this?"},
                ],
            }
        ],
    )  # fmt: skip
    assert "red" in image.content[0].text
    with pytest.raises(anthropic.NotFoundError) as missing:
        client.messages.create(model="nope", max_tokens=5, messages=[question])
    assert missing.value.body["error"]["type"] == "not_found_error"
    client.close()


# ollama-python ---------------------------------------------------------------------------------


@pytest.fixture
def ollama_client(ollama_base: str):
    import ollama

    return ollama.Client(host=ollama_base)


def test_ollama_chat_generate_stream_images(ollama_client) -> None:
    chat = ollama_client.chat(model=TAG, messages=ask("Reply with 'pong'"))
    assert chat.message.content == "pong" and chat.done
    assert chat.eval_count and chat.prompt_eval_count and chat.eval_duration
    generated = ollama_client.generate(model=TAG, prompt="What is 2+3?")
    assert generated.response == "5" and generated.eval_count == 1
    parts = list(ollama_client.chat(model=TAG, messages=ask("Say 'a b c'"), stream=True))
    assert "".join(p.message.content for p in parts) == "a b c"
    assert parts[-1].done and parts[-1].eval_count == 3
    image = ollama_client.chat(
        model=TAG,
        messages=[{"role": "user", "content": "What colour?", "images": [RED_PNG]}],
    )
    assert "red" in image.message.content


def test_ollama_tools_have_ids_and_counts(ollama_client, ollama_base: str) -> None:
    reply = ollama_client.chat(model=TAG, messages=ask("Weather in Lima?"), tools=[WEATHER])
    (call,) = reply.message.tool_calls
    assert call.function.name == "get_weather" and call.function.arguments["city"] == "Lima"
    # server/routes.go: every final message carries the counts and durations.
    assert reply.eval_count and reply.prompt_eval_count and reply.total_duration
    streamed = list(
        ollama_client.chat(
            model=TAG, messages=ask("Weather in Lima?"), tools=[WEATHER], stream=True
        )
    )
    calls = [c for p in streamed for c in (p.message.tool_calls or [])]
    assert len(calls) == 1 and streamed[-1].done and streamed[-1].eval_count
    # ollama-python's model drops them, but the wire has toolCallId() and function.index
    # (server/routes.go ChatHandler, api/types.go ToolCall).
    body = {"model": TAG, "messages": ask("Weather in Lima?"), "tools": [WEATHER], "stream": False}
    with new_client(ollama_base) as http:
        (raw,) = http.post("/api/chat", json=body).json()["message"]["tool_calls"]
    assert re.fullmatch(r"call_[a-z0-9]{8}", raw["id"]) and raw["function"]["index"] == 0


def test_ollama_format_json_and_schema(ollama_client) -> None:
    loose = ollama_client.chat(model=TAG, messages=ask("JSON"), format="json")
    assert isinstance(json.loads(loose.message.content), dict)
    strict = ollama_client.chat(model=TAG, messages=ask("A pet"), format=Pet.model_json_schema())
    Pet.model_validate_json(strict.message.content)
    generated = ollama_client.generate(
        model=TAG, prompt="A person", format=Person.model_json_schema()
    )
    Person.model_validate_json(generated.response)


def test_ollama_embed_list_show_ps_pull_copy_create(ollama_client) -> None:
    embedded = ollama_client.embed(model=TAG, input=["hello", "world"])
    assert len(embedded.embeddings) == 2 and len(embedded.embeddings[0]) == 5120
    legacy = ollama_client.embeddings(model=TAG, prompt="hello")
    assert list(legacy.embedding) == pytest.approx(embedded.embeddings[0])
    assert TAG in [m.model for m in ollama_client.list().models]
    assert "completion" in ollama_client.show(TAG).capabilities
    ollama_client.chat(model=TAG, messages=ask("hi"))
    assert [m.model for m in ollama_client.ps().models] == [TAG]
    assert ollama_client.pull("mistral-small3.1:24b").status == "success"
    ollama_client.copy(TAG, "my-mistral:latest")
    assert "my-mistral:latest" in [m.model for m in ollama_client.list().models]
    created = ollama_client.create(model="mistral-ci", from_=TAG)
    assert created.status == "success"
    assert ollama_client.chat(model="mistral-ci", messages=ask("Say 'made'")).message.content == (
        "made"
    )


def test_ollama_openai_stream_role_once_and_empty_finish(ollama_base: str) -> None:
    import openai

    client = openai.OpenAI(base_url=ollama_base + "/v1", api_key="ollama", max_retries=0)
    chunks = list(
        client.chat.completions.create(model=TAG, messages=ask("Reply with 'x y z'"), stream=True)
    )
    roles = [c.choices[0].delta.role for c in chunks if c.choices]
    assert roles[0] == "assistant" and roles.count("assistant") == 1
    last = chunks[-1].choices[0]
    assert last.finish_reason == "stop" and last.delta.content is None
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "x y z"
    model = client.models.retrieve(TAG)
    assert model.id == TAG
    vectors = client.embeddings.create(model=TAG, input="hello")
    assert len(vectors.data[0].embedding) == 5120
    text = client.completions.create(model=TAG, prompt="Say 'ok'")
    assert text.choices[0].text == "ok"


# litellm ---------------------------------------------------------------------------------------


def test_litellm_hosted_vllm_and_json_mode(vllm_base: str) -> None:
    import litellm

    reply = litellm.completion(
        model=f"hosted_vllm/{MODEL}",
        api_base=vllm_base + "/v1",
        api_key="none",
        messages=ask("Reply with 'lite'"),
    )
    assert reply.choices[0].message.content == "lite"
    assert not reply.choices[0].message.tool_calls
    as_json = litellm.completion(
        model=f"hosted_vllm/{MODEL}",
        api_base=vllm_base + "/v1",
        api_key="none",
        messages=ask("JSON"),
        response_format={"type": "json_object"},
    )
    assert isinstance(json.loads(as_json.choices[0].message.content), dict)


def test_litellm_context_window_error(vllm_base: str) -> None:
    import litellm

    with pytest.raises(litellm.ContextWindowExceededError, match="even without any output"):
        litellm.completion(
            model=f"hosted_vllm/{MODEL}",
            api_base=vllm_base + "/v1",
            api_key="none",
            messages=ask("word " * 40000),
            num_retries=0,
        )


def test_litellm_ollama_chat(ollama_base: str) -> None:
    import litellm

    reply = litellm.completion(
        model=f"ollama_chat/{TAG}", api_base=ollama_base, messages=ask("Reply with 'llama'")
    )
    assert reply.choices[0].message.content == "llama"
    tools = litellm.completion(
        model=f"ollama_chat/{TAG}",
        api_base=ollama_base,
        messages=ask("Weather in Lima?"),
        tools=[WEATHER],
    )
    assert tools.choices[0].message.tool_calls[0].function.name == "get_weather"
    as_json = litellm.completion(
        model=f"ollama_chat/{TAG}",
        api_base=ollama_base,
        messages=ask("JSON"),
        response_format={"type": "json_object"},
    )
    assert isinstance(json.loads(as_json.choices[0].message.content), dict)


# langchain-openai ------------------------------------------------------------------------------


def test_langchain_bind_tools_and_structured_output(vllm_base: str) -> None:
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    @tool
    def get_weather(city: str) -> str:
        """Current weather in a city."""
        return f"sunny in {city}"

    llm = ChatOpenAI(model=MODEL, base_url=vllm_base + "/v1", api_key="none", max_retries=0)
    called = llm.bind_tools([get_weather]).invoke("What's the weather in Paris?")
    assert called.tool_calls and called.tool_calls[0]["name"] == "get_weather"
    assert called.tool_calls[0]["args"] == {"city": "Paris"}
    plain = llm.invoke("Reply with 'chain'")
    assert plain.content == "chain" and not plain.tool_calls
    person = llm.with_structured_output(Person).invoke("Invent a person")
    assert isinstance(person, Person)
    pet = llm.with_structured_output(Pet, method="function_calling").invoke("A pet")
    assert isinstance(pet, Pet)


def test_vllm_bench_style_completions_with_raw_http(vllm_base: str) -> None:
    """What `vllm bench serve` sends by default (benchmarks/lib/endpoint_request_func.py
    async_request_openai_completions): /v1/completions, stream, ignore_eos, max_tokens."""
    body = {
        "model": MODEL,
        "prompt": "benchmark prompt",
        "max_tokens": 32,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with (
        new_client(vllm_base) as http,
        http.stream("POST", "/v1/completions", json=body) as reply,
    ):
        assert reply.status_code == 200
        events = [line[6:] for line in reply.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[-1]["usage"]["completion_tokens"] == 32
    assert sum(1 for c in chunks if c["choices"] and c["choices"][0]["text"]) == 32
