"""Store I/O beside the compute: the background writer and the training prefetcher change nothing
but the time: same stores, same batches, same checkpoints, errors still reach the caller."""

import numpy as np
import pytest

from pipeline.data.background import Prefetcher, Writer
from pipeline.data.loader import ShuffleBuffer
from pipeline.data.store import TrajectoryStore
from pipeline.run.errors import AGDError
from tests.conftest import chunk_files


def _store(path, n=6, steps=3):
    return TrajectoryStore.create(path, {"backend": "test"}, steps, (1, 4, 4), (2, 4, 4), np.arange(steps)[::-1] * 100,
                                  np.linspace(1, 5, n).astype(np.float32), np.arange(n), {"labels": np.arange(n) % 3})


def _batches(n=6, steps=3, seed=0):
    rng = np.random.default_rng(seed)
    for start in range(0, n, 2):
        yield [start, start + 1], {"x": rng.standard_normal((2, steps, 1, 4, 4)).astype(np.float32),
                                   "target": rng.standard_normal((2, steps, 2, 4, 4)).astype(np.float32)}


def test_background_writer_writes_the_same_store_as_inline_writes(tmp_path):
    stores = {}
    for depth in (0, 2):
        store = _store(tmp_path / f"d{depth}.zarr")
        with Writer(store, depth=depth) as writer:
            for indices, arrays in _batches():
                writer.write(indices, arrays)
        assert store.done().all()
        stores[depth] = chunk_files(tmp_path / f"d{depth}.zarr")
    assert stores[0] == stores[2]


def test_background_writer_errors_reach_the_caller_and_keep_finished_batches(tmp_path):
    store = _store(tmp_path / "s.zarr")
    batches = list(_batches())
    batches[1][1]["target"][0, 1] = np.nan  # CFG overflowed in the second batch
    with pytest.raises(AGDError, match="non-finite target"):
        with Writer(store, depth=2) as writer:
            for indices, arrays in batches:
                writer.write(indices, arrays)
    assert TrajectoryStore.open(tmp_path / "s.zarr").done().tolist() == [True, True, False, False, False, False]


def test_prefetched_batches_and_checkpoint_states_equal_inline_draws(tiny_project):
    """The prefetcher draws ahead, but `state` is the buffer after the batches consumed: a run resumed
    from it continues with exactly the batches an uninterrupted run draws."""
    store = TrajectoryStore.open(tiny_project / "data" / "trajectories.zarr")
    inline = ShuffleBuffer(store, batch_size=8, capacity=3, seed=5)
    expected = [inline.next_batch() for _ in range(12)]
    buffer = ShuffleBuffer(store, batch_size=8, capacity=3, seed=5)
    with Prefetcher(buffer, depth=3) as prefetch:
        got = [prefetch.next() for _ in range(7)]
        state = prefetch.state
    resumed = ShuffleBuffer(store, batch_size=8, capacity=3, seed=5)
    resumed.restore(state)
    with Prefetcher(resumed, depth=2) as prefetch:
        got += [prefetch.next() for _ in range(5)]
    for a, b in zip(got, expected):
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
