"""The nonce sequence of a node (spec section 3)."""

from __future__ import annotations


class NonceSequence:
    """Hands out ``node_id + i * node_count`` for ``i = 0, 1, 2, ...`` in order, in batches.

    Batches that could not be computed (a replica failed) are given back with :meth:`put_back`
    and handed out again before any new nonce, so none is skipped.
    """

    def __init__(self, node_id: int, node_count: int):
        if node_count < 1 or not 0 <= node_id < node_count:
            raise ValueError(f"need 0 <= node_id < node_count, got node_id={node_id}, node_count={node_count}")
        self.node_id = node_id
        self.node_count = node_count
        self.next_index = 0
        self._returned: list[list[int]] = []

    def take(self, count: int) -> list[int]:
        """The next ``count`` nonces (a returned batch first, whatever its size)."""
        if self._returned:
            return self._returned.pop(0)
        start = self.next_index
        self.next_index += count
        return [self.node_id + i * self.node_count for i in range(start, start + count)]

    def put_back(self, nonces: list[int]) -> None:
        """Return a batch that was handed out but not computed."""
        self._returned.append(nonces)
