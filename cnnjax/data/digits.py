"""The embedded real default: scikit-learn's 1,797 handwritten 8x8 digits as a tfds dataset.

Written once, as ArrayRecord, by a tensorflow-datasets builder (Tensor features, so no
TensorFlow is needed) and read back with `tfds.data_source`. The train/test split
(1,438 / 359, stratified by class) is fixed by a seed and identical on every machine.
"""

import numpy as np
import tensorflow_datasets as tfds

TEST_FRACTION = 0.2
SPLIT_SEED = 0


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits -> (images [1797, 8, 8] uint8 in 0..255, labels [1797] int64)."""
    from sklearn.datasets import load_digits as sk_load

    digits = sk_load()
    images = np.clip(np.rint(digits.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    return images, digits.target.astype(np.int64)


def split_indices(labels: np.ndarray) -> dict[str, np.ndarray]:
    """Deterministic stratified split of `labels` [N] int -> {'train': idx, 'test': idx}."""
    rng = np.random.default_rng(SPLIT_SEED)
    train, test = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_test = int(round(len(idx) * TEST_FRACTION))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return {"train": np.sort(np.concatenate(train)), "test": np.sort(np.concatenate(test))}


class Digits(tfds.core.GeneratorBasedBuilder):
    """sklearn.datasets.load_digits: 8x8 grey images (0-16 scaled to 0-255), 10 classes."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Stratified 80/20 split with seed 0."}

    def _info(self):
        return self.dataset_info_from_configs(
            description="scikit-learn's bundled UCI optical handwritten digits (1,797 images).",
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(shape=(8, 8, 1), dtype=np.uint8),
                    "label": tfds.features.ClassLabel(num_classes=10),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://scikit-learn.org/stable/datasets/toy_dataset.html#digits-dataset",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download: the data ships with scikit-learn
        images, labels = load_digits()
        return {
            split: self._generate_examples(images[idx], labels[idx], idx)
            for split, idx in split_indices(labels).items()
        }

    def _generate_examples(self, images, labels, ids):
        for image, label, i in zip(images, labels, ids, strict=True):
            yield int(i), {"image": image[..., None], "label": int(label)}
