"""`msmall export`: the final plan (`launcher.final_plan`) handed to the systems people already
run. One module per target, each a function from the plan (and the profile where it needs the
hardware section) to ``{filename: text}``; secrets only ever appear as names.

The files run on another machine than the one exporting them, so the plan is built against an
empty GPU inventory: the preflight's machine check is skipped (and said so in the notes), and the
targets that size something (k8s shm, multinode fit) use the profile's declared hardware.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from msmall.errors import ConfigError

if TYPE_CHECKING:
    from msmall.backends.base import PlanOptions
    from msmall.plan import LaunchPlan
    from msmall.profiles import Profile

TARGETS = ("compose", "k8s", "helm", "systemd", "multinode")
# The Kubernetes version the manifests are written for and validated against
# (tests/e2e/test_export_e2e.py: kubernetes-validate --strict -k this).
KUBERNETES_VERSION = "1.34.0"
# Where the secrets live: one env file for compose/systemd, one Secret for k8s/helm.
SECRET_NAME = "msmall-secrets"
HF_TOKEN_ENV = "HF_TOKEN"
API_KEY_ENV = "VLLM_API_KEY"
# A first start downloads the weights, then loads them. The budget assumes a slow but working
# link (50 MB/s, 400 Mbit/s: 48 GB of BF16 Mistral Small in 16 minutes) and 5 minutes for the
# load, torch.compile and CUDA graph capture that vLLM 0.33 does on a cold start.
DOWNLOAD_BYTES_PER_S = 50e6
LOAD_S = 300
OLLAMA_PORT = 11434


@dataclass
class Export:
    """What a target produces: the files, and the lines the command prints (secret setup)."""

    files: dict[str, str]
    instructions: list[str] = field(default_factory=list)


@dataclass
class ExportOptions:
    replicas: int = 1
    # k8s: an init container downloads the weights before vLLM starts.
    download_init: bool = False
    # Replace the container image (a mirror, a pinned digest, a stand-in for tests).
    image: str | None = None
    # multinode: node 0's address (default: "$HEAD_IP", set in each node's shell).
    head_address: str | None = None


def safe_name(text: str) -> str:
    """A DNS-1035 label (Service names): lower case, letters/digits/'-', starts with a letter."""
    name = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    return ("msmall-" + name)[:63].rstrip("-")


def weights_bytes(profile: Profile) -> float:
    """Bytes a first start downloads: every parameter at the profile's weight precision."""
    from msmall.fit import PRECISION_BITS
    from msmall.models import get_model

    spec = get_model(profile.model.id)
    if profile.backend == "ollama":
        # The default Q4_K_M tag: text weights plus the vision projector.
        return (spec.ollama_text_weights_gib.get("q4_K_M", 13.1) + spec.ollama_projector_gib) * (
            1024**3
        )
    bits = PRECISION_BITS.get(profile.model.weights, 16)
    # Quantized builds keep the embeddings, head and vision tower in BF16.
    return spec.linear_params * bits / 8 + (spec.embed_and_head_params + spec.vision_params) * 2


def startup_budget_s(profile: Profile, downloads: bool = True) -> int:
    """Seconds a cold start may take before anything may call it dead (rounded up to a minute)."""
    seconds = LOAD_S + (weights_bytes(profile) / DOWNLOAD_BYTES_PER_S if downloads else 0)
    return int(math.ceil(seconds / 60) * 60)


def shm_gib(tensor_parallel: int) -> int:
    """/dev/shm for one vLLM pod: 1 GiB per TP rank (NCCL's shared-memory transport and vLLM's
    shm broadcast queues between the engine and its workers) plus 1 GiB for the API server and
    multimodal inputs. Docker's default 64 MiB is what makes NCCL fail under TP."""
    return 1 + max(1, tensor_parallel)


def pvc_gib(profile: Profile) -> int:
    """The HF cache volume: the weights plus a quarter for a second revision, at least the
    profile's own min_disk_gib."""
    need = weights_bytes(profile) * 1.25 / 1024**3
    return math.ceil(max(need, profile.hardware.min_disk_gib))


def backend_for(target: str, backend: str) -> str:
    """The backend a target's files run: containers for compose/k8s/helm, vLLM for multinode."""
    if target in ("compose", "k8s", "helm"):
        if backend == "vllm":
            return "docker"
        if backend == "simulator":
            raise ConfigError(
                f"the simulator profile has no container image for {target}",
                "Export a vLLM or Ollama profile, or `msmall export systemd` for the simulator.",
            )
        if target == "helm" and backend == "ollama":
            raise ConfigError(
                "the vLLM production-stack chart runs vLLM only, not Ollama",
                "Pass --backend vllm (a 4-bit profile then uses its w4a16 build).",
            )
    if target == "multinode":
        if backend == "docker":
            return "vllm"
        if backend != "vllm":
            raise ConfigError(
                f"multi-node serving is vLLM's data parallelism; the {backend} backend has none",
                "Pass --backend vllm.",
            )
    return backend


def export_plan(
    target: str,
    profile_ref: str | None,
    overrides: list[str] | None,
    options: PlanOptions,
) -> tuple[LaunchPlan, Profile]:
    """The final plan for a target (launcher.final_plan against no local GPU) and its profile."""
    from msmall.hardware import Inventory
    from msmall.launcher import final_plan
    from msmall.profiles import load_profile, parse_set

    if target not in TARGETS:
        raise ConfigError(
            f"unknown export target '{target}'", f"Choose one of: {', '.join(TARGETS)}"
        )
    if not profile_ref:
        raise ConfigError("export needs --profile: the files are for another machine")
    prof = load_profile(profile_ref, parse_set(list(overrides or [])))
    backend = backend_for(target, options.backend or prof.backend)
    # The exporting machine's vLLM says nothing about the target's: newest unless --vllm-version.
    options = replace(options, backend=backend, detect_installed=False)
    inventory = Inventory(problem="export writes files for another machine")
    plan = final_plan(profile_ref, overrides, options, inventory=inventory)
    # This machine's missing HF token says nothing about the target's: the instructions name
    # the token the files reference instead.
    from msmall import weights

    local = weights.hf_token_warning(prof.model_copy(update={"backend": backend}), plan.engine)
    plan = plan.model_copy(update={"warnings": [w for w in plan.warnings if w != local]})
    return plan, prof.model_copy(update={"backend": backend})


def build(
    target: str,
    profile_ref: str | None,
    overrides: list[str] | None,
    options: PlanOptions,
    export_options: ExportOptions | None = None,
) -> tuple[Export, LaunchPlan]:
    export_options = export_options or ExportOptions()
    if export_options.replicas < 1:
        raise ConfigError(f"--replicas {export_options.replicas}: give 1 or more")
    plan, prof = export_plan(target, profile_ref, overrides, options)
    return renderer(target)(plan, prof, export_options), plan


def renderer(target: str) -> Callable[[LaunchPlan, Profile, ExportOptions], Export]:
    import importlib

    return importlib.import_module(f"msmall.export.{target}").render


# ---------------------------------------------------------------------------------------------
# Shared rendering


def dump_yaml(data: object) -> str:
    import yaml

    class _Dumper(yaml.SafeDumper):
        # Anchors and aliases are valid YAML but unreadable in a manifest: write every value out.
        def ignore_aliases(self, data: object) -> bool:
            return True

    def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    _Dumper.add_representer(str, _str)
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, width=100, allow_unicode=True)


def public_env(env: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    """(plain variables, names of the secret ones) of a plan's environment."""
    from msmall.plan import SECRET_ENV

    plain = {k: v for k, v in env.items() if k not in SECRET_ENV}
    secret = [k for k in env if k in SECRET_ENV]
    return plain, secret


def header(plan: LaunchPlan, target: str, comment: str = "#") -> str:
    lines = [
        f"Generated by `msmall export {target} --profile {plan.profile}` from the plan that "
        "`msmall serve` runs",
        f"(model {plan.model}, backend {plan.backend}"
        + (f", vLLM {plan.engine_version}" if plan.engine_version else "")
        + "). Secrets are referenced by name only.",
    ]
    return "".join(f"{comment} {line}\n" for line in lines)


def secret_instructions(kind: str, names: list[str], where: str) -> list[str]:
    if not names:
        return []
    if kind == "k8s":
        literals = " ".join(f"--from-literal={n}=..." for n in names)
        return [f"create the Secret first: kubectl create secret generic {where} {literals}"]
    if kind == "envfile":
        return [
            f"put {' and '.join(names)} in {where} (mode 600), one NAME=value a line, "
            "before starting it"
        ]
    return [f"export {' '.join(n + '=...' for n in names)} in the shell that runs {where}"]


def write_files(directory: Path, files: dict[str, str]) -> list[Path]:
    """Each file written atomically (temp file in the same directory, then rename)."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
            mode = 0o755 if name.endswith(".sh") else 0o644
            os.chmod(tmp, mode)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        written.append(path)
    return written


def stream(files: dict[str, str]) -> str:
    """All files as one text: YAML files as one YAML stream, others under a comment line."""
    if all(name.endswith((".yaml", ".yml")) for name in files):
        parts = []
        for name, text in files.items():
            body = text if text.endswith("\n") else text + "\n"
            parts.append(f"# --- {name}\n{body}")
        return "---\n".join(parts)
    out = []
    for name, text in files.items():
        out.append(f"# ===== {name}\n{text if text.endswith(chr(10)) else text + chr(10)}")
    return "".join(out)
