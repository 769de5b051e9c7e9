"""The requests a bench sends, each with its known right answer.

* chat: a prompt of about `input_tokens` words, `max_tokens` = `output_tokens` and `ignore_eos`
  (vLLM's extra sampling parameter, as `vllm bench serve` sends for its random dataset; engines
  that do not know it ignore it, and the usage they report shows whether the length held);
* tools: one of a few tools with a JSON schema, and a prompt whose right call is known (the tool
  named in it, arguments valid against its schema);
* vision: a PNG of one solid colour made in code; the right answer names the colour.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any

KINDS = ("chat", "tools", "vision")

TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the current weather for a city.",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "description": "City name"},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                },
                "required": ["city"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "convert_currency",
            "description": "Convert an amount of money from one currency to another.",
            "parameters": {
                "type": "object",
                "properties": {
                    "amount": {"type": "number", "minimum": 0},
                    "from_currency": {"type": "string", "enum": ["EUR", "USD", "GBP", "JPY"]},
                    "to_currency": {"type": "string", "enum": ["EUR", "USD", "GBP", "JPY"]},
                },
                "required": ["amount", "from_currency", "to_currency"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "description": "Get the local time in a time zone.",
            "parameters": {
                "type": "object",
                "properties": {"timezone": {"type": "string", "description": "IANA zone"}},
                "required": ["timezone"],
            },
        },
    },
]
TOOL_PROMPTS: list[tuple[str, str]] = [
    ("get_weather", "What is the weather in Lyon right now? Use the get_weather tool."),
    ("convert_currency", "Convert 120 EUR to USD. Use the convert_currency tool."),
    ("get_time", "What time is it in Europe/Berlin? Use the get_time tool."),
]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}

# Colours far apart in RGB, named as a model (and the simulator's nearest-colour rule) names them.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 30),
    "blue": (30, 60, 220),
    "yellow": (235, 220, 40),
}
VISION_PROMPT = "What colour is this image? Answer with one word."
IMAGE_SIZE = 64

_WORDS = [
    "alpha",
    "bravo",
    "charlie",
    "delta",
    "echo",
    "foxtrot",
    "golf",
    "hotel",
    "india",
    "juliet",
    "kilo",
    "lima",
    "mike",
    "november",
    "oscar",
    "papa",
    "quebec",
    "romeo",
    "sierra",
    "tango",
    "uniform",
    "victor",
    "whiskey",
    "xray",
    "yankee",
    "zulu",
]


@dataclass
class BenchRequest:
    kind: str  # "chat" | "tools" | "vision"
    body: dict[str, Any]
    expect_tool: str | None = None
    expect_colour: str | None = None
    expect_tokens: int | None = None  # chat: the asked output length (ignore_eos)


def parse_mix(text: str) -> dict[str, int]:
    """``chat=70,tools=20,vision=10`` -> weights; ValueError with a plain message."""
    mix: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        name = name.strip()
        if name not in KINDS or not sep:
            raise ValueError(f"'{part}': use kind=weight with kind one of {', '.join(KINDS)}")
        try:
            weight = int(value)
        except ValueError:
            raise ValueError(f"'{part}': the weight must be a whole number") from None
        if weight < 0:
            raise ValueError(f"'{part}': the weight must not be negative")
        mix[name] = weight
    if not mix or sum(mix.values()) <= 0:
        raise ValueError("the mix needs at least one kind with a weight above 0")
    return mix


class Workload:
    """Makes requests in a reproducible order (seeded), in the asked proportions."""

    def __init__(
        self,
        model: str,
        mix: dict[str, int],
        input_tokens: int = 128,
        output_tokens: int = 128,
        seed: int = 0,
        ignore_eos: bool = True,
    ) -> None:
        self.model = model
        self.mix = {k: v for k, v in mix.items() if v > 0}
        self.input_tokens = max(1, input_tokens)
        self.output_tokens = max(1, output_tokens)
        self.ignore_eos = ignore_eos
        self.random = random.Random(seed)
        self.count = 0
        self._images: dict[str, str] = {}
        # Deterministic interleaving: the kind of request n follows the weights exactly over
        # every block of sum(weights) requests, so short runs still see every kind.
        self._cycle: list[str] = []
        for kind, weight in self.mix.items():
            self._cycle += [kind] * weight
        self.random.shuffle(self._cycle)

    def _stream_fields(self) -> dict[str, Any]:
        return {"stream": True, "stream_options": {"include_usage": True}}

    def next(self) -> BenchRequest:
        kind = self._cycle[self.count % len(self._cycle)]
        self.count += 1
        return getattr(self, f"_{kind}")(self.count)

    def _chat(self, n: int) -> BenchRequest:
        # A different first word per request, so a prefix cache cannot serve the prompt.
        words = [f"r{n}"] + [
            self.random.choice(_WORDS) for _ in range(max(0, self.input_tokens - 1))
        ]
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": "user", "content": " ".join(words)}],
            "max_tokens": self.output_tokens,
            "temperature": 0.15,
            **self._stream_fields(),
        }
        if self.ignore_eos:
            body["ignore_eos"] = True
        return BenchRequest(
            "chat", body, expect_tokens=self.output_tokens if self.ignore_eos else None
        )

    def _tools(self, n: int) -> BenchRequest:
        name, prompt = TOOL_PROMPTS[n % len(TOOL_PROMPTS)]
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": prompt}],
            "tools": TOOLS,
            "tool_choice": "auto",
            "max_tokens": 256,
            "temperature": 0.15,
            **self._stream_fields(),
        }
        return BenchRequest("tools", body, expect_tool=name)

    def _vision(self, n: int) -> BenchRequest:
        colour = list(COLOURS)[n % len(COLOURS)]
        body = {
            "model": self.model,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": VISION_PROMPT},
                        {"type": "image_url", "image_url": {"url": self._image(colour)}},
                    ],
                }
            ],
            "max_tokens": 32,
            "temperature": 0.15,
            **self._stream_fields(),
        }
        return BenchRequest("vision", body, expect_colour=colour)

    def _image(self, colour: str) -> str:
        if colour not in self._images:
            from msmall.simulator.images import png_data_url, solid_png

            self._images[colour] = png_data_url(solid_png(IMAGE_SIZE, IMAGE_SIZE, COLOURS[colour]))
        return self._images[colour]


# Scoring -------------------------------------------------------------------------------------


def validate(value: Any, schema: dict[str, Any], path: str = "$") -> list[str]:
    """The JSON-schema subset tool definitions use (type, enum, required, properties,
    additionalProperties: false, minimum/maximum, items). Returns the problems found."""
    problems: list[str] = []
    kind = schema.get("type")
    checks = {
        "object": lambda v: isinstance(v, dict),
        "array": lambda v: isinstance(v, list),
        "string": lambda v: isinstance(v, str),
        "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        "boolean": lambda v: isinstance(v, bool),
        "null": lambda v: v is None,
    }
    kinds = kind if isinstance(kind, list) else [kind] if kind else []
    if kinds and not any(checks.get(k, lambda v: True)(value) for k in kinds):
        return [f"{path}: expected {'/'.join(kinds)}, got {type(value).__name__}"]
    if "enum" in schema and value not in schema["enum"]:
        problems.append(f"{path}: {value!r} is not one of {schema['enum']}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            problems.append(f"{path}: {value} < minimum {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            problems.append(f"{path}: {value} > maximum {schema['maximum']}")
    if isinstance(value, dict):
        properties = schema.get("properties") or {}
        for name in schema.get("required") or []:
            if name not in value:
                problems.append(f"{path}: missing required {name!r}")
        for name, item in value.items():
            if name in properties:
                problems += validate(item, properties[name], f"{path}.{name}")
            elif schema.get("additionalProperties") is False:
                problems.append(f"{path}: unexpected property {name!r}")
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            problems += validate(item, schema["items"], f"{path}[{i}]")
    return problems


def score_tool_call(calls: list[dict[str, Any]], expect: str) -> tuple[bool, str]:
    """OK means: a `tool_calls` entry, its arguments valid JSON that validates against the
    tool's schema, and the function the prompt asks for."""
    if not calls:
        return False, "no tool_calls entry"
    fn = calls[0].get("function") or {}
    if fn.get("name") != expect:
        return False, f"called {fn.get('name')!r}, expected {expect!r}"
    try:
        args = json.loads(fn.get("arguments") or "")
    except (TypeError, ValueError):
        return False, "arguments are not valid JSON"
    problems = validate(args, SCHEMAS[expect])
    if problems:
        return False, "; ".join(problems[:3])
    return True, ""


def score_vision(text: str, expect: str) -> tuple[bool, str]:
    lowered = text.lower()
    if expect not in lowered:
        return False, f"answer does not name {expect}: {text[:60]!r}"
    others = [c for c in COLOURS if c != expect and c in lowered]
    if others:
        return False, f"answer also names {', '.join(others)}"
    return True, ""
