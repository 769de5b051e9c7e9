"""Write a small Hugging Face tokenizer directory that counts tokens as the simulator does.

    /work/vllm-venv/bin/python benchmarks/sim_tokenizer.py DIR

`vllm bench serve` needs a tokenizer (`--tokenizer`) to build its random prompts
(vllm/benchmarks/datasets/datasets.py RandomDataset.generate_token_sequence: token ids ->
decode -> re-encode until the length is right) and to count output tokens when the server
sends no usage (vllm/benchmarks/serve.py calculate_metrics). Mistral Small's own tokenizer is
on the Hugging Face Hub, which this machine cannot reach, and it would not count tokens the
way the simulator does anyway: the simulator counts one token per word or punctuation mark
(`msmall.simulator.generation.count_tokens`) and its /tokenize splits on whitespace
(`vllm_extra.Vocabulary`). This tokenizer is word-level over 4,096 made-up lower-case words
(two consonant-vowel syllables each, no punctuation), split on whitespace, decoded with single
spaces, with `<s>`/`</s>`/`<unk>` as special tokens and no BOS added by `encode`: a prompt of
N of its tokens is N tokens to the simulator too (usage `prompt_tokens` and /tokenize agree),
so vLLM's client does not re-align prompts (serve.py _align_prompts_to_server_tokenizer).

Needs `tokenizers` and `transformers` (both come with vllm); the msmall venv does not need
them, so run this with the vLLM venv's python. Pure function of nothing: the same directory
every time.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

CONSONANTS = "bdfgklmnprstvz"  # 14
VOWELS = "aeiou"  # 5 -> 70 syllables, 4,900 two-syllable words
VOCAB_SIZE = 4096
SPECIALS = ("<unk>", "<s>", "</s>")


def words() -> list[str]:
    syllables = [c + v for c in CONSONANTS for v in VOWELS]
    return [a + b for a in syllables for b in syllables][: VOCAB_SIZE - len(SPECIALS)]


def build(out: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate([*SPECIALS, *words()])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    # No decoder: tokenizers then joins the tokens with one space each.
    fast = PreTrainedTokenizerFast(
        tokenizer_object=core,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        model_max_length=131072,
    )
    fast.save_pretrained(str(out))
    # vLLM's get_tokenizer reads a model config from the same directory first
    # (vllm/tokenizers/registry.py get_tokenizer -> transformers_utils/config.py get_config);
    # without one it logs two errors and sleeps 2 s between retries before going on.
    (out / "config.json").write_text(
        json.dumps({"model_type": "mistral", "architectures": ["MistralForCausalLM"],
                    "vocab_size": VOCAB_SIZE}) + "\n"
    )  # fmt: skip


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: sim_tokenizer.py DIR", file=sys.stderr)
        return 2
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    build(out)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
