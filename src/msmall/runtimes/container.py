"""The container runtime: an engine's image run through the docker SDK (today vLLM's
vllm/vllm-openai; any engine with a container plan).

The serve pipeline is the same as for host processes: the container's output is streamed live into
the log file (so the status view and diagnosis work unchanged), readiness and smoke checks go
through the published port, Ctrl-C stops and removes the container, `--detach` leaves it running
and recorded. Containers carry the `msmall.deployment` label, so `ps`/`stop` find them even
without a state file.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from msmall.errors import ConfigError, EngineUnavailable, EnvironmentProblem
from msmall.plan import LaunchPlan, redact_text

if TYPE_CHECKING:
    import docker

LABEL_DEPLOYMENT = "msmall.deployment"
LABEL_PROFILE = "msmall.profile"
STOP_TIMEOUT_S = 15
# A leftover container of the same deployment in one of these states runs nothing: replace it.
REPLACEABLE_STATUSES = frozenset({"created", "exited", "dead"})
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
            f"cannot reach the Docker daemon at {_docker_host()} ({_unreachable_reason(text)})",
            "Start Docker (`sudo systemctl start docker`) or point DOCKER_HOST at a running daemon.",
        ) from None
    return cli


def _docker_host() -> str:
    import os

    return os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


def _unreachable_reason(text: str) -> str:
    # docker-py wraps the transport error in "Error while fetching server API version: (...)".
    if "FileNotFoundError" in text or "No such file or directory" in text:
        return "no socket there"
    if "Connection refused" in text or "ConnectionRefusedError" in text:
        return "connection refused"
    if "timed out" in text.lower():
        return "no answer in time"
    return _short(text) if text else "no answer"


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def gpu_runtime_problem(info: dict[str, Any]) -> str | None:
    """None when `docker info` shows an NVIDIA runtime or an NVIDIA CDI device; else what is missing.

    `CDISpecDirs` alone proves nothing: Docker 27+ lists its two default directories whether or
    not an nvidia.com/gpu spec is in them. Recent daemons report the CDI devices they found as
    `DiscoveredDevices`, and since moby#50228 `--gpus` can be served through them.
    """
    runtimes = info.get("Runtimes") or {}
    if "nvidia" in runtimes:
        return None
    for device in info.get("DiscoveredDevices") or []:
        if str((device or {}).get("ID", "")).startswith("nvidia.com/gpu"):
            return None
    return (
        "Docker has no NVIDIA runtime and no nvidia.com/gpu CDI device "
        f"(runtimes: {', '.join(sorted(runtimes)) or 'none'})"
    )


def _local_nvidia_hook() -> str | None:
    """The NVIDIA hook's path when the daemon runs on this machine and the hook is installed.

    `--gpus` does not need the nvidia runtime: moby's daemon/nvidia_linux.go registers the
    "nvidia" device driver (the one `--gpus` selects) whenever exec.LookPath finds
    nvidia-container-runtime-hook, which the toolkit's package installs in /usr/bin. Such a
    daemon lists no nvidia runtime in `docker info` until `nvidia-ctk runtime configure` is run,
    and serves `--gpus all` all the same (checked against dockerd 20.10).
    """
    import os
    import shutil

    host = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    if not host.startswith("unix://"):
        return None  # a remote daemon's PATH is not ours to look at
    return shutil.which("nvidia-container-runtime-hook")


def preflight(cli: docker.DockerClient, force: bool) -> list[str]:
    import docker
    import requests

    try:
        info = cli.info()
    except (docker.errors.DockerException, requests.RequestException) as exc:
        raise EngineUnavailable(
            f"the Docker daemon did not answer `docker info`: {_short(str(exc))}",
            "Check that Docker runs: `docker info`.",
        ) from None
    warnings = []
    problem = gpu_runtime_problem(info)
    if problem and _local_nvidia_hook():
        problem = None
    if problem:
        if not force:
            raise EnvironmentProblem(
                problem,
                TOOLKIT_FIX + " If `docker run --gpus all` already works here, pass --force.",
            )
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
    import requests

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
    except docker.errors.NotFound as exc:
        # An unknown tag or repository is refused up front with a 404, before any stream.
        raise EngineUnavailable(
            f"pulling {image} failed: {_short(exc.explanation or str(exc))}",
            "Check the tag exists on Docker Hub (vllm/vllm-openai tags are vX.Y.Z; pick one "
            "with --vllm-version).",
        ) from None
    except docker.errors.APIError as exc:
        raise EngineUnavailable(
            f"pulling {image} failed: {_short(exc.explanation or str(exc))}",
            "Check your network and disk space, then try again.",
        ) from None
    except requests.RequestException as exc:
        raise EngineUnavailable(
            f"pulling {image} failed: lost the Docker daemon ({_short(str(exc))})",
            "Check that Docker still runs (`docker info`), then try again.",
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


def check_name_free(cli: docker.DockerClient, plan: LaunchPlan):
    """Refuse a container name held by a live container or by someone else's; return a stopped
    leftover of this deployment (ours to replace), or None when the name is free."""
    import docker

    spec = plan.container
    assert spec is not None
    try:
        old = cli.containers.get(spec.name)
    except docker.errors.NotFound:
        return None
    if old.labels.get(LABEL_DEPLOYMENT) != plan.deployment:
        raise ConfigError(
            f"a container named {spec.name} already exists ({old.status}) and msmall did not "
            f"start it for '{plan.deployment}'",
            f"Remove it (`docker rm -f {spec.name}`) if it is yours to remove, or pick another --name.",
        )
    if old.status not in REPLACEABLE_STATUSES:
        raise ConfigError(
            f"deployment '{plan.deployment}' already has a {old.status} container ({spec.name})",
            f"Stop it with `msmall stop {plan.deployment}`, or pick another --name.",
        )
    return old


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
        init=spec.init,
        labels=spec.labels,
        detach=True,
    )
    for attempt in (1, 2):
        try:
            return cli.containers.create(**kwargs)
        except docker.errors.APIError as exc:
            if exc.status_code != 409 or attempt == 2:
                raise EngineUnavailable(
                    f"cannot create the container: {_short(exc.explanation or str(exc))}"
                ) from None
        # Name taken: a stopped msmall container of this deployment is ours to clear; a live
        # one, or someone else's, is not.
        stale = check_name_free(cli, plan)
        if stale is not None:
            remove_container(stale, stop=False)
    raise AssertionError("unreachable")


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
    import requests

    try:
        container.reload()
    except docker.errors.NotFound:
        return "removed", None
    except requests.RequestException:
        raise EngineUnavailable(
            "lost the connection to the Docker daemon",
            "Check that Docker still runs (`docker ps`); a daemon restart stops the container.",
        ) from None
    state = container.attrs.get("State", {})
    return state.get("Status", container.status), state.get("ExitCode")


def remove_container(container, stop: bool = True) -> None:
    """Stop (SIGTERM, then SIGKILL after STOP_TIMEOUT_S) and remove; never raises."""
    import docker
    import requests

    try:
        if stop:
            container.stop(timeout=STOP_TIMEOUT_S)
    except (docker.errors.DockerException, requests.RequestException):
        pass
    try:
        container.remove(force=True)
    except (docker.errors.DockerException, requests.RequestException):
        pass


def _make_bind_sources(plan: LaunchPlan) -> None:
    """Create missing bind-mount sources (the HF cache) as the user: the daemon would create
    them owned by root, and the host's own Hugging Face tools could no longer write there."""
    assert plan.container is not None
    for source in plan.container.volumes:
        if source.startswith("/"):
            try:
                Path(source).mkdir(parents=True, exist_ok=True)
            except OSError:
                pass  # the daemon reports a bind it cannot make


class ContainerHandle:
    """A container msmall created and started for this serve."""

    poll_s = ALIVE_CHECK_INTERVAL_S

    def __init__(self, container: Any, pump: LogPump, log_path: Path) -> None:
        self.container = container
        self.pump = pump
        self.log_path = log_path
        self.label = "the container"
        self.stopped_message = "interrupted: the container was stopped and removed"
        self._checked_at = 0.0
        self._running = True

    @property
    def ids(self) -> dict[str, Any]:
        return {"container_id": self.container.id}

    def alive(self) -> bool:
        # Readiness polls every few ms; the daemon is asked at most every ALIVE_CHECK_INTERVAL_S.
        now = time.monotonic()
        if now - self._checked_at >= ALIVE_CHECK_INTERVAL_S:
            self._checked_at = now
            status = container_state(self.container)[0]
            self._running = status in ("created", "running", "restarting")
        return self._running

    def exit_code(self) -> int | None:
        status, code = container_state(self.container)
        return code if status in ("exited", "dead") else None

    def settle_logs(self) -> None:
        """Let the log stream deliver the container's last words before they are read."""
        self.pump.join(timeout=5)

    def stop(self) -> None:
        remove_container(self.container)

    def owns(self, record: Any) -> bool:
        return record.container_id == self.container.id


class ContainerRunner:
    """Runs a plan's container spec on the Docker daemon at DOCKER_HOST."""

    def start(
        self,
        plan: LaunchPlan,
        engine: Any,
        log_path: Path,
        reporter: Any,
        *,
        force: bool = False,
        pull: str = "missing",
        **_: Any,
    ) -> ContainerHandle:
        import docker

        from msmall.runtimes.process import ensure_port_free, fresh_log

        assert plan.container is not None and plan.image is not None
        cli = client()
        for warning in preflight(cli, force):
            reporter.warn(warning)
        # Before the port check: a live container of this deployment holds the port too, and
        # "stop it with msmall stop" is the useful answer, not "port in use".
        check_name_free(cli, plan)
        host, port = plan.container.ports[next(iter(plan.container.ports))]
        ensure_port_free(host, port)
        ensure_image(cli, plan.image, pull, reporter)
        _make_bind_sources(plan)
        fresh_log(log_path, f"--- msmall: starting {plan.image} for {plan.deployment}\n")

        reporter.stage(f"starting container {plan.container.name}")
        container = create_container(cli, plan)
        try:
            try:
                container.start()
            except docker.errors.APIError as exc:
                raise _start_error(exc, host, port) from None
            pump = LogPump(container, log_path)
            pump.start()
        except BaseException:
            # Created but not started (or Ctrl-C right here): nothing may stay behind.
            remove_container(container, stop=False)
            raise
        return ContainerHandle(container, pump, log_path)


def _start_error(exc: Any, host: str, port: int) -> Exception:
    text = exc.explanation or str(exc)
    if "could not select device driver" in text or "CDI device injection" in text:
        return EnvironmentProblem(
            f"Docker cannot give the container a GPU: {_short(text)}", TOOLKIT_FIX
        )
    if "port is already allocated" in text or "address already in use" in text:
        return EnvironmentProblem(
            f"port {port} on {host} is already in use: {_short(text)}",
            f"Stop what runs there (`msmall ps`), or pick another port with --port {port + 1}.",
        )
    return EngineUnavailable(f"the container did not start: {_short(text)}")


# ---------------------------------------------------------------------------------------------
# Used by ps / logs / stop


def _maybe_client():
    try:
        return client()
    except EngineUnavailable:
        return None


def container_running(container_id: str) -> bool | None:
    """True/False from the daemon; None when the daemon cannot be asked (status unknown)."""
    import docker

    cli = _maybe_client()
    if cli is None:
        return None
    try:
        return cli.containers.get(container_id).status == "running"
    except docker.errors.NotFound:
        return False
    except docker.errors.DockerException:
        return None


def stop_container(container_id: str) -> bool:
    """Stop and remove; False when the container is already gone. An unreachable daemon is an
    error, not "gone": the record must survive so the container can still be stopped later."""
    import docker

    cli = client()
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
    import docker
    import requests

    cli = _maybe_client()
    if cli is None:
        return []
    label = f"{LABEL_DEPLOYMENT}={deployment}" if deployment else LABEL_DEPLOYMENT
    try:
        # ignore_removed: a container stopped by someone else while we list is no error.
        return cli.containers.list(all=True, filters={"label": label}, ignore_removed=True)
    except (docker.errors.DockerException, requests.RequestException):
        return []


def orphan_containers() -> list[dict[str, Any]]:
    """msmall containers with no state record (the state dir was wiped, another machine user...)."""
    out = []
    for c in msmall_containers():
        ports = (c.attrs.get("HostConfig") or {}).get("PortBindings") or {}
        binding = (next(iter(ports.values())) or [{}])[0] if ports else {}
        host = binding.get("HostIp") or "127.0.0.1"
        if host in ("0.0.0.0", "::"):
            host = "127.0.0.1"
        base_url = f"http://{host}:{binding.get('HostPort', '?')}"
        running = c.status == "running"
        probed = _probe_stage(base_url) if running and binding.get("HostPort") else "stale"
        out.append(
            {
                "name": c.labels.get(LABEL_DEPLOYMENT, c.name),
                "profile": c.labels.get(LABEL_PROFILE, ""),
                "backend": "docker",
                "base_url": base_url,
                "container_id": c.id,
                "pid": None,
                "running": running,
                "health": probed,
                "status": f"{c.status} (found by label, no record)",
            }
        )
    return out


def _probe_stage(base_url: str) -> str:
    from msmall import health

    with health._client(base_url, None, 1.0) as http:
        return health.probe(http, "vllm", None).stage


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


def container_config(container_id: str) -> tuple[list[str], dict[str, str]]:
    """The container's command and environment as the daemon holds them ([], {} when it cannot
    be asked): the secrets the engine inside could print."""
    import docker

    cli = _maybe_client()
    if cli is None:
        return [], {}
    try:
        config = cli.containers.get(container_id).attrs.get("Config") or {}
    except docker.errors.DockerException:
        return [], {}
    env = dict(item.partition("=")[::2] for item in config.get("Env") or [])
    return list(config.get("Cmd") or []), env


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
