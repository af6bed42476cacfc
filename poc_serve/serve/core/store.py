"""The v1 round's state outside the ingress process, so that the ingress replica Serve starts
after a crash or an OOM kill resumes the round instead of answering IDLE.

The state lives in Ray's GCS key-value store, where Serve keeps its own checkpoints: it survives
the death of any replica and of any worker node, and the head node's where the GCS is fault
tolerant (external Redis). A checkpoint is a head record (the round's config, state, counters,
the nonce sequence's position, how many valid nonces the receiver has settled) plus the valid
nonces in fixed-size chunks, so that a write costs the newest chunk and the head, never the
round's whole list (millions of nonces in a long GPU round).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass
from typing import Callable, Protocol

from poc_serve.serve.core.errors import logger

KV_NAMESPACE = "poc_serve"
# Valid nonces per chunk: a full chunk is about 100 KB of JSON, written once more when it fills.
CHUNK_NONCES = 4096
# At most one write per this many seconds: coalesces the writes of a fast round (hundreds of
# batches a second on a GPU) while keeping what a crash can lose to a few batches.
MIN_WRITE_INTERVAL_S = 0.05
WRITE_RETRY_S = 1.0
# A checkpoint older than this is not resumed: a node restarted long after its round (a
# redeploy the next day, say) must not burn its GPUs on a round the network has left.
RESUME_MAX_AGE_S = 1800.0


class KeyValueStore(Protocol):
    """Blocking bytes store; :class:`Checkpointer` calls it off the event loop."""

    def get(self, key: str) -> bytes | None: ...

    def put(self, key: str, value: bytes) -> None: ...

    def delete_prefix(self, prefix: str) -> None: ...

    def values(self, prefix: str) -> list[bytes]: ...


class MemoryStore:
    """A store in this process: for tests, where a new manager stands in for a new replica."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    def get(self, key: str) -> bytes | None:
        return self.data.get(key)

    def put(self, key: str, value: bytes) -> None:
        self.data[key] = value

    def delete_prefix(self, prefix: str) -> None:
        for key in [k for k in self.data if k.startswith(prefix)]:
            del self.data[key]

    def values(self, prefix: str) -> list[bytes]:
        return [v for k, v in self.data.items() if k.startswith(prefix)]


class RayKVStore:
    """Ray's GCS key-value store (Ray's internal API, which Serve's controller uses itself)."""

    def get(self, key: str) -> bytes | None:
        from ray.experimental.internal_kv import _internal_kv_get
        return _internal_kv_get(key, namespace=KV_NAMESPACE)

    def put(self, key: str, value: bytes) -> None:
        from ray.experimental.internal_kv import _internal_kv_put
        _internal_kv_put(key, value, overwrite=True, namespace=KV_NAMESPACE)

    def delete_prefix(self, prefix: str) -> None:
        from ray.experimental.internal_kv import _internal_kv_del
        _internal_kv_del(prefix, del_by_prefix=True, namespace=KV_NAMESPACE)

    def values(self, prefix: str) -> list[bytes]:
        from ray.experimental.internal_kv import _internal_kv_get, _internal_kv_list
        values = (_internal_kv_get(key, namespace=KV_NAMESPACE)
                  for key in _internal_kv_list(prefix, namespace=KV_NAMESPACE))
        return [v for v in values if v is not None]  # a key deleted between the list and the get


@dataclass
class RoundSnapshot:
    """What a checkpoint holds: ``head`` is JSON with the round's ``round_id`` (chunks are kept
    per round) and ``valid``, the count of the valid lists (the round's own lists, which may
    have grown since) that belong to it."""

    head: dict
    valid_nonces: list[int]
    valid_distances: list[float]


class RoundJournal:
    """Writes and reads one round checkpoint under ``key`` in ``store``; blocking calls."""

    def __init__(self, store: KeyValueStore, key: str):
        self.store = store
        self.key = key
        self._round_id: str | None = None  # the round whose chunks are in the store
        self._chunks_written = 0  # its full chunks, never written again

    def write(self, snapshot: RoundSnapshot) -> None:
        """Chunks first, then the head that counts them: a crash between the two leaves the
        previous head, which never reads past what it counted."""
        head = snapshot.head
        replaced = self._round_id if self._round_id != head["round_id"] else None
        if self._round_id != head["round_id"]:
            self._round_id, self._chunks_written = head["round_id"], 0
        count = head["valid"]
        for index in range(self._chunks_written, -(-count // CHUNK_NONCES)):
            start, end = index * CHUNK_NONCES, min((index + 1) * CHUNK_NONCES, count)
            chunk = {"nonces": snapshot.valid_nonces[start:end], "dist": snapshot.valid_distances[start:end]}
            self.store.put(self._chunk_key(head["round_id"], index), json.dumps(chunk).encode())
        self._chunks_written = count // CHUNK_NONCES
        self.store.put(f"{self.key}/head", json.dumps({**head, "saved_at": time.time()}).encode())
        if replaced:  # no head points to the last round's chunks any more
            self.store.delete_prefix(f"{self.key}/{replaced}/")

    def load(self, max_age_s: float = RESUME_MAX_AGE_S) -> RoundSnapshot | None:
        """The last checkpoint, or None when there is none or it is older than ``max_age_s``."""
        raw = self.store.get(f"{self.key}/head")
        if raw is None:
            return None
        head = json.loads(raw)
        self._round_id, self._chunks_written = head["round_id"], head["valid"] // CHUNK_NONCES
        age = time.time() - head["saved_at"]
        if age > max_age_s:
            logger.warning("not resuming the round checkpointed %.0f s ago (older than %.0f s)", age, max_age_s)
            return None
        nonces: list[int] = []
        distances: list[float] = []
        for index in range(-(-head["valid"] // CHUNK_NONCES)):
            chunk = json.loads(self.store.get(self._chunk_key(head["round_id"], index)))
            nonces += chunk["nonces"]
            distances += chunk["dist"]
        del nonces[head["valid"]:], distances[head["valid"]:]
        return RoundSnapshot(head, nonces, distances)

    def _chunk_key(self, round_id: str, index: int) -> str:
        return f"{self.key}/{round_id}/{index}"


class Checkpointer:
    """Writes the newest snapshot in the background after each :meth:`mark`, one write at a
    time and at most every MIN_WRITE_INTERVAL_S, so recording a batch never waits for the store.
    :meth:`saved_valid` is how many of a round's valid nonces the store holds: the round sends
    no nonce to its receiver before it is saved, so a resumed round never sends one twice."""

    def __init__(self, journal: RoundJournal, snapshot: Callable[[], RoundSnapshot]):
        self.journal = journal
        self._snapshot = snapshot
        self._saved: tuple[str | None, int] = (None, 0)  # round_id, valid nonces
        self._dirty = asyncio.Event()
        self._clean = asyncio.Event()
        self._clean.set()
        self._task: asyncio.Task | None = None

    def saved_valid(self, round_id: str) -> int:
        """Valid nonces of round ``round_id`` that the store holds."""
        return self._saved[1] if self._saved[0] == round_id else 0

    def restored(self, round_id: str, valid: int) -> None:
        """The store holds ``valid`` nonces of round ``round_id`` (a checkpoint just loaded)."""
        self._saved = (round_id, valid)

    def mark(self) -> None:
        """The round changed: write it soon."""
        self._clean.clear()
        self._dirty.set()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def flush(self) -> None:
        """Wait until every change marked so far is in the store."""
        await self._clean.wait()

    async def _run(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            try:
                snapshot = self._snapshot()
            except Exception:  # a bug: log it, and never make control calls wait for a save that cannot come
                logger.exception("round checkpoint not taken")
                self._clean.set()
                continue
            try:
                await asyncio.to_thread(self.journal.write, snapshot)
            except Exception as exc:  # the GCS is briefly away: keep the change, try again
                logger.warning("round checkpoint not written (%s: %s); retrying in %.0f s",
                               type(exc).__name__, exc, WRITE_RETRY_S)
                self._dirty.set()
                await asyncio.sleep(WRITE_RETRY_S)
                continue
            self._saved = (snapshot.head["round_id"], snapshot.head["valid"])
            if not self._dirty.is_set():
                self._clean.set()
            await asyncio.sleep(MIN_WRITE_INTERVAL_S)


class JobJournal:
    """The v2 jobs accepted and not done with yet (queued, running, or their result's callback not
    settled), so that the replica after this one runs them again: one key per job's request and
    an index of their ids in order. Blocking calls, safe from several threads."""

    def __init__(self, store: KeyValueStore, key: str):
        self.store = store
        self.key = key
        self._ids: list[str] = []
        self._lock = threading.Lock()

    def add(self, request_id: str, request: bytes) -> None:
        """Keep a job's request (its JSON) until :meth:`remove`."""
        with self._lock:
            self.store.put(f"{self.key}/job/{request_id}", request)
            self._ids.append(request_id)
            self._write_index()

    def remove(self, request_id: str) -> None:
        with self._lock:
            if request_id in self._ids:
                self._ids.remove(request_id)
                self._write_index()
                self.store.delete_prefix(f"{self.key}/job/{request_id}")

    def clear(self) -> None:
        with self._lock:
            self._ids = []
            self.store.delete_prefix(f"{self.key}/")

    def load(self) -> list[tuple[str, bytes]]:
        """The kept jobs in the order they were accepted: (request_id, request JSON)."""
        raw = self.store.get(f"{self.key}/index")
        with self._lock:
            self._ids = json.loads(raw) if raw else []
            return [(i, self.store.get(f"{self.key}/job/{i}")) for i in self._ids]

    def _write_index(self) -> None:
        self.store.put(f"{self.key}/index", json.dumps(self._ids).encode())
