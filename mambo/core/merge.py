"""Event-time merge of several streams by their watermarks: the account stage's ordering.

Each stream (a market, for an account) hands over items in its own order, each with an event time,
and a watermark: a promise that none of its later items has a time at or before it. The merge
releases an item once every stream's watermark has reached the item's time, in the order
``(time, stream key, arrival within the stream)``. So what is released, and in which order, depends
on the items and their times alone, never on how the streams' deliveries interleaved, nor on when
the watermarks came: only on their being true. This is what makes the account stage give the same
orders whether its markets were processed in one process, by one Kafka worker or by several.

Streams: a fixed set (the account's markets) waits for every one of them, including those that have
said nothing yet; without a set, the streams seen so far (enough in one process, where every market
is fed in time order; not across Kafka partitions).

Repeats: a stream's items have increasing times, so an item before the last one its stream gave, or
at its time and named as one given there already (by the ``ident`` the caller gives; with none, any
item at that time), is one given again (an at-least-once producer repeats what it sent before a
crash): it is dropped and counted in :attr:`EventTimeMerge.repeats`, so a repeated input never acts
twice. Items of one stream that share a time and differ in ident are all taken, in arrival order.

Late items (after their stream's last one, but at or before a point already released: a stream broke
its watermark's promise) are released at once, after what was released, and counted in
:attr:`EventTimeMerge.late`: the result then depends on arrival, and the caller says so.
"""

from __future__ import annotations

import heapq
from collections.abc import Collection, Hashable
from typing import Any, Generic, TypeVar

__all__ = ["EventTimeMerge"]

T = TypeVar("T")
_NONE = -(2**63)


class EventTimeMerge(Generic[T]):
    """Releases items of several keyed streams in ``(time, key, arrival)`` order, up to the least
    watermark of the streams."""

    def __init__(self, keys: Collection[str] | None = None) -> None:
        self.fixed = keys is not None
        self.watermarks: dict[str, int] = dict.fromkeys(sorted(keys or ()), _NONE)
        self._heap: list[tuple[int, str, int, T]] = []
        self._seq = 0
        #: the time of the last item released (items at or before it are late)
        self.released_until = _NONE
        self.late = 0
        self.repeats = 0
        self._last: dict[str, int] = {}  # stream -> time of its last item
        self._last_ids: dict[str, set[Hashable]] = {}  # stream -> idents of its items at that time

    def __setstate__(self, state: dict[str, Any]) -> None:
        state.setdefault("_last_ids", {})  # a merge pickled before idents were kept
        self.__dict__.update(state)

    def __len__(self) -> int:
        """Items waiting for a watermark."""
        return len(self._heap)

    def push(
        self, key: str, time: int, item: T | None, watermark: int, ident: Hashable | None = None
    ) -> list[T]:
        """Add ``item`` (None: only a watermark) of stream ``key`` at ``time``, the stream's watermark
        now ``watermark``; the items this releases, in order. A stream outside a fixed set is refused;
        an item before its stream's last, or at its time and given there already (``ident``), is a
        repeat, dropped."""
        if self.fixed and key not in self.watermarks:
            raise KeyError(f"stream {key!r} is not one of {sorted(self.watermarks)}")
        out: list[T] = []
        last = self._last.get(key, _NONE)
        if item is not None and (
            time < last or (time == last and (ident is None or ident in self._last_ids.get(key, ())))
        ):
            self.repeats += 1  # given before: it acted then
            item = None
        if item is not None:
            if time > last:
                self._last_ids[key] = set()
            self._last_ids.setdefault(key, set()).add(ident)
            self._last[key] = time
            if time <= self.released_until:
                self.late += 1
                out.append(item)
            else:
                heapq.heappush(self._heap, (time, key, self._seq, item))
                self._seq += 1
        if watermark > self.watermarks.get(key, _NONE):
            self.watermarks[key] = watermark
        return out + self._release(min(self.watermarks.values()))

    def drain(self) -> list[T]:
        """Release everything still waiting (the end of every stream), in order."""
        return self._release(2**63 - 1)

    def _release(self, low: int) -> list[T]:
        out: list[T] = []
        heap = self._heap
        while heap and heap[0][0] <= low:
            time, _, _, item = heapq.heappop(heap)
            self.released_until = max(self.released_until, time)
            out.append(item)
        return out
