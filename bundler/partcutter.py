"""PartCutter: the ciphertext cut into parts, each hashed as it fills and handed to the sink.

Also the bound on how many parts a tar stream can make (``max_part_count``): the part size is
read here only, so a test that shrinks ``PART_SIZE`` patches this module.
"""

from __future__ import annotations

import hashlib
import math
import mmap
import queue
from collections.abc import Callable
from typing import Any

from .aescbc import AES_BLOCK
from .concurrency import BackgroundStage
from .parts import PART_SIZE, Part, PartSink
from .stagetimes import NULL_TIMES, StageTimes


def max_bundled_size(tar_size: int) -> int:
    """An upper bound of the ciphertext size: deflate never grows data by more than a
    stored-block header per 64 KiB plus a flush marker per block; gzip and PKCS#7 add < 64."""
    return tar_size + tar_size // 8192 + 4096


def max_part_count(tar_size: int) -> int:
    """An upper bound of the number of parts a tar stream of ``tar_size`` bytes is cut into."""
    return math.ceil(max_bundled_size(tar_size) / PART_SIZE)


class PartCutter:
    """Cuts the ciphertext into PART_SIZE parts and hands them on, in index order.

    The ciphertext lands in a reused part buffer (an anonymous map): the encryptor writes
    into it in place (``space``/``advance``), ``write`` copies into it. A full buffer goes to
    ``stage`` (a BackgroundStage consuming with :meth:`store`), so hashing the part and
    storing it run beside encryption; without a stage they run in the writer's thread. A sink
    done with a part's data when put_part returns (PartSink) writes straight from the buffer;
    any other gets bytes of its own, one allocation and copy per part. The stage's bounded
    queue bounds the buffers in use (its depth + 2).

    While a part fills, every ``SLICE`` bytes of it go to the stage as well: the part's SHA-1
    is computed as it fills, and a sink that can (``put_part_ahead``, PartSink) writes them
    ahead, so that after the last block only the last slice is left to hash and write.
    """

    SLICE = 4 << 20  # a multiple of the page size: slices written ahead stay aligned

    def __init__(self, sink: PartSink, estimate: Callable[[], int] | None = None, *,
                 timings: StageTimes = NULL_TIMES, capacity: int | None = None) -> None:
        self.sink = sink
        self.estimate = estimate
        self.timings = timings
        # (index, buffer, start, end, whole part): a slice of a part, or its end
        self.stage: BackgroundStage[tuple[int, mmap.mmap, int, int, bool]] | None = None
        self.digests: list[str] = []
        self.sizes: list[int] = []
        self._free: queue.SimpleQueue[mmap.mmap] = queue.SimpleQueue()
        # A bundle known to be smaller than a part gets buffers of its size (in whole AES
        # blocks, so that ``room`` is whole blocks too, as the encryptor needs): zeroing and
        # faulting in 10 MiB buffers was a tenth of a small bundle's run. ``capacity`` is only
        # a hint: a buffer grows to a whole part if more arrives.
        self._size = (PART_SIZE if capacity is None
                      else min(PART_SIZE, max(AES_BLOCK, -(-capacity // AES_BLOCK) * AES_BLOCK)))
        self._buffer = self._new_buffer()
        self._fill = 0
        self._sent = 0  # bytes of the current part handed on as slices
        self._count = 0
        self._ahead = getattr(sink, "put_part_ahead", None)
        self._hasher: Any = None  # the SHA-1 of the part being stored (the stage's thread)

    def _new_buffer(self) -> mmap.mmap:
        # AES_BLOCK bytes of slack: update_into wants room for a block more than it writes.
        # An anonymous map: page-aligned (a sink can write it with O_DIRECT, no copy), zeroed
        # by the kernel, and populated in one call rather than by a fault per page.
        flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_POPULATE", 0)
        return mmap.mmap(-1, self._size + AES_BLOCK, flags=flags)

    @property
    def room(self) -> int:
        """Bytes that fit before the current part (or a smaller buffer) is full: a whole
        number of AES blocks, never 0."""
        if self._fill == self._size:  # a buffer smaller than a part is full: more came
            self._grow()
        return self._size - self._fill

    def _grow(self) -> None:
        self._size = PART_SIZE
        grown = self._new_buffer()
        grown[:self._fill] = self._buffer[:self._fill]
        self._buffer = grown

    def space(self) -> memoryview:
        """The unfilled rest of the current part buffer (``room`` plus the slack)."""
        return memoryview(self._buffer)[self._fill:]

    def advance(self, count: int) -> None:
        """``count`` bytes were written into ``space()``."""
        self._fill += count
        if self._fill == PART_SIZE:
            self._emit()
        elif self._fill - self._sent >= self.SLICE:
            end = self._fill - self._fill % self.SLICE
            self._hand_on((self._count, self._buffer, self._sent, end, False))
            self._sent = end

    def _hand_on(self, item: tuple[int, mmap.mmap, int, int, bool]) -> None:
        if self.stage is None:
            self.store(item)
        else:
            self.stage.write(item)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        while view:
            take = min(len(view), self.room)
            self._buffer[self._fill:self._fill + take] = view[:take]
            view = view[take:]
            self.advance(take)

    def _emit(self, *, last: bool = False) -> None:
        if not self._count:
            # Sinks that must name parts before the count is known (S3) get an estimate.
            self.sink.expect_parts(1 if last else self.estimate() if self.estimate else 0)
        item = (self._count, self._buffer, self._sent, self._fill, True)
        self._count += 1
        self._fill = self._sent = 0
        self._hand_on(item)
        if last:
            return  # no buffer for a part that will never come
        try:
            self._buffer = self._free.get_nowait()
        except queue.Empty:
            self._buffer = self._new_buffer()

    def store(self, item: tuple[int, mmap.mmap, int, int, bool]) -> None:
        """Hash a slice of a part (and write it ahead, where the sink can), or, at the end of
        the part, hash the rest, put the part into the sink and give the buffer back.

        A sink that is done with a part's data when put_part returns (PartSink) gets a view
        of the buffer itself; any other gets a copy it may keep."""
        index, buffer, start, size, whole = item
        if start == 0:
            self._hasher = hashlib.sha1()
        with self.timings.measure("part sha1", size - start), memoryview(buffer) as whole_view:
            self._hasher.update(whole_view[start:size])
        if not whole:
            if self._ahead is not None:
                with self.timings.measure("put_part ahead", size - start), \
                        memoryview(buffer) as ahead:
                    self._ahead(index, ahead[start:size], start)
            return
        borrowed = getattr(self.sink, "done_with_part_data", False)
        view = memoryview(buffer)[:size]
        if not borrowed:
            with self.timings.measure("part copy", size):
                data: bytes | memoryview = bytes(view)
            view.release()
            self._free.put(buffer)
        else:
            data = view
        part = Part(index, data, sha1=self._hasher.hexdigest())
        self.digests.append(part.sha1)
        self.sizes.append(size)
        with self.timings.measure("put_part", size):
            self.sink.put_part(part)
        if borrowed:
            try:
                view.release()
            except BufferError:  # something still holds the view: the buffer is not reused
                return
            self._free.put(buffer)

    def close(self) -> None:
        if self._fill or not self._count:
            self._emit(last=True)
