"""A task defined outside the package: sets of 3-D points -> their spread (mean distance to the centroid).

Used by tests/test_own_sets.py as ``--task tests/example_task.py:TASK``: nothing else in deepsets is edited.
"""
import numpy as np

from deepsets.data import ListReader, SourceDataset, Task


def _sets(split: str, n: int = 48):
    rng = np.random.default_rng(0 if split == "train" else 1)
    scales = rng.uniform(0.2, 2.0, n)
    sets = [rng.normal(size=(rng.integers(8, 24), 3)).astype(np.float32) * s for s in scales]
    spread = [float(np.linalg.norm(x - x.mean(0), axis=1).mean()) for x in sets]
    return sets, spread


def _load(task, split, data, base, options):
    sets, spread = _sets(split, **options)
    return SourceDataset(ListReader(sets, spread, source=f"points ({split})"), target="regression", task=task.name,
                         **base)


TASK = Task(name="point-spread", target="regression", loader=_load, description="3-D points -> spread",
            in_dim=3, out_dim=1, set_size=None, epochs=3)
