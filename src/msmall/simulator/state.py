"""What a running simulator remembers: health, pulled and loaded models, counters."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from msmall.models import MISTRAL_SMALL_3_1 as m
from msmall.simulator.config import SimulatorConfig
from msmall.simulator.engine import EngineModel
from msmall.simulator.logs import OllamaLog, VllmLog

OLLAMA_REGISTRY = "registry.ollama.ai/library"
OLLAMA_FAMILY = "mistral-small3.1"

# Tags of mistral-small3.1 on the Ollama library and the size of their model layer (bytes).
_GB = 1_000_000_000
OLLAMA_TAGS: dict[str, tuple[str, int]] = {
    "latest": ("Q4_K_M", 15 * _GB),
    "24b": ("Q4_K_M", 15 * _GB),
    "24b-instruct-2503-q4_K_M": ("Q4_K_M", 15 * _GB),
    "24b-instruct-2503-q8_0": ("Q8_0", 26 * _GB),
    "24b-instruct-2503-fp16": ("F16", 48 * _GB),
}
# Small layers that come with every tag: template, license, params (as `ollama pull` shows).
SMALL_LAYERS = (("template", 695), ("license", 11_357), ("params", 32))
# Loaded size = weights + KV cache of the context + this much for the vision projector and graphs.
_RUNTIME_OVERHEAD = int(1.6 * 2**30)
_KV_BYTES_PER_TOKEN = 2 * m.num_layers * m.num_kv_heads * m.head_dim * 2  # f16 K and V


def normalise_tag(name: str) -> str:
    """``mistral-small3.1`` -> ``mistral-small3.1:latest``, as Ollama resolves names."""
    name = name.strip()
    if name.startswith(OLLAMA_REGISTRY + "/"):
        name = name[len(OLLAMA_REGISTRY) + 1 :]
    return name if ":" in name else f"{name}:latest"


def known_tag(name: str) -> tuple[str, int] | None:
    family, _, tag = normalise_tag(name).partition(":")
    if family != OLLAMA_FAMILY:
        return None
    return OLLAMA_TAGS.get(tag)


def digest_of(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class LoadedModel:
    name: str
    loaded_at: float
    expires_at: float | None  # None: keep_alive -1, never unloaded


class SimState:
    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.healthy = not config.failing("http-503")
        self.exit_code = 0
        self.requests_served = 0
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0
        self.vllm_log = VllmLog(config.quiet)
        self.ollama_log = OllamaLog(config.quiet)
        self.stop: asyncio.Event | None = None
        self.pulled: dict[str, float] = {}
        # Ollama: copied / created names -> the model they are (same digest and size).
        self.aliases: dict[str, str] = {}
        self.loaded: dict[str, LoadedModel] = {}
        self._load_lock: asyncio.Lock | None = None
        self.engine = EngineModel(
            max_num_seqs=config.num_seqs,
            kv_tokens=config.kv_tokens,
            ttft=config.ttft,
            tpot=config.tpot,
            knee=config.batch_knee,
            slope=config.batch_slope,
        )
        self._draws: dict[str, int] = {}
        if config.flavor == "ollama":
            if config.pulled:
                self.pulled[normalise_tag(config.model_name)] = time.time()
            self.pulled.update(self._read_manifests())

    async def sleep(self, seconds: float) -> None:
        """Sleep, but wake at once when the server is stopping (so shutdown stays prompt)."""
        if seconds <= 0:
            return
        if self.stop is None:
            await asyncio.sleep(seconds)
            return
        try:
            await asyncio.wait_for(self.stop.wait(), timeout=seconds)
        except asyncio.TimeoutError:
            pass

    def draw(self, mode: str) -> bool:
        """Whether this request gets a fractional fail mode: request i of the mode gets it when
        floor((i + 1) * rate) > floor(i * rate), so any 10 in a row at 0.3 include exactly 3."""
        rate = self.config.fail_rate(mode)
        if rate >= 1 or rate <= 0:
            return rate >= 1
        i = self._draws.get(mode, 0)
        self._draws[mode] = i + 1
        return int((i + 1) * rate + 1e-9) > int(i * rate + 1e-9)

    @property
    def load_lock(self) -> asyncio.Lock:
        if self._load_lock is None:
            self._load_lock = asyncio.Lock()
        return self._load_lock

    # Ollama models -------------------------------------------------------------------------

    def model_bytes(self, name: str) -> int:
        name = self.aliases.get(normalise_tag(name), name)
        known = known_tag(name)
        if known and normalise_tag(name) == normalise_tag(self.config.model_name):
            return self.config.pull_total_bytes
        return known[1] if known else self.config.pull_total_bytes

    def quantization(self, name: str) -> str:
        name = self.aliases.get(normalise_tag(name), name)
        known = known_tag(name)
        return known[0] if known else "Q4_K_M"

    def digest(self, name: str) -> str:
        # Tags of the same quantisation are one model: same digest.
        return digest_of(f"{OLLAMA_FAMILY}:{self.quantization(name)}")

    def loaded_size(self, name: str) -> int:
        return (
            self.model_bytes(name)
            + self.config.context_length * _KV_BYTES_PER_TOKEN
            + _RUNTIME_OVERHEAD
        )

    def vram_size(self, name: str) -> int:
        size = self.loaded_size(name)
        # Ollama puts whole layers on the CPU when the estimate says they do not fit.
        return int(size * 30 / 41) if self.config.failing("cpu-offload") else size

    def live_models(self) -> list[LoadedModel]:
        now = time.time()
        for name in [
            n for n, lm in self.loaded.items() if lm.expires_at is not None and lm.expires_at <= now
        ]:
            del self.loaded[name]
        return list(self.loaded.values())

    def mark_pulled(self, name: str) -> None:
        tag = normalise_tag(name)
        self.pulled[tag] = time.time()
        self._write_manifest(tag)

    def _manifest_path(self, tag: str) -> Path | None:
        if not self.config.models_dir:
            return None
        family, _, version = tag.partition(":")
        return Path(self.config.models_dir) / "manifests" / OLLAMA_REGISTRY / family / version

    def _write_manifest(self, tag: str) -> None:
        path = self._manifest_path(tag)
        if path is None:
            return
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "layers": [
                {
                    "mediaType": "application/vnd.ollama.image.model",
                    "digest": "sha256:" + self.digest(tag),
                    "size": self.model_bytes(tag),
                }
            ],
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(manifest))
        os.replace(tmp, path)

    def _read_manifests(self) -> dict[str, float]:
        if not self.config.models_dir:
            return {}
        root = Path(self.config.models_dir) / "manifests" / OLLAMA_REGISTRY
        found = {}
        if root.is_dir():
            for path in root.glob("*/*"):
                if path.is_file() and not path.name.endswith(".tmp"):
                    found[f"{path.parent.name}:{path.name}"] = path.stat().st_mtime
        return found


def keep_alive_seconds(value: object) -> float | None:
    """Ollama's keep_alive: seconds or a Go duration ("5m", "1h30m"); negative = forever (None)."""
    if value is None or value == "":
        value = os.environ.get("OLLAMA_KEEP_ALIVE", "5m")
    if isinstance(value, bool):
        raise ValueError(f"invalid keep_alive {value!r}")
    if isinstance(value, (int, float)):
        return None if value < 0 else float(value)
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        parts = re.findall(r"(-?\d+(?:\.\d+)?)(ms|s|m|h)", text)
        if not parts or "".join(a + b for a, b in parts) != text:
            raise ValueError(f"time: invalid duration {text!r}") from None
        scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
        number = sum(float(a) * scale[b] for a, b in parts)
    return None if number < 0 else number


def go_time(epoch: float | None) -> str:
    """RFC 3339 in local time, like Go's encoding of time.Time; None is Go's far future."""
    if epoch is None:
        now = dt.datetime.now().astimezone()
        return now.replace(year=now.year + 292, month=1, day=1).isoformat()
    return dt.datetime.fromtimestamp(epoch).astimezone().isoformat()
