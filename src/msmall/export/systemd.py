"""systemd: one service unit for the plan's command (`vllm serve`, `ollama serve`, the simulator,
or `docker run` for --backend docker), and the env file it reads its secrets from.

- Restart=on-failure with a pause, so a crash restarts but `systemctl stop` stays stopped.
- EnvironmentFile=- (optional) for HF_TOKEN / VLLM_API_KEY: the unit itself never holds a secret
  and can be world-readable; the env file is the user's, mode 600.
- TimeoutStopSec: msmall's own stop grace (runtimes.process.STOP_GRACE_S, docker's stop timeout
  for containers) plus margin; vLLM frees the GPUs on SIGTERM within it.
- ExecStart needs an absolute path: the executable as found on PATH where the export runs,
  else /usr/local/bin/NAME (pip's place on most servers); say so when it was not found.
"""

from __future__ import annotations

import shutil
from typing import TYPE_CHECKING

from msmall.export import API_KEY_ENV, HF_TOKEN_ENV, Export, ExportOptions, header, public_env

if TYPE_CHECKING:
    from msmall.plan import LaunchPlan
    from msmall.profiles import Profile

ENV_DIR = "/etc/msmall"


def _quote(arg: str) -> str:
    """systemd's command-line quoting: double quotes, with \\ " and $ / % escaped."""
    safe = arg and all(c.isalnum() or c in "-_./:=,@+" for c in arg)
    if safe:
        return arg.replace("%", "%%")
    escaped = arg.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace("$", "$$")
    return f'"{escaped}"'


def _env_line(key: str, value: str) -> str:
    return "Environment=" + _quote(f"{key}={value}")


def executable(name: str, warnings: list[str]) -> str:
    if name.startswith("/"):
        return name
    found = shutil.which(name)
    if found:
        return found
    warnings.append(f"{name} is not on PATH here: the unit runs /usr/local/bin/{name}; edit it")
    return f"/usr/local/bin/{name}"


def render(plan: LaunchPlan, profile: Profile, opts: ExportOptions) -> Export:
    from msmall.plan import redact_argv
    from msmall.runtimes.process import STOP_GRACE_S

    unit = f"msmall-{plan.deployment}"
    env_file = f"{ENV_DIR}/{plan.deployment}.env"
    warnings: list[str] = []
    argv = redact_argv(plan.argv)
    if plan.container is not None:
        from msmall.runtimes.container import STOP_TIMEOUT_S

        # --rm and a fixed name: a restart must not collide with the previous container.
        argv = [argv[0], "run", "--rm", *argv[2:]]
        at = argv.index(plan.container.image)
        if HF_TOKEN_ENV not in plan.container.environment:
            # Gated repos need it; `-e NAME` passes the env file's value, or nothing if unset.
            argv[at:at] = ["-e", HF_TOKEN_ENV]
            at += 2
        if opts.image:
            argv[at] = opts.image
        stop_s = STOP_TIMEOUT_S
        secrets = [HF_TOKEN_ENV] + ([API_KEY_ENV] if plan.api_key else [])
    else:
        stop_s = int(STOP_GRACE_S)
        _, secrets = public_env(plan.env)
        if plan.engine == "vllm":
            secrets = list(dict.fromkeys([HF_TOKEN_ENV, *secrets]))
    argv[0] = executable(argv[0], warnings)
    plain, _ = public_env(plan.env)
    lines = [
        header(plan, "systemd").rstrip("\n"),
        f"# Install: cp {unit}.service /etc/systemd/system/ && systemctl daemon-reload && "
        f"systemctl enable --now {unit}",
        "[Unit]",
        f"Description=msmall {plan.profile}: {plan.served_model_name} on {plan.backend}",
        "After=network-online.target" + (" docker.service" if plan.container else ""),
        "Wants=network-online.target",
        *(["Requires=docker.service"] if plan.container else []),
        "",
        "[Service]",
        "Type=exec",
        *[_env_line(k, v) for k, v in plain.items()],
        *([f"# {env_file} holds {', '.join(secrets)} (NAME=value, mode 600)"] if secrets else []),
        f"EnvironmentFile=-{env_file}",
    ]
    if plan.container is not None:
        name = plan.container.name
        docker = argv[0]
        lines.append(f"ExecStartPre=-{docker} rm -f {name}")
    lines.append("ExecStart=" + " ".join(_quote(a) for a in argv))
    if plan.container is not None:
        lines.append(f"ExecStop={docker} stop -t {stop_s} {plan.container.name}")
    lines += [
        "Restart=on-failure",
        "RestartSec=10",
        # Loading happens after exec (Type=exec): no start timeout can cut a first download.
        f"TimeoutStopSec={stop_s + 15}",
        "KillMode=mixed",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
        "",
    ]
    files = {f"{unit}.service": "\n".join(lines)}
    instructions = [f"warning: {w}" for w in warnings]
    if secrets:
        instructions.append(
            f"put {' and '.join(secrets)} in {env_file} (NAME=value a line; "
            f"chmod 600 {env_file}); the unit reads it, the unit file holds no secret"
        )
    instructions.append(f"then: systemctl enable --now {unit} && msmall health {plan.base_url}")
    return Export(files, instructions)
