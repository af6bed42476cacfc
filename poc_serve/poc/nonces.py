"""The nonces a node computes, handed out in batches (v1 spec section 3, v2 spec section 4.1)."""

from __future__ import annotations


class _Batches:
    """Batch hand-out with give-back: a batch that could not be computed (a replica failed) is
    returned with :meth:`put_back` and handed out again before any new nonce, so none is skipped."""

    def __init__(self) -> None:
        self._returned: list[list[int]] = []
        # Batches handed out and not yet marked computed (in flight, failed, returned), by first
        # nonce: what a checkpoint must hand out again after a crash.
        self._open: dict[int, list[int]] = {}

    def take(self, count: int) -> list[int]:
        """The next ``count`` nonces (a returned batch first, whatever its size); [] when none is left."""
        batch = self._returned.pop(0) if self._returned else self._new(count)
        if batch:
            self._open[batch[0]] = batch
        return batch

    def put_back(self, nonces: list[int]) -> None:
        """Return a batch that was handed out but not computed."""
        self._returned.append(nonces)

    def computed(self, nonces: list[int]) -> None:
        """Mark a handed-out batch as computed: a checkpoint no longer lists it as open."""
        self._open.pop(nonces[0], None)

    def _new(self, count: int) -> list[int]:
        raise NotImplementedError


class NonceSequence(_Batches):
    """The endless sequence whose x-th nonce (x = 0, 1, 2, ...) is
    ``node_id + group_id * node_count + x * n_groups * node_count``. With one group (the defaults)
    that is v1's ``node_id + x * node_count``; v2's ML node splits a node's share over ``n_groups``
    backends."""

    def __init__(self, node_id: int, node_count: int, group_id: int = 0, n_groups: int = 1):
        if node_count < 1 or not 0 <= node_id < node_count:
            raise ValueError(f"need 0 <= node_id < node_count, got node_id={node_id}, node_count={node_count}")
        if n_groups < 1 or not 0 <= group_id < n_groups:
            raise ValueError(f"need 0 <= group_id < n_groups, got group_id={group_id}, n_groups={n_groups}")
        super().__init__()
        self.node_id = node_id
        self.node_count = node_count
        self.first = node_id + group_id * node_count
        self.stride = n_groups * node_count
        self.next_index = 0

    def _new(self, count: int) -> list[int]:
        start = self.next_index
        self.next_index += count
        return [self.first + x * self.stride for x in range(start, start + count)]

    def position(self) -> dict:
        """Where the sequence stands, as JSON: the next new index and the open batches (each a
        run of the sequence, kept as its first nonce and length). A sequence restored from it
        hands the open batches out first, then goes on from ``next_index``: nothing skipped."""
        return {"next_index": self.next_index, "open": [[b[0], len(b)] for b in sorted(self._open.values())]}

    def restore(self, position: dict) -> None:
        """Continue from a :meth:`position` of the same sequence (another process's, say)."""
        self.next_index = position["next_index"]
        self._returned = [[first + i * self.stride for i in range(length)] for first, length in position["open"]]
        self._open = {}


class NonceList(_Batches):
    """A job's given nonces, in their order, handed out like :class:`NonceSequence` until none is left."""

    def __init__(self, nonces: list[int]):
        super().__init__()
        self._nonces = list(nonces)
        self._next = 0

    def _new(self, count: int) -> list[int]:
        batch = self._nonces[self._next:self._next + count]
        self._next += len(batch)
        return batch
