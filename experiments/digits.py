"""The digits pipeline of the experiments: scikit-learn's bundled digits (1797 8×8 images,
10 classes, no download) with pixels scaled to [0, 1], a fixed stratified split, a ReLU MLP
in ``flax.linen``, its cross-entropy, epoch-wise index streams and the accuracy."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class Digits:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    @property
    def num_classes(self) -> int:
        return int(self.y_train.max()) + 1


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """(x float32 [1797, 64] in [0, 1], y int32 [1797])."""
    from sklearn.datasets import load_digits as sklearn_digits

    x, y = sklearn_digits(return_X_y=True)
    return (x / 16.0).astype(np.float32), y.astype(np.int32)


def stratified_split(test_fraction: float, seed: int) -> Digits:
    """The digits with one fixed stratified train/test split."""
    from sklearn.model_selection import train_test_split

    x, y = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=test_fraction, stratify=y, random_state=seed)
    return Digits(x_train, y_train, x_test, y_test)


class MLP(nn.Module):
    """``depth`` ReLU layers of ``width``, then the ``classes`` logits."""

    width: int
    depth: int
    classes: int = 10

    @nn.compact
    def __call__(self, x):
        for _ in range(self.depth):
            x = nn.relu(nn.Dense(self.width)(x))
        return nn.Dense(self.classes)(x)


def cross_entropy(logits, labels):
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1))


def index_stream(rng: np.random.Generator, subset, steps: int, batch_size: int) -> np.ndarray:
    """``[steps, batch_size]`` indices: epochs over ``subset`` (an index array, or n for all
    of ``range(n)``), each in a fresh random order."""
    n = subset if isinstance(subset, int) else len(subset)
    need = steps * batch_size
    stream = np.concatenate([rng.permutation(subset) for _ in range(-(-need // n))])
    return stream[:need].reshape(steps, batch_size).astype(np.int32)


def accuracy(model, params, x, y) -> float:
    return float(jnp.mean(jnp.argmax(model.apply(params, x), -1) == y))
