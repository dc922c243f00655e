"""Certified training on digits: standard vs IBP vs CROWN-IBP; verified accuracy, IBP
propagation tightness, and naive / local / LipSDP Lipschitz bounds.

``python -m experiments certified_training [--full] [--seed N] [--out DIR]``

Mao, Müller, Fischer, Vechev, "Understanding Certified Training with Interval Bound
Propagation" (ICLR 2024): IBP bounds are loose by the *propagation tightness*
τ = |W_L⋯W_1|ε / (|W_L|⋯|W_1|ε); at initialisation τ shrinks with depth and width, and IBP
training raises it, the more so the wider the network. At our scale:

1. scikit-learn's bundled digits (1797 8×8 images scaled to [0, 1], 10 classes), a fixed
   stratified 70/30 split; a small MLP (64-h-h-10) and a small CNN (two 3×3 convolutions, the
   second with stride 2, a dense layer and the head), pure JAX functions.
2. Each is trained three ways with optax adam: standard cross-entropy; IBP-certified
   (:func:`jaxbounds.verify.certified_training.make_certified_loss`, ε = 0.1, ε ramp after a
   warm-up, κ from 1 to 0.5, specification folded into the last layer); CROWN-IBP (same
   schedule, CROWN-IBP margins mixed with IBP by β from 1 to 0).
3. On the test set: clean accuracy, verified accuracy at ε = 0.1 by IBP (all test points)
   and by CROWN (margin specification, CROWN pre-activation bounds at every layer;
   ``n_crown`` points), both outward-rounded in float64; per-layer and network-level
   tightness at initialisation and after training.
4. Lipschitz bounds of the logits: naive (product of layer norms; ℓ∞ and ℓ2), local ℓ∞ upper
   and attained lower bounds over the ε-box at ``n_local`` test points
   (:mod:`jaxbounds.verify.local_lipschitz`), and the certified LipSDP ℓ2 bound for the MLP
   (:func:`jaxbounds.verify.lipsdp.lipsdp_bound`).
5. Tightness against width (MLP): at initialisation, after standard training and after IBP
   training (the paper's Figure: wider networks reach better tightness with IBP training).

Writes ``results.json``, ``tightness_vs_width.png`` and ``tightness_layers.png`` under
``runs/<name>/``.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments import digits
from experiments._output import figure, format_table, progress
from experiments._runner import RunConfig, Settings, experiment, paper_row
from jaxbounds.verify import local_lipschitz as ll
from jaxbounds.verify.certified_training import (
    CertifiedSchedule,
    make_certified_loss,
    margin_lower_bounds,
    verified_accuracy,
)
from jaxbounds.verify.crown import crown_bounds
from jaxbounds.verify.lipsdp import lipsdp_bound
from jaxbounds.verify.tightness import ibp_tightness, layer_tightness, margin_spec

PAPER = {
    "reference": "Mao et al., ICLR 2024 (arXiv 2306.10426), Figures 5-7 and Table 1",
    "claims": [
        "tightness at initialisation decreases with width and depth",
        "IBP training increases tightness by orders of magnitude vs standard training",
        "after IBP training, wider networks have larger tightness (and better certified acc.)",
    ],
    "dataset": "MNIST / CIFAR-10 with CNN3/CNN7; we use sklearn digits with tiny nets",
}
METHODS = ("standard", "ibp", "crown-ibp")


@dataclasses.dataclass(frozen=True)
class CertifiedSettings(Settings):
    """The defaults run in a few minutes on a 2-core CPU."""

    eps: float = 0.1
    mlp_width: int = 32  # LipSDP (cvxpy + Clarabel) takes ~30 s at 32, minutes at 64
    cnn_channels: tuple[int, int] = (8, 16)
    cnn_dense: int = 64
    steps: int = 800
    warmup_steps: int = 100
    ramp_steps: int = 400
    kappa_final: float = 0.5
    batch_size: int = 64
    learning_rate: float = 2e-3
    methods: tuple[str, ...] = METHODS
    archs: tuple[str, ...] = ("mlp", "cnn")
    crown_ibp_cnn: bool = False  # ~0.2 s per step on CPU: on in --full
    n_crown: int = 100  # test points verified by full CROWN
    n_tight: int = 100  # test points for the tightness
    n_local: int = 100  # test points for the local Lipschitz bounds
    widths: tuple[int, ...] = (16, 32, 64, 128, 256)
    width_steps: int = 400
    test_fraction: float = 0.3
    split_seed: int = 0

    @classmethod
    def full(cls) -> CertifiedSettings:
        return cls(steps=4000, warmup_steps=300, ramp_steps=2000, crown_ibp_cnn=True, mlp_width=64,
                   n_crown=540, n_tight=540,
                   widths=(16, 32, 64, 128, 256, 512, 1024), width_steps=2000)

# ----------------------------------------------------------------------------- models


def _dense_init(key, fan_in, fan_out):
    return {"w": jax.random.normal(key, (fan_in, fan_out)) * math.sqrt(2.0 / fan_in),
            "b": jnp.zeros(fan_out)}


def _conv_init(key, c_in, c_out):
    return {"w": jax.random.normal(key, (3, 3, c_in, c_out)) * math.sqrt(2.0 / (9 * c_in)),
            "b": jnp.zeros(c_out)}


def _conv(p, x, stride):
    y = jax.lax.conv_general_dilated(x, p["w"], (stride, stride), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y + p["b"]


class MLP:
    """64 -> width -> width -> 10; inputs [batch, 64]."""

    def __init__(self, width: int):
        self.width = width
        self.input_shape = (64,)

    def init(self, key):
        k = jax.random.split(key, 3)
        return {"l1": _dense_init(k[0], 64, self.width),
                "l2": _dense_init(k[1], self.width, self.width),
                "head": _dense_init(k[2], self.width, 10)}

    def stages(self, p):
        """Per-layer pre-activations (for one example)."""
        return [lambda v: v @ p["l1"]["w"] + p["l1"]["b"],
                lambda v: jax.nn.relu(v) @ p["l2"]["w"] + p["l2"]["b"],
                lambda v: jax.nn.relu(v) @ p["head"]["w"] + p["head"]["b"]]

    def features(self, p, x):
        return jax.nn.relu(jax.nn.relu(x @ p["l1"]["w"] + p["l1"]["b"]) @ p["l2"]["w"]
                           + p["l2"]["b"])

    def matrices(self, p):
        """The linear layers as [fan_out, fan_in] matrices (bias-free)."""
        return [p["l1"]["w"].T, p["l2"]["w"].T, p["head"]["w"].T]


class CNN:
    """conv3x3(c1) -> relu -> conv3x3/2(c2) -> relu -> dense -> relu -> 10; inputs [b, 8, 8, 1]."""

    def __init__(self, channels=(8, 16), dense=64):
        self.channels, self.dense = channels, dense
        self.input_shape = (8, 8, 1)

    def init(self, key):
        k = jax.random.split(key, 4)
        c1, c2 = self.channels
        return {"c1": _conv_init(k[0], 1, c1), "c2": _conv_init(k[1], c1, c2),
                "d": _dense_init(k[2], 16 * c2, self.dense),
                "head": _dense_init(k[3], self.dense, 10)}

    def stages(self, p):
        def s1(v):
            return _conv(p["c1"], v[None], 1)[0]

        def s2(v):
            return _conv(p["c2"], jax.nn.relu(v)[None], 2)[0]

        def s3(v):
            return jax.nn.relu(v).reshape(-1) @ p["d"]["w"] + p["d"]["b"]

        def s4(v):
            return jax.nn.relu(v) @ p["head"]["w"] + p["head"]["b"]

        return [s1, s2, s3, s4]

    def features(self, p, x):
        h = jax.nn.relu(_conv(p["c1"], x, 1))
        h = jax.nn.relu(_conv(p["c2"], h, 2))
        return jax.nn.relu(h.reshape(h.shape[0], -1) @ p["d"]["w"] + p["d"]["b"])

    def matrices(self, p):
        c1, c2 = self.channels
        conv1 = jax.jacrev(lambda v: _conv({"w": p["c1"]["w"], "b": 0.0}, v[None], 1)[0])
        conv2 = jax.jacrev(lambda v: _conv({"w": p["c2"]["w"], "b": 0.0}, v[None], 2)[0])
        m1 = conv1(jnp.zeros((8, 8, 1))).reshape(64 * c1, 64)
        m2 = conv2(jnp.zeros((8, 8, c1))).reshape(16 * c2, 64 * c1)
        return [m1, m2, p["d"]["w"].T, p["head"]["w"].T]


def _head(p):
    return p["head"]["w"], p["head"]["b"]


def _features_batch(model):
    def fn(p, x):
        return model.features(p, x.reshape((x.shape[0], *model.input_shape)))

    return fn


def _logits_batch(model):
    def fn(p, x):
        return _features_batch(model)(p, x) @ p["head"]["w"] + p["head"]["b"]

    return fn


def _logits_single(model, p):
    def fn(v):
        return _logits_batch(model)(p, v[None])[0]

    return fn


# ----------------------------------------------------------------------------- training


def train(model, method: str, s: CertifiedSettings, data, key, steps: int, desc: str):
    x_train, y_train = data
    params = model.init(key)
    tx = optax.adam(s.learning_rate)
    opt_state = tx.init(params)
    if method == "standard":
        def loss(p, x, y, step):
            logits = _logits_batch(model)(p, x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), {}
    else:
        schedule = CertifiedSchedule(eps=s.eps, warmup_steps=s.warmup_steps * steps // s.steps,
                                     ramp_steps=max(1, s.ramp_steps * steps // s.steps),
                                     kappa_final=s.kappa_final)
        loss = make_certified_loss(_features_batch(model), schedule, num_classes=10,
                                   head=_head, method=method)

    @jax.jit
    def step_fn(params, opt_state, x, y, step):
        (value, _), grads = jax.value_and_grad(loss, has_aux=True)(params, x, y, step)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    rng = np.random.default_rng(int(jax.random.randint(key, (), 0, 2**30)))
    n = x_train.shape[0]
    order = rng.permutation(n)
    pos = 0
    for step in progress(range(steps), desc=desc, leave=False):
        if pos + s.batch_size > n:
            order, pos = rng.permutation(n), 0
        idx = order[pos:pos + s.batch_size]
        pos += s.batch_size
        params, opt_state, _ = step_fn(params, opt_state, jnp.asarray(x_train[idx]),
                                       jnp.asarray(y_train[idx]), jnp.asarray(step))
    return params


# ----------------------------------------------------------------------------- evaluation


def _to64(tree):
    return jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), tree)


def evaluate(model, params, s: CertifiedSettings, x_test, y_test) -> dict[str, Any]:
    out: dict[str, Any] = {}
    logits = _logits_batch(model)(params, jnp.asarray(x_test))
    out["clean_acc"] = float(jnp.mean(jnp.argmax(logits, -1) == y_test))
    with jax.enable_x64(True):
        p64, x64, y = _to64(params), jnp.asarray(x_test, jnp.float64), jnp.asarray(y_test)
        margins = jax.jit(lambda p, x, y: margin_lower_bounds(
            _features_batch(model), p, x, y, s.eps, num_classes=10, head=_head,
            outward=True))(p64, x64, y)
        out["ibp_verified_acc"] = float(verified_accuracy(margins, y))
        n = min(s.n_crown, x64.shape[0])

        def crown_one(p, x0, y0):
            lo, hi = jnp.clip(x0 - s.eps, 0, 1), jnp.clip(x0 + s.eps, 0, 1)
            low, _ = crown_bounds(_logits_single(model, p), lo, hi, spec=margin_spec(y0, 10))
            return jnp.all(low > 0)

        ok = jax.jit(jax.vmap(crown_one, in_axes=(None, 0, 0)))(p64, x64[:n], y[:n])
        out["crown_verified_acc"] = float(jnp.mean(ok))
        out["ibp_verified_acc_same_points"] = float(verified_accuracy(margins[:n], y[:n]))
        out["n_crown"] = n
    out["tightness"] = tightness(model, params, s, x_test, y_test)
    return out


def tightness(model, params, s, x_test, y_test) -> dict[str, Any]:
    with jax.enable_x64(True):
        p64 = _to64(params)
        x = jnp.asarray(x_test[: s.n_tight], jnp.float64).reshape((-1, *model.input_shape))
        y = jnp.asarray(y_test[: s.n_tight])
        layers = layer_tightness(model.stages(p64), x, s.eps)
        net = ibp_tightness(lambda v: model.features(p64, v[None])[0], p64["head"]["w"], x, y,
                            s.eps)
        return {"per_layer": np.asarray(layers.mean(0)).tolist(), "network": float(net.mean())}


def lipschitz(model, params, s, x_test, key, is_mlp: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    mats = [np.asarray(m, np.float64) for m in model.matrices(params)]
    out["naive_inf"] = float(np.prod([np.abs(m).sum(1).max() for m in mats]))
    out["naive_2"] = float(np.prod([np.linalg.norm(m, 2) for m in mats]))
    with jax.enable_x64(True):
        p64 = _to64(params)
        n = min(s.n_local, x_test.shape[0])
        xs = jnp.asarray(x_test[:n], jnp.float64).reshape((-1, *model.input_shape))
        if is_mlp:  # the matrices are [fan_out, fan_in]: the torch layout
            fn = ll.ReluMLP(tuple(jnp.asarray(m) for m in mats),
                            (p64["l1"]["b"], p64["l2"]["b"], p64["head"]["b"]), layout="torch")
        else:
            fn = _logits_single(model, p64)
        upper = np.asarray(jax.jit(jax.vmap(
            lambda x0: ll.local_lipschitz_upper(fn, x0, s.eps)))(xs))
        lower = np.asarray(jax.jit(jax.vmap(lambda x0, k: ll.local_lipschitz_lower(
            fn, x0, s.eps, key=k, num_samples=64, num_starts=4, num_steps=10)))(
            xs, jax.random.split(key, n)))
    out.update(local_inf_upper_mean=float(upper.mean()), local_inf_upper_max=float(upper.max()),
               local_inf_lower_mean=float(lower.mean()), local_inf_lower_max=float(lower.max()),
               local_sound_pairs=bool(np.all(lower <= upper)))
    if is_mlp:
        start = time.perf_counter()
        bound, report = lipsdp_bound(mats, activation="relu", layout="torch")
        out.update(lipsdp_2=float(bound), lipsdp_status=str(report.solver_status),
                   lipsdp_seconds=time.perf_counter() - start)
    return out


# ----------------------------------------------------------------------------- plots


def plot(run_dir, width_rows, results):
    with figure(run_dir / "tightness_vs_width.png", figsize=(5, 3.6)) as (_, ax):
        widths = [r["width"] for r in width_rows]
        for key, label in (("init", "initialisation"), ("standard", "standard training"),
                           ("ibp", "IBP training")):
            ax.plot(widths, [r[key] for r in width_rows], "o-", label=label)
        ax.set_xscale("log", base=2)
        ax.set(yscale="log", xlabel="MLP width", ylabel="network tightness τ (mean)",
               title="IBP tightness vs width (digits, ε=0.1)")
        ax.legend()
    archs = [a for a in ("mlp", "cnn") if a in results]
    with figure(run_dir / "tightness_layers.png", 1, len(archs),
                figsize=(4.5 * len(archs), 3.4), squeeze=False) as (_, axes):
        for ax, arch in zip(axes[0], archs, strict=True):
            init = results[arch]["init_tightness"]["per_layer"]
            ax.plot(range(1, len(init) + 1), init, "k--o", label="init")
            for method, value in results[arch]["trained"].items():
                layers = value["tightness"]["per_layer"]
                ax.plot(range(1, len(layers) + 1), layers, "o-", label=method)
            ax.set(yscale="log", xlabel="layer", ylabel="mean τ of the layer",
                   title=arch.upper())
            ax.legend(fontsize=8)


# ----------------------------------------------------------------------------- main


@experiment("certified_training", "Certified training on digits: standard vs IBP (vs CROWN-IBP); "
            "verified accuracy, IBP tightness, naive/local/LipSDP Lipschitz bounds.")
def run(config: RunConfig, settings: CertifiedSettings) -> dict[str, Any]:
    s = settings
    d = digits.stratified_split(s.test_fraction, s.split_seed)
    x_train, x_test, y_train, y_test = d.x_train, d.x_test, d.y_train, d.y_test
    key = jax.random.key(config.seed)
    results: dict[str, Any] = {}
    rows = []
    lip_rows = []
    for arch, model in (("mlp", MLP(s.mlp_width)), ("cnn", CNN(s.cnn_channels, s.cnn_dense))):
        if arch not in s.archs:
            continue
        key, k_init = jax.random.split(key)
        entry: dict[str, Any] = {
            "init_tightness": tightness(model, model.init(k_init), s, x_test, y_test),
            "trained": {},
        }
        for method in s.methods:
            if arch == "cnn" and method == "crown-ibp" and not s.crown_ibp_cnn:
                continue
            t0 = time.perf_counter()
            params = train(model, method, s, (x_train, y_train), k_init, s.steps,
                           f"{arch} {method}")
            train_seconds = time.perf_counter() - t0
            ev = evaluate(model, params, s, x_test, y_test)
            key, k_lip = jax.random.split(key)
            ev["lipschitz"] = lipschitz(model, params, s, x_test, k_lip, arch == "mlp")
            ev["train_seconds"] = train_seconds
            entry["trained"][method] = ev
            lip = ev["lipschitz"]
            rows.append([arch, method, ev["clean_acc"], ev["ibp_verified_acc"],
                         ev["crown_verified_acc"], ev["ibp_verified_acc_same_points"],
                         ev["tightness"]["network"],
                         " ".join(f"{t:.2g}" for t in ev["tightness"]["per_layer"])])
            lip_rows.append([arch, method, lip["naive_inf"],
                             lip.get("local_inf_upper_mean", float("nan")),
                             lip.get("local_inf_lower_mean", float("nan")), lip["naive_2"],
                             lip.get("lipsdp_2", float("nan"))])
        results[arch] = entry

    width_rows = []
    for width in progress(s.widths, desc="width sweep"):
        model = MLP(width)
        key, k_init = jax.random.split(key)
        row = {"width": width,
               "init": tightness(model, model.init(k_init), s, x_test, y_test)["network"]}
        for method in ("standard", "ibp"):
            params = train(model, method, s, (x_train, y_train), k_init, s.width_steps,
                           f"width {width} {method}")
            row[method] = tightness(model, params, s, x_test, y_test)["network"]
            if method == "ibp":
                with jax.enable_x64(True):
                    m = margin_lower_bounds(_features_batch(model), _to64(params),
                                            jnp.asarray(x_test, jnp.float64),
                                            jnp.asarray(y_test), s.eps, num_classes=10,
                                            head=_head, outward=True)
                row["ibp_verified_acc"] = float(verified_accuracy(m, jnp.asarray(y_test)))
        width_rows.append(row)
    results["width_sweep"] = width_rows
    plot(config.run_dir, width_rows, results)
    print(format_table(
        ["arch", "training", "clean", "IBP ver.", "CROWN ver.", "IBP ver. (same pts)",
         "τ net", "τ per layer"], rows))
    print()
    print(format_table(["arch", "training", "naive ℓ∞", "local ℓ∞ (mean)", "lower ℓ∞ (mean)",
                        "naive ℓ2", "LipSDP ℓ2"], lip_rows))
    print()
    print(format_table(["width", "τ init", "τ standard", "τ IBP", "IBP ver. acc"],
                       [[r["width"], r["init"], r["standard"], r["ibp"],
                         r["ibp_verified_acc"]] for r in width_rows]))
    results["paper_vs_ours"] = [
        paper_row(claim, "holds (MNIST / CIFAR-10, CNN3/CNN7)", None) for claim in PAPER["claims"]
    ] + [paper_row("tightness vs width: init / standard / IBP", None, width_rows)]
    return results
