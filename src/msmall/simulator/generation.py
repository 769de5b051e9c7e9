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


# Output length ---------------------------------------------------------------------------

# What the model "keeps saying" when asked for more tokens than its answer has (ignore_eos,
# min_tokens): one simulated token per word.
_FILLER = [
    "",
    "The",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "the",
    "lazy",
    "dog",
    "while",
    "the",
    "simulator",
    "keeps",
    "generating",
    "tokens",
    "until",
    "it",
    "reaches",
    "the",
    "requested",
    "length.",
][1:]


@dataclass
class OutputLimits:
    """The sampling parameters that decide how long an answer is (vllm/sampling_params.py)."""

    max_tokens: int | None = None  # after clamping to the context left (get_max_tokens)
    min_tokens: int = 0
    ignore_eos: bool = False
    stop: list[str] = field(default_factory=list)


@dataclass
class Shaped:
    deltas: list[str]
    finish_reason: str
    stop_reason: str | None = None
    # Tokens generated when a stop string ended the answer: up to and including the one that
    # completed the string, which the output is cut inside (vllm/v1/engine/output_processor.py
    # _trim_surplus_tokens keeps the tokens through it); None: one per delta.
    generated: int | None = None


def filler(count: int, start: int = 0) -> list[str]:
    return [" " + _FILLER[(start + n) % len(_FILLER)] for n in range(count)]


def shape(text: str, limits: OutputLimits, pad: bool = True) -> Shaped:
    """Cut or extend the model's answer the way the engine's stop checks would.

    vLLM v1 (vllm/v1/engine/detokenizer.py check_stop_strings, vllm/v1/core/sched/utils.py
    check_stop): EOS ends the answer unless ``ignore_eos`` or fewer than ``min_tokens`` were
    generated; a stop string ends it (not included in the output, ``stop_reason`` = the string)
    once ``min_tokens`` are out; ``max_tokens`` ends it with ``finish_reason="length"``.
    """
    deltas = pieces(text) or [""]
    if deltas == [""] and (limits.ignore_eos or limits.min_tokens):
        deltas = []
    target = len(deltas)
    if pad and limits.ignore_eos and limits.max_tokens is not None:
        target = max(target, limits.max_tokens)
    if pad:
        target = max(target, limits.min_tokens)
    if target > len(deltas):
        deltas = deltas + filler(target - len(deltas))
    if limits.stop:
        joined = "".join(deltas)
        # Only text after the first min_tokens tokens may stop the answer.
        floor = len("".join(deltas[: limits.min_tokens]))
        best: tuple[int, str] | None = None
        for stop in limits.stop:
            at = joined.find(stop, max(0, floor - len(stop) + 1))
            if at >= 0 and at + len(stop) > floor and (best is None or at < best[0]):
                best = (at, stop)
        if best is not None:
            kept = joined[: best[0]]
            cut = pieces(kept)
            trailing = kept[len("".join(cut)) :]  # whitespace before the stop string stays
            if trailing:
                cut = [*cut[:-1], cut[-1] + trailing] if cut else [trailing]
            if limits.max_tokens is None or len(cut) <= limits.max_tokens:
                if not cut:
                    cut = [""]
                end, generated, pos = best[0] + len(best[1]), 0, 0
                for piece in deltas:
                    generated, pos = generated + 1, pos + len(piece)
                    if pos >= end:
                        break
                return Shaped(cut, "stop", best[1], generated)
    # The answer's EOS is one more token: an answer of exactly max_tokens tokens (or padded
    # to it under ignore_eos) also ends on the length limit.
    if limits.max_tokens is not None and len(deltas) >= limits.max_tokens:
        return Shaped(deltas[: limits.max_tokens], "length")
    return Shaped(deltas or [""], "stop")


def token_count(deltas: list[str]) -> int:
    return len([d for d in deltas if d]) if deltas != [""] else 0


# Structured output -------------------------------------------------------------------------


def value_from_schema(
    schema: Any, prompt_text: str = "", name: str = "", root: Any = None, depth: int = 0
) -> Any:
    """A value that validates against a JSON schema (objects, arrays, enums, const, $ref/$defs,
    anyOf/oneOf/allOf, required keys, min/max bounds), plausible for the prompt.

    Stands in for vLLM's structured outputs (xgrammar) and Ollama's ``format``: both only
    emit text the schema accepts.
    """
    root = schema if root is None else root
    if not isinstance(schema, dict) or depth > 24:
        return "example"
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        return value_from_schema(_resolve(ref, root), prompt_text, name, root, depth + 1)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            chosen = next(
                (o for o in options if isinstance(o, dict) and o.get("type") != "null"),
                options[0],
            )
            return value_from_schema(chosen, prompt_text, name, root, depth + 1)
    if isinstance(schema.get("allOf"), list):
        merged: dict[str, Any] = {}
        for part in schema["allOf"]:
            if isinstance(part, dict) and isinstance(part.get("$ref"), str):
                part = _resolve(part["$ref"], root)
            if isinstance(part, dict):
                for k, v in part.items():
                    if k in ("properties",) and isinstance(v, dict):
                        merged.setdefault("properties", {}).update(v)
                    elif k == "required" and isinstance(v, list):
                        merged.setdefault("required", []).extend(v)
                    else:
                        merged.setdefault(k, v)
        return value_from_schema(merged, prompt_text, name, root, depth + 1)
    if "default" in schema:
        return schema["default"]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        kind = "object" if "properties" in schema else "string"
    if kind == "object":
        properties = schema.get("properties") or {}
        required = [k for k in schema.get("required") or [] if isinstance(k, str)]
        out: dict[str, Any] = {}
        for key, sub in properties.items():
            # Optional keys only near the top: a recursive schema must end somewhere.
            if key in required or depth < 3:
                out[key] = value_from_schema(sub, prompt_text, key, root, depth + 1)
        for key in required:
            if key not in out:
                out[key] = "example"
        return out
    if kind == "array":
        items = schema.get("items") or {}
        count = max(1, int(schema.get("minItems", 1)))
        if "maxItems" in schema:
            count = min(count, int(schema["maxItems"]))
        prefix = schema.get("prefixItems")
        if isinstance(prefix, list) and prefix:
            return [value_from_schema(p, prompt_text, name, root, depth + 1) for p in prefix]
        return [value_from_schema(items, prompt_text, name, root, depth + 1) for _ in range(count)]
    if kind == "integer":
        low = schema.get("minimum", schema.get("exclusiveMinimum", 0))
        value = int(low) + (1 if "exclusiveMinimum" in schema and "minimum" not in schema else 0)
        value = (
            max(value, 1) if "minimum" not in schema and "exclusiveMinimum" not in schema else value
        )
        if "maximum" in schema:
            value = min(value, int(schema["maximum"]))
        return value
    if kind == "number":
        low = schema.get("minimum", schema.get("exclusiveMinimum"))
        value = 1.0 if low is None else float(low) + (0.5 if "exclusiveMinimum" in schema else 0)
        if "maximum" in schema:
            value = min(value, float(schema["maximum"]))
        return value
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return _string_for(name, schema, prompt_text)


def _resolve(ref: str, root: Any) -> Any:
    target: Any = root
    for part in ref[2:].split("/"):
        target = target.get(part, {}) if isinstance(target, dict) else {}
    return target


def _string_for(name: str, schema: dict[str, Any], prompt_text: str) -> str:
    fmt = schema.get("format")
    if fmt == "date":
        text = dt.date.today().isoformat()
    elif fmt == "date-time":
        text = dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()
    elif fmt == "email":
        text = "user@example.com"
    elif fmt in ("uri", "url"):
        text = "https://example.com"
    elif fmt == "uuid":
        text = "00000000-0000-4000-8000-000000000000"
    else:
        text = _value_for(name, {"type": "string"}, prompt_text) if name else "example"
    low = int(schema.get("minLength", 0))
    if len(text) < low:
        text = text + "x" * (low - len(text))
    if "maxLength" in schema:
        text = text[: int(schema["maxLength"])]
    return text


def json_answer(schema: Any, prompt_text: str) -> str:
    """The JSON text a structured-output request gets back; ``{}``-like JSON with no schema."""
    if schema is None:
        return json.dumps({"answer": answer_text(Prompt(last_user_text=prompt_text))})
    return json.dumps(value_from_schema(schema, prompt_text))
