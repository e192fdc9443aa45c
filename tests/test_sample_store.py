"""The sample store on its own: batches written whole and read back checked, zeros kept as chunks,
sets remade when their settings change and removed when no longer asked for."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.evaluation.sample_store import Layout, MemorySet, SampleStore, batch_arrays, compare_shape
from pipeline.run.errors import AGDError


def _batch(layout: Layout, b: int, value: int) -> dict:
    rows = layout.rows(b)
    images = np.full((len(rows), *layout.image_shape), value, np.uint8)
    inception = [r for r in rows if r < layout.inception]
    features = {"inception": np.full((len(inception), 2048), float(b), np.float32)}
    if layout.judge_dim:
        features.update(judge=np.zeros((len(rows), 128), np.float32), pred=np.zeros(len(rows), np.int64))
    return batch_arrays(layout, b, images, features, seconds=0.5)


def test_a_stored_set_reads_back_what_memory_holds_and_zeros_are_real_chunks(tmp_path):
    layout = Layout(10, 4, 6, (512, 512, 3), judge_dim=128)
    stored, what = SampleStore(tmp_path / "s.zarr").prepare("cfg/w3", layout, {"w": 3.0})
    assert what == "new"
    memory = MemorySet(layout)
    for b in range(layout.batches):
        for target in (stored, memory):
            target.write(b, _batch(layout, b, value=0))  # all-zero predictions and black images
    again = SampleStore(tmp_path / "s.zarr", create=False).open("cfg/w3", layout)
    for name in ("inception", "judge", "pred", "pixels", "grid", "seconds"):
        assert np.array_equal(again.read(name), memory.read(name)), name
    assert again.read("pixels").shape == (10, 64, 64, 3) and again.read("grid").shape == (10, 256, 256, 3)
    with pytest.raises(RuntimeError, match="finished already"):
        stored.write(0, _batch(layout, 0, value=0))
    (tmp_path / "s.zarr/cfg/w3/pred/c/1").unlink()  # a lost chunk is an error, never zeros
    with pytest.raises(AGDError, match="missing although its batch is marked done"):
        again.read("pred")


def test_sets_are_kept_remade_or_removed_by_their_settings(tmp_path):
    layout = Layout(4, 2, 4, (28, 28, 1))
    store = SampleStore(tmp_path / "s.zarr")
    first, _ = store.prepare("agd/w3", layout, {"adapters_sha256": "a"})
    first.write(0, _batch(layout, 0, 1))
    kept, what = store.prepare("agd/w3", layout, {"adapters_sha256": "a"})
    assert what == "kept" and kept.done().tolist() == [True, False]
    remade, what = store.prepare("agd/w3", layout, {"adapters_sha256": "b"})
    assert what == "made with other adapters_sha256: made again" and not remade.done().any()
    store.prepare("agd/w6", layout, {})
    assert store.keep_only(["agd/w6"]) == ["agd/w3"] and store.names() == ["agd/w6"]


def test_bad_folders_are_refused(tmp_path):
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "file").write_text("x")
    with pytest.raises(AGDError, match="not a sample store"):
        SampleStore(tmp_path / "other")
    with pytest.raises(AGDError, match="run `agd teacher`"):
        SampleStore(tmp_path / "missing", create=False, maker="teacher")


def test_comparison_size():
    assert compare_shape(28, 28) == (28, 28) and compare_shape(1024, 1024) == (64, 64)
    assert compare_shape(768, 768) == (64, 64) and compare_shape(256, 256, 256) == (256, 256)
