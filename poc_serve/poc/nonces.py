"""The nonces a node computes, handed out in batches (v1 spec section 3, v2 spec section 4.1)."""

from __future__ import annotations


class _Batches:
    """Batch hand-out with give-back: a batch that could not be computed (a replica failed) is
    returned with :meth:`put_back` and handed out again before any new nonce, so none is skipped."""

    def __init__(self) -> None:
        self._returned: list[list[int]] = []

    def take(self, count: int) -> list[int]:
        """The next ``count`` nonces (a returned batch first, whatever its size); [] when none is left."""
        if self._returned:
            return self._returned.pop(0)
        return self._new(count)

    def put_back(self, nonces: list[int]) -> None:
        """Return a batch that was handed out but not computed."""
        self._returned.append(nonces)

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
