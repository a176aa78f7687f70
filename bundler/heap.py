"""Where the pipeline's block buffers come from: glibc's reused heap, not fresh mappings."""

from __future__ import annotations


def prefer_heap_for_block_buffers() -> None:
    """Make glibc serve the pipeline's 1 MiB buffers from its (reused) heap.

    Above its mmap threshold (128 KiB at first) glibc gives every allocation a fresh mapping,
    faulted in page by page and unmapped again when freed: for one buffer per block that was
    80k page faults and 0.15 system CPU-s on the random image. The threshold rises to the size
    of a mapped block when it is freed (mallopt(3), "dynamic mmap threshold"), so one 16 MiB
    allocation, never touched (calloc of fresh zero pages) and freed at once, moves the blocks
    to the heap for the rest of the process. With another allocator this does nothing.
    """
    primer = bytes(16 << 20)
    del primer
