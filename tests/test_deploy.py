"""Deployment files work as written: the systemd unit passes `systemd-analyze verify`, the
Kubernetes manifests parse and name real configuration keys, the Dockerfile's settings are
valid, and the image builds where a docker daemon runs."""

from __future__ import annotations

import secrets
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from meshcache.config import Config

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def _strong_env() -> dict[str, str]:
    return {"MESHCACHE_CLUSTER_SECRET": secrets.token_urlsafe(32)}


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is absent")
def test_systemd_unit_verifies(tmp_path):
    unit = (DEPLOY / "meshcached.service").read_text()
    # verify checks that ExecStart exists: point it at this environment's meshcached.
    meshcached = Path(sys.executable).parent / "meshcached"
    assert "ExecStart=/usr/local/bin/meshcached\n" in unit and meshcached.exists()
    path = tmp_path / "meshcached.service"
    path.write_text(unit.replace("/usr/local/bin/meshcached", str(meshcached)))
    r = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True,
                       text=True, timeout=60)
    own = [line for line in (r.stdout + r.stderr).splitlines() if "meshcached.service" in line]
    assert r.returncode == 0 and not own, r.stdout + r.stderr


def test_example_config_is_valid(tmp_path):
    data = tomllib.loads((DEPLOY / "meshcache.toml").read_text())
    credential = tmp_path / "credential"
    credential.write_text(secrets.token_urlsafe(32))
    data["cluster_secret_file"] = str(credential)
    cfg = Config.from_dict(data)
    assert cfg.preset == "lan" and cfg.socket_path() == "/var/cache/meshcache/meshcached.sock"


def test_kubernetes_manifests_parse_and_share_the_socket():
    docs = list(yaml.safe_load_all((DEPLOY / "k8s" / "daemonset.yaml").read_text()))
    kinds = {d["kind"]: d for d in docs}
    assert {"Namespace", "Secret", "Service", "DaemonSet", "Pod"} <= set(kinds)
    svc = kinds["Service"]
    assert svc["spec"]["clusterIP"] == "None"
    ds = kinds["DaemonSet"]["spec"]["template"]["spec"]
    daemon = ds["containers"][0]
    env = {e["name"]: e["value"] for e in daemon["env"] if "value" in e}
    cfg = Config.from_env({**env, **_strong_env(), "MESHCACHE_PRESET": "lan"})
    cache = cfg.cache_dir
    host_paths = {v["name"]: v["hostPath"]["path"] for v in ds["volumes"] if "hostPath" in v}
    mounts = {m["name"]: m["mountPath"] for m in daemon["volumeMounts"]}
    assert host_paths["cache"] == mounts["cache"] == cache
    assert env["MESHCACHE_PEERS"].startswith(svc["metadata"]["name"] + ".")
    ports = {p["name"]: p for p in daemon["ports"]}
    assert ports["quic"]["protocol"] == "UDP" and ports["quic"]["containerPort"] == \
        int(cfg.listen.rsplit(":", 1)[1])
    assert ports["metrics"]["containerPort"] == int(cfg.metrics_listen.rsplit(":", 1)[1])
    # The example reader mounts the same hostPath (the socket is in it) in the socket's group.
    pod = kinds["Pod"]["spec"]
    assert pod["volumes"][0]["hostPath"]["path"] == cache
    assert ds["securityContext"]["runAsGroup"] in pod["securityContext"]["supplementalGroups"]
    # The daemon's arguments are ones meshcached takes.
    from click.testing import CliRunner

    from meshcache.daemon import main

    options = {o for p in main.params for o in p.opts}
    assert {a for a in daemon["args"] if a.startswith("--")} <= options
    assert CliRunner().invoke(main, ["--help"]).exit_code == 0


def _docker_running() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0


def test_dockerfile_settings_are_valid():
    lines = (DEPLOY / "Dockerfile").read_text().splitlines()
    env: dict[str, str] = {}
    joined = " ".join(line.rstrip("\\").strip() for line in lines if not line.startswith("#"))
    for part in joined.split("ENV ")[1:]:
        for item in part.split(" RUN ")[0].split(" EXPOSE ")[0].split():
            if "=" in item:
                k, v = item.split("=", 1)
                env[k] = v
    assert env and Config.from_env(env).metrics_listen == "0.0.0.0:7947"
    assert 'ENTRYPOINT ["meshcached"]' in lines
    for line in lines:
        if line.startswith("COPY "):
            for src in line.split()[1:-1]:
                assert (DEPLOY.parent / src).exists(), src


@pytest.mark.skipif(not _docker_running(), reason="no docker daemon runs here")
def test_image_builds():
    r = subprocess.run(["docker", "build", "-f", str(DEPLOY / "Dockerfile"), "-t",
                        "meshcached:test", str(DEPLOY.parent)], capture_output=True, text=True,
                       timeout=900)
    try:
        assert r.returncode == 0, r.stderr[-2000:]
    finally:
        subprocess.run(["docker", "rmi", "-f", "meshcached:test"], capture_output=True)
