"""Facts about Mistral Small 3.1 itself, in one place.

Source: the model's config.json / params.json on the hub (mistralai/Mistral-Small-3.1-24B-Instruct-2503)
as summarised in shared/FACTS.md.
"""

from __future__ import annotations

HF_REPO_BF16 = "mistralai/Mistral-Small-3.1-24B-Instruct-2503"
HF_REPO_FP8 = "RedHatAI/Mistral-Small-3.1-24B-Instruct-2503-FP8-dynamic"
HF_REPO_W4A16 = "RedHatAI/Mistral-Small-3.1-24B-Instruct-2503-quantized.w4a16"
OLLAMA_TAG_Q4 = "mistral-small3.1:24b-instruct-2503-q4_K_M"

# Text decoder
NUM_LAYERS = 40
HIDDEN_SIZE = 5120
NUM_QUERY_HEADS = 32
NUM_KV_HEADS = 8
HEAD_DIM = 128
VOCAB_SIZE = 131072
MAX_CONTEXT = 131072

# Parameters (billions)
TEXT_PARAMS_B = 23.57
VISION_PARAMS_B = 0.40
PROJECTOR_PARAMS_B = 0.036

# One image costs at most this many tokens (55 x 55 grid of 28-px cells plus break tokens).
MAX_TOKENS_PER_IMAGE = 3080

RECOMMENDED_TEMPERATURE = 0.15

# Tensor parallel must split the KV heads evenly.
VALID_TENSOR_PARALLEL = tuple(n for n in range(1, NUM_KV_HEADS + 1) if NUM_KV_HEADS % n == 0)
