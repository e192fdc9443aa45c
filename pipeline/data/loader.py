"""Training batches from the trajectory store with bounded memory.

Whole trajectories (one chunk read each: the fast path) go into a shuffle buffer of
`capacity` trajectories; batches are states drawn uniformly from the buffer. Every time a
trajectory's worth of states has been consumed, one buffered trajectory is swapped for the next
one of a shuffled epoch order, so the whole store streams through while memory stays at
`capacity` trajectories. The full state (RNG, order, cursor, buffer) is checkpointable.
"""

from __future__ import annotations

import numpy as np

from pipeline.data.store import TrajectoryStore
from pipeline.run.errors import AGDError


class ShuffleBuffer:
    """rows: this process's slice of every batch (multi-process training: each rank draws the same
    global batch from the same state, and reads only the trajectories its rows need, when it needs them)."""

    def __init__(self, store: TrajectoryStore, batch_size: int, capacity: int, seed: int, rows: slice | None = None):
        self.store, self.batch_size, self.rows = store, batch_size, rows
        self.n, self.capacity = len(store), min(capacity, len(store))
        self.meta = store.meta()
        self.num_steps = len(self.meta["t"])
        # the steps where the teacher guided (the interval rule's band): the adapters run only there,
        # so only there are they trained; a store without the attribute guided at every step
        guided = store.attrs.get("guided_steps")
        self.steps = None if guided is None else np.flatnonzero(guided)
        if self.steps is not None and not len(self.steps):
            raise AGDError(str(store.path), "its teacher guided at no step (guided_steps all false)",
                           "widen guidance.interval to hold some of the sampler's noise levels, then re-run "
                           "`agd trajectories`")
        self.rng = np.random.default_rng(seed)
        self.order, self.cursor = self.rng.permutation(self.n), 0
        self.ids: list[int] = []
        self.consumed = 0
        self._cache: dict[int, dict] = {}

    def _next_id(self) -> int:
        if self.cursor == self.n:
            self.order, self.cursor = self.rng.permutation(self.n), 0
        self.cursor += 1
        return int(self.order[self.cursor - 1])

    def _fill(self) -> None:
        while len(self.ids) < self.capacity:
            self.ids.append(self._next_id())
        if self.rows is None:
            for i in set(self.ids) - set(self._cache):
                self._cache[i] = self.store.read(i)
        for i in set(self._cache) - set(self.ids):
            del self._cache[i]

    def next_batch(self) -> dict[str, np.ndarray]:
        """{x, target, t, w, cond/...} for `batch_size` states drawn from the buffer."""
        self._fill()
        slots = self.rng.integers(0, len(self.ids), self.batch_size)
        if self.steps is None:
            steps = self.rng.integers(0, self.num_steps, self.batch_size)
        else:
            steps = self.steps[self.rng.integers(0, len(self.steps), self.batch_size)]
        traj = np.array([self.ids[s] for s in slots])
        if self.rows is not None:
            traj, steps = traj[self.rows], steps[self.rows]
            for i in set(traj.tolist()) - set(self._cache):
                self._cache[i] = self.store.read(i)
        batch = {name: np.stack([self._cache[i][name][s] for i, s in zip(traj, steps)]) for name in ("x", "target")}
        batch["t"] = self.meta["t"][steps]
        for name, values in self.meta.items():
            if name != "t":
                batch[name] = values[traj]
        self.consumed += self.batch_size
        if self.capacity < self.n:  # stream: one swap per trajectory's worth of consumed states
            while self.consumed >= self.num_steps:
                self.consumed -= self.num_steps
                self.ids[int(self.rng.integers(len(self.ids)))] = self._next_id()
        return batch

    def state(self) -> dict:
        return {"rng": self.rng.bit_generator.state, "order": self.order.copy(), "cursor": self.cursor,
                "ids": list(self.ids), "consumed": self.consumed}

    def restore(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.order, self.cursor = np.asarray(state["order"]), state["cursor"]
        self.ids, self.consumed = list(state["ids"]), state["consumed"]
        self._cache = {}
