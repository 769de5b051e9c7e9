"""Running the vllm/vllm-openai image through the docker SDK.

Same pipeline as the process backends: the container's output is streamed live into the same log
file (so the status view and diagnosis work unchanged), readiness and smoke checks go through the
published port, Ctrl-C stops and removes the container, `--detach` leaves it running and recorded.
Containers carry the `msmall.deployment` label, so `ps`/`stop` find them even without a state file.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from msmall.errors import (
    ConfigError,
    EndpointUnhealthy,
    EngineUnavailable,
    EnvironmentProblem,
    Interrupted,
)
from msmall.plan import LaunchPlan, redact_text

if TYPE_CHECKING:
    import docker

LABEL_DEPLOYMENT = "msmall.deployment"
LABEL_PROFILE = "msmall.profile"
STOP_TIMEOUT_S = 15
# How often readiness polling asks the daemon whether the container still runs.
ALIVE_CHECK_INTERVAL_S = 0.5

TOOLKIT_FIX = (
    "Install the NVIDIA Container Toolkit and register it with Docker: "
    "`sudo nvidia-ctk runtime configure --runtime=docker && sudo systemctl restart docker`."
)


def client() -> docker.DockerClient:
    """A client for DOCKER_HOST (or the default socket); a clear error when the daemon is away."""
    import docker

    try:
        cli = docker.from_env(timeout=30)
        cli.ping()
    except docker.errors.DockerException as exc:
        text = str(exc)
        if "Permission denied" in text or "PermissionError" in text:
            raise EngineUnavailable(
                "permission denied on the Docker socket",
                "Add your user to the docker group (`sudo usermod -aG docker $USER`, then log in again).",
            ) from None
        raise EngineUnavailable(
            "cannot reach the Docker daemon" + (f" ({_short(text)})" if text else ""),
            "Start Docker (`sudo systemctl start docker`) or point DOCKER_HOST at a running daemon.",
        ) from None
    return cli


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def gpu_runtime_problem(info: dict[str, Any]) -> str | None:
    """None when `docker info` shows an NVIDIA runtime or CDI devices; else what is missing."""
    runtimes = info.get("Runtimes") or {}
    if "nvidia" in runtimes:
        return None
    cdi = info.get("CDISpecDirs") or []
    if cdi and info.get("DiscoveredDevices"):
        return None
    if cdi:
        # CDI directories are configured, but we cannot see whether an nvidia.com/gpu spec is in
        # them from `docker info` alone on older daemons: let the start decide.
        return None
    return f"Docker has no NVIDIA runtime (runtimes: {', '.join(sorted(runtimes)) or 'none'})"


def preflight(cli: docker.DockerClient, force: bool) -> list[str]:
    warnings = []
    problem = gpu_runtime_problem(cli.info())
    if problem:
        if not force:
            raise EnvironmentProblem(problem, TOOLKIT_FIX)
        warnings.append(problem + " (--force: trying anyway)")
    return warnings


# ---------------------------------------------------------------------------------------------
# Image


def ensure_image(cli: docker.DockerClient, image: str, policy: str, reporter) -> None:
    import docker

    if policy == "never" or policy == "missing":
        try:
            cli.images.get(image)
            return
        except docker.errors.ImageNotFound:
            if policy == "never":
                raise EnvironmentProblem(
                    f"image {image} is not on this machine and --pull never was given",
                    f"Pull it (`docker pull {image}`) or use --pull missing.",
                ) from None
    pull_image(cli, image, reporter)


def pull_image(cli: docker.DockerClient, image: str, reporter) -> None:
    """Pull through the low-level stream: it never raises on errors, so check every entry."""
    import docker

    repo, _, tag = image.rpartition(":")
    layers: dict[str, tuple[int, int]] = {}
    reporter.stage(f"pulling {image}")
    try:
        for entry in cli.api.pull(repo, tag=tag, stream=True, decode=True):
            if "error" in entry or "errorDetail" in entry:
                message = entry.get("error") or entry["errorDetail"].get("message", "")
                raise EngineUnavailable(
                    f"pulling {image} failed: {_short(str(message))}",
                    "Check the tag exists (`--vllm-version`), your network, and disk space.",
                )
            detail = entry.get("progressDetail") or {}
            layer = entry.get("id")
            # Only download progress counts: "Extracting" restarts current from 0 per layer.
            if layer and detail.get("total") and entry.get("status") == "Downloading":
                layers[layer] = (detail.get("current", 0), detail["total"])
            elif layer and entry.get("status") in (
                "Pull complete",
                "Already exists",
                "Download complete",
            ):
                done_total = layers.get(layer, (0, 0))[1]
                layers[layer] = (done_total, done_total)
            if layers:
                reporter.progress(
                    f"pulling {image} ({len(layers)} layers)",
                    sum(c for c, _ in layers.values()),
                    sum(t for _, t in layers.values()),
                )
    except docker.errors.APIError as exc:
        raise EngineUnavailable(
            f"pulling {image} failed: {_short(exc.explanation or str(exc))}"
        ) from None


# ---------------------------------------------------------------------------------------------
# Container


def _device_requests(plan: LaunchPlan) -> list[Any]:
    from docker.types import DeviceRequest

    spec = plan.container
    assert spec is not None
    if spec.gpu_device_ids:
        return [DeviceRequest(device_ids=list(spec.gpu_device_ids), capabilities=[["gpu"]])]
    return [DeviceRequest(count=spec.gpu_count, capabilities=[["gpu"]])]


def create_container(cli: docker.DockerClient, plan: LaunchPlan):
    import docker

    spec = plan.container
    assert spec is not None
    kwargs = dict(
        image=spec.image,
        command=spec.command,
        name=spec.name,
        environment=spec.environment,
        ports={cport: hostport for cport, hostport in spec.ports.items()},
        volumes=spec.volumes,
        device_requests=_device_requests(plan),
        ipc_mode=spec.ipc_mode,
        labels=spec.labels,
        detach=True,
    )
    try:
        return cli.containers.create(**kwargs)
    except docker.errors.APIError as exc:
        if exc.status_code != 409:
            raise EngineUnavailable(
                f"cannot create the container: {_short(exc.explanation or str(exc))}"
            ) from None
    # Name taken: an old msmall container of this deployment that is not running is ours to
    # clear; a running one, or someone else's, is not.
    old = cli.containers.get(spec.name)
    if old.labels.get(LABEL_DEPLOYMENT) != plan.deployment or old.status == "running":
        raise ConfigError(
            f"a container named {spec.name} already exists ({old.status})",
            f"Stop it with `msmall stop {plan.deployment}` or `docker rm -f {spec.name}`, or use --name.",
        )
    old.remove(force=True)
    return cli.containers.create(**kwargs)


class LogPump(threading.Thread):
    """Copies the container's log stream into the log file; chunks are not line-aligned, and the
    file tail reassembles them into lines."""

    def __init__(self, container, log_path: Path) -> None:
        super().__init__(daemon=True, name="msmall-docker-logs")
        self.container = container
        self.log_path = log_path

    def run(self) -> None:
        import docker
        import requests

        try:
            with open(self.log_path, "ab", buffering=0) as log:
                for chunk in self.container.logs(
                    stream=True, follow=True, stdout=True, stderr=True
                ):
                    log.write(chunk)
        except (docker.errors.DockerException, requests.RequestException, OSError):
            # The container went away (stopped/removed): the stream ends, and so do we.
            return


def container_state(container) -> tuple[str, int | None]:
    import docker

    try:
        container.reload()
    except docker.errors.NotFound:
        return "removed", None
    state = container.attrs.get("State", {})
    return state.get("Status", container.status), state.get("ExitCode")


def remove_container(container, stop: bool = True) -> None:
    import docker

    try:
        if stop:
            container.stop(timeout=STOP_TIMEOUT_S)
    except docker.errors.DockerException:
        pass
    try:
        container.remove(force=True)
    except docker.errors.NotFound:
        pass
    except docker.errors.DockerException:
        pass


def serve_docker(plan: LaunchPlan, request, reporter) -> dict[str, Any]:
    import docker

    from msmall import health, state
    from msmall.launcher import failure_from_log, signals_deferred, sigterm_as_interrupt
    from msmall.supervisor import ensure_port_free

    assert plan.container is not None and plan.image is not None
    secrets = [plan.api_key, plan.container.environment.get("HF_TOKEN")]
    cli = client()
    for warning in preflight(cli, request.force):
        reporter.warn(warning)
    host, port = plan.container.ports[next(iter(plan.container.ports))]
    ensure_port_free(host, port)
    ensure_image(cli, plan.image, request.pull, reporter)

    log_path = state.log_path_for(plan.deployment)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as fh:
        fh.write(f"--- msmall: starting {plan.image} for {plan.deployment}\n".encode())

    container = None
    detached_ok = False
    started = time.monotonic()
    with sigterm_as_interrupt():
        try:
            reporter.stage(f"starting container {plan.container.name}")
            container = create_container(cli, plan)
            try:
                container.start()
            except docker.errors.APIError as exc:
                text = exc.explanation or str(exc)
                if "could not select device driver" in text:
                    raise EnvironmentProblem(
                        f"Docker cannot give the container a GPU: {_short(text)}", TOOLKIT_FIX
                    ) from None
                raise EngineUnavailable(f"the container did not start: {_short(text)}") from None
            pump = LogPump(container, log_path)
            pump.start()

            from msmall.launcher import _LogFollower

            follower = _LogFollower(log_path, "docker", reporter, secrets)
            last_check = [0.0, True]

            def alive() -> bool:
                follower.pump()
                now = time.monotonic()
                if now - last_check[0] >= ALIVE_CHECK_INTERVAL_S:
                    last_check[0] = now
                    last_check[1] = container_state(container)[0] in (
                        "created",
                        "running",
                        "restarting",
                    )
                return bool(last_check[1])

            reporter.stage(f"waiting for {plan.base_url} (loading)")
            try:
                health.wait_ready(
                    plan.base_url, "vllm", plan.served_model_name, api_key=plan.api_key,
                    alive=alive, timeout_s=request.ready_timeout_s,
                )  # fmt: skip
            except EndpointUnhealthy as exc:
                pump.join(timeout=5)
                follower.pump()
                status, code = container_state(container)
                headline = (
                    f"the container exited with code {code} before it was ready"
                    if status == "exited"
                    else f"the container did not become ready: {exc.message}"
                )
                raise failure_from_log(log_path, "docker", headline, secrets) from None
            ready_after = time.monotonic() - started

            smoke_report = None
            if request.smoke:
                reporter.stage(
                    "smoke checks: chat, streaming, tools" + (", vision" if plan.vision else "")
                )
                smoke_report = health.smoke(
                    plan.base_url, plan.served_model_name, api_key=plan.api_key,
                    tools=plan.tools, vision=plan.vision, flavor="vllm", on_result=reporter.check,
                )  # fmt: skip
                if not smoke_report.ok:
                    failed = [c for c in smoke_report.checks if not c.ok and not c.skipped]
                    raise EndpointUnhealthy(
                        "smoke check failed: " + "; ".join(f"{c.name}: {c.detail}" for c in failed),
                        next((c.fix for c in failed if c.fix), "See `msmall logs`."),
                    )
            result = {
                "deployment": plan.deployment,
                "profile": plan.profile,
                "backend": "docker",
                "base_url": plan.base_url,
                "openai_base_url": plan.openai_base_url,
                "model": plan.served_model_name,
                "container_id": container.id,
                "image": plan.image,
                "log_path": str(log_path),
                "ready_after_s": round(ready_after, 3),
                "smoke": smoke_report.to_dict() if smoke_report else None,
                "detached": request.detach,
            }
            if request.check_only:
                reporter.stage(f"all checks passed at {plan.openai_base_url}; stopping (--check)")
                return result
            state.save(
                state.Deployment(
                    name=plan.deployment, profile=plan.profile, backend="docker",
                    base_url=plan.base_url, served_model_name=plan.served_model_name,
                    flavor="vllm", log_path=str(log_path), container_id=container.id,
                    plan=plan.to_public_dict(),
                )
            )  # fmt: skip
            if request.detach:
                detached_ok = True
                reporter.stage(
                    f"ready at {plan.openai_base_url} (detached; `msmall stop {plan.deployment}`)"
                )
                return result
            reporter.stage(
                f"ready at {plan.openai_base_url}  model {plan.served_model_name}  (Ctrl-C stops)"
            )
            while container_state(container)[0] == "running":
                follower.pump()
                time.sleep(0.5)
            pump.join(timeout=5)
            follower.pump()
            raise failure_from_log(
                log_path,
                "docker",
                f"the container exited with code {container_state(container)[1]}",
                secrets,
            )
        except KeyboardInterrupt:
            raise Interrupted("interrupted: the container was stopped and removed") from None
        finally:
            if not detached_ok:
                with signals_deferred():
                    reporter.close()
                    if container is not None:
                        remove_container(container)
                    current = state.load(plan.deployment)
                    if (
                        current is not None
                        and container is not None
                        and current.container_id == container.id
                    ):
                        state.remove(plan.deployment)


# ---------------------------------------------------------------------------------------------
# Used by ps / logs / stop


def _maybe_client():
    try:
        return client()
    except EngineUnavailable:
        return None


def container_running(container_id: str) -> bool:
    import docker

    cli = _maybe_client()
    if cli is None:
        return False
    try:
        return cli.containers.get(container_id).status == "running"
    except docker.errors.DockerException:
        return False


def stop_container(container_id: str) -> bool:
    import docker

    cli = _maybe_client()
    if cli is None:
        return False
    try:
        remove_container(cli.containers.get(container_id))
        return True
    except docker.errors.NotFound:
        return False


def msmall_containers(deployment: str | None = None) -> list[Any]:
    """Containers carrying msmall's label (running or not), found through the daemon."""
    import os

    if not os.environ.get("DOCKER_HOST") and not Path("/var/run/docker.sock").exists():
        return []
    cli = _maybe_client()
    if cli is None:
        return []
    label = f"{LABEL_DEPLOYMENT}={deployment}" if deployment else LABEL_DEPLOYMENT
    return cli.containers.list(all=True, filters={"label": label})


def orphan_containers() -> list[dict[str, Any]]:
    """msmall containers with no state record (the state dir was wiped, another machine user...)."""
    out = []
    for c in msmall_containers():
        ports = (c.attrs.get("HostConfig") or {}).get("PortBindings") or {}
        binding = next(iter(ports.values()), [{}])[0] if ports else {}
        host = binding.get("HostIp") or "127.0.0.1"
        out.append(
            {
                "name": c.labels.get(LABEL_DEPLOYMENT, c.name),
                "profile": c.labels.get(LABEL_PROFILE, ""),
                "backend": "docker",
                "base_url": f"http://{host}:{binding.get('HostPort', '?')}",
                "container_id": c.id,
                "pid": None,
                "running": c.status == "running",
                "health": "unknown",
                "status": f"{c.status} (found by label, no record)",
            }
        )
    return out


def stop_container_by_deployment(name: str) -> bool:
    found = msmall_containers(name)
    for c in found:
        remove_container(c)
    return bool(found)


def container_log_lines(
    container_id: str, n: int, secrets: list[str | None] | None = None
) -> list[str]:
    import docker

    cli = _maybe_client()
    if cli is None:
        return []
    try:
        raw = cli.containers.get(container_id).logs(tail=n, stdout=True, stderr=True)
    except docker.errors.NotFound:
        return []
    return [
        redact_text(line, secrets or []) for line in raw.decode("utf-8", "replace").splitlines()
    ]


def follow_container(container_id: str, emit) -> None:
    """Print new log lines of a (detached) container until it stops."""
    import docker

    cli = _maybe_client()
    if cli is None:
        return
    try:
        stream = cli.containers.get(container_id).logs(stream=True, follow=True, tail=0)
    except docker.errors.NotFound:
        return
    partial = b""
    for chunk in stream:
        *lines, partial = (partial + chunk).split(b"\n")
        for line in lines:
            emit(line.decode("utf-8", "replace"))
    if partial:
        emit(partial.decode("utf-8", "replace"))
