"""docker/: the compose file as Compose resolves it, the cluster-launcher file against Ray's own schema, the
KubeRay manifest and the image against the versions the project pins. No Docker engine is needed."""

import os
import re
import shutil
import subprocess

import pytest
import ray
import yaml

from .conftest import ROOT

DOCKER = ROOT / "docker"
IMAGE = "charsearch:0.1.0"


def compose_config(**env) -> subprocess.CompletedProcess:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.skip("docker-compose not installed (Debian: apt-get install docker-compose)")
    e = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_TOKEN", "MLFLOW_DB_PASSWORD")}
    return subprocess.run([exe, "-f", str(DOCKER / "compose.yaml"), "config"], env={**e, **env},
                          capture_output=True, text=True, timeout=60)


def test_compose_file_validates_and_wires_the_services():
    r = compose_config(RAY_AUTH_TOKEN="s3cret")
    assert r.returncode == 0, r.stderr
    services = yaml.safe_load(r.stdout)["services"]
    assert set(services) == {"postgres", "mlflow", "ray-head", "ray-worker"}
    head, worker, server = services["ray-head"], services["ray-worker"], services["mlflow"]
    assert head["image"] == worker["image"] == IMAGE and head["build"]["target"] == "ray"
    assert "--head" in head["command"] and "--address=ray-head:6379" in worker["command"]
    gpus = worker["deploy"]["resources"]["reservations"]["devices"]
    assert gpus == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    for node in (head, worker):  # same token, tracking server and shared storage on every Ray node
        assert node["environment"]["RAY_AUTH_MODE"] == "token" and node["environment"]["RAY_AUTH_TOKEN"] == "s3cret"
        assert node["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
        assert "work:/work:rw" in node["volumes"]
    command = server["command"]
    assert any(a.startswith("--backend-store-uri=postgresql+psycopg2://mlflow:mlflow@postgres:5432/") for a in command)
    assert "--serve-artifacts" in command and "--artifacts-destination=/mlartifacts" in command
    assert server["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_compose_file_refuses_to_start_without_a_ray_token():
    r = compose_config()
    assert r.returncode != 0 and "set RAY_AUTH_TOKEN" in r.stderr


def test_cluster_launcher_file_passes_rays_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config
    config = prepare_config(yaml.safe_load((DOCKER / "cluster.yaml").read_text()))
    validate_config(config)  # raises on any field Ray's cluster launcher does not know
    assert config["docker"]["image"].endswith("/" + IMAGE)
    assert "--env RAY_AUTH_MODE=token" in config["docker"]["run_options"]
    assert config["available_node_types"]["head"]["resources"] == {"CPU": 0}


def test_kuberay_manifest_runs_the_project_image_with_token_auth():
    rc = yaml.safe_load((DOCKER / "kuberay.yaml").read_text())
    assert rc["kind"] == "RayCluster" and rc["spec"]["rayVersion"] == ray.__version__
    assert rc["spec"]["authOptions"] == {"mode": "token"}
    pods = [rc["spec"]["headGroupSpec"]["template"]] + [g["template"] for g in rc["spec"]["workerGroupSpecs"]]
    for pod in pods:
        (container,) = pod["spec"]["containers"]
        assert container["image"].endswith("/" + IMAGE) and pod["spec"]["securityContext"]["runAsNonRoot"]
        assert {"name": "work", "mountPath": "/work"} in container["volumeMounts"]
    worker = rc["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_image_installs_the_pinned_versions_as_a_non_root_user():
    dockerfile = (DOCKER / "Dockerfile").read_text()
    pyproject = (ROOT / "pyproject.toml").read_text()
    for package in ("ray", "mlflow"):
        pinned = re.search(rf'"{package}(?:\[[a-z]+\])?==([0-9.]+)"', pyproject).group(1)
        in_image = set(re.findall(rf'"{package}(?:\[[a-z,]+\])?==([0-9.]+)"', dockerfile))
        assert in_image == {pinned}, package
    assert re.search(r"^FROM nvidia/cuda:|^ARG CUDA_IMAGE=nvidia/cuda:[0-9.]+-runtime-", dockerfile, re.M)
    stages = re.split(r"^FROM ", dockerfile, flags=re.M)[1:]
    assert all(re.search(r"^USER (?!root)\w+", stage, re.M) for stage in stages)  # each image ends non-root
