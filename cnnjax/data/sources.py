"""Opens train/eval data sources by name and describes them (`DataInfo`).

A source yields raw records as stored (nested dicts of numpy arrays, e.g. `image` uint8
[H, W, C], `label`, `boxes`, `segmentation`); which keys a run needs is the task's business
(`Task.check_info`), so any dataset opens here and a task that cannot use it says why.
"""

import contextlib
import dataclasses
import fcntl
import json
import os
from pathlib import Path

import numpy as np

from cnnjax.data import subset
from cnnjax.errors import ConfigError, closest

# Per-channel normalisation statistics of the train splits (RGB order).
_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagenet2012": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "digits": ((0.3052,), (0.3732,)),
    "digits_scenes": ((0.0691,), (0.2007,)),
}


@dataclasses.dataclass(frozen=True)
class FeatureInfo:
    """One stored feature: shape (None = varying), numpy dtype name, and for class labels
    the class count and names."""

    shape: tuple
    dtype: str
    num_classes: int | None = None
    names: tuple[str, ...] | None = None


@dataclasses.dataclass(frozen=True)
class DataInfo:
    """What a dataset holds. `features` maps flattened stored keys ('image', 'label',
    'objects/bbox', ...) to their FeatureInfo; `metadata` is the builder's (class names of
    boxes and masks, ignore index, ...). Written into every workdir (`dataset_info.json`)
    so that a trained run can be loaded without the dataset on disk."""

    name: str
    num_train: int
    num_eval: int
    features: dict
    mean: tuple[float, ...]
    std: tuple[float, ...]
    metadata: dict = dataclasses.field(default_factory=dict)

    @property
    def image_shape(self) -> tuple | None:
        """(H, W, C) of stored images (None dims: varying size), or None without images."""
        f = self.features.get("image")
        return None if f is None else tuple(f.shape)

    @property
    def num_classes(self) -> int | None:
        """The class count of the `label` feature (None if there is none)."""
        f = self.features.get("label")
        return None if f is None else f.num_classes

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "DataInfo":
        d = json.loads(text)
        feats = {
            k: FeatureInfo(
                shape=tuple(v["shape"]),
                dtype=v["dtype"],
                num_classes=v.get("num_classes"),
                names=tuple(v["names"]) if v.get("names") is not None else None,
            )
            for k, v in d["features"].items()
        }
        return cls(
            name=d["name"],
            num_train=d["num_train"],
            num_eval=d["num_eval"],
            features=feats,
            mean=tuple(d["mean"]),
            std=tuple(d["std"]),
            metadata=d.get("metadata", {}),
        )

    @classmethod
    def synthetic(cls, image_shape=(32, 32, 3), num_classes: int | None = 10, **extra):
        """An in-memory description (tests, benchmarks): `image` uint8 of `image_shape`,
        `label` with `num_classes` classes (none if None), `extra` FeatureInfos."""
        feats = {"image": FeatureInfo(tuple(image_shape), "uint8")}
        if num_classes is not None:
            names = tuple(str(i) for i in range(num_classes))
            feats["label"] = FeatureInfo((), "int64", num_classes, names)
        feats.update(extra)
        c = image_shape[-1]
        return cls("synthetic", 0, 0, feats, (0.5,) * c, (0.25,) * c)


def resolve_data_dir(data_dir: str) -> str:
    if data_dir:
        return os.path.expanduser(data_dir)
    env = os.environ.get("CNNJAX_DATA_DIR")
    return env or os.path.expanduser("~/.cache/cnnjax/tensorflow_datasets")


def _embedded():
    from cnnjax.data.digits import Digits
    from cnnjax.data.scenes import DigitsScenes

    return {"digits": Digits, "digits_scenes": DigitsScenes}


def embedded_names() -> list[str]:
    """The datasets that ship with cnnjax (built on first use, no download)."""
    return sorted(_embedded())


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
            f"unknown dataset '{name}'.{closest(name, choices)} Use an embedded dataset "
            f"({', '.join(sorted(embedded))}) or a tensorflow-datasets catalogue name (e.g. "
            "cifar10, cifar100, imagenet2012)."
        )
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as e:  # tfds re-raises a builder's import errors as RuntimeError
        if "No module named 'tensorflow'" not in str(e):
            raise
        raise ConfigError(
            f"tensorflow-datasets' builder for '{name}' needs TensorFlow to describe its "
            "features (e.g. coco's): `pip install tensorflow` into this environment"
        ) from e
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
    # split info can be absent (e.g. tfds mock data); 'train+validation' and 'train[:10%]'
    # name their parts
    parts = [p.split("[")[0] for p in split.split("+")]
    if known and any(p not in known for p in parts):
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


def open_source(data_cfg, split: str):
    """-> the random-access source of one split of the config's dataset."""
    return _source(_builder(data_cfg.name, resolve_data_dir(data_cfg.data_dir)), split)


def open_sources(data_cfg):
    """-> (train_source, eval_source, DataInfo) for config group `data`."""
    builder = _builder(data_cfg.name, resolve_data_dir(data_cfg.data_dir))
    train = _source(builder, data_cfg.train_split)
    evals = _source(builder, data_cfg.eval_split)
    classes = tuple(data_cfg.get("classes", ()) or ())
    if classes:
        label = dict(_flatten(builder.info.features)).get("label")
        classes = subset.check_classes(classes, label and label.num_classes, data_cfg.name)
        train = subset.select_classes(train, classes, data_cfg.train_split)
        evals = subset.select_classes(evals, classes, data_cfg.eval_split)
    return train, evals, describe(data_cfg.name, builder, len(train), len(evals))


def describe(name: str, builder, num_train: int, num_eval: int) -> DataInfo:
    """DataInfo of a tfds builder's dataset (no records are read)."""
    feats = dict(_flatten(builder.info.features))
    image = feats.get("image")
    if image is not None and len(image.shape) != 3:
        raise ConfigError(f"dataset '{name}' images have shape {image.shape}; expected (H, W, C)")
    c = image.shape[-1] if image is not None else 1
    base = name.split("/")[0].split(":")[0]
    mean, std = _STATS.get(base, ((0.5,) * c, (0.25,) * c))
    return DataInfo(
        name=name,
        num_train=num_train,
        num_eval=num_eval,
        features=feats,
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
        metadata=json.loads(json.dumps(dict(builder.info.metadata or {}), default=str)),
    )


def _flatten(feature, prefix: str = ""):
    """Yields (flattened key, FeatureInfo) of a tfds feature tree; a Sequence adds a leading
    None dim to what it holds."""
    import tensorflow_datasets as tfds

    if isinstance(feature, tfds.features.FeaturesDict):
        for key in feature.keys():  # noqa: SIM118 (a tfds FeaturesDict, not a dict)
            yield from _flatten(feature[key], f"{prefix}{key}/")
    elif isinstance(feature, tfds.features.Sequence):
        for key, inner in _flatten(feature.feature, prefix):
            yield key, dataclasses.replace(inner, shape=(None, *inner.shape))
    else:
        names = getattr(feature, "names", None)
        yield (
            prefix.rstrip("/"),
            FeatureInfo(
                shape=tuple(feature.shape),
                dtype=np.dtype(feature.np_dtype).name,
                num_classes=getattr(feature, "num_classes", None),
                names=tuple(names) if names else None,
            ),
        )
