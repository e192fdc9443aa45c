"""Store I/O beside the model's compute, with bounded memory: the trajectory writer and the
training batch prefetcher.

Both run one background thread and hand work over through a queue of at most `depth` items, so
memory holds at most `depth` batches more than before. torch and zarr's codecs release the GIL,
so the thread's reading, compressing and writing overlap the forward and backward passes.
`depth = 0` does the work inline (the old behaviour, kept for the benchmark's comparison).
Errors in the thread come back at the next call in the caller's thread, unchanged.
Each reports what the compute waited for it (`wait_s`): the share of stage time the I/O costs.
"""

from __future__ import annotations

import queue
import threading
import time

_DONE = object()


class Writer:
    """`write(indices, arrays)` queues a batch of finished trajectories for `store.write`, in order.

    The store's completion mask is written after a batch's chunks, in this one thread, so a
    kill at any moment leaves every trajectory either finished or unfinished, as before: queued
    batches not yet written are simply made again on resume.
    """

    def __init__(self, store, depth: int = 2):
        self.store, self.depth = store, depth
        self.wait_s = self.busy_s = 0.0
        self._error: BaseException | None = None
        if depth:
            self._queue: queue.Queue = queue.Queue(maxsize=depth)
            self._thread = threading.Thread(target=self._run, name="agd-store-writer", daemon=True)
            self._thread.start()

    def _write(self, indices, arrays) -> None:
        start = time.perf_counter()
        self.store.write(indices, arrays)
        self.busy_s += time.perf_counter() - start

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _DONE:
                return
            if self._error is None:  # after an error, drain without writing: the caller stops
                try:
                    self._write(*item)
                except BaseException as err:  # noqa: BLE001 (re-raised in the caller's thread)
                    self._error = err

    def _raise(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    def write(self, indices, arrays) -> None:
        if not self.depth:
            start = time.perf_counter()
            self._write(indices, arrays)
            self.wait_s += time.perf_counter() - start
            return
        self._raise()
        start = time.perf_counter()
        self._queue.put((list(indices), arrays))  # blocks while `depth` batches wait: bounded memory
        self.wait_s += time.perf_counter() - start

    def close(self) -> None:
        """Wait for every queued batch to be written; raise the first error of any."""
        if self.depth and self._thread.is_alive():
            start = time.perf_counter()
            self._queue.put(_DONE)
            self._thread.join()
            self.wait_s += time.perf_counter() - start
        self._raise()

    def __enter__(self) -> "Writer":
        return self

    def __exit__(self, exc_type, *exc) -> bool:
        if exc_type is None:
            self.close()
        elif self.depth:  # the caller failed: let what is queued finish (finished work is kept), then stop
            self._queue.put(_DONE)
            self._thread.join()
        return False


class Prefetcher:
    """The next training batches drawn from a ShuffleBuffer in a background thread.

    Only this thread touches the buffer, in the same order as inline use, so the batches are the
    same. Each batch comes with the buffer's state right after it (`state`): a checkpoint saves
    what was consumed, not what was prefetched, and a resumed run sees the same batches.
    """

    def __init__(self, buffer, depth: int = 2, convert=None):
        self.buffer, self.depth = buffer, depth
        self.convert = convert or (lambda batch: batch)  # e.g. numpy -> tensors, in the thread too
        self.state = buffer.state()
        self.wait_s = 0.0
        self.first_wait_s = None  # the first batch's wait: the shuffle buffer's initial fill, which nothing hides
        if depth:
            self._stop = threading.Event()
            self._queue: queue.Queue = queue.Queue(maxsize=depth)
            self._thread = threading.Thread(target=self._run, name="agd-batch-prefetch", daemon=True)
            self._thread.start()

    def _draw(self):
        batch = self.convert(self.buffer.next_batch())
        return batch, self.buffer.state()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                item = self._draw()
            except BaseException as err:  # noqa: BLE001 (re-raised in the caller's thread)
                item = err
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if isinstance(item, BaseException):
                return

    def next(self):
        start = time.perf_counter()
        item = self._queue.get() if self.depth else self._draw()
        self.wait_s += time.perf_counter() - start
        if self.first_wait_s is None:
            self.first_wait_s = self.wait_s
        if isinstance(item, BaseException):
            raise item
        batch, self.state = item
        return batch

    def close(self) -> None:
        if self.depth:
            self._stop.set()
            self._thread.join()

    def __enter__(self) -> "Prefetcher":
        return self

    def __exit__(self, *exc) -> bool:
        self.close()
        return False
