"""The type vLLM 0.33 validates each chat message against, copied so pydantic reports the same
errors: renderers/chat_utils/types.py ChatCompletionMessageParam = openai's
ChatCompletionMessageParam (openai 3.57 types/chat/*_param.py, the version vLLM 0.33's
environment resolves) | CustomChatCompletionMessageParam | openai_harmony's Message. Members,
fields and their order are as in those files: pydantic's union errors follow them. openai's
``Iterable[...]`` is kept: pydantic validates it lazily, which decides whether a bad part fails
at request validation or later, while rendering (chat_message.py).

Built on first use (a TypeAdapter over this union costs tens of milliseconds)."""

from __future__ import annotations

from collections.abc import Iterable
from enum import Enum
from functools import cache
from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter
from typing_extensions import Required, TypedDict

# ---- openai/types/chat (3.57) ----


class PromptCacheBreakpoint(TypedDict, total=False):
    mode: Required[Literal["explicit"]]
    ttl: Literal["30m", "12h"]


class ChatCompletionContentPartTextParam(TypedDict, total=False):
    text: Required[str]
    type: Required[Literal["text"]]
    prompt_cache_breakpoint: PromptCacheBreakpoint


class ImageURL(TypedDict, total=False):
    url: Required[str]
    detail: Literal["auto", "low", "high", "original"]


class ChatCompletionContentPartImageParam(TypedDict, total=False):
    image_url: Required[ImageURL]
    type: Required[Literal["image_url"]]
    prompt_cache_breakpoint: PromptCacheBreakpoint


class InputAudio(TypedDict, total=False):
    data: Required[str]
    format: Required[Literal["wav", "mp3"]]


class ChatCompletionContentPartInputAudioParam(TypedDict, total=False):
    input_audio: Required[InputAudio]
    type: Required[Literal["input_audio"]]
    prompt_cache_breakpoint: PromptCacheBreakpoint


class FileFile(TypedDict, total=False):
    file_data: str
    file_id: str
    filename: str


class File(TypedDict, total=False):
    file: Required[FileFile]
    type: Required[Literal["file"]]
    prompt_cache_breakpoint: PromptCacheBreakpoint


OpenAIChatCompletionContentPartParam = Union[
    ChatCompletionContentPartTextParam,
    ChatCompletionContentPartImageParam,
    ChatCompletionContentPartInputAudioParam,
    File,
]


class ChatCompletionContentPartRefusalParam(TypedDict, total=False):
    refusal: Required[str]
    type: Required[Literal["refusal"]]


class ChatCompletionDeveloperMessageParam(TypedDict, total=False):
    content: Required[Union[str, Iterable[ChatCompletionContentPartTextParam]]]
    role: Required[Literal["developer"]]
    name: str


class ChatCompletionSystemMessageParam(TypedDict, total=False):
    content: Required[Union[str, Iterable[ChatCompletionContentPartTextParam]]]
    role: Required[Literal["system"]]
    name: str


class ChatCompletionUserMessageParam(TypedDict, total=False):
    content: Required[Union[str, Iterable[OpenAIChatCompletionContentPartParam]]]
    role: Required[Literal["user"]]
    name: str


class Audio(TypedDict, total=False):
    id: Required[str]


class FunctionCall(TypedDict, total=False):
    arguments: Required[str]
    name: Required[str]


class Function(TypedDict, total=False):
    arguments: Required[str]
    name: Required[str]


class ChatCompletionMessageFunctionToolCallParam(TypedDict, total=False):
    id: Required[str]
    function: Required[Function]
    type: Required[Literal["function"]]


class Custom(TypedDict, total=False):
    input: Required[str]
    name: Required[str]


class ChatCompletionMessageCustomToolCallParam(TypedDict, total=False):
    id: Required[str]
    custom: Required[Custom]
    type: Required[Literal["custom"]]


ChatCompletionMessageToolCallUnionParam = Union[
    ChatCompletionMessageFunctionToolCallParam, ChatCompletionMessageCustomToolCallParam
]
ContentArrayOfContentPart = Union[
    ChatCompletionContentPartTextParam, ChatCompletionContentPartRefusalParam
]


class ChatCompletionAssistantMessageParam(TypedDict, total=False):
    role: Required[Literal["assistant"]]
    audio: Optional[Audio]
    content: Union[str, Iterable[ContentArrayOfContentPart], None]
    function_call: Optional[FunctionCall]
    name: str
    refusal: Optional[str]
    tool_calls: Iterable[ChatCompletionMessageToolCallUnionParam]


class ChatCompletionToolMessageParam(TypedDict, total=False):
    content: Required[Union[str, Iterable[ChatCompletionContentPartTextParam]]]
    role: Required[Literal["tool"]]
    tool_call_id: Required[str]


class ChatCompletionFunctionMessageParam(TypedDict, total=False):
    content: Required[Optional[str]]
    name: Required[str]
    role: Required[Literal["function"]]


class FunctionDefinition(TypedDict, total=False):
    name: Required[str]
    description: str
    parameters: dict[str, object]
    strict: Optional[bool]


class ChatCompletionFunctionToolParam(TypedDict, total=False):
    function: Required[FunctionDefinition]
    type: Required[Literal["function"]]


# ---- vllm/renderers/chat_utils/types.py ----


class AudioURL(TypedDict, total=False):
    url: Required[str]


class ChatCompletionContentPartAudioParam(TypedDict, total=False):
    audio_url: Required[AudioURL]
    type: Required[Literal["audio_url"]]


MultiModalEmbedsPayload = Union[str, dict[str, Union[str, list[Union[int, float]]]]]


class ChatCompletionContentPartImageEmbedsParam(TypedDict, total=False):
    image_embeds: Optional[MultiModalEmbedsPayload]
    type: Required[Literal["image_embeds"]]
    uuid: Optional[str]


class ChatCompletionContentPartAudioEmbedsParam(TypedDict, total=False):
    audio_embeds: Optional[MultiModalEmbedsPayload]
    type: Required[Literal["audio_embeds"]]
    uuid: Optional[str]


class ChatCompletionContentPartVideoEmbedsParam(TypedDict, total=False):
    video_embeds: Optional[MultiModalEmbedsPayload]
    audio_embeds: Optional[MultiModalEmbedsPayload]
    type: Required[Literal["video_embeds"]]
    uuid: Optional[str]


class ChatCompletionContentPartPromptEmbedsParam(TypedDict, total=False):
    data: Required[str]
    type: Required[Literal["prompt_embeds"]]


class VideoURL(TypedDict, total=False):
    url: Required[str]


class ChatCompletionContentPartVideoParam(TypedDict, total=False):
    video_url: Required[VideoURL]
    type: Required[Literal["video_url"]]


class Image:
    """Stands in for PIL.Image.Image: no JSON value is an instance of it, as none is of PIL's."""


class PILImage(BaseModel):
    image_pil: Image
    model_config = ConfigDict(arbitrary_types_allowed=True)


class CustomChatCompletionContentPILImageParam(TypedDict, total=False):
    image_pil: Optional[PILImage]
    uuid: Optional[str]


class CustomChatCompletionContentSimpleImageParam(TypedDict, total=False):
    image_url: Optional[str]
    uuid: Optional[str]


class CustomChatCompletionContentSimpleAudioParam(TypedDict, total=False):
    audio_url: Optional[str]


class CustomChatCompletionContentSimpleVideoParam(TypedDict, total=False):
    video_url: Optional[str]
    uuid: Optional[str]


class CustomThinkCompletionContentParam(TypedDict, total=False):
    thinking: Required[str]
    closed: bool
    type: Required[Literal["thinking"]]


class CustomChatCompletionContentToolReferenceParam(TypedDict, total=False):
    name: str
    type: Literal["tool_reference"]


ChatCompletionContentPartParam = Union[
    OpenAIChatCompletionContentPartParam,
    ChatCompletionContentPartAudioParam,
    ChatCompletionContentPartInputAudioParam,
    ChatCompletionContentPartVideoParam,
    ChatCompletionContentPartRefusalParam,
    CustomChatCompletionContentPILImageParam,
    CustomChatCompletionContentSimpleImageParam,
    ChatCompletionContentPartImageEmbedsParam,
    ChatCompletionContentPartAudioEmbedsParam,
    ChatCompletionContentPartVideoEmbedsParam,
    ChatCompletionContentPartPromptEmbedsParam,
    CustomChatCompletionContentSimpleAudioParam,
    CustomChatCompletionContentSimpleVideoParam,
    CustomChatCompletionContentToolReferenceParam,
    str,
    CustomThinkCompletionContentParam,
]


class CustomChatCompletionMessageParam(TypedDict, total=False):
    role: Required[str]
    content: Union[str, list[ChatCompletionContentPartParam]]
    name: str
    tool_call_id: Optional[str]
    tool_calls: Optional[list[ChatCompletionMessageFunctionToolCallParam]]
    reasoning: Union[str, ChatCompletionContentPartPromptEmbedsParam, None]
    tools: Optional[list[ChatCompletionFunctionToolParam]]
    task: Optional[str]


# ---- openai_harmony/__init__.py ----


class Role(str, Enum):
    USER = "user"
    ASSISTANT = "assistant"
    SYSTEM = "system"
    DEVELOPER = "developer"
    TOOL = "tool"


class Author(BaseModel):
    role: Role
    name: Optional[str] = None


class Content(BaseModel):
    pass


class Message(BaseModel):
    author: Author
    content: list[Content] = Field(default_factory=list)
    channel: Optional[str] = None
    recipient: Optional[str] = None
    content_type: Optional[str] = None


ChatCompletionMessageParam = Union[
    ChatCompletionDeveloperMessageParam,
    ChatCompletionSystemMessageParam,
    ChatCompletionUserMessageParam,
    ChatCompletionAssistantMessageParam,
    ChatCompletionToolMessageParam,
    ChatCompletionFunctionMessageParam,
    CustomChatCompletionMessageParam,
    Message,
]


@cache
def messages_adapter() -> TypeAdapter:
    # ChatCompletionRequest is an OpenAIBaseModel (serve/engine/protocol.py), extra="allow",
    # and pydantic hands that config down to the TypedDicts: parts keep their unknown keys
    # (and union members are ranked with them), as chat_message.py then sees them.
    return TypeAdapter(list[ChatCompletionMessageParam], config=ConfigDict(extra="allow"))


@cache
def image_part_adapter() -> TypeAdapter:
    # chat_message.py _ImageParser validates an image_url part again, eagerly.
    return TypeAdapter(ChatCompletionContentPartImageParam)


# ---- /v1/responses: openai/types/responses (3.57), the first member of ResponsesRequest.input's
# item union (responses/protocol.py ResponseInputOutputItem = ResponseInputItemParam |
# ResponseOutputItem, 61 members in all; only this one is copied) ----


class ResponseInputTextParam(TypedDict, total=False):
    text: Required[str]
    type: Required[Literal["input_text"]]
    prompt_cache_breakpoint: PromptCacheBreakpoint


class ResponseInputImageParam(TypedDict, total=False):
    detail: Required[Literal["low", "high", "auto", "original"]]
    type: Required[Literal["input_image"]]
    file_id: Optional[str]
    image_url: Optional[str]
    prompt_cache_breakpoint: PromptCacheBreakpoint


class ResponseInputFileParam(TypedDict, total=False):
    type: Required[Literal["input_file"]]
    detail: Literal["auto", "low", "high"]
    file_data: str
    file_id: Optional[str]
    file_url: str
    filename: str
    prompt_cache_breakpoint: PromptCacheBreakpoint


ResponseInputContentParam = Union[
    ResponseInputTextParam, ResponseInputImageParam, ResponseInputFileParam
]


class EasyInputMessageParam(TypedDict, total=False):
    content: Required[Union[str, list[ResponseInputContentParam]]]
    role: Required[Literal["user", "assistant", "system", "developer"]]
    phase: Optional[Literal["commentary", "final_answer"]]
    type: Literal["message"]


@cache
def _easy_messages() -> TypeAdapter:
    # A list, so the request model's extra="allow" can be handed down (TypeAdapter refuses a
    # config for a bare TypedDict).
    return TypeAdapter(list[EasyInputMessageParam], config=ConfigDict(extra="allow"))


def validate_easy_message(item: object) -> None:
    """Raises pydantic's ValidationError, with locs relative to the item."""
    from pydantic import ValidationError
    from pydantic_core import InitErrorDetails

    try:
        _easy_messages().validate_python([item])
    except ValidationError as exc:
        details = []
        for e in exc.errors():
            detail = InitErrorDetails(type=e["type"], loc=e["loc"][1:], input=e["input"])
            if "ctx" in e:
                detail["ctx"] = e["ctx"]
            details.append(detail)
        raise ValidationError.from_exception_data("EasyInputMessageParam", details) from None
