"""A private, real Docker Engine for the end-to-end tests, and the image that stands in for vLLM's.

`PrivateDaemon` runs Debian's dockerd (20.10, with its own containerd) on its own socket, data
root, exec root and pid file, on a bridge of its own, with no iptables rules and no registry
access, so it neither sees nor disturbs a Docker the machine may already run:

- `nvidia="toolkit"`: the machine as the NVIDIA Container Toolkit leaves it after
  `nvidia-ctk runtime configure`: `nvidia-container-runtime-hook` on dockerd's PATH (moby
  daemon/nvidia_linux.go registers its "nvidia" device driver, the one `--gpus` selects, only when
  exec.LookPath finds that hook) and an `nvidia` runtime in `docker info`. Both stand-ins are
  small: the hook reads the OCI state on stdin, notes which GPUs the container asked for, exits 0;
  the runtime execs runc.
- `nvidia="hook"`: the toolkit installed but never registered with Docker: the hook only.
  `--gpus` works all the same (the driver needs the hook, not the runtime).
- `nvidia="none"`: neither, as on a machine without the toolkit.

`ensure_stand_in_image` builds (or finds in the cache) `vllm/vllm-openai:v0.33.0` and `-cu129`: a
Debian bookworm rootfs made by debootstrap and imported with `docker import`, msmall installed
from wheels built on the host, and an entrypoint `vllm serve` that parses vLLM's arguments like
tests/fakes/fake_vllm.py and runs msmall's simulator on port 8000. On top of it, one small layer
makes `ollama/ollama:latest`: docker_image/ollama as /bin/ollama (`serve` runs the simulator's
Ollama flavor; `list` and `pull` are the client calls msmall's exported files make), with the
entrypoint, command and OLLAMA_HOST of ollama's own Dockerfile.

Cache (outside the clone, `MSMALL_TEST_CACHE`, default /var/cache/msmall-tests): the rootfs
tarball, the dependency wheels (keyed by the project's version and declared dependencies), and the
nvidia daemon's data root, which keeps the image and the build cache between runs. A file lock
gives one test session at a time that data root.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time

try:
    import tomllib
except ImportError:  # Python 3.10: the real-daemon tests skip
    tomllib = None  # type: ignore[assignment]
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
IMAGE_FILES = Path(__file__).parent / "docker_image"
FAKE_VLLM = REPO_ROOT / "tests" / "fakes" / "fake_vllm.py"

CACHE_DIR = Path(os.environ.get("MSMALL_TEST_CACHE", "/var/cache/msmall-tests"))
VLLM_TAGS = ("vllm/vllm-openai:v0.33.0", "vllm/vllm-openai:v0.33.0-cu129")
OLLAMA_TAGS = ("ollama/ollama:latest",)
STAND_IN_REPO = "msmall-test/vllm-stand-in"
OLLAMA_STAND_IN_REPO = "msmall-test/ollama-stand-in"
BASE_REPO = "msmall-test/bookworm-python"
# debootstrap's arguments are the rootfs's cache key. curl: vLLM's image has it (the vllm-base
# stage of vllm-project/vllm docker/Dockerfile apt-installs "git curl wget sudo vim
# python3-pip"), and podman's `kube play` runs an httpGet probe as `curl -f` inside the container
# (podman pkg/specgen/generate/kube/kube.go, probeToHealthConfig).
DEBOOTSTRAP_ARGS = ("--variant=minbase", "--include=python3,python3-venv,curl", "bookworm")
DEBIAN_MIRROR = os.environ.get("MSMALL_TEST_DEBIAN_MIRROR", "http://deb.debian.org/debian")
LABEL_KEY = "msmall.test-image-key"

DAEMON_START_S = 60.0
DAEMON_STOP_S = 30.0
LOCK_WAIT_S = 600.0
BUILD_TIMEOUT_S = 900.0


class CannotRun(Exception):
    """The private dockerd or the image could not be made; the message says why."""


class MissingTool(CannotRun):
    """A tool the tests need is not installed: the message is the skip reason."""


def why_not_runnable() -> str | None:
    """The reason no private daemon can start here, or None."""
    if sys.platform != "linux":
        return "a private dockerd needs Linux"
    if tomllib is None:
        return "the image builder reads pyproject.toml with tomllib (Python 3.11+)"
    if os.geteuid() != 0:
        return "a private dockerd needs root (run the tests as root, e.g. in CI)"
    missing = [t for t in ("dockerd", "containerd", "runc", "ip") if shutil.which(t) is None]
    if missing:
        return (
            f"{', '.join(missing)} not found: install Debian's docker.io "
            "(`apt-get install -y docker.io debootstrap iproute2`)"
        )
    return None


def _run(argv: list[str], timeout: float, **kwargs: Any) -> subprocess.CompletedProcess:
    result = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, check=False, **kwargs
    )
    if result.returncode != 0:
        raise CannotRun(
            f"`{' '.join(argv[:3])}` failed ({result.returncode}): "
            f"{(result.stderr or result.stdout).strip()[-600:]}"
        )
    return result


def _short_hash(*parts: str | bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode() if isinstance(part, str) else part)
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def _tree_hash(*roots: Path) -> str:
    parts: list[str | bytes] = []
    for root in roots:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in files:
            # Neither is source: bytecode, and the metadata that `pip wheel .` (the image
            # build) rewrites in src/msmall.egg-info; its SOURCES.txt changes as files are
            # added, which made the key differ before and after the build in one session.
            if "__pycache__" in path.parts or any(p.endswith(".egg-info") for p in path.parts):
                continue
            parts += [str(path.relative_to(REPO_ROOT)), path.read_bytes()]
    return _short_hash(*parts)


@contextlib.contextmanager
def file_lock(path: Path, wait_s: float) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise CannotRun(
                        f"another test session holds {path} for more than {wait_s:.0f} s"
                    ) from None
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# ---------------------------------------------------------------------------------------------
# The network: a bridge of the daemon's own


def _used_networks() -> list[ipaddress.IPv4Network]:
    out = _run(["ip", "-4", "-o", "addr", "show"], 10).stdout
    out += _run(["ip", "-4", "route", "show"], 10).stdout
    nets = []
    for word in out.split():
        with contextlib.suppress(ValueError):
            if "/" in word or word.count(".") == 3:
                nets.append(ipaddress.IPv4Network(word, strict=False))
    return nets


def make_bridge(name: str) -> str:
    """Create bridge NAME on a free 10.213.N.0/24 and return its gateway CIDR."""
    used = _used_networks()
    # Start from a per-process offset: two sessions choosing at the same moment rarely collide.
    start = os.getpid() % 254
    for n in (1 + (start + i) % 254 for i in range(254)):
        net = ipaddress.IPv4Network(f"10.213.{n}.0/24")
        if any(net.overlaps(u) for u in used if u.prefixlen > 0):
            continue
        cidr = f"10.213.{n}.1/24"
        _run(["ip", "link", "add", name, "type", "bridge"], 10)
        try:
            _run(["ip", "addr", "add", cidr, "dev", name], 10)
            _run(["ip", "link", "set", name, "up"], 10)
        except CannotRun:
            delete_bridge(name)
            raise
        return cidr
    raise CannotRun("no free 10.213.N.0/24 network for the test daemon's bridge")


def delete_bridge(name: str) -> None:
    subprocess.run(["ip", "link", "delete", name], capture_output=True, timeout=10, check=False)


def bridge_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


# ---------------------------------------------------------------------------------------------
# The daemon


HOOK = """#!/usr/bin/env python3
# Stand-in for the NVIDIA Container Toolkit's OCI prestart hook: the state arrives on stdin
# (runc), the GPUs the container was given are in the bundle's process env (moby
# daemon/nvidia_linux.go setNvidiaGPUs sets NVIDIA_VISIBLE_DEVICES there).
import json, os, sys
state = json.load(sys.stdin)
env = {}
try:
    with open(os.path.join(state["bundle"], "config.json")) as f:
        env = dict(e.split("=", 1) for e in json.load(f)["process"]["env"] if "=" in e)
except (OSError, KeyError, ValueError):
    pass
with open(os.environ["MSMALL_TEST_HOOK_LOG"], "a") as log:
    log.write(json.dumps({"id": state.get("id"), "args": sys.argv[1:],
                          "NVIDIA_VISIBLE_DEVICES": env.get("NVIDIA_VISIBLE_DEVICES")}) + "\\n")
"""

RUNTIME = """#!/bin/sh
# Stand-in for nvidia-container-runtime: the real one adds the hook and execs runc.
exec runc "$@"
"""


@dataclass
class PrivateDaemon:
    nvidia: str  # "toolkit" | "hook" | "none"
    data_root: Path | None = None  # None: a fresh one under the run directory
    run_dir: Path = field(init=False)
    bridge: str = field(init=False, default="")
    gateway: str = field(init=False, default="")
    pid: int | None = field(init=False, default=None)
    log_file: Path = field(init=False)
    seen_containers: set[str] = field(init=False, default_factory=set)
    stopped: bool = field(init=False, default=False)

    @property
    def socket(self) -> Path:
        return self.run_dir / "docker.sock"

    @property
    def docker_host(self) -> str:
        return f"unix://{self.socket}"

    @property
    def bindir(self) -> Path:
        """Where the stand-in NVIDIA executables are (on dockerd's PATH)."""
        return self.run_dir / "bin"

    @property
    def pidfile(self) -> Path:
        return self.run_dir / "docker.pid"

    @property
    def hook_log(self) -> Path:
        return self.run_dir / "hook.log"

    def hook_calls(self) -> list[dict[str, Any]]:
        if not self.hook_log.exists():
            return []
        return [json.loads(line) for line in self.hook_log.read_text().splitlines() if line]

    def client(self, timeout: int = 60):
        import docker

        return docker.DockerClient(base_url=self.docker_host, timeout=timeout)

    def start(self) -> PrivateDaemon:
        # Short paths: containerd's sockets live under the exec root (108-byte sun_path limit).
        self.run_dir = Path(tempfile.mkdtemp(prefix="msmall-dockerd-", dir="/tmp"))
        data_root = self.data_root or self.run_dir / "data"
        data_root.mkdir(parents=True, exist_ok=True)
        if self.data_root is not None:
            _stop_leftover(self.data_root)
        bindir = self.run_dir / "bin"
        bindir.mkdir()
        (self.run_dir / "daemon.json").write_text("{}\n")  # not /etc/docker/daemon.json
        self.bridge = f"msm{os.getpid() % 100000:05d}{self.nvidia[0]}"
        self.gateway = make_bridge(self.bridge)
        if self.data_root is not None:
            # Where this session's pid file is: the next session stops us if we are left over.
            _pointer(self.data_root).write_text(
                json.dumps({"pidfile": str(self.pidfile), "bridge": self.bridge})
            )
        argv = [
            shutil.which("dockerd") or "dockerd",
            "--config-file", str(self.run_dir / "daemon.json"),
            "--host", self.docker_host,
            "--data-root", str(data_root),
            "--exec-root", str(self.run_dir / "exec"),
            "--pidfile", str(self.pidfile),
            # Its own bridge, and no iptables rules, NAT or ip_forward changes on the host:
            # published ports go through docker-proxy, which is all 127.0.0.1 needs.
            "--bridge", self.bridge,
            "--iptables=false", "--ip-forward=false", "--ip-masq=false",
        ]  # fmt: skip
        if self.nvidia not in ("toolkit", "hook", "none"):
            raise ValueError(f"nvidia must be toolkit, hook or none, not {self.nvidia!r}")
        path = [p for p in os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin").split(":") if p]
        if self.nvidia in ("toolkit", "hook"):
            hook = bindir / "nvidia-container-runtime-hook"
            hook.write_text(HOOK)
            hook.chmod(0o755)
            path.insert(0, str(bindir))
        if self.nvidia == "toolkit":
            runtime = bindir / "nvidia-container-runtime"
            runtime.write_text(RUNTIME)
            runtime.chmod(0o755)
            argv += ["--add-runtime", f"nvidia={runtime}"]
        if self.nvidia == "none":
            # A real hook installed on this machine would make dockerd find the driver anyway.
            path = [p for p in path if not (Path(p) / "nvidia-container-runtime-hook").exists()]
        env = {
            "PATH": ":".join(path),
            "HOME": str(self.run_dir),
            "MSMALL_TEST_HOOK_LOG": str(self.hook_log),
            # No registry is reachable on purpose: a pull that should not happen fails at once
            # instead of downloading a 10 GB vLLM image.
            "HTTP_PROXY": "http://127.0.0.1:9",
            "HTTPS_PROXY": "http://127.0.0.1:9",
            "NO_PROXY": "",
        }
        self.log_file = self.run_dir / "dockerd.log"
        with open(self.log_file, "wb") as log:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                start_new_session=True,
            )  # fmt: skip
        self.pid = proc.pid
        deadline = time.monotonic() + DAEMON_START_S
        while True:
            if proc.poll() is not None:
                self._cleanup_host()
                raise CannotRun(f"dockerd exited with {proc.returncode}: {self.log_tail()}")
            if self.socket.exists() and self._pings():
                break
            if time.monotonic() > deadline:
                self.stop()
                raise CannotRun(
                    f"dockerd not ready within {DAEMON_START_S:.0f} s: {self.log_tail()}"
                )
            time.sleep(0.1)
        self._popen = proc
        return self

    def _pings(self) -> bool:
        import docker

        try:
            with contextlib.closing(self.client(timeout=5)) as cli:
                return bool(cli.ping())
        except docker.errors.DockerException:
            return False

    def log_tail(self, n: int = 15) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def note_containers(self) -> None:
        """Remember every container the daemon has, so teardown removes them all."""
        with contextlib.closing(self.client()) as cli:
            self.seen_containers.update(c["Id"] for c in cli.api.containers(all=True))

    def remove_containers(self) -> list[str]:
        """Force-remove every container seen or present; returns the names that were left."""
        import docker

        left = []
        with contextlib.closing(self.client()) as cli:
            present = {c["Id"]: c for c in cli.api.containers(all=True)}
            for cid in sorted(self.seen_containers | set(present)):
                if cid in present:
                    left.append(present[cid]["Names"][0].lstrip("/"))
                with contextlib.suppress(docker.errors.NotFound):
                    cli.api.remove_container(cid, force=True)
        return left

    def stop(self) -> None:
        """SIGTERM the pid in dockerd's pid file (nothing else), wait for it; remove the bridge."""
        if self.stopped:
            return
        self.stopped = True
        pid = None
        with contextlib.suppress(OSError, ValueError):
            pid = int(self.pidfile.read_text().strip())
        if pid is None:
            pid = self.pid  # it never wrote one: the process we started
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + DAEMON_STOP_S
            while _alive(pid) and time.monotonic() < deadline:
                popen = getattr(self, "_popen", None)
                if popen is not None:
                    popen.poll()  # reap our child, or it stays a zombie that looks alive
                time.sleep(0.1)
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        popen = getattr(self, "_popen", None)
        if popen is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                popen.wait(timeout=10)
        self._cleanup_host()

    def _cleanup_host(self) -> None:
        if self.bridge:
            delete_bridge(self.bridge)
        if self.data_root is not None:
            pointer = _pointer(self.data_root)
            with contextlib.suppress(OSError):
                if json.loads(pointer.read_text())["pidfile"] == str(self.pidfile):
                    pointer.unlink()

    def leftover_processes(self) -> list[str]:
        """Processes still running from this daemon: dockerd, its containerd, shims, proxies."""
        import psutil

        marker = str(self.run_dir)
        subnet = ipaddress.IPv4Interface(self.gateway).network if self.gateway else None
        found = []
        for proc in psutil.process_iter(["pid", "cmdline", "status"]):
            argv = proc.info["cmdline"] or []
            cmd = " ".join(argv)
            if proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            ours = marker in cmd
            # docker-proxy's command line names only the container's address on our bridge.
            if not ours and subnet is not None and "-container-ip" in argv:
                with contextlib.suppress(ValueError, IndexError):
                    ip = argv[argv.index("-container-ip") + 1]
                    ours = ipaddress.IPv4Address(ip) in subnet
            if ours:
                found.append(f"{proc.info['pid']}: {cmd[:160]}")
        if self.pid is not None and _alive(self.pid):
            found.append(f"{self.pid}: dockerd")
        return found

    def remove_run_dir(self) -> None:
        shutil.rmtree(self.run_dir, ignore_errors=True)


def _pointer(data_root: Path) -> Path:
    return data_root.with_name(data_root.name + ".pidfile")


def _stop_leftover(data_root: Path) -> None:
    """A dockerd a killed session left on this data root: stop it by its pid file, or two
    daemons would share one data root."""
    pointer = _pointer(data_root)
    try:
        left = json.loads(pointer.read_text())
        pidfile = Path(left["pidfile"])
        pid = int(pidfile.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError, KeyError, TypeError):
        return
    if not cmdline or not cmdline[0].endswith(b"dockerd") or str(data_root).encode() not in cmdline:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + DAEMON_STOP_S
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(pid):
        raise CannotRun(f"a leftover dockerd (pid {pid}, {pidfile}) holds {data_root}")
    if str(left.get("bridge", "")).startswith("msm"):
        delete_bridge(left["bridge"])
    shutil.rmtree(pidfile.parent, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


# ---------------------------------------------------------------------------------------------
# The stand-in image


@dataclass
class BuildReport:
    image_id: str
    built: list[str]  # what had to be made this time: rootfs, wheels, base image, image
    seconds: float


def _project() -> dict[str, Any]:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]


def rootfs_key() -> str:
    return _short_hash(*DEBOOTSTRAP_ARGS, os.uname().machine)


def deps_key() -> str:
    """The project's version and its declared dependencies: what `pip wheel .` resolves."""
    project = _project()
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    return _short_hash(project["version"], *sorted(project["dependencies"]), py)


def image_key() -> str:
    # msmall's own code is in the image too: a change rebuilds only that layer.
    return _short_hash(
        rootfs_key(), deps_key(), _tree_hash(REPO_ROOT / "src", REPO_ROOT / "pyproject.toml"),
        _tree_hash(FAKE_VLLM, IMAGE_FILES), DOCKERFILE, OLLAMA_DOCKERFILE,
    )  # fmt: skip


def _rootfs_tarball(built: list[str]) -> Path:
    tarball = CACHE_DIR / f"rootfs-bookworm-{rootfs_key()}.tar"
    if tarball.exists():
        return tarball
    if shutil.which("debootstrap") is None:
        raise MissingTool("debootstrap not found: `apt-get install -y debootstrap`")
    work = Path(tempfile.mkdtemp(prefix="rootfs-", dir=CACHE_DIR))
    try:
        _run(
            ["debootstrap", *DEBOOTSTRAP_ARGS, str(work / "rootfs"), DEBIAN_MIRROR],
            BUILD_TIMEOUT_S,
        )
        # apt's package cache is half the size and no use in the image.
        shutil.rmtree(work / "rootfs" / "var" / "cache" / "apt" / "archives", ignore_errors=True)
        partial = work / "rootfs.tar"
        _run(["tar", "-C", str(work / "rootfs"), "--numeric-owner", "-cf", str(partial), "."], 300)
        partial.replace(tarball)  # atomic: a half-written tarball is never found
    finally:
        shutil.rmtree(work, ignore_errors=True)
    built.append("rootfs")
    return tarball


def _wheels(built: list[str]) -> tuple[Path, Path]:
    """(the dependency wheels' directory, msmall's own wheel)."""
    deps = CACHE_DIR / f"wheels-{deps_key()}"
    if not deps.is_dir():
        work = Path(tempfile.mkdtemp(prefix="wheels-", dir=CACHE_DIR))
        try:
            _run(
                [sys.executable, "-m", "pip", "wheel", "-q", str(REPO_ROOT), "-w", str(work)],
                BUILD_TIMEOUT_S,
            )
            for own in work.glob("msmall-*.whl"):
                own.unlink()
            work.replace(deps)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        built.append("dependency wheels")
    own_dir = CACHE_DIR / "msmall-wheel"
    shutil.rmtree(own_dir, ignore_errors=True)
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            str(REPO_ROOT),
            "-w",
            str(own_dir),
        ],
        BUILD_TIMEOUT_S,
    )
    (wheel,) = own_dir.glob("msmall-*.whl")
    return deps, wheel


def _base_image(cli, built: list[str]) -> str:
    import docker

    tag = f"{BASE_REPO}:{rootfs_key()}"
    try:
        cli.images.get(tag)
        return tag
    except docker.errors.ImageNotFound:
        pass
    tarball = _rootfs_tarball(built)
    repo, _, version = tag.partition(":")
    cli.api.import_image_from_file(str(tarball), repository=repo, tag=version)
    cli.images.get(tag)
    built.append("base image")
    return tag


DOCKERFILE = """\
FROM {base}
COPY deps/ /tmp/deps/
RUN python3 -m venv /opt/msmall && /opt/msmall/bin/pip install -q --no-index --no-compile \
    --find-links /tmp/deps /tmp/deps/*.whl && rm -rf /tmp/deps
COPY {wheel} /tmp/
RUN /opt/msmall/bin/pip install -q --no-index --no-deps /tmp/{wheel} && rm /tmp/{wheel}
COPY fake_vllm.py /opt/msmall/fake_vllm.py
COPY vllm /usr/local/bin/vllm
LABEL {label}={key}
ENV PYTHONUNBUFFERED=1
# As in vllm/vllm-openai: the container's arguments follow `vllm serve`.
ENTRYPOINT ["vllm", "serve"]
"""


# ollama's Dockerfile (github.com/ollama/ollama, the last stage): /bin/ollama, ENTRYPOINT
# ["/bin/ollama"], CMD ["serve"], OLLAMA_HOST=0.0.0.0:11434, on an Ubuntu with ca-certificates
# only, so no curl: the layer takes out the curl the vLLM stand-in has.
OLLAMA_DOCKERFILE = """\
FROM {base}
COPY ollama /bin/ollama
RUN chmod 755 /bin/ollama && rm -f /usr/bin/curl
ENV OLLAMA_HOST=0.0.0.0:11434 NVIDIA_VISIBLE_DEVICES=all
EXPOSE 11434
LABEL {label}={key}
ENTRYPOINT ["/bin/ollama"]
CMD ["serve"]
"""


def _build(cli, context: Path, tag: str):
    import docker

    try:
        image, _ = cli.images.build(
            path=str(context), tag=tag, rm=True, forcerm=True, network_mode="none"
        )
    except docker.errors.BuildError as exc:
        log = "".join(str(e.get("stream", e)) for e in exc.build_log)[-1500:]
        raise CannotRun(f"building the stand-in image {tag} failed: {exc}\n{log}") from None
    return image


def ensure_stand_in_image(daemon: PrivateDaemon) -> BuildReport:
    """Tag the stand-in images as vllm/vllm-openai:v0.33.0 and -cu129, and ollama/ollama:latest,
    building what is missing."""
    import docker

    started = time.monotonic()
    built: list[str] = []
    key = image_key()
    tag = f"{STAND_IN_REPO}:{key}"
    with contextlib.closing(daemon.client(timeout=600)) as cli:
        try:
            image = cli.images.get(tag)
        except docker.errors.ImageNotFound:
            base = _base_image(cli, built)
            deps, wheel = _wheels(built)
            with tempfile.TemporaryDirectory(prefix="context-", dir=CACHE_DIR) as ctx:
                context = Path(ctx)
                shutil.copytree(deps, context / "deps")
                shutil.copy2(wheel, context / wheel.name)
                shutil.copy2(FAKE_VLLM, context / "fake_vllm.py")
                shutil.copy2(IMAGE_FILES / "vllm", context / "vllm")
                (context / "Dockerfile").write_text(
                    DOCKERFILE.format(base=base, wheel=wheel.name, label=LABEL_KEY, key=key)
                )
                image = _build(cli, context, tag)
            built.append("image")
            _prune_old_images(cli, STAND_IN_REPO, keep=tag)
        for ref in VLLM_TAGS:
            repo, _, version = ref.partition(":")
            image.tag(repo, version)
        ollama_tag = f"{OLLAMA_STAND_IN_REPO}:{key}"
        try:
            ollama = cli.images.get(ollama_tag)
        except docker.errors.ImageNotFound:
            with tempfile.TemporaryDirectory(prefix="context-", dir=CACHE_DIR) as ctx:
                context = Path(ctx)
                shutil.copy2(IMAGE_FILES / "ollama", context / "ollama")
                (context / "Dockerfile").write_text(
                    OLLAMA_DOCKERFILE.format(base=tag, label=LABEL_KEY, key=key)
                )
                ollama = _build(cli, context, ollama_tag)
            built.append("ollama image")
            _prune_old_images(cli, OLLAMA_STAND_IN_REPO, keep=ollama_tag)
        for ref in OLLAMA_TAGS:
            repo, _, version = ref.partition(":")
            ollama.tag(repo, version)
    report = BuildReport(image.id, built, round(time.monotonic() - started, 1))
    with contextlib.suppress(OSError):
        partial = CACHE_DIR / "last-build.json.partial"
        partial.write_text(json.dumps({"key": key, **report.__dict__}, indent=1) + "\n")
        partial.replace(CACHE_DIR / "last-build.json")
    return report


def _prune_old_images(cli, repository: str, keep: str) -> None:
    """Stand-in images of earlier keys: the cache keeps one."""
    import docker

    for image in cli.images.list(name=repository):
        if keep not in image.tags:
            for ref in image.tags:
                with contextlib.suppress(docker.errors.APIError):
                    cli.images.remove(ref, noprune=False)
    with contextlib.suppress(docker.errors.APIError):
        cli.images.prune(filters={"dangling": True})


def tiny_vllm_image(daemon: PrivateDaemon, refs: tuple[str, ...] = VLLM_TAGS) -> None:
    """An image that carries the vLLM tags and nothing runnable: for daemons whose containers
    are expected never to start (no GPU driver), so they need no real rootfs."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("README")
        body = b"msmall test stand-in: this image is never meant to run\n"
        info.size = len(body)
        tar.addfile(info, io.BytesIO(body))
    with contextlib.closing(daemon.client()) as cli:
        for ref in refs:
            repo, _, version = ref.partition(":")
            cli.api.import_image_from_data(
                buf.getvalue(), repository=repo, tag=version,
                changes=['ENTRYPOINT ["vllm", "serve"]'],
            )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# The session's daemons (used by the fixtures in tests/conftest.py and test_docker_real.py)


def start_or_skip(daemon: PrivateDaemon) -> PrivateDaemon:
    import pytest

    try:
        return daemon.start()
    except CannotRun as exc:
        pytest.skip(f"no private Docker Engine here: {exc}")


def teardown_checked(daemon: PrivateDaemon) -> None:
    """Remove every container, stop dockerd by its pid file, check nothing of it is left."""
    if daemon.stopped:
        return
    left: list[str] = []
    try:
        left = daemon.remove_containers()
    finally:
        daemon.stop()
    processes = daemon.leftover_processes()
    bridge_left = bridge_exists(daemon.bridge)
    if not processes and not bridge_left:
        daemon.remove_run_dir()
    assert not left, f"containers left at the end of the session (removed now): {left}"
    assert not processes, f"processes of the private dockerd still running: {processes}"
    assert not bridge_left, f"bridge {daemon.bridge} still exists"


def toolkit_daemon_session():
    """dockerd as the NVIDIA Container Toolkit leaves it, with the stand-in vLLM image, for one
    pytest session: it owns the cached data root, so every test that needs it shares this one."""
    import sys

    import pytest

    reason = why_not_runnable()
    if reason:
        pytest.skip(f"no private Docker Engine here: {reason}")
    # One session at a time owns the cached data root (the image and its build cache).
    with file_lock(CACHE_DIR / "dockerd-data.lock", LOCK_WAIT_S):
        daemon = start_or_skip(
            PrivateDaemon(nvidia="toolkit", data_root=CACHE_DIR / "dockerd-data")
        )
        try:
            try:
                report = ensure_stand_in_image(daemon)
            except MissingTool as exc:
                pytest.skip(f"cannot build the stand-in vLLM image: {exc}")
            sys.stderr.write(
                f"\nstand-in image {report.image_id[7:19]}: "
                f"{'built ' + ', '.join(report.built) if report.built else 'from the cache'} "
                f"in {report.seconds:.1f} s\n"
            )
            yield daemon
        finally:
            teardown_checked(daemon)
