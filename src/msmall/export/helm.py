"""values.yaml for the vLLM production-stack chart (`vllm-stack` 0.1.12): one modelSpec, the router.

Only keys the chart's own values.yaml knows are written (tests check them against it and against
its values.schema.json; both are in tests/data/production-stack-0.1.12/). The chart starts
`vllm serve <modelURL>` itself with --host/--port and the vllmConfig fields; every other flag of
msmall's plan goes to `extraArgs`, unchanged.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from msmall.export import (
    API_KEY_ENV,
    HF_TOKEN_ENV,
    SECRET_NAME,
    Export,
    ExportOptions,
    dump_yaml,
    header,
    public_env,
    pvc_gib,
    safe_name,
    secret_instructions,
    shm_gib,
    startup_budget_s,
)

if TYPE_CHECKING:
    from msmall.plan import LaunchPlan
    from msmall.profiles import Profile

FILENAME = "values.yaml"
CHART = "vllm-stack"
CHART_VERSION = "0.1.12"
# Flags the chart writes from vllmConfig or itself (helm/templates/deployment-vllm-multi.yaml).
_CHART_FLAGS = {
    "--model": None,
    "--host": None,
    "--port": None,
    "--max-model-len": "maxModelLen",
    "--tensor-parallel-size": "tensorParallelSize",
    "--gpu-memory-utilization": "gpuMemoryUtilization",
    "--max-num-seqs": "maxNumSeqs",
}


def split_flags(command: list[str]) -> tuple[dict, list[str]]:
    """(vllmConfig fields, the remaining flags for extraArgs) from the container command."""
    config: dict = {}
    extra: list[str] = []
    i = 0
    while i < len(command):
        arg = command[i]
        takes_value = i + 1 < len(command) and not command[i + 1].startswith("--")
        if arg in _CHART_FLAGS:
            key = _CHART_FLAGS[arg]
            value = command[i + 1]
            if key:
                config[key] = float(value) if key == "gpuMemoryUtilization" else int(value)
            i += 2
            continue
        extra.append(arg)
        if takes_value:
            extra.append(command[i + 1])
            i += 1
        i += 1
    return config, extra


def render(plan: LaunchPlan, profile: Profile, opts: ExportOptions) -> Export:
    spec = plan.container
    assert spec is not None
    image = opts.image or spec.image
    repository, _, tag = image.rpartition(":")
    config, extra = split_flags(spec.command)
    config["extraArgs"] = extra
    tp = profile.serving.tensor_parallel_size
    plain, _ = public_env(spec.environment)
    budget = startup_budget_s(profile)
    model: dict = {
        "name": safe_name(plan.deployment).removeprefix("msmall-"),
        "repository": repository,
        "tag": tag,
        "modelURL": profile.model.hf_repo,
        "replicaCount": opts.replicas,
        "requestGPU": tp,
        "pvcStorage": f"{pvc_gib(profile)}Gi",
        "pvcAccessMode": ["ReadWriteMany" if opts.replicas > 1 else "ReadWriteOnce"],
        "vllmConfig": config,
        "hf_token": {"secretName": SECRET_NAME, "secretKey": HF_TOKEN_ENV},
        "env": [{"name": k, "value": v} for k, v in plain.items()],
        "shmSize": f"{shm_gib(tp)}Gi",
    }
    engine: dict = {"runtimeClassName": "nvidia", "modelSpec": [model]}
    if plan.api_key:
        engine["vllmApiKey"] = {"secretName": SECRET_NAME, "secretKey": API_KEY_ENV}
    # The chart's own probes: /health everywhere (answers without the API key); the startup
    # budget as for k8s.
    engine["startupProbe"] = {
        "initialDelaySeconds": 15,
        "periodSeconds": 10,
        "failureThreshold": math.ceil(budget / 10),
        "httpGet": {"path": "/health", "port": int(next(iter(spec.ports)).split("/")[0])},
    }
    values = {"servingEngineSpec": engine, "routerSpec": {"enableRouter": True}}
    text = header(plan, "helm") + (
        f"# For the {CHART} chart {CHART_VERSION} (vllm-project/production-stack):\n"
        f"#   helm install msmall vllm/{CHART} --version {CHART_VERSION} -f {FILENAME}\n"
        f"# startupProbe: {budget}s for a cold download at 50 MB/s + 300 s load.\n"
    )
    text += dump_yaml(values)
    secrets = [HF_TOKEN_ENV] + ([API_KEY_ENV] if plan.api_key else [])
    lines = secret_instructions("k8s", secrets, SECRET_NAME)
    lines.append(
        "then: helm repo add vllm https://vllm-project.github.io/production-stack && "
        f"helm install msmall vllm/{CHART} --version {CHART_VERSION} -f {FILENAME}"
    )
    return Export({FILENAME: text}, lines)
