"""The built-in simulator as a backend: the whole serve flow on a machine without a GPU."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from msmall.backends.base import PlanOptions, common_fields, endpoint, gpu_env, secret_env
from msmall.plan import LaunchPlan

if TYPE_CHECKING:
    from msmall.backends.engine import Engine
    from msmall.profiles import Profile


def plan_simulator(profile: Profile, options: PlanOptions, engine: Engine) -> LaunchPlan:
    sv = profile.serving
    ep = endpoint(profile, options, engine)
    argv = [
        sys.executable, "-m", "msmall.simulator",
        "--flavor", "vllm",
        "--host", ep.host,
        "--port", str(ep.port),
        "--served-model-name", sv.served_model_name,
    ]  # fmt: skip
    if sv.max_model_len != "auto":
        argv += ["--max-model-len", str(sv.max_model_len)]
    # The simulator's scheduler runs as many sequences at once as the profile's engine would.
    argv += ["--max-num-seqs", str(sv.max_num_seqs)]
    if not sv.vision:
        argv.append("--no-vision")
    # For the simulator, extra_args are its own knobs (--startup-delay, --fail ...).
    argv += sv.extra_args
    return LaunchPlan(
        **common_fields(profile, options, ep, engine, "process"),
        argv=argv,
        env={**gpu_env(profile), **sv.env, **secret_env(options.api_key)},
        served_model_name=sv.served_model_name,
        api_key=options.api_key,
    )
