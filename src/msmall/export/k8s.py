"""Kubernetes: a Deployment and a Service from the container plan.

Choices (docs/export.md says why in full):
- `nvidia.com/gpu` limit = the tensor parallel size: vLLM uses exactly that many GPUs.
- /dev/shm: an emptyDir with `medium: Memory` (`export.shm_gib`); a pod has no `--ipc=host`.
- The HF cache on a PVC, so a restart does not download 48 GB again.
- HF_TOKEN and VLLM_API_KEY from one Secret the user creates (`optional`: a public repo needs no
  token; without the key the endpoint is open inside the cluster).
- All three probes on /health: vLLM's API key guards /v1 only, so /v1/models answers 401 with the
  key on and would fail every probe. The startupProbe gives a cold start its whole budget
  (download + load); liveness only begins after it, so a slow first download is never killed.
- With --download-init an init container fetches the weights first (same image,
  huggingface_hub), and the startupProbe only budgets the load.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from msmall.export import (
    API_KEY_ENV,
    HF_TOKEN_ENV,
    KUBERNETES_VERSION,
    LOAD_S,
    OLLAMA_PORT,
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

FILENAME = "k8s.yaml"
PROBE_PERIOD_S = 10
OLLAMA_IMAGE = "ollama/ollama:latest"


def _secret_env(name: str, optional: bool = True) -> dict:
    return {
        "name": name,
        "valueFrom": {"secretKeyRef": {"name": SECRET_NAME, "key": name, "optional": optional}},
    }


def _probes(path: str, port: int, budget_s: int) -> dict:
    get = {"path": path, "port": port}
    return {
        "startupProbe": {
            "httpGet": get,
            "periodSeconds": PROBE_PERIOD_S,
            "timeoutSeconds": 5,
            "failureThreshold": math.ceil(budget_s / PROBE_PERIOD_S),
        },
        "readinessProbe": {
            "httpGet": get,
            "periodSeconds": 10,
            "timeoutSeconds": 5,
            "failureThreshold": 3,
        },
        # Lenient: a busy server answers /health late; only a hung one fails 5 x 30 s.
        "livenessProbe": {
            "httpGet": get,
            "periodSeconds": 30,
            "timeoutSeconds": 10,
            "failureThreshold": 5,
        },
    }


def render(plan: LaunchPlan, profile: Profile, opts: ExportOptions) -> Export:
    name = safe_name(plan.deployment)
    labels = {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": "msmall"}
    pvc = f"{name}-cache"
    many = opts.replicas > 1
    if plan.engine == "ollama":
        container, init, volumes, port, secrets, gpus = _ollama(plan, profile, pvc)
        budget = 300
        mount = "/root/.ollama"
    else:
        container, init, volumes, port, secrets, gpus = _vllm(plan, profile, opts, pvc)
        budget = LOAD_S if opts.download_init else startup_budget_s(profile)
        mount = "/root/.cache/huggingface"
    # The port by number, not by name: podman 4.3's `kube play` turns a named probe port into
    # port 0 (checked by hand, see docs/export.md); the kubelet takes either.
    container.update(_probes("/health" if plan.engine != "ollama" else "/", port, budget))
    pod_spec: dict = {"containers": [container], "volumes": volumes}
    if init:
        pod_spec["initContainers"] = init
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": opts.replicas,
            "selector": {"matchLabels": labels},
            # No surge: a rollout must not need GPUs beyond the replicas' own.
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1},
            },
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        },
    }
    claim = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": pvc, "labels": labels},
        "spec": {
            # Replicas on several nodes share the cache: that needs ReadWriteMany storage.
            "accessModes": ["ReadWriteMany" if many else "ReadWriteOnce"],
            "resources": {"requests": {"storage": f"{pvc_gib(profile)}Gi"}},
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "selector": labels,
            "ports": [{"name": "http", "port": port, "targetPort": "http", "protocol": "TCP"}],
        },
    }
    text = header(plan, "k8s") + (
        f"# Kubernetes {KUBERNETES_VERSION} (checked with kubernetes-validate --strict "
        f"-k {KUBERNETES_VERSION}); {gpus} x nvidia.com/gpu per replica, {opts.replicas} "
        f"replica(s).\n# startupProbe budget {budget}s"
        + (
            " (load only: the init container downloads)"
            if opts.download_init
            else " (cold download at 50 MB/s + 300 s load)"
        )
        + f"; cache mounted at {mount}.\n"
    )
    text += "---\n".join(dump_yaml(doc) for doc in (claim, deployment, service))
    lines = secret_instructions("k8s", secrets, SECRET_NAME)
    lines.append(
        f"then: kubectl apply -f {FILENAME} && kubectl port-forward svc/{name} {port}:{port}"
    )
    return Export({FILENAME: text}, lines)


def _vllm(plan: LaunchPlan, profile: Profile, opts: ExportOptions, pvc: str):
    spec = plan.container
    assert spec is not None
    cport = int(next(iter(spec.ports)).split("/")[0])
    tp = profile.serving.tensor_parallel_size
    secrets = [HF_TOKEN_ENV] + ([API_KEY_ENV] if plan.api_key else [])
    plain, _ = public_env(spec.environment)
    env = [{"name": k, "value": v} for k, v in plain.items()]
    env += [_secret_env(HF_TOKEN_ENV)]
    if plan.api_key:
        # Not optional: a plan with a key must never come up open.
        env.append(_secret_env(API_KEY_ENV, optional=False))
    image = opts.image or spec.image
    (bind,) = spec.volumes.values()
    mounts = [
        {"name": "hf-cache", "mountPath": bind["bind"]},
        {"name": "dshm", "mountPath": "/dev/shm"},
    ]
    container = {
        "name": "vllm",
        "image": image,
        "args": list(spec.command),
        "env": env,
        "ports": [{"name": "http", "containerPort": cport, "protocol": "TCP"}],
        "resources": {"limits": {"nvidia.com/gpu": tp}},
        "volumeMounts": mounts,
    }
    volumes = [
        {"name": "hf-cache", "persistentVolumeClaim": {"claimName": pvc}},
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": f"{shm_gib(tp)}Gi"}},
    ]
    init = []
    if opts.download_init:
        init.append(
            {
                "name": "download-weights",
                "image": image,
                "command": [
                    "python3",
                    "-c",
                    "import sys; from huggingface_hub import snapshot_download; "
                    "snapshot_download(sys.argv[1])",
                    profile.model.hf_repo,
                ],
                "env": [_secret_env(HF_TOKEN_ENV)],
                "volumeMounts": [mounts[0]],
            }
        )
    return container, init, volumes, cport, secrets, tp


def _ollama(plan: LaunchPlan, profile: Profile, pvc: str):
    env = {**plan.env, "OLLAMA_HOST": f"0.0.0.0:{OLLAMA_PORT}"}
    plain, _ = public_env(env)
    gpus = max(1, profile.hardware.gpu_count)
    mounts = [{"name": "models", "mountPath": "/root/.ollama"}]
    container = {
        "name": "ollama",
        "image": OLLAMA_IMAGE,
        "env": [{"name": k, "value": v} for k, v in plain.items()],
        "ports": [{"name": "http", "containerPort": OLLAMA_PORT, "protocol": "TCP"}],
        "resources": {"limits": {"nvidia.com/gpu": gpus}},
        "volumeMounts": mounts,
    }
    # The pull needs a running server: the init container runs one just for it.
    tag = plan.pull_model or plan.served_model_name
    pull = (
        "ollama serve & server=$!; "
        "until ollama list >/dev/null 2>&1; do sleep 1; done; "
        f"ollama pull {tag}; status=$?; kill $server; exit $status"
    )
    init = [
        {
            "name": "pull-model",
            "image": OLLAMA_IMAGE,
            "command": ["/bin/sh", "-c", pull],
            "env": [{"name": "OLLAMA_HOST", "value": f"127.0.0.1:{OLLAMA_PORT}"}],
            "volumeMounts": mounts,
        }
    ]
    volumes = [{"name": "models", "persistentVolumeClaim": {"claimName": pvc}}]
    return container, init, volumes, OLLAMA_PORT, [], gpus
