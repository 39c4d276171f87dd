"""Opens train/eval data sources by name and describes them (`DataInfo`)."""

import contextlib
import dataclasses
import fcntl
import os
from pathlib import Path

import numpy as np

from cnnjax.errors import ConfigError, closest

# Per-channel normalisation statistics of the train splits (RGB order).
_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagenet2012": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "digits": ((0.3052,), (0.3732,)),
}


@dataclasses.dataclass(frozen=True)
class DataInfo:
    name: str
    num_classes: int
    num_train: int
    num_eval: int
    image_shape: tuple[int, int, int]  # (H, W, C) as stored; None dims = varying size
    mean: tuple[float, ...]
    std: tuple[float, ...]


def resolve_data_dir(data_dir: str) -> str:
    if data_dir:
        return os.path.expanduser(data_dir)
    env = os.environ.get("CNNJAX_DATA_DIR")
    return env or os.path.expanduser("~/.cache/cnnjax/tensorflow_datasets")


def _embedded():
    from cnnjax.data.digits import Digits

    return {"digits": Digits}


@contextlib.contextmanager
def _file_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _builder(name: str, data_dir: str):
    import tensorflow_datasets as tfds

    tfds.disable_progress_bar()
    embedded = _embedded()
    if name in embedded:
        builder = embedded[name](data_dir=data_dir)
        if not builder.is_prepared():
            # Several processes (tests, hosts) may start at once: prepare under a lock.
            with _file_lock(Path(data_dir) / f".{name}.lock"):
                builder = embedded[name](data_dir=data_dir)
                if not builder.is_prepared():
                    builder.download_and_prepare(file_format="array_record")
        return embedded[name](data_dir=data_dir)
    catalogue = set(tfds.list_builders(with_community_datasets=False))
    if name.split("/")[0].split(":")[0] not in catalogue:
        choices = sorted(catalogue | set(embedded))
        raise ConfigError(
            f"unknown dataset '{name}'.{closest(name, choices)} Use 'digits' (embedded) or a "
            "tensorflow-datasets catalogue name (e.g. cifar10, cifar100, imagenet2012)."
        )
    builder = tfds.builder(name, data_dir=data_dir)
    if not builder.is_prepared():
        raise ConfigError(
            f"dataset '{name}' is not prepared in {data_dir}. Prepare it once as ArrayRecord on a "
            f"machine with internet and TensorFlow: `pip install tensorflow tensorflow-datasets && "
            f"tfds build {name} --file_format=array_record --data_dir={data_dir}`, then copy that "
            "folder here or pass --config.data.data_dir=DIR."
        )
    return builder


def _source(builder, split: str):
    name = builder.info.full_name
    known = list(builder.info.splits)
    if known and split not in known:  # split info can be absent (e.g. tfds mock data)
        raise ConfigError(f"dataset '{name}' has no split '{split}'; splits: {sorted(known)}")
    try:
        source = builder.as_data_source(split)
    except NotImplementedError as e:  # prepared as TFRecord: no random access
        raise ConfigError(
            f"dataset '{name}' is prepared in {builder.info.file_format}; cnnjax reads "
            f"ArrayRecord. Rebuild with `tfds build ... --file_format=array_record` ({e})"
        ) from e
    if len(source) == 0:
        raise ConfigError(f"split '{split}' of dataset '{name}' is empty")
    return ReadChecked(source, f"{name}/{split}")


@dataclasses.dataclass(frozen=True)
class ReadChecked:
    """A random-access source whose read errors name the record (they surface from grain's
    reader threads with this message)."""

    source: object
    name: str

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i):
        try:
            return self.source[i]
        except Exception as e:
            raise ValueError(
                f"record {i} of {self.name} cannot be read ({type(e).__name__}: {e}); the "
                "prepared dataset may be corrupt: rebuild it"
            ) from e


def open_sources(data_cfg):
    """-> (train_source, eval_source, DataInfo) for config group `data`."""
    builder = _builder(data_cfg.name, resolve_data_dir(data_cfg.data_dir))
    train = _source(builder, data_cfg.train_split)
    evals = _source(builder, data_cfg.eval_split)
    feats = builder.info.features
    if "image" not in feats or "label" not in feats:
        raise ConfigError(
            f"dataset '{data_cfg.name}' has features {sorted(feats)}; classification needs "
            "'image' and 'label'"
        )
    shape = tuple(feats["image"].shape)
    if len(shape) != 3:
        raise ConfigError(
            f"dataset '{data_cfg.name}' images have shape {shape}; expected (H, W, C)"
        )
    base = data_cfg.name.split("/")[0].split(":")[0]
    c = shape[-1]
    mean, std = _STATS.get(base, ((0.5,) * c, (0.25,) * c))
    info = DataInfo(
        name=data_cfg.name,
        num_classes=int(feats["label"].num_classes),
        num_train=len(train),
        num_eval=len(evals),
        image_shape=shape,
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
    )
    return train, evals, info


def check_example(example: dict, index: int, info: DataInfo) -> None:
    """Raises ValueError naming record `index` if its image or label cannot be used."""
    image, label = example["image"], example["label"]
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3:
        got = f"{getattr(image, 'dtype', type(image))} {getattr(image, 'shape', '')}"
        raise ValueError(f"record {index}: image must be uint8 [H, W, C], got {got}")
    if image.shape[-1] != info.image_shape[-1]:
        raise ValueError(
            f"record {index}: image has {image.shape[-1]} channels, dataset declares "
            f"{info.image_shape[-1]}"
        )
    if not 0 <= int(label) < info.num_classes:
        raise ValueError(f"record {index}: label {int(label)} outside [0, {info.num_classes})")
