"""The models msmall knows: one record each, the only place their facts live.

A profile names its model by id (`model.id`, default `mistral-small-3.1`); its repos, Ollama tags,
architecture numbers (for the memory fit), minimum engine versions and the name shown to users all
come from the record. Adding a model is one record here plus its profiles.

Sources: each model's own params.json / config.json on the hub, summarised in shared/FACTS.md
(3.1) and in docs/memory.md (3.2, with what was verified there).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from msmall.errors import ConfigError

GIB = 1024**3


@dataclass(frozen=True)
class ModelSpec:
    id: str
    display_name: str
    # Weight variant -> Hugging Face repo; the first is the official one.
    hf_repos: dict[str, str]
    # Repos that ship Mistral-native files (consolidated.safetensors, params.json, tekken.json);
    # the others are HF shards only and must never get the Mistral load/config formats.
    mistral_format_repos: frozenset[str]
    # Ollama quantization -> tag; "q4_K_M" is the library default.
    ollama_tags: dict[str, str]
    served_model_name: str
    # Text decoder
    num_layers: int
    hidden_size: int
    num_query_heads: int
    num_kv_heads: int
    head_dim: int
    ffn_size: int
    vocab_size: int
    max_context: int
    # Parameters, billions
    text_params_b: float
    vision_params_b: float
    projector_params_b: float
    # One image costs at most this many tokens (55 x 55 grid of 28-px cells plus break tokens).
    max_tokens_per_image: int
    recommended_temperature: float
    # Oldest engine versions that serve this model with vision and tools.
    vllm_min_version: str
    ollama_min_version: tuple[int, int, int]
    # Ollama's GGUF text weights by quantization, GiB (Q4_K_M measured from its server log).
    ollama_text_weights_gib: dict[str, float] = field(default_factory=dict)
    # Vision encoder + projector in Ollama's GGUF, and its compute graph for a full-size image.
    ollama_projector_gib: float = 769.3 / 1024
    ollama_vision_graph_gib: float = 8.8
    # Repo prefixes the hub serves only to accounts that accepted the licence.
    gated_prefixes: tuple[str, ...] = ("mistralai/",)

    # -- derived numbers the fit uses ----------------------------------------------------------

    @property
    def kv_values_per_token(self) -> int:
        """K and V for every layer and KV head: 2 x 40 x 8 x 128 for Mistral Small."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim

    @property
    def embed_and_head_params(self) -> int:
        # Token embedding + the untied output head; quantized builds keep both in BF16.
        return 2 * self.vocab_size * self.hidden_size

    @property
    def linear_params(self) -> float:
        """The decoder layers' matrices: what FP8 / 4-bit quantization shrinks."""
        return self.text_params_b * 1e9 - self.embed_and_head_params

    @property
    def vision_params(self) -> float:
        return (self.vision_params_b + self.projector_params_b) * 1e9

    @property
    def valid_tensor_parallel(self) -> tuple[int, ...]:
        """Tensor parallel must split the KV heads evenly."""
        return tuple(n for n in range(1, self.num_kv_heads + 1) if self.num_kv_heads % n == 0)

    @property
    def official_repo(self) -> str:
        return next(iter(self.hf_repos.values()))

    @property
    def default_ollama_tag(self) -> str:
        return self.ollama_tags["q4_K_M"]

    def hf_format(self, repo: str) -> str:
        return "mistral" if repo in self.mistral_format_repos else "hf"

    def is_gated(self, repo: str) -> bool:
        return repo.startswith(self.gated_prefixes)


def _ollama_weights(text_params_b: float) -> dict[str, float]:
    # q8_0 stores 34 bytes per 32 weights, fp16 2 bytes; Q4_K_M is measured (13.1 GiB) in
    # ollama #10553's log (memory.weights.total).
    return {
        "q4_K_M": 13.1,
        "q8_0": text_params_b * 1e9 * 34 / 32 / GIB,
        "fp16": text_params_b * 1e9 * 2 / GIB,
    }


# Mistral-Small-3.1-24B-Instruct-2503: params.json / config.json (FACTS.md "The model").
MISTRAL_SMALL_3_1 = ModelSpec(
    id="mistral-small-3.1",
    display_name="Mistral Small 3.1",
    hf_repos={
        "bf16": "mistralai/Mistral-Small-3.1-24B-Instruct-2503",
        "fp8": "RedHatAI/Mistral-Small-3.1-24B-Instruct-2503-FP8-dynamic",
        "w4a16": "RedHatAI/Mistral-Small-3.1-24B-Instruct-2503-quantized.w4a16",
    },
    mistral_format_repos=frozenset({"mistralai/Mistral-Small-3.1-24B-Instruct-2503"}),
    ollama_tags={
        "q4_K_M": "mistral-small3.1:24b-instruct-2503-q4_K_M",
        "q8_0": "mistral-small3.1:24b-instruct-2503-q8_0",
        "fp16": "mistral-small3.1:24b-instruct-2503-fp16",
    },
    served_model_name="mistral-small-3.1",
    num_layers=40,
    hidden_size=5120,
    num_query_heads=32,
    num_kv_heads=8,
    head_dim=128,
    ffn_size=32768,
    vocab_size=131072,
    max_context=131072,
    text_params_b=23.57,
    vision_params_b=0.40,
    projector_params_b=0.036,
    max_tokens_per_image=3080,
    recommended_temperature=0.15,
    # Mistral3ForConditionalGeneration (Pixtral vision) landed in vLLM 0.8.
    vllm_min_version="0.8.0",
    ollama_min_version=(0, 6, 5),
    ollama_text_weights_gib=_ollama_weights(23.57),
)

# Mistral-Small-3.2-24B-Instruct-2506: the same architecture as 3.1 (the same dim, n_layers,
# n_heads, n_kv_heads, head_dim, hidden_dim, vocab_size and vision encoder; see docs/memory.md for
# what was verified and how), so it is 3.1's record with its own repos, tags, name and minimum
# vLLM (its model card asks for 0.9.1): a new instruct tune with better tool calling.
MISTRAL_SMALL_3_2 = replace(
    MISTRAL_SMALL_3_1,
    id="mistral-small-3.2",
    display_name="Mistral Small 3.2",
    hf_repos={
        "bf16": "mistralai/Mistral-Small-3.2-24B-Instruct-2506",
        # RedHatAI publishes FP8 (and NVFP4) builds of 3.2, but no w4a16: 4-bit 3.2 is Ollama's.
        "fp8": "RedHatAI/Mistral-Small-3.2-24B-Instruct-2506-FP8",
    },
    mistral_format_repos=frozenset({"mistralai/Mistral-Small-3.2-24B-Instruct-2506"}),
    ollama_tags={
        "q4_K_M": "mistral-small3.2:24b-instruct-2506-q4_K_M",
        "q8_0": "mistral-small3.2:24b-instruct-2506-q8_0",
        "fp16": "mistral-small3.2:24b-instruct-2506-fp16",
    },
    served_model_name="mistral-small-3.2",
    vllm_min_version="0.9.1",
)

MODELS: dict[str, ModelSpec] = {spec.id: spec for spec in (MISTRAL_SMALL_3_1, MISTRAL_SMALL_3_2)}
DEFAULT_MODEL = MISTRAL_SMALL_3_1.id


def get_model(model_id: str) -> ModelSpec:
    try:
        return MODELS[model_id]
    except KeyError:
        raise ConfigError(
            f"unknown model '{model_id}'", f"Known models: {', '.join(MODELS)} (model.id)."
        ) from None


def max_context_any() -> int:
    return max(spec.max_context for spec in MODELS.values())
