"""The model-cache routes' logic (ml-node spec 2.7) over the Hugging Face cache.

:class:`ModelCache` answers status, download, list, space and delete in the spec's shapes
(:mod:`poc_serve.serve.node.protocol`) and raises :class:`ModelCacheError` (a
:class:`~poc_serve.serve.core.errors.ServiceError`: HTTP status and message) where the spec
answers an error. Its methods are synchronous and quick (a scan of the cache directory, no
network); a route may call them directly or through ``asyncio.to_thread``.

Decisions:

- A download runs ``huggingface_hub.snapshot_download`` in a child Python process, one per
  download, so that it never holds the caller's event loop or GIL, can be cancelled (DELETE
  terminates it; a thread could not be stopped) and cannot take the process down. Its output goes
  to a file (never a pipe that could fill), progress bars off; the child reports its outcome in a
  JSON file. The child inherits the environment (``HF_TOKEN``, ``HF_ENDPOINT``,
  ``HF_HUB_OFFLINE``...). Offline (``HF_HUB_OFFLINE=1``) huggingface_hub refuses at once, so the
  download ends within about a second and ``status`` shows why in ``error_message``.
- 409 while a download of the same ``<repo>:<commit|latest>`` runs; 429 when
  :data:`MAX_CONCURRENT_DOWNLOADS` (3, the reference's limit) run. A model already complete is
  answered ``DOWNLOADED`` (200) without starting anything.
- Completeness, judged locally (no network): a cached revision is ``DOWNLOADED`` when its snapshot
  holds ``config.json`` (or ``params.json``) and a weights file, every shard its
  ``*.index.json`` names exists, and no ``.incomplete`` blob lies in the repo; otherwise
  ``PARTIAL``. A repo folder that huggingface_hub cannot read (a broken snapshot) is ``PARTIAL``.
  Without ``hf_commit`` ("latest") the revision ``main`` points to is judged, else the newest
  cached one.
- Built-in random models (``poc-*`` names of :data:`BUILTIN_MODELS`) count as ``DOWNLOADED`` (they
  are built locally on first use); ``list`` shows only the Hugging Face cache, and DELETE refuses
  them (400).
- DELETE of a model being downloaded cancels the download (``cancelled``) and leaves what was
  fetched (status then says ``PARTIAL``); a second DELETE removes it (``deleted``). Without
  ``hf_commit`` DELETE removes the whole repo and cancels each of its downloads; with one, that
  revision (files shared with other revisions stay). Nothing cached: 404.
- One :class:`ModelCache` per node holds the download registry: the 409 and 429 rules hold within
  one instance. The cache is a machine's disk: on a multi-node Ray cluster it should run where the
  engine replicas load their weights.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from poc_serve.models.tiny import BUILTIN_MODELS
from poc_serve.serve.core.errors import ServiceError
from poc_serve.serve.node.protocol import (DeleteResponse, DiskSpaceResponse, DownloadProgress, DownloadResponse,
                                           HFModel, ModelListItem, ModelListResponse, ModelStatusResponse)

MAX_CONCURRENT_DOWNLOADS = 3
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
CONFIG_FILES = ("config.json", "params.json")
# How long a cancelled download may take to end after SIGTERM before SIGKILL.
CANCEL_GRACE_S = 5.0
GIB = 1024 ** 3

# The child: snapshot_download, its outcome as JSON in argv[4]. Arguments: repo, revision ("" for
# the latest), cache dir, result file.
_CHILD = """
import json, sys
repo, revision, cache_dir, result = sys.argv[1:5]
try:
    from huggingface_hub import snapshot_download
    path = snapshot_download(repo, revision=revision or None, cache_dir=cache_dir)
    outcome = {"ok": True, "path": str(path)}
except BaseException as exc:
    outcome = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
with open(result, "w") as f:
    json.dump(outcome, f)
"""


class ModelCacheError(ServiceError):
    """A model-cache request refused: ``status_code`` (400, 404, 409, 429) and the message."""


@dataclass
class _Download:
    model: HFModel
    process: subprocess.Popen
    start_time: float
    result_path: Path
    log_path: Path


def default_cache_dir() -> Path:
    """The Hugging Face hub cache (``HF_HUB_CACHE``, else ``$HF_HOME/hub``), read now."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def download_status_code(answer: DownloadResponse) -> int:
    """The HTTP status of a download answer: 202 while it downloads, 200 otherwise."""
    return 202 if answer.status == "DOWNLOADING" else 200


def _hub_offline() -> bool:
    from poc_serve.engine.vllm_args import hub_offline

    return hub_offline()


class ModelCache:
    """The Hugging Face cache at ``cache_dir`` (default: :func:`default_cache_dir`) and the
    downloads into it; thread-safe."""

    def __init__(self, cache_dir: str | Path | None = None, max_concurrent: int = MAX_CONCURRENT_DOWNLOADS,
                 python: str = sys.executable):
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.max_concurrent = max_concurrent
        self._python = python
        self._lock = threading.Lock()
        self._running: dict[str, _Download] = {}
        self._errors: dict[str, str] = {}  # task id -> why its last download failed
        self._workdir = Path(tempfile.mkdtemp(prefix="poc_serve_downloads_"))

    # --- the routes ---

    def status(self, model: HFModel) -> ModelStatusResponse:
        """``POST /api/v1/models/status``."""
        if model.hf_repo in BUILTIN_MODELS:
            return ModelStatusResponse(model=model, status="DOWNLOADED")
        with self._lock:
            self._reap()
            running = self._running.get(model.task_id())
            error = self._errors.get(model.task_id())
        if running is not None:
            now = time.time()
            progress = DownloadProgress(start_time=running.start_time, elapsed_seconds=now - running.start_time)
            return ModelStatusResponse(model=model, status="DOWNLOADING", progress=progress)
        state = self._cached_state(model) or "NOT_FOUND"
        return ModelStatusResponse(model=model, status=state, error_message=None if state == "DOWNLOADED" else error)

    def download(self, model: HFModel) -> DownloadResponse:
        """``POST /api/v1/models/download``: start a background download (``DOWNLOADING``, 202),
        or answer ``DOWNLOADED`` (200) for a complete one. Raises :class:`ModelCacheError` 409
        while that model downloads and 429 at :attr:`max_concurrent` downloads."""
        task_id = model.task_id()
        if model.hf_repo in BUILTIN_MODELS:
            return DownloadResponse(task_id=task_id, status="DOWNLOADED", model=model)
        with self._lock:
            self._reap()
            if task_id in self._running:
                raise ModelCacheError(409, f"{task_id} is already downloading")
            if len(self._running) >= self.max_concurrent:
                raise ModelCacheError(429, f"{len(self._running)} downloads are running, the most at once; "
                                           f"try again later")
            if self._cached_state(model) == "DOWNLOADED":
                self._errors.pop(task_id, None)
                return DownloadResponse(task_id=task_id, status="DOWNLOADED", model=model)
            self._errors.pop(task_id, None)
            self._running[task_id] = self._start(model)
        return DownloadResponse(task_id=task_id, status="DOWNLOADING", model=model)

    def list(self) -> ModelListResponse:
        """``GET /api/v1/models/list``: every cached model revision, DOWNLOADED or PARTIAL."""
        items: list[ModelListItem] = []
        info = self._scan()
        seen: set[str] = set()
        for repo in sorted(info.repos if info else (), key=lambda r: r.repo_id):
            if repo.repo_type != "model":
                continue
            seen.add(repo.repo_id)
            for revision in sorted(repo.revisions, key=lambda r: r.last_modified):
                items.append(ModelListItem(model=HFModel(hf_repo=repo.repo_id, hf_commit=revision.commit_hash),
                                           status=self._revision_state(repo, revision)))
            if not repo.revisions:
                items.append(ModelListItem(model=HFModel(hf_repo=repo.repo_id), status="PARTIAL"))
        for repo_id in self._unreadable_repos(seen):
            items.append(ModelListItem(model=HFModel(hf_repo=repo_id), status="PARTIAL"))
        return ModelListResponse(models=items)

    def space(self) -> DiskSpaceResponse:
        """``GET /api/v1/models/space``."""
        info = self._scan()
        size = info.size_on_disk if info else 0
        existing = self.cache_dir
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        free = shutil.disk_usage(existing).free
        return DiskSpaceResponse(cache_size_gb=round(size / GIB, 3), available_gb=round(free / GIB, 3),
                                 cache_path=str(self.cache_dir))

    def delete(self, model: HFModel) -> DeleteResponse:
        """``DELETE /api/v1/models``: cancel its downloads (``cancelled``), else remove it from the
        cache (``deleted``). Raises :class:`ModelCacheError` 400 for a built-in model, 404 when
        nothing of it is cached."""
        if model.hf_repo in BUILTIN_MODELS:
            raise ModelCacheError(400, f"{model.hf_repo} is a built-in random model, built locally; "
                                       f"not in the Hugging Face cache")
        with self._lock:
            self._reap()
            cancelled = [d for d in self._running.values() if d.model.hf_repo == model.hf_repo
                         and (model.hf_commit is None or d.model.hf_commit == model.hf_commit)]
            for download in cancelled:
                self._terminate(download)
                task_id = download.model.task_id()
                del self._running[task_id]
                self._errors[task_id] = "cancelled by DELETE /api/v1/models"
                self._cleanup(download)
        if cancelled:
            return DeleteResponse(status="cancelled", model=model)
        repo_path = self.cache_dir / f"models--{model.hf_repo.replace('/', '--')}"
        if model.hf_commit is None:
            if not repo_path.is_dir():
                raise ModelCacheError(404, f"{model.hf_repo} is not in the cache")
            shutil.rmtree(repo_path)
            return DeleteResponse(status="deleted", model=model)
        info = self._scan()
        repo = self._repo_in(info, model.hf_repo)
        revisions = self._matching(repo, model.hf_commit) if repo else []
        if not revisions:
            raise ModelCacheError(404, f"{model.task_id()} is not in the cache")
        # HFCacheInfo.delete_revisions looks a hash up across every cached repo and takes the first
        # repo (in frozenset order) that holds it: another repo with the same commit hash (a
        # duplicate or mirror) could lose its revision instead of this one. Scope it to this repo.
        scoped = dataclasses.replace(info, repos=frozenset({repo}))
        scoped.delete_revisions(*(r.commit_hash for r in revisions)).execute()
        return DeleteResponse(status="deleted", model=model)

    def close(self) -> None:
        """Cancel every running download and remove the working files."""
        with self._lock:
            for download in self._running.values():
                self._terminate(download)
            self._running.clear()
        shutil.rmtree(self._workdir, ignore_errors=True)

    # --- downloads ---

    def _start(self, model: HFModel) -> _Download:
        stem = model.task_id().replace("/", "--").replace(":", "@")
        result = self._workdir / f"{stem}.json"
        log = self._workdir / f"{stem}.log"
        result.unlink(missing_ok=True)
        env = {**os.environ, "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
        with open(log, "wb") as out:
            process = subprocess.Popen(
                [self._python, "-c", _CHILD, model.hf_repo, model.hf_commit or "", str(self.cache_dir), str(result)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        return _Download(model=model, process=process, start_time=time.time(), result_path=result, log_path=log)

    def _reap(self) -> None:
        """Record the downloads that ended (call with the lock held)."""
        for task_id, download in list(self._running.items()):
            code = download.process.poll()
            if code is None:
                continue
            del self._running[task_id]
            outcome: dict[str, Any] = {}
            try:
                outcome = json.loads(download.result_path.read_text())
            except (OSError, ValueError):
                pass
            if outcome.get("ok"):
                self._errors.pop(task_id, None)
            else:
                error = outcome.get("error") or f"the download process ended with status {code}: {self._tail(download)}"
                if _hub_offline():
                    error += " (HF_HUB_OFFLINE is set on this node: nothing can be downloaded)"
                self._errors[task_id] = f"download of {task_id} failed: {error}"
            self._cleanup(download)

    @staticmethod
    def _terminate(download: _Download) -> None:
        if download.process.poll() is None:
            download.process.terminate()
            try:
                download.process.wait(CANCEL_GRACE_S)
            except subprocess.TimeoutExpired:
                download.process.kill()
                download.process.wait()

    @staticmethod
    def _tail(download: _Download, limit: int = 500) -> str:
        try:
            return download.log_path.read_text(errors="replace")[-limit:].strip()
        except OSError:
            return ""

    @staticmethod
    def _cleanup(download: _Download) -> None:
        download.result_path.unlink(missing_ok=True)
        download.log_path.unlink(missing_ok=True)

    # --- the cache ---

    def _scan(self):
        from huggingface_hub import scan_cache_dir
        from huggingface_hub.errors import CacheNotFound

        try:
            return scan_cache_dir(self.cache_dir)
        except (CacheNotFound, ValueError, OSError):
            return None

    def _cached_repo(self, repo_id: str):
        return self._repo_in(self._scan(), repo_id)

    @staticmethod
    def _repo_in(info, repo_id: str):
        return next((r for r in (info.repos if info else ()) if r.repo_type == "model" and r.repo_id == repo_id), None)

    def _unreadable_repos(self, readable: set[str]) -> list[str]:
        """Repo ids of model folders in the cache that huggingface_hub's scan could not read."""
        if not self.cache_dir.is_dir():
            return []
        found = []
        for path in sorted(self.cache_dir.glob("models--*")):
            repo_id = path.name[len("models--"):].replace("--", "/")
            if path.is_dir() and repo_id not in readable:
                found.append(repo_id)
        return found

    @staticmethod
    def _matching(repo, revision: str | None) -> list:
        """The cached revisions ``revision`` names: a commit hash or a ref; None: ``main``'s, else the newest."""
        if revision is None:
            main = [r for r in repo.revisions if "main" in r.refs]
            return main or sorted(repo.revisions, key=lambda r: r.last_modified)[-1:]
        return [r for r in repo.revisions if r.commit_hash == revision or revision in r.refs]

    def _cached_state(self, model: HFModel) -> str | None:
        """DOWNLOADED, PARTIAL, or None when nothing of the model is cached."""
        repo = self._cached_repo(model.hf_repo)
        if repo is None:
            folder = self.cache_dir / f"models--{model.hf_repo.replace('/', '--')}"
            return "PARTIAL" if folder.is_dir() else None
        revisions = self._matching(repo, model.hf_commit)
        if not revisions:  # latest: a repo folder without a snapshot yet; a commit: not this one
            return "PARTIAL" if model.hf_commit is None else None
        return max((self._revision_state(repo, r) for r in revisions), key=lambda s: s == "DOWNLOADED")

    @staticmethod
    def _revision_state(repo, revision) -> str:
        snapshot = Path(revision.snapshot_path)
        if any(p.name.endswith(".incomplete") for p in (Path(repo.repo_path) / "blobs").glob("*")):
            return "PARTIAL"
        names = {f.file_name for f in revision.files}
        paths = {str(Path(f.file_path).relative_to(snapshot)) for f in revision.files}
        if not (names & set(CONFIG_FILES)) or not any(n.endswith(WEIGHT_SUFFIXES) for n in names):
            return "PARTIAL"
        for index in (p for p in paths if p.endswith(".index.json")):
            try:
                shards = set(json.loads((snapshot / index).read_text()).get("weight_map", {}).values())
            except (OSError, ValueError, AttributeError):
                return "PARTIAL"
            folder = Path(index).parent
            if any(str(folder / shard) not in paths for shard in shards):
                return "PARTIAL"
        return "DOWNLOADED"
