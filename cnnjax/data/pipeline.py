"""grain pipelines: an endless, checkpointable train stream and padded, exact eval batches.

Each process reads its own interleaved share of every global batch
(`process_index::process_count`), so the union over processes equals the
single-process batch. Batches are dicts of numpy arrays:
  image [B, S, S, C] float32 (normalised), label [B] int32, index [B] int64 (record id),
  mask [B] float32 (1 for real examples, 0 for eval padding).
"""

import dataclasses
import math

import grain
import numpy as np

from cnnjax.data import transforms as T
from cnnjax.data.sources import DataInfo, check_example


@dataclasses.dataclass(frozen=True)
class Preprocess:
    """uint8 example -> float32 normalised model input; random parts only in training."""

    info: DataInfo
    image_size: int
    train: bool
    crop_padding: int = 0
    flip: bool = False
    noise_std: float = 0.0
    blur_prob: float = 0.0
    blur_sigma: float = 1.0
    color_jitter: float = 0.0

    def __call__(self, example: dict, rng: np.random.Generator | None = None) -> dict:
        index = int(example["index"])
        check_example(example, index, self.info)
        image = T.center_crop_resize(example["image"], self.image_size)
        image = T.to_float(image)
        if self.train:
            image = T.random_crop(image, self.crop_padding, rng)
            if self.flip:
                image = T.random_flip(image, rng)
            image = T.color_jitter(image, self.color_jitter, rng)
            if self.blur_prob > 0 and rng.random() < self.blur_prob:
                image = T.blur(image, self.blur_sigma)
        image = T.normalize(
            image, np.asarray(self.info.mean, np.float32), np.asarray(self.info.std, np.float32)
        )
        if self.train:
            image = T.add_noise(image, self.noise_std, rng)
        return {
            "image": np.ascontiguousarray(image, np.float32),
            "label": np.int32(example["label"]),
            "index": np.int64(index),
            "mask": np.float32(1.0),
        }


def preprocess_for(data_cfg, info: DataInfo, train: bool) -> Preprocess:
    aug = data_cfg.aug
    return Preprocess(
        info=info,
        image_size=data_cfg.image_size,
        train=train,
        crop_padding=aug.crop_padding,
        flip=aug.flip,
        noise_std=aug.noise_std,
        blur_prob=aug.blur_prob,
        blur_sigma=aug.blur_sigma,
        color_jitter=aug.color_jitter,
    )


@dataclasses.dataclass(frozen=True)
class _WithIndex:
    """Adds the record id; later epochs reach the source with indices offset by epoch * n."""

    num_records: int

    def __call__(self, i, example):
        return {**example, "index": i % self.num_records}


def _read_options(data_cfg):
    return grain.ReadOptions(
        num_threads=max(1, data_cfg.read_threads), prefetch_buffer_size=max(1, data_cfg.prefetch)
    )


def train_dataset(
    source, data_cfg, info: DataInfo, *, seed: int, process_index: int = 0, process_count: int = 1
) -> grain.IterDataset:
    """Endless stream of local train batches; reshuffled every epoch, deterministic by seed."""
    local_batch = data_cfg.batch_size // process_count
    ds = grain.MapDataset.source(source).map_with_index(_WithIndex(len(source)))
    ds = ds.seed(seed).shuffle().repeat(None)
    ds = ds[process_index::process_count]
    ds = ds.random_map(preprocess_for(data_cfg, info, train=True))
    ds = ds.to_iter_dataset(_read_options(data_cfg))
    return ds.batch(local_batch, drop_remainder=True)


@dataclasses.dataclass(frozen=True)
class _PaddedEval:
    source: object
    num_real: int
    preprocess: Preprocess

    def __call__(self, i: int) -> dict:
        if i < self.num_real:
            return self.preprocess({**self.source[i], "index": i})
        s, c = self.preprocess.image_size, self.preprocess.info.image_shape[-1]
        return {
            "image": np.zeros((s, s, c), np.float32),
            "label": np.int32(0),
            "index": np.int64(-1),
            "mask": np.float32(0.0),
        }


def eval_dataset(
    source, data_cfg, info: DataInfo, *, global_batch: int, process_index=0, process_count=1
) -> tuple[grain.IterDataset, int]:
    """Eval batches padded to a whole number of global batches -> (dataset, num_batches)."""
    n = len(source)
    if data_cfg.max_eval_examples > 0:
        n = min(n, data_cfg.max_eval_examples)
    num_batches = math.ceil(n / global_batch)
    fn = _PaddedEval(source, n, preprocess_for(data_cfg, info, train=False))
    ds = grain.MapDataset.range(num_batches * global_batch).map(fn)
    ds = ds[process_index::process_count]
    ds = ds.to_iter_dataset(_read_options(data_cfg))
    return ds.batch(global_batch // process_count), num_batches
