"""Only some classes of a dataset (`data.classes`): the records of both splits whose class
`label` is one of them.

For transfer learning on embedded data (a backbone pretrained on digits 0-4, fine-tuned on
5-9) and class-incremental ablations. Labels keep their values (the model keeps the
dataset's class count: a head trained on classes 5-9 never predicts 0-4 after a few steps,
and a checkpoint's head fits any subset of the same dataset). Record ids (`index` in a
batch) count within the subset. Finding the records reads every record of the split once
(the embedded digits: well under a second; a large catalogue dataset: one pass over it).
"""

import dataclasses

import numpy as np

from cnnjax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Subset:
    """The records `indices` [N] int64 of a random-access `source`, as a source."""

    source: object
    indices: np.ndarray

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i):
        return self.source[int(self.indices[i])]


def check_classes(classes, num_classes: int | None, dataset: str) -> tuple[int, ...]:
    """-> `classes` as a sorted tuple of ints; ConfigError naming the bad value unless they
    are distinct class ids in [0, num_classes) of a dataset with a class `label`."""
    if not num_classes:
        raise ConfigError(
            f"data.classes is set but dataset '{dataset}' has no class 'label' to select by"
        )
    values = tuple(classes)
    bad = [c for c in values if isinstance(c, bool) or not isinstance(c, int | np.integer)]
    if bad:
        raise ConfigError(f"data.classes must be integer class ids, got {bad[0]!r}")
    out = [c for c in values if not 0 <= c < num_classes]
    if out:
        raise ConfigError(
            f"data.classes {list(values)}: {out} outside the dataset's classes [0, {num_classes})"
        )
    if len(set(values)) != len(values):
        raise ConfigError(f"data.classes {list(values)} repeats a class")
    return tuple(sorted(int(c) for c in values))


def labels_of(source) -> np.ndarray:
    """The `label` of every record of `source` -> [N] int64."""
    return np.asarray([int(source[i]["label"]) for i in range(len(source))], np.int64)


def select_classes(source, classes: tuple[int, ...], split: str):
    """-> Subset of the records of `source` whose `label` is in `classes`; ConfigError if
    there are none (the split holds none of those classes)."""
    keep = np.flatnonzero(np.isin(labels_of(source), np.asarray(classes, np.int64)))
    if keep.size == 0:
        raise ConfigError(f"split '{split}' holds no record of data.classes {list(classes)}")
    return Subset(source, keep.astype(np.int64))
