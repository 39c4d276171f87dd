"""The feature spec of a batch: what each key of one example holds (shape, dtype, pad value).

A task declares its spec (`Task.features()`); the spec drives eval padding, synthetic
benchmark batches, the per-example checks of the input pipeline and notebook inputs. Every
batch also carries `index` [B] int64 (record id, -1 for padding) and `mask` [B] float32
(1 for real examples, 0 for padding), added by the pipeline.
"""

import dataclasses

import numpy as np

BOOKKEEPING = {"index": (np.int64, -1), "mask": (np.float32, 0.0)}


@dataclasses.dataclass(frozen=True)
class Feature:
    """One key of a preprocessed example.

    shape: per-example shape (no batch axis); dtype: numpy dtype name; pad: the value that
    fills padded examples (eval padding) and padded rows (e.g. boxes beyond the real ones);
    low/high: the half-open value range [low, high) of integer features (labels, class maps,
    with `pad` allowed too), used for synthetic batches and checks; None = unbounded.
    """

    shape: tuple[int, ...]
    dtype: str
    pad: float = 0
    low: float | None = None
    high: float | None = None

    def empty(self) -> np.ndarray:
        return np.full(self.shape, self.pad, np.dtype(self.dtype))


def pad_example(spec: dict[str, Feature]) -> dict[str, np.ndarray]:
    """A padding example: every feature filled with its pad value, index -1, mask 0."""
    out = {k: f.empty() for k, f in spec.items()}
    out.update({k: np.asarray(pad, dtype) for k, (dtype, pad) in BOOKKEEPING.items()})
    return out


def check_example(spec: dict[str, Feature], example: dict, index: int) -> None:
    """ValueError naming record `index` if a preprocessed example does not fit `spec`."""
    missing = sorted(set(spec) - set(example))
    if missing:
        raise ValueError(f"record {index}: preprocessing produced no {missing}")
    for key, f in spec.items():
        x = example[key]
        if not isinstance(x, np.ndarray | np.generic):
            raise ValueError(f"record {index}: '{key}' is a {type(x).__name__}, not an array")
        if tuple(x.shape) != tuple(f.shape) or x.dtype != np.dtype(f.dtype):
            raise ValueError(
                f"record {index}: '{key}' is {x.dtype} {tuple(x.shape)}, the task expects "
                f"{f.dtype} {tuple(f.shape)}"
            )


def synthetic_batch(spec: dict[str, Feature], batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random batch of `batch` examples that fits `spec` (benchmarks, shape checks).

    Float features are standard normal (boxes: sorted uniform corners in [0, 1]); integer
    features uniform in [low, high); every example is real (mask 1).
    """
    rng = np.random.default_rng(seed)
    out = {}
    for key, f in spec.items():
        shape, dtype = (batch, *f.shape), np.dtype(f.dtype)
        if np.issubdtype(dtype, np.integer):
            lo = 0 if f.low is None else int(f.low)
            hi = lo + 2 if f.high is None else int(f.high)
            out[key] = rng.integers(lo, hi, shape).astype(dtype)
        elif key.endswith("boxes") and f.shape[-1:] == (4,):
            corners = np.sort(rng.random((*shape[:-1], 2, 2)), axis=-2)  # [.., (lo, hi), (y, x)]
            out[key] = corners.reshape(shape).astype(dtype)
        else:
            out[key] = rng.standard_normal(shape).astype(dtype)
    out["index"] = np.arange(batch, dtype=np.int64)
    out["mask"] = np.ones(batch, np.float32)
    return out
