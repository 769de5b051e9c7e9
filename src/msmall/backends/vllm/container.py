"""Docker: the vllm/vllm-openai image, whose entrypoint is `vllm serve`.

The plan holds the full container spec for the docker SDK and the equivalent `docker run` line.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from msmall.backends.base import PlanOptions, common_fields, endpoint, secret_env
from msmall.backends.vllm import versions
from msmall.backends.vllm.plan import target_vllm_version, vllm_flags, with_profile_key
from msmall.plan import ContainerSpec, LaunchPlan, docker_run_argv

if TYPE_CHECKING:
    from msmall.backends.engine import Engine
    from msmall.profiles import Profile

IMAGE_REPO = "vllm/vllm-openai"
CONTAINER_PORT = 8000
CONTAINER_HF_CACHE = "/root/.cache/huggingface"


def host_hf_cache() -> str:
    hf_home = os.environ.get("HF_HOME")
    return str(Path(hf_home) if hf_home else Path.home() / ".cache" / "huggingface")


def container_name(deployment: str) -> str:
    return "msmall-" + re.sub(r"[^a-zA-Z0-9_.-]", "-", deployment)


def plan_docker(profile: Profile, options: PlanOptions, engine: Engine) -> LaunchPlan:
    options = with_profile_key(profile, options)
    # The image brings its own vLLM: the host's installed vllm says nothing about it.
    version = target_vllm_version(profile, options, use_installed=False)
    ep = endpoint(profile, options, engine)
    fields = common_fields(profile, options, ep, engine, "container")
    deployment = fields["deployment"]
    image = f"{IMAGE_REPO}:{versions.docker_image_tag(version, options.driver_major)}"
    # Inside the container vLLM must listen on every interface for the published port to reach
    # it; exposure is decided by the host side of the port mapping.
    command = [
        "--model", profile.model.hf_repo,
        *vllm_flags(profile, version, "0.0.0.0", CONTAINER_PORT),
    ]  # fmt: skip
    environment = dict(profile.serving.env)
    if os.environ.get("HF_TOKEN"):
        environment["HF_TOKEN"] = os.environ["HF_TOKEN"]
    environment.update(secret_env(options.api_key))
    spec = ContainerSpec(
        name=container_name(deployment),
        image=image,
        command=command,
        environment=environment,
        ports={f"{CONTAINER_PORT}/tcp": (ep.host, ep.port)},
        volumes={host_hf_cache(): {"bind": CONTAINER_HF_CACHE, "mode": "rw"}},
        gpu_count=-1,
        gpu_device_ids=profile.hardware.gpu_ids,
        ipc_mode="host",
        labels={"msmall.deployment": deployment, "msmall.profile": profile.name},
    )
    argv = docker_run_argv(spec)
    return LaunchPlan(
        **fields,
        argv=argv,
        env={},
        served_model_name=profile.serving.served_model_name,
        engine_version=version,
        image=image,
        container=spec,
        api_key=options.api_key,
    )
