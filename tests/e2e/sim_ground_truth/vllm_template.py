"""Ground truth for the Mistral chat-template stage: what vLLM 0.33 answers when
renderers/mistral.py safe_apply_chat_template refuses a conversation. Not a test; run with the
Python that has vllm 0.33.0 (and mistral_common):

    /path/to/vllm-venv/bin/python vllm_template.py CASES.json OUT.json

CASES.json: a list of [name, messages, flags] (flags: add_generation_prompt,
continue_final_message). The tokenizer is mistral_common's own data/tekken_240911.json with
config.version set to "v7" (Mistral Small 3.1's tokenizer version), written to a temporary
directory: the checks depend on the version, not on the vocabulary.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import mistral_common
from vllm.entrypoints.serve.exception_handling.error_response import create_error_response
from vllm.renderers.mistral import safe_apply_chat_template
from vllm.tokenizers.mistral import MistralTokenizer


def main(cases_path: str, out_path: str) -> None:
    data = Path(mistral_common.__file__).parent / "data" / "tekken_240911.json"
    tekken = json.loads(data.read_text())
    tekken["config"]["version"] = "v7"
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "tekken.json").write_text(json.dumps(tekken))
        tok = MistralTokenizer.from_pretrained(tmp)
    out = []
    for name, messages, flags in json.loads(Path(cases_path).read_text()):
        kwargs = {"add_generation_prompt": True, "continue_final_message": False, **flags}
        try:
            safe_apply_chat_template(tok, messages, tools=None, **kwargs)
            result = "ok"
        except Exception as exc:
            result = create_error_response(exc).model_dump()
        out.append([name, messages, kwargs, result])
    Path(out_path).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
