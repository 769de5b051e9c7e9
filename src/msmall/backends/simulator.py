"""The built-in simulator as a backend: the whole serve flow on a machine without a GPU."""

from __future__ import annotations

import sys

from msmall.backends import PlanOptions, check_exposure
from msmall.backends.vllm import secret_env
from msmall.plan import LaunchPlan
from msmall.profiles import Profile


def plan_simulator(profile: Profile, options: PlanOptions) -> LaunchPlan:
    sv = profile.serving
    host = options.host or sv.host
    port = options.port or profile.port_for("simulator")
    warnings = check_exposure(host, options.api_key, "simulator")
    argv = [
        sys.executable, "-m", "msmall.simulator",
        "--flavor", "vllm",
        "--host", host,
        "--port", str(port),
        "--served-model-name", sv.served_model_name,
    ]  # fmt: skip
    if sv.max_model_len != "auto":
        argv += ["--max-model-len", str(sv.max_model_len)]
    if not sv.vision:
        argv.append("--no-vision")
    # For the simulator, extra_args are its own knobs (--startup-delay, --fail ...).
    argv += sv.extra_args
    connect = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    return LaunchPlan(
        profile=profile.name,
        backend="simulator",
        deployment=options.deployment or profile.name,
        argv=argv,
        env={**sv.env, **secret_env(options.api_key)},
        base_url=f"http://{connect}:{port}",
        served_model_name=sv.served_model_name,
        flavor="vllm",
        engine_version=None,
        vision=sv.vision,
        images_per_prompt=sv.images_per_prompt if sv.vision else 0,
        tools=sv.tools,
        max_model_len=sv.max_model_len,
        api_key=options.api_key,
        warnings=warnings,
    )
