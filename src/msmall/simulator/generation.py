"""The simulated model: what it answers, how many tokens that costs, which tool it calls.

Answers are deterministic and checkable, so smoke tests can assert on them: "reply with 'OK'"
gets ``OK``, "what is 2+3?" gets ``5``, an image gets its size and dominant colour, a tool
list gets a call of the best-matching function with arguments built from its JSON schema.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import secrets
import string
from dataclasses import dataclass, field
from typing import Any

from msmall.simulator.images import ImageInfo

_TOKEN_RE = re.compile(r"\w+|[^\w\s]")
_PIECE_RE = re.compile(r"\s*\S+")
# Chat-template tokens per message ([INST] ... [/INST] and friends).
TEMPLATE_TOKENS_PER_MESSAGE = 4


class RequestError(ValueError):
    """The request itself is wrong (the engines answer 400)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def count_tokens(text: str) -> int:
    return len(_TOKEN_RE.findall(text))


def pieces(text: str) -> list[str]:
    """The reply split into stream deltas, one per simulated token (whitespace kept)."""
    return _PIECE_RE.findall(text)


@dataclass
class Prompt:
    """What the model sees of a chat request."""

    texts: list[str] = field(default_factory=list)  # every message's text, in order
    last_user_text: str = ""
    last_role: str = ""
    last_tool_result: str = ""
    images: list[ImageInfo] = field(default_factory=list)
    tokens: int = 0


@dataclass
class ToolCall:
    name: str
    arguments: dict[str, Any]
    id: str = ""

    @property
    def arguments_json(self) -> str:
        return json.dumps(self.arguments)


def tool_call_id(style: str) -> str:
    if style == "mistral":
        # Mistral's tool parser makes 9-character alphanumeric ids (the model requires that).
        return "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(9))
    return "call_" + "".join(
        secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8)
    )


def answer_text(prompt: Prompt) -> str:
    if prompt.last_role == "tool":
        result = prompt.last_tool_result.strip()
        return f"The tool returned: {result[:300]}" if result else "The tool returned nothing."
    if prompt.images:
        parts = []
        for n, image in enumerate(prompt.images, 1):
            colour = f", mostly {image.colour}" if image.colour else ""
            label = "The image" if len(prompt.images) == 1 else f"Image {n}"
            parts.append(
                f"{label} is a {image.width}x{image.height} {image.format.upper()} picture{colour}."
            )
        return " ".join(parts)
    text = prompt.last_user_text
    quoted = re.search(r"[\"'`“]([^\"'`”\n]{1,60})[\"'`”]", text)
    if quoted and re.search(r"\b(reply|respond|answer|say|repeat|write|output)\b", text, re.I):
        return quoted.group(1).strip()
    arithmetic = re.search(r"(-?\d+)\s*([-+*x×/])\s*(-?\d+)", text)
    if arithmetic:
        a, op, b = int(arithmetic.group(1)), arithmetic.group(2), int(arithmetic.group(3))
        if op in "*x×":
            return str(a * b)
        if op == "/":
            return str(a // b) if b and a % b == 0 else (f"{a / b:g}" if b else "undefined")
        return str(a + b if op == "+" else a - b)
    words = text.split()
    echo = " ".join(words[:12]) + (" ..." if len(words) > 12 else "")
    return (
        f"Hello! I am Mistral Small 3.1, answering from the msmall simulator. You said: {echo}"
        if echo
        else "Hello! I am Mistral Small 3.1, answering from the msmall simulator."
    )


def choose_tool(
    tools: list[dict[str, Any]], tool_choice: Any, prompt: Prompt
) -> dict[str, Any] | None:
    """The function definition the model calls, or None when it answers in text."""
    functions = [t.get("function", {}) for t in tools if isinstance(t, dict)]
    functions = [f for f in functions if isinstance(f, dict) and f.get("name")]
    if not functions or tool_choice == "none":
        return None
    if isinstance(tool_choice, dict):
        wanted = (tool_choice.get("function") or {}).get("name")
        for function in functions:
            if function["name"] == wanted:
                return function
        raise RequestError(f"Tool '{wanted}' has not been passed in `tools`.", param="tool_choice")
    if tool_choice in (None, "auto") and prompt.last_role == "tool":
        # The tool answered; the model now answers the user in text.
        return None
    text = prompt.last_user_text.lower()
    for function in functions:
        name = str(function["name"]).lower()
        if name in text or name.replace("_", " ") in text:
            return function
    return functions[0]


def build_arguments(schema: Any, prompt_text: str) -> dict[str, Any]:
    """Arguments for the required properties of a JSON schema, plausible for the prompt."""
    if not isinstance(schema, dict):
        return {}
    properties = schema.get("properties") or {}
    required = schema.get("required") or []
    return {
        name: _value_for(name, properties.get(name) or {}, prompt_text)
        for name in required
        if isinstance(name, str)
    }


def _value_for(name: str, schema: dict[str, Any], prompt_text: str) -> Any:
    if schema.get("enum"):
        return schema["enum"][0]
    if "default" in schema:
        return schema["default"]
    kind = schema.get("type", "string")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    if kind == "integer":
        return max(1, int(schema.get("minimum", 1)))
    if kind == "number":
        return float(schema.get("minimum", 1.0))
    if kind == "boolean":
        return True
    if kind == "array":
        return []
    if kind == "object":
        return build_arguments(schema, prompt_text)
    if schema.get("format") == "date":
        return dt.date.today().isoformat()
    lowered = name.lower()
    if any(word in lowered for word in ("city", "location", "place", "town", "country")):
        return _last_proper_noun(prompt_text) or "Paris"
    if "unit" in lowered:
        return "celsius"
    if any(word in lowered for word in ("query", "text", "question", "prompt")):
        return prompt_text.strip()[:100] or "example"
    return "example"


def _last_proper_noun(text: str) -> str | None:
    """The last capitalised word that does not start a sentence: "weather in Paris?" -> Paris."""
    found = None
    for match in re.finditer(r"\b[A-Z][a-zA-Z\-]+", text):
        before = text[: match.start()].rstrip()
        if before and before[-1] not in ".!?:":
            found = match.group(0)
    return found


def limit(reply_text: str, max_tokens: int | None) -> tuple[list[str], str]:
    deltas = pieces(reply_text) or [""]
    if max_tokens is not None and len(deltas) > max_tokens:
        return deltas[:max_tokens], "length"
    return deltas, "stop"


def tools_as_text(calls: list[ToolCall]) -> str:
    """What Mistral Small 3.1 writes for a tool call when nothing parses it (V7-Tekken format)."""
    payload = [{"name": c.name, "arguments": c.arguments} for c in calls]
    return "[TOOL_CALLS]" + json.dumps(payload)
