"""`msmall export k8s` really runs: Debian's podman 4.3 plays the exported manifest
(`podman kube play`) with the stand-in images of the real-Docker tests (tests/e2e/docker_daemon.py),
the probe goes healthy, msmall's smoke checks pass through the published port, and
`podman kube down` leaves no pod or container.

podman is a single host, not a cluster, so the test makes the few edits a single host needs, in
code (`for_podman`), and nothing else:
- a `hostIP: 127.0.0.1` / `hostPort` on the container port: podman publishes a pod's ports only
  through hostPort; the Service is kept and podman ignores it (there is no kube-proxy).
- the `secretKeyRef`s replaced by the values a user would put in the Secret: podman 4.3 cannot
  play a `kind: Secret`, and could not read one made with `podman secret create` either (JSON
  with base64 data: "illegal base64 data at input byte 0", tried by hand for issue 12).
The rest is podman's own behaviour, worked around outside the manifest:
- podman 4.3 turns the livenessProbe into a health check it runs as `curl -f
  http://localhost:PORT/PATH || exit 1` inside the container (pkg/specgen/generate/kube/kube.go,
  probeToHealthConfig; readinessProbe is not played, startupProbe not in 4.3). vLLM's image has
  curl (its docker/Dockerfile, stage vllm-base), so the stand-in has it too; ollama's image has
  none, so the Ollama pod's probe cannot run under podman (a kubelet probes from outside).
- podman schedules health checks with systemd timers; without systemd (this machine, most CI
  containers) nothing runs them, so the test runs `podman healthcheck run` itself, once the port
  answers (podman restarts a container whose check failed `failureThreshold` times in a row).
- the pod network is slirp4netns with its own port handler: no bridge, no iptables rules and no
  CNI/netavark state on the host.
- a private containers.conf (`default_ulimits = []`: this machine refuses to raise rlimits;
  cgroupfs and a file events log: no systemd), storage.conf and registries.conf, and a proxy
  that answers nothing, so podman never pulls: the images come from the private dockerd's
  stand-ins, kept between runs in a podman image store under the test cache (an
  `additionalimagestores` entry of each run's temporary store), reloaded only when their key
  changes.

Skipped, with the reason, where podman, catatonit, slirp4netns or root are missing.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import msmall_cmd
from helpers import http_get

pytestmark = [pytest.mark.docker, pytest.mark.podman, pytest.mark.timeout(600, func_only=True)]

docker_daemon = pytest.importorskip(
    "docker_daemon", reason="tests/e2e/docker_daemon.py (the real-Docker tests) is not here"
)

IMAGES = (*docker_daemon.VLLM_TAGS[:1], *docker_daemon.OLLAMA_TAGS)
STORE = docker_daemon.CACHE_DIR / "podman-images"
LOAD_TIMEOUT_S = 300.0
LOCK_WAIT_S = docker_daemon.LOCK_WAIT_S
PODMAN_TIMEOUT_S = 120.0
READY_WITHIN_S = 60.0
CATATONIT = ("/usr/libexec/podman/catatonit", "/usr/bin/catatonit")
API_KEY = "sk-podman-test-5678"
HF_TOKEN = "hf_podman_test_8765"


def why_not_runnable() -> str | None:
    if sys.platform != "linux":
        return "podman kube play needs Linux"
    if os.geteuid() != 0:
        return "the podman test runs rootful podman (run the tests as root, e.g. in CI)"
    missing = [t for t in ("podman", "slirp4netns") if shutil.which(t) is None]
    if not any(Path(p).exists() for p in CATATONIT):
        # podman builds the pod's infra (pause) image from catatonit when it cannot pull one.
        missing.append("catatonit")
    if missing:
        return f"{', '.join(missing)} not found: `apt-get install -y podman catatonit slirp4netns`"
    return None


@pytest.fixture(scope="module", autouse=True)
def _runnable() -> None:
    reason = why_not_runnable()
    if reason:
        pytest.skip(reason)


class Podman:
    """Rootful podman on a private root, run root and config under one temporary directory."""

    def __init__(self, base: Path, image_store: Path | None) -> None:
        self.base = base
        self.root, self.runroot, self.tmp = base / "root", base / "run", base / "tmp"
        for path in (self.root, self.runroot, self.tmp, base / "net"):
            path.mkdir(parents=True, exist_ok=True)
        stores = f'additionalimagestores = ["{image_store}"]\n' if image_store else ""
        (base / "storage.conf").write_text(
            f'[storage]\ndriver = "overlay"\ngraphroot = "{self.root}"\n'
            f'runroot = "{self.runroot}"\n[storage.options]\n{stores}'
        )
        (base / "containers.conf").write_text(
            "[containers]\n"
            "# This machine refuses to raise rlimits (podman's default raises nofile/nproc).\n"
            "default_ulimits = []\n"
            "[engine]\n"
            'cgroup_manager = "cgroupfs"\n'
            'events_logger = "file"\n'
            f'events_logfile_path = "{base / "events.log"}"\n'
            f'tmp_dir = "{self.tmp}"\n'
            "[network]\n"
            f'network_config_dir = "{base / "net"}"\n'
        )
        (base / "registries.conf").write_text(
            'unqualified-search-registries = ["docker.io"]\nshort-name-mode = "permissive"\n'
        )
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "HOME": str(base),
            "CONTAINERS_CONF": str(base / "containers.conf"),
            "CONTAINERS_STORAGE_CONF": str(base / "storage.conf"),
            "CONTAINERS_REGISTRIES_CONF": str(base / "registries.conf"),
            # No registry is reachable on purpose: a pull that should not happen fails at once.
            "HTTP_PROXY": "http://127.0.0.1:9",
            "HTTPS_PROXY": "http://127.0.0.1:9",
        }

    def argv(self, *args: str) -> list[str]:
        # The private root and run root come from storage.conf: podman 4.3 drops the
        # additionalimagestores of storage.conf when --root is given on the command line.
        return ["podman", *args]

    def run(self, *args: str, check: bool = True, timeout: float = PODMAN_TIMEOUT_S, **kw):
        proc = subprocess.run(
            self.argv(*args), capture_output=True, text=True, timeout=timeout, env=self.env,
            check=False, **kw,
        )  # fmt: skip
        if check:
            assert proc.returncode == 0, f"podman {' '.join(args)}: {proc.stderr[-1500:]}"
        return proc

    def containers(self) -> list[dict]:
        return json.loads(self.run("ps", "-a", "--format", "json").stdout or "[]")

    def pods(self) -> list[dict]:
        return json.loads(self.run("pod", "ps", "--format", "json").stdout or "[]")

    def remove_everything(self) -> None:
        self.run("pod", "rm", "--all", "--force", check=False)
        self.run("rm", "--all", "--force", check=False)
        self.run("volume", "rm", "--all", "--force", check=False)

    def leftovers(self) -> list[str]:
        """Processes (conmon, slirp4netns, containers' init) and mounts still using our dirs."""
        import psutil

        marker = str(self.base)
        found = [
            f"{p.info['pid']}: {' '.join(p.info['cmdline'] or [])[:160]}"
            for p in psutil.process_iter(["pid", "cmdline"])
            if marker in " ".join(p.info["cmdline"] or [])
        ]
        found += [
            line for line in Path("/proc/self/mounts").read_text().splitlines() if marker in line
        ]
        return found


def _image_keys(store: Podman) -> dict[str, str | None]:
    out = store.run("images", "--format", "json").stdout
    keys: dict[str, str | None] = {}
    for image in json.loads(out or "[]"):
        for name in image.get("Names") or []:
            keys[name] = (image.get("Labels") or {}).get(docker_daemon.LABEL_KEY)
    return keys


def _fill_store(store: Podman, dockerd) -> None:
    """`docker save` the stand-ins from the private dockerd, `podman load` them: one archive,
    so the layers the two images share travel once. The images of the old key go after the
    load, not before: their layers below msmall's own (the rootfs, the dependencies) are the
    new images' too, and podman reuses a layer it holds instead of unpacking it again."""
    env = {**os.environ, "DOCKER_HOST": dockerd.docker_host}
    save = subprocess.Popen(
        ["docker", "save", *IMAGES], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    try:
        load = subprocess.run(
            store.argv("load"), stdin=save.stdout, capture_output=True, text=True,
            timeout=LOAD_TIMEOUT_S, env=store.env, check=False,
        )  # fmt: skip
    finally:
        assert save.stdout is not None
        save.stdout.close()
        try:
            save.wait(timeout=30)
        except subprocess.TimeoutExpired:
            save.kill()
            save.wait()
    assert save.returncode == 0, f"docker save: {save.stderr.read().decode(errors='replace')}"
    assert load.returncode == 0, f"podman load: {load.stderr[-1500:]}"
    with contextlib.closing(dockerd.client()) as cli:
        for ref in IMAGES:
            # podman names a docker archive's `repo:tag` localhost/repo:tag; the manifests use
            # the short name, which podman resolves through docker.io (registries.conf).
            store.run("tag", cli.images.get(ref).id.split(":", 1)[1], f"docker.io/{ref}")
    # The old key's images lost their names to the new ones: dangling now.
    store.run("image", "prune", "--force")


@pytest.fixture(scope="module")
def image_store(request: pytest.FixtureRequest) -> Iterator[Path]:
    """A podman image store holding the stand-ins of this tree's image key, kept in the cache.

    Fixed paths inside it (podman's database records its run root and tmp dir and refuses
    others); no container ever runs from it directly, so a run root on disk is harmless.
    """
    key = docker_daemon.image_key()
    dockerd = None
    while True:
        with docker_daemon.file_lock(STORE.with_name("podman-images.lock"), LOCK_WAIT_S):
            store = Podman(STORE, image_store=None)
            stale = any(_image_keys(store).get(f"docker.io/{ref}") != key for ref in IMAGES)
            if not stale or dockerd is not None:
                if stale:
                    _fill_store(store, dockerd)
                keys = _image_keys(store)
                assert all(keys.get(f"docker.io/{ref}") == key for ref in IMAGES), keys
                yield STORE / "root"
                return
        # Stale or empty: only now is the private dockerd needed (it builds the stand-ins).
        # Taken with our lock released: the dockerd's lock always comes first, so two sessions
        # never wait on each other's lock.
        dockerd = request.getfixturevalue("nvidia_dockerd")


@pytest.fixture
def podman(image_store: Path) -> Iterator[Podman]:
    # Short path: conmon's attach socket lives under the run root (108-byte sun_path limit).
    base = Path(tempfile.mkdtemp(prefix="msmall-podman-", dir="/tmp"))
    pm = Podman(base, image_store=image_store)
    try:
        yield pm
    finally:
        pm.remove_everything()
        left = pm.leftovers()
        if not left:
            shutil.rmtree(base, ignore_errors=True)
        assert not left, f"podman left processes or mounts behind (in {base}): {left}"


def for_podman(manifest: str, host_port: int, secrets: dict[str, str]) -> str:
    """The exported manifest with the edits a single podman host needs (see the module doc)."""
    import yaml

    docs = list(yaml.safe_load_all(manifest))
    (deployment,) = (d for d in docs if d["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["ports"][0].update(hostIP="127.0.0.1", hostPort=host_port)
    if deployment["spec"]["template"]["spec"].get("initContainers"):
        # podman 4.3 gives init containers the pod's restart policy, and a Deployment's pods
        # are `Always`: a finished init container is restarted until podman gives up
        # (containers/podman#16343, fixed by #18481 in 4.6). The kubelet runs it once.
        deployment["spec"]["template"]["spec"]["restartPolicy"] = "OnFailure"
    for spec in [container, *deployment["spec"]["template"]["spec"].get("initContainers", [])]:
        for env in spec.get("env", []):
            ref = env.get("valueFrom", {}).get("secretKeyRef")
            if ref is not None:
                del env["valueFrom"]
                env["value"] = secrets[ref["key"]]
    return yaml.safe_dump_all(docs, sort_keys=False)


def _export_k8s(profile: str, out: Path, **env: str) -> str:
    proc = subprocess.run(
        msmall_cmd("export", "k8s", "-p", profile, "-o", str(out)),
        capture_output=True, text=True, timeout=120, env={**os.environ, **env}, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return (out / "k8s.yaml").read_text()


def _wait_http(url: str, status: int, within_s: float = READY_WITHIN_S) -> None:
    import httpx

    deadline = time.monotonic() + within_s
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = http_get(url, timeout=5).status_code
            if last == status:
                return
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.3)
    raise AssertionError(f"{url} did not answer {status} within {within_s:.0f} s (last: {last})")


def _play_and_check_down(pm: Podman, manifest: Path, check) -> None:
    try:
        pm.run("kube", "play", "--network", "slirp4netns:port_handler=slirp4netns", str(manifest))
        check()
    finally:
        down = pm.run("kube", "down", str(manifest), check=False)
    assert down.returncode == 0, down.stderr
    assert pm.pods() == []
    assert pm.containers() == []


def test_k8s_plays_under_podman_probe_goes_healthy_serves_with_the_key(
    podman: Podman, tmp_path: Path, free_port: int
) -> None:
    manifest = _export_k8s("h100-bf16-vision", tmp_path / "deploy", MSMALL_API_KEY=API_KEY)
    assert API_KEY not in manifest
    play = tmp_path / "play.yaml"
    play.write_text(
        for_podman(manifest, free_port, {"HF_TOKEN": HF_TOKEN, "VLLM_API_KEY": API_KEY})
    )
    base = f"http://127.0.0.1:{free_port}"

    def check() -> None:
        pods = podman.pods()
        assert [p["Name"] for p in pods] == ["msmall-h100-bf16-vision-pod-0"], pods
        _wait_http(f"{base}/health", 200)
        # The probe, as podman runs it: curl inside the container, on /health.
        (ctr,) = (c for c in podman.containers() if c["Names"][0].endswith("-vllm"))
        health = podman.run("healthcheck", "run", ctr["Id"], check=False)
        assert health.returncode == 0, f"probe: {health.stdout}{health.stderr}"
        inspect = json.loads(podman.run("inspect", ctr["Id"]).stdout)[0]
        assert inspect["State"]["Health"]["Status"] == "healthy"
        assert "curl -f http://localhost:8000/health" in " ".join(
            inspect["Config"]["Healthcheck"]["Test"]
        )
        # The key is on: /v1 needs it, /health (every probe's path) does not.
        assert http_get(f"{base}/v1/models", timeout=10).status_code == 401
        smoke = subprocess.run(
            msmall_cmd("health", base, "--api-key", API_KEY),
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert smoke.returncode == 0, smoke.stdout + smoke.stderr

    _play_and_check_down(podman, play, check)


def test_ollama_k8s_init_container_pulls_then_the_pod_serves(
    podman: Podman, tmp_path: Path, free_port: int
) -> None:
    import yaml

    manifest = _export_k8s("4090-q4", tmp_path / "deploy")
    deployment = next(d for d in yaml.safe_load_all(manifest) if d["kind"] == "Deployment")
    (init,) = deployment["spec"]["template"]["spec"]["initContainers"]
    tag = init["command"][-1].split("ollama pull ", 1)[1].split(";", 1)[0]
    play = tmp_path / "play.yaml"
    play.write_text(for_podman(manifest, free_port, {}))
    base = f"http://127.0.0.1:{free_port}"

    def check() -> None:
        # `kube play` returned: the init container ran to a clean end before the server
        # started (podman removes an init container of type "once" once it has run).
        _wait_http(f"{base}/", 200)
        # The server only serves (`ollama serve`); the model it lists is the one the init
        # container pulled into the PVC both mount.
        tags = http_get(f"{base}/api/tags", timeout=10).json()
        assert [m["name"] for m in tags["models"]] == [tag]
        smoke = subprocess.run(
            msmall_cmd("health", base), capture_output=True, text=True, timeout=120, check=False
        )  # fmt: skip
        assert smoke.returncode == 0, smoke.stdout + smoke.stderr

    _play_and_check_down(podman, play, check)
