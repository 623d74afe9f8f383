"""Shared-memory slots: where a frame's payload bytes lie for the worker process that runs it.

Each worker process has a few slots (one per frame it may hold). A slot is a memfd that the daemon
creates and the worker process inherits: the IO thread copies a frame's payloads into a free slot
(the one copy between the ingest socket and the runtime: the worker reads them in place with
np.frombuffer), and the slot is free again when the worker's answer for that frame arrives. A slot
grows (to the next MiB) when a frame is larger than it; pages are only allocated where written,
so a slot costs what its largest frame needs.
"""

from __future__ import annotations

import mmap
import os

import numpy as np

MIB = 1 << 20
_COPY_IN_NUMPY = 64 * 1024  # above this numpy copies (and lets the GIL go); below, memoryview does


class Slot:
    """The daemon's side: a memfd it writes frames into."""

    def __init__(self, name: str) -> None:
        self.fd = os.memfd_create(name, os.MFD_CLOEXEC)
        self.size = 0
        self.map: mmap.mmap | None = None
        self.view: np.ndarray | None = None

    def _grow(self, need: int) -> None:
        size = -(-need // MIB) * MIB
        # the old mapping is dropped, not closed: a view of it may still be alive somewhere
        os.ftruncate(self.fd, size)
        self.map = mmap.mmap(self.fd, size)
        self.view = np.frombuffer(self.map, np.uint8)
        self.size = size

    def write(self, payloads: list) -> list[tuple[int, int]]:
        """Copy the payloads in one after another; their (offset, length) in the slot."""
        lengths = [len(p) if not isinstance(p, memoryview) else p.nbytes for p in payloads]
        if sum(lengths) > self.size:
            self._grow(sum(lengths))
        view, out, offset = self.view, [], 0
        for data, n in zip(payloads, lengths, strict=True):
            if n > _COPY_IN_NUMPY:
                np.copyto(view[offset : offset + n], np.frombuffer(data, np.uint8))
            else:
                self.map[offset : offset + n] = data
            out.append((offset, n))
            offset += n
        return out

    def close(self) -> None:
        self.view = None
        if self.map is not None:
            self.map.close()
            self.map = None
        os.close(self.fd)


class SlotReader:
    """The worker's side: the inherited memfd, mapped again when the daemon grew it."""

    def __init__(self, fd: int) -> None:
        self.fd, self.size, self.map = fd, 0, None

    def buffer(self, end: int) -> memoryview:
        """The slot's bytes up to at least `end`."""
        if end > self.size:  # the old mapping goes when the last view of it does
            self.size = os.fstat(self.fd).st_size
            self.map = mmap.mmap(self.fd, self.size, prot=mmap.PROT_READ)
        return memoryview(self.map)
