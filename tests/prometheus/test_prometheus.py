"""Monitoring with a real Prometheus: Debian's `prometheus` binary scrapes a real Ray cluster (with
its dashboard, token authentication as Ray 2.60 sets it by default) through Ray's
service-discovery file, while the real Serve application runs a v1 round, a validation, a v2
generation and a v2 job over real HTTP, with a real callback receiver.

The engine replicas are stand-ins injected through the engine deployment's ``engine_factory``:
every series comes from the ingress and from Ray Serve themselves, so a vLLM engine would only
make the test slower. The stand-ins fail each replica's first call of each method (a replica that
died) and leave one nonce's artifact non-finite, so that the fault series exist too.

Checked: every PromQL expression of deploy/grafana-dashboard.json returns data through
Prometheus' HTTP API (the GPU panels aside: this machine has none); the checked-nonce counter
agrees with /status within one scrape plus one Ray export interval; the alert rules load and
evaluate; `promtool` passes the rules file and its unit tests.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest
import ray
from ray import serve

from poc_serve.engine.protocol import ArtifactBatchResult, PoCBatchResult
from poc_serve.serve.config import PoCAppArgs
from poc_serve.app import assemble_app
from poc_serve.serve.core.metrics import EXPORTED_NAMES
from tests.support.net import free_port
from tests.support.receiver import CallbackReceiver
from tests.support.fake_engine import NonceDerivedEngine
from tests.support.grafana import load_grafana_dashboard
from tests.support.waits import wait_until

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "deploy" / "prometheus" / "poc_serve.rules.yml"
RULES_TESTS = REPO / "deploy" / "prometheus" / "poc_serve.rules.test.yml"
RAY_CLI = str(Path(sys.executable).with_name("ray"))
SCRAPE_INTERVAL_S = 1
# How often Ray's metrics agent takes new values from the workers (Ray's default is 10 s; Ray
# never goes below 1 s). A value reaches Prometheus at most this plus one scrape interval late.
EXPORT_INTERVAL_S = 1
# Metrics of GPU nodes: the dashboard's GPU panels have no data on a CPU machine.
GPU_METRICS = ("ray_node_gpus_utilization", "ray_node_gram_used")
NONFINITE_NONCE = 5  # the stand-in's artifact of this nonce stays non-finite
V1, V2 = "/api/v1/pow", "/api/v1/inference/pow"
V1_ROUND = dict(block_hash="prom_block", block_height=3, public_key="prom_key", r_target=1.4, seq_len=16,
                node_id=0, node_count=1)
V2_ROUND = dict(block_hash="prom_block", block_height=3, public_key="prom_key", node_id=0, node_count=1,
                params={"model": "stand-in", "seq_len": 16})


# ------------------------------------------------------------------------------ the binaries

@pytest.fixture(scope="session")
def prometheus_binaries() -> dict[str, str]:
    """Paths of `prometheus` and `promtool`, installed from Debian's package where missing (CI
    starts from a bare machine, as root). Fails, never skips, where they cannot be had."""
    if not (shutil.which("prometheus") and shutil.which("promtool")):
        _apt_install_prometheus()
    found = {name: shutil.which(name) for name in ("prometheus", "promtool")}
    missing = [name for name, path in found.items() if path is None]
    if missing:
        pytest.fail(f"{missing} not on PATH after installing Debian's prometheus package")
    return found


def _apt_install_prometheus() -> None:
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        pytest.fail("Prometheus is not installed and cannot be installed here (needs apt-get as root): "
                    "run `apt-get install prometheus` (Debian's package has prometheus and promtool)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update"], ["apt-get", "install", "-y", "--no-install-recommends", "prometheus"]):
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            pytest.fail(f"`{' '.join(command)}` failed ({done.returncode}), so Prometheus is missing:\n"
                        f"{(done.stdout + done.stderr)[-3000:]}")


def test_alert_rules_pass_promtool(prometheus_binaries):
    for args in (["check", "rules", str(RULES)], ["test", "rules", str(RULES_TESTS)]):
        done = subprocess.run([prometheus_binaries["promtool"], *args], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr


# ------------------------------------------------------------------------------ the cluster

class FirstCallFailsEngine(NonceDerivedEngine):
    """v1 distances (one nonce in ten valid at r_target 1.4) and v2 artifacts derived from the
    nonces. The first call of each method fails, as on a replica that died and was replaced."""

    def __init__(self):
        self._called: set[str] = set()

    def _fail_first_call(self, method: str) -> None:
        if method not in self._called:
            self._called.add(method)
            raise RuntimeError(f"stand-in engine: first {method} call fails")

    async def compute(self, round, nonces, return_hidden=False) -> PoCBatchResult:
        self._fail_first_call("compute")
        await asyncio.sleep(0.02)
        return PoCBatchResult(nonces=nonces, distances=[1.3 if n % 10 == 0 else 1.5 for n in nonces])

    async def compute_artifacts(self, round, nonces) -> ArtifactBatchResult:
        self._fail_first_call("compute_artifacts")
        result = await super().compute_artifacts(round, nonces)
        if NONFINITE_NONCE in nonces:
            result.artifacts[nonces.index(NONFINITE_NONCE)] = None
        return result


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster of this module's own (its temp dir holds the service-discovery file)
    with the dashboard, and the poc application on stand-in engines."""
    temp_dir = tempfile.mkdtemp(prefix="ray_prom_", dir="/tmp")  # short: Ray's socket paths
    dashboard_port, http_port = free_port(), free_port()
    ray.init(num_cpus=4, include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=dashboard_port,
             _temp_dir=temp_dir, log_to_driver=False,
             _system_config={"metrics_report_interval_ms": EXPORT_INTERVAL_S * 1000})
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": http_port})
        args = PoCAppArgs(model="stand-in", num_engine_replicas=1, callback_interval_s=0.5, log_interval_s=0.5,
                          engine_num_cpus=0,
                          callback_backoff_s=0.05, callback_backoff_cap_s=0.1,
                          engine=dict(max_model_len=64, max_num_batched_tokens=256))
        serve.run(assemble_app(args, FirstCallFailsEngine.factory), name="poc", route_prefix="/")
        yield dict(temp_dir=temp_dir, base=f"http://127.0.0.1:{http_port}",
                   dashboard=f"http://127.0.0.1:{dashboard_port}")
    finally:
        serve.shutdown()
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def prometheus(prometheus_binaries, cluster, tmp_path_factory):
    """A Prometheus server that finds Ray's nodes in Ray's service-discovery file, scraping every
    second and evaluating the alert rules; its base URL."""
    workdir = tmp_path_factory.mktemp("prometheus")
    config = {
        "global": {"scrape_interval": f"{SCRAPE_INTERVAL_S}s", "evaluation_interval": f"{SCRAPE_INTERVAL_S}s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [{"job_name": "ray", "file_sd_configs": [{
            "files": [str(Path(cluster["temp_dir"]) / "prom_metrics_service_discovery.json")],
            "refresh_interval": "1s"}]}],
    }
    (workdir / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
    port = free_port()
    log = (workdir / "prometheus.log").open("w")
    proc = subprocess.Popen([prometheus_binaries["prometheus"], f"--config.file={workdir / 'prometheus.yml'}",
                             f"--storage.tsdb.path={workdir / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until("Prometheus to be ready", lambda: _answers(f"{url}/-/ready"), 60)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
        print(f"Prometheus log: {workdir / 'prometheus.log'}", file=sys.stderr)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def _query(prometheus: str, expr: str) -> list[dict]:
    r = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=30)
    body = r.json()
    assert r.status_code == 200 and body["status"] == "success", (expr, body)
    return body["data"]["result"]


def _dashboard_queries() -> list[str]:
    """Every panel query of the Grafana dashboard, with its `application` variable set to `poc`."""
    exprs = [t["expr"] for p in load_grafana_dashboard()["panels"] for t in p.get("targets", [])]
    return [e.replace("$application", "poc") for e in exprs]


# ------------------------------------------------------------------------------ the tests

def test_dashboard_asks_for_rays_token(cluster):
    """Ray 2.60 turns token authentication on for a new local cluster: the dashboard's API
    answers 401 without the token that `ray get-auth-token` prints, 200 with it."""
    assert os.environ.get("RAY_AUTH_MODE") == "token", "ray.init() sets token mode unless RAY_AUTH_MODE opts out"
    api = f"{cluster['dashboard']}/api/serve/applications/"
    assert httpx.get(api, timeout=30).status_code == 401
    token = subprocess.run([RAY_CLI, "get-auth-token"], capture_output=True, text=True, timeout=60, check=True)
    r = httpx.get(api, headers={"Authorization": f"Bearer {token.stdout.strip()}"}, timeout=30)
    assert r.status_code == 200 and "poc" in r.json()["applications"]


def test_prometheus_scrapes_every_dashboard_series_and_agrees_with_status(cluster, prometheus):
    base = cluster["base"]
    with CallbackReceiver() as receiver, httpx.Client(base_url=base, timeout=60) as client:
        receiver.fail_next(2)  # two failed POSTs for the v1 sender, then delivered
        readings = _v1_round(client, receiver.url)
        r = client.post(f"{V1}/init/validate", json=V1_ROUND)
        assert r.status_code == 200, r.text
        final = readings[-1][2]
        proof = dict(public_key="prom_key", block_hash="prom_block", block_height=3,
                     nonces=final["valid_nonces"][:5], dist=final["valid_distances"][:5])
        r = client.post(f"{V1}/validate", json=proof)
        assert r.status_code == 200 and r.json()["fraud_detected"] is False, r.text
        client.post(f"{V1}/stop")
        receiver.fail_next(10)  # the v2 stream's first callback fails its 10 attempts: dropped
        _v2_generation_and_job(client, receiver.url)

    # The checked-nonce counter as Prometheus scraped it during the round lies between what
    # /status said one scrape plus one export interval earlier and what it said at the scrape.
    samples = _raw_samples(prometheus, 'ray_poc_nonces_checked_total{application="poc"}')
    start, end = readings[0][1], readings[-1][0]
    during = [(t, v) for t, v in samples if start + SCRAPE_INTERVAL_S + EXPORT_INTERVAL_S < t < end]
    assert len(during) >= 3, samples
    lag, totals = SCRAPE_INTERVAL_S + EXPORT_INTERVAL_S, _totals(readings)
    for t, value in during:
        earlier = [checked for _, after, checked in totals if after <= t - lag]
        later = [checked for before, _, checked in totals if before >= t]
        assert earlier and later and earlier[-1] <= value <= later[0], (t, value, readings)
    assert samples[-1][1] == final["total_checked"]  # the round's total once it stopped

    # Every query of the Grafana dashboard returns data (the GPU ones are valid, with no data here).
    queries = _dashboard_queries()
    assert {m for q in queries for m in re.findall(r"\bray_poc_[a-z0-9_]+", q)} == set(EXPORTED_NAMES)
    deadline = time.time() + 60  # the last series need a scrape or two after the last request
    while (missing := _queries_without_data(prometheus, queries)) and time.time() < deadline:
        time.sleep(2)
    assert not missing, missing
    applications = httpx.get(f"{prometheus}/api/v1/label/application/values",
                             params={"match[]": "ray_serve_deployment_replica_healthy"}, timeout=30).json()["data"]
    assert "poc" in applications  # the dashboard's `application` variable

    # The alert rules evaluate against the real series without error.
    groups = httpx.get(f"{prometheus}/api/v1/rules", timeout=30).json()["data"]["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert len(rules) == 6 and all(rule["health"] == "ok" for rule in rules), rules


def _queries_without_data(prometheus: str, queries: list[str]) -> list[str]:
    """The queries that answer no series, GPU ones aside (each query must be valid PromQL)."""
    return [q for q in queries if not _query(prometheus, q) and not any(name in q for name in GPU_METRICS)]


def _v1_round(client: httpx.Client, callback_url: str) -> list[tuple[float, float, dict]]:
    """A v1 round of a few seconds with inference refused meanwhile; the /status readings taken
    during it as (time before, time after, status), the last one after /stop."""
    r = client.post(f"{V1}/init/generate", json={**V1_ROUND, "callback_url": callback_url})
    assert r.status_code == 200, r.text
    readings = []
    deadline = time.time() + 8
    while time.time() < deadline or readings[-1][2]["total_valid"] < 5:
        before = time.time()
        status = client.get(f"{V1}/status").json()
        readings.append((before, time.time(), status))
        time.sleep(0.2)
    r = client.post("/v1/completions", json={"model": "stand-in", "prompt": "hi", "max_tokens": 2})
    assert r.status_code == 503, r.text
    before = time.time()
    stopped = client.post(f"{V1}/stop").json()["pow_status"]
    readings.append((before, time.time(), client.get(f"{V1}/status").json()))
    assert stopped["total_checked"] == readings[-1][2]["total_checked"]
    return readings


def _totals(readings):
    return [(before, after, status["total_checked"]) for before, after, status in readings]


def _v2_generation_and_job(client: httpx.Client, url: str) -> None:
    r = client.post(f"{V2}/init/generate", json={**V2_ROUND, "url": url})
    assert r.status_code == 200, r.text
    def processed() -> int:
        return client.get(f"{V2}/status").json()["backends"][0]["stats"]["total_processed"]

    wait_until("v2 artifacts", lambda: processed() > 200, 60)
    time.sleep(3)  # a few scrapes of the running loop
    assert client.post(f"{V2}/stop").status_code == 200
    queued = client.post(f"{V2}/generate", json={**V2_ROUND, "nonces": [1, 2, 3], "url": url}).json()
    assert queued["status"] == "queued", queued
    job = f"{V2}/generate/{queued['request_id']}"
    wait_until("the v2 job", lambda: client.get(job).json()["status"] == "completed", 60)
    status = client.get(f"{V2}/status").json()
    assert status["nonfinite_nonces"] == 1 and status["callbacks"]["dropped"] >= 1, status


def _raw_samples(prometheus: str, selector: str) -> list[tuple[float, float]]:
    """The scraped samples of the one series ``selector`` picks, from the last 10 minutes."""
    result = _query(prometheus, f"{selector}[10m]")
    assert len(result) == 1, result
    return [(float(t), float(v)) for t, v in result[0]["values"]]
