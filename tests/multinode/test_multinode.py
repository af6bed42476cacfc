"""Multi-node on one machine: a Ray head and a worker node as separate `ray start` processes.

The application pins its replicas by custom resources: the engine to the worker node
(`engine_resources: {poc_worker: 1}`), the ingress to the head (`ingress_resources: {head: 1}`).
A round runs over HTTP; then the worker node is killed (every process of it at once, like a
machine that dies), the round's found nonces stay in the ingress on the head and generation
pauses; a new worker node with the same resources joins, Serve starts the engine replica there
and generation resumes with no nonce lost or computed twice. A v2 generation and a v2 job follow;
then every metric of the Grafana dashboard is on the nodes' /metrics.

The cluster is this test's own: its own temp dir (so `ray.init()` elsewhere never finds it),
free ports, and teardown kills only the process trees it started (never `ray stop`, which would
stop every Ray on the machine). Token authentication follows the driver's: off unless this
process already runs Ray in token mode (a local `ray.init()` earlier in the same pytest run).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest
import ray
from ray import serve
from ray.dashboard.modules.serve.sdk import ServeSubmissionClient
from ray.util.state import list_actors

from poc_serve.app import build_app
from poc_serve.poc import r_target_for
from poc_serve.serve.core.metrics import EXPORTED_NAMES
from tests.support.net import free_port
from tests.support.receiver import CallbackReceiver
from tests.support.grafana import grafana_metric_names, load_grafana_dashboard
from tests.support.waits import wait_until

REPO = Path(__file__).resolve().parents[2]
RAY_CLI = str(Path(sys.executable).with_name("ray"))
R10 = r_target_for(0.10)
ROUND = dict(block_hash="multinode_block", block_height=11, public_key="multinode_key", seq_len=32,
             r_target=R10, node_id=0, node_count=1)
APP_ARGS = dict(
    model="poc-tiny-qwen3", num_engine_replicas=1,
    engine=dict(max_model_len=256, max_num_batched_tokens=1024, enforce_eager=True),
    engine_resources={"poc_worker": 1}, ingress_resources={"head": 1},
    callback_interval_s=1.0, log_interval_s=1.0,
)
ENGINE, INGRESS = "PoCEngineDeployment", "PoCIngress"
V2_ROUND = dict(block_hash="multinode_block", block_height=11, public_key="multinode_key", node_id=0, node_count=1,
                params={"model": "poc-tiny-qwen3", "seq_len": 32})
V1_GENERATION_METRICS = {"ray_poc_nonces_checked_total", "ray_poc_valid_nonces_total", "ray_poc_rate_nonces_per_second",
                         "ray_poc_round_state"}
# Dashboard series that only a fault this test does not cause creates (a non-finite artifact, a
# callback given up); tests/prometheus/test_prometheus.py causes them.
ONLY_AFTER_OTHER_FAULTS = {"ray_poc_v2_nonfinite_nonces_total", "ray_poc_callback_items_dropped_total"}



def _node_ports() -> list[str]:
    """Ports each node needs for itself: two nodes on one host must not share any."""
    return [f"--{name}={free_port()}" for name in (
        "node-manager-port", "object-manager-port", "dashboard-agent-listen-port",
        "dashboard-agent-grpc-port", "runtime-env-agent-port", "metrics-export-port")]


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        tree.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    return tree


def _descendants(root: int) -> set[int]:
    tree, found, todo = _children(), set(), [root]
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo += tree.get(pid, [])
    return found


def _signal_all(pids: set[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


class RayNode:
    """One `ray start --block` process and everything it starts (raylet, workers, vLLM's)."""

    def __init__(self, name: str, args: list[str], temp_dir: str, env: dict[str, str]):
        self.name = name
        self.log = Path(temp_dir) / f"{name}.log"
        self.proc = subprocess.Popen(
            [RAY_CLI, "start", "--block", "--num-cpus=4", "--object-store-memory=200000000",
             f"--temp-dir={temp_dir}", "--disable-usage-stats", *_node_ports(), *args],
            env=env, stdout=self.log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)

    def kill(self) -> None:
        """Kill the node like a machine that dies: freeze the whole tree (so nothing forks or
        reacts), then SIGKILL it. Ray's workers run in their own process groups, hence the tree."""
        stopped: set[int] = set()
        while True:
            tree = _descendants(self.proc.pid) - stopped
            if not tree:
                break
            _signal_all(tree, signal.SIGSTOP)
            stopped |= tree
        _signal_all(stopped, signal.SIGKILL)
        self.proc.wait(timeout=30)


def _alive_nodes() -> dict[str, dict]:
    return {n["NodeID"]: n for n in ray.nodes() if n["Alive"]}


def _replica_nodes(gcs: str) -> dict[str, list[str]]:
    """Node ids of the alive replicas of each deployment, from the Ray state API."""
    nodes: dict[str, list[str]] = {ENGINE: [], INGRESS: []}
    for actor in list_actors(address=gcs, filters=[("state", "=", "ALIVE")], detail=True, limit=1000):
        for deployment in nodes:
            if actor.class_name.endswith(f":{deployment}"):
                nodes[deployment].append(actor.node_id)
    return nodes


@pytest.fixture(scope="module")
def cluster(request):
    """A head node (resource `head`) and a worker node (resource `poc_worker`), Serve on top."""
    failed_before = request.session.testsfailed
    temp_dir = tempfile.mkdtemp(prefix="ray_mn_", dir="/tmp")  # short: Ray's socket paths
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(REPO),
           "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled")}
    env.pop("RAY_ADDRESS", None)
    gcs_port, dashboard_port, http_port = free_port(), free_port(), free_port()
    gcs = f"127.0.0.1:{gcs_port}"
    nodes: list[RayNode] = []
    state = dict(gcs=gcs, temp_dir=temp_dir, env=env, nodes=nodes, http_port=http_port,
                 dashboard=f"http://127.0.0.1:{dashboard_port}")
    try:
        nodes.append(RayNode("head", [
            "--head", f"--port={gcs_port}", '--resources={"head": 1}', "--include-dashboard=true",
            "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}",
            f"--ray-client-server-port={free_port()}"], temp_dir, env))
        wait_until("the head's GCS", lambda: _connect(gcs), 120)
        nodes.append(RayNode("worker1", [f"--address={gcs}", '--resources={"poc_worker": 1}'], temp_dir, env))
        wait_until("the worker node", lambda: len(_alive_nodes()) == 2, 120)
        serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": http_port})
        serve.run(build_app(APP_ARGS), name="poc", route_prefix="/")
        yield state
    finally:
        try:
            if ray.is_initialized():
                serve.shutdown()
        finally:
            ray.shutdown()
            for node in reversed(nodes):
                node.kill()
            if request.session.testsfailed == failed_before and sys.exc_info()[0] is None:
                shutil.rmtree(temp_dir, ignore_errors=True)
            else:  # keep the cluster's logs (and its last metrics.txt) for a look
                print(f"Ray logs of the multi-node cluster: {temp_dir}", file=sys.stderr)


def _connect(gcs: str) -> bool:
    try:
        ray.init(address=gcs, log_to_driver=False)
        return True
    except ConnectionError:
        return False


def _status(client: httpx.Client) -> dict:
    r = client.get("/status")
    assert r.status_code == 200, r.text
    return r.json()


def _scrape_metrics(cluster) -> str:
    """Prometheus text of every alive node's metrics agent (kept in the temp dir for a look)."""
    text = ""
    for node in _alive_nodes().values():
        try:
            text += httpx.get(f"http://127.0.0.1:{node['MetricsExportPort']}/metrics", timeout=10).text
        except httpx.HTTPError:
            pass
    Path(cluster["temp_dir"], "metrics.txt").write_text(text)
    return text


def _metrics_present(cluster, names: set[str]) -> bool:
    text = _scrape_metrics(cluster)
    return all(re.search(rf"^{name}[{{ ]", text, re.M) for name in names)


def test_engine_on_worker_node_ingress_on_head_and_nonces_survive_the_worker(cluster):
    gcs = cluster["gcs"]
    nodes = _alive_nodes()
    head = next(i for i, n in nodes.items() if n["Resources"].get("head"))
    worker1 = next(i for i, n in nodes.items() if n["Resources"].get("poc_worker"))
    assert head != worker1

    # Placement by custom resources, as the state API (and the dashboard's Serve tab) show it.
    placed = _replica_nodes(gcs)
    assert placed == {ENGINE: [worker1], INGRESS: [head]}, placed
    details = ServeSubmissionClient(cluster["dashboard"]).get_serve_details()  # what `serve status` reads
    deployments = details["applications"]["poc"]["deployments"]
    assert {r["node_id"] for r in deployments[ENGINE]["replicas"]} == {worker1}
    assert {r["node_id"] for r in deployments[INGRESS]["replicas"]} == {head}

    root = f"http://127.0.0.1:{cluster['http_port']}"
    assert httpx.get(f"{root}/docs", timeout=30).status_code == 200  # the OpenAPI page, via the head's proxy
    assert "/api/v1/pow/status" in httpx.get(f"{root}/openapi.json", timeout=30).json()["paths"]
    with httpx.Client(base_url=f"{root}/api/v1/pow", timeout=120) as client, CallbackReceiver() as receiver:
        assert client.post("/init/generate", json={**ROUND, "r_target": 0}).status_code == 422
        receiver.fail_next(1)  # one failed callback POST, retried
        r = client.post("/init/generate", json={**ROUND, "callback_url": receiver.url})
        assert r.status_code == 200 and r.json()["pow_status"]["state"] == "GENERATING", r.text
        before = wait_until("20 valid nonces", lambda: (s := _status(client))["total_valid"] >= 20 and s, 300)

        # The custom metrics reach Prometheus under the names the Grafana dashboard uses.
        r = httpx.post(f"{root}/v1/completions", json={"model": "poc-tiny-qwen3", "prompt": "hi"}, timeout=60)
        assert r.status_code == 503, r.text  # counted as inference rejected while PoC runs
        wait_until("the generation metrics on the nodes' /metrics",
                   lambda: _metrics_present(cluster, V1_GENERATION_METRICS),
              120, interval=3)

        # The worker node dies: its engine replica with it.
        cluster["nodes"][1].kill()
        wait_until("the worker node to be marked dead", lambda: worker1 not in _alive_nodes(), 120)
        paused = wait_until("generation to stall", lambda: _stalled(client), 120)
        assert paused["state"] == "GENERATING"
        assert paused["valid_nonces"][:len(before["valid_nonces"])] == before["valid_nonces"]
        assert paused["total_checked"] >= before["total_checked"]

        # A new worker node with the same resources: Serve starts the engine replica there.
        cluster["nodes"].append(RayNode("worker2", [f"--address={gcs}", '--resources={"poc_worker": 1}'],
                                        cluster["temp_dir"], cluster["env"]))
        resumed = wait_until("generation to resume on the new worker node",
                        lambda: (s := _status(client))["total_checked"] > paused["total_checked"] + 200 and s,
                        360, interval=2)
        worker2 = next(i for i, n in _alive_nodes().items() if n["Resources"].get("poc_worker"))
        assert worker2 != worker1
        assert _replica_nodes(gcs) == {ENGINE: [worker2], INGRESS: [head]}

        r = client.post("/stop")
        assert r.status_code == 200, r.text
        final = r.json()["pow_status"]
        valid, dists = final["valid_nonces"], final["valid_distances"]
        assert final["total_checked"] >= resumed["total_checked"]
        assert valid[:len(paused["valid_nonces"])] == paused["valid_nonces"]  # nothing lost
        assert len(set(valid)) == len(valid) == final["total_valid"]  # nothing computed twice
        assert max(valid) < final["total_checked"]  # node 0 of 1: nonces 0.. in order, none skipped
        assert all(d < R10 for d in dists)

        # The engine on the new node computes what the old one did.
        r = client.post("/init/validate", json={k: v for k, v in ROUND.items() if k not in ("node_id", "node_count")})
        assert r.status_code == 200, r.text
        proof = dict(public_key=ROUND["public_key"], block_hash=ROUND["block_hash"], block_height=11,
                     nonces=before["valid_nonces"][:20], dist=before["valid_distances"][:20])
        r = client.post("/validate", json=proof)
        assert r.status_code == 200, r.text
        assert r.json()["fraud_detected"] is False and r.json()["n_invalid"] == 0
        assert r.json()["dist"] == pytest.approx(proof["dist"], abs=1e-5)
        _v2_generation_and_job(f"{root}/api/v1/inference/pow", receiver.url)

    # Every metric of the Grafana dashboard exists, with the application's label (GPU ones and
    # those of faults that this test does not cause aside).
    dashboard = grafana_metric_names(load_grafana_dashboard())
    assert set(EXPORTED_NAMES) <= dashboard
    wanted = {n for n in dashboard if not n.startswith(("ray_node_gpu", "ray_node_gram"))} - ONLY_AFTER_OTHER_FAULTS
    wait_until("every dashboard metric on the nodes' /metrics", lambda: _metrics_present(cluster, wanted), 120,
               interval=3)
    text = _scrape_metrics(cluster)
    assert re.search(r'^ray_poc_nonces_checked_total\{[^}]*application="poc"', text, re.M)
    assert re.search(r'^ray_poc_validations_total\{[^}]*verdict="honest"', text, re.M)
    assert re.search(r'^ray_poc_engine_calls_failed_total\{[^}]*method="compute"', text, re.M)  # the dead worker's


def _v2_generation_and_job(v2: str, url: str) -> None:
    """A v2 generation (its artifacts to ``url``) until some artifacts are computed, then a queued job."""
    with httpx.Client(base_url=v2, timeout=120) as client:
        r = client.post("/init/generate", json={**V2_ROUND, "url": url})
        assert r.status_code == 200, r.text
        def processed() -> int:
            return client.get("/status").json()["backends"][0]["stats"]["total_processed"]

        wait_until("v2 artifacts", lambda: processed() >= 64, 120)
        assert client.post("/stop").status_code == 200
        queued = client.post("/generate", json={**V2_ROUND, "nonces": [0, 1, 2]}).json()
        assert queued["status"] == "queued", queued
        job = f"/generate/{queued['request_id']}"
        wait_until("the v2 job", lambda: client.get(job).json()["status"] == "completed", 120)


def _stalled(client: httpx.Client, quiet_s: float = 8.0) -> dict | None:
    """The status if total_checked did not move for ``quiet_s`` seconds, else None."""
    first = _status(client)
    time.sleep(quiet_s)
    second = _status(client)
    return second if second["total_checked"] == first["total_checked"] else None
