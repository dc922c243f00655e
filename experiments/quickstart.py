"""Quickstart: a tour of the framework on its embedded default.

It trains a small Lipschitz-certified character transformer on the bundled Shakespeare text
(Muon + the spectral hard cap, :mod:`experiments.lipschitz_transformer`), prints a generated
sample, the validation accuracy and the certified Lipschitz bound, and writes
``runs/quickstart/results.json``. About two minutes on a laptop CPU.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

from experiments import char_model
from experiments import lipschitz_transformer as lt
from experiments._runner import RunConfig, Settings, experiment


@dataclasses.dataclass(frozen=True)
class QuickstartSettings(Settings):
    spec: lt.TrainSpec = lt.TrainSpec(d_model=64, num_blocks=2, num_heads=2, context=64,
                                      batch_size=32, steps=250, optimizer="muon",
                                      constraint="spectral_hard_cap", w_max=1.0,
                                      eval_every=1_000_000)
    sample_chars: int = 200
    temperature: float = 0.3


@experiment("quickstart", "Tour: train a small certified Lipschitz transformer on Shakespeare "
            "characters (Muon + spectral hard cap); sample, accuracy and certified bound.")
def run(config: RunConfig, settings: QuickstartSettings) -> dict[str, Any]:
    """Train and certify the small model; print a sample, the accuracy and the bound."""
    spec = settings.spec
    print("jaxbounds quickstart: a Lipschitz-certified transformer (Newhouse et al. 2025). "
          "The other tours: `python -m experiments list`.")
    print(f"{spec.optimizer} + {spec.constraint} (w_max {spec.w_max}), {spec.steps} steps on "
          f"Shakespeare characters; results go to {config.run_dir}/\n")
    data = char_model.corpus_split(0.1)
    result = lt.train_model(spec, data, config.seed, desc="lipschitz transformer")
    sample = lt.generate(result["model"], result["params"], data[0], "ROMEO:\n",
                         settings.sample_chars, jax.random.PRNGKey(config.seed),
                         settings.temperature)
    print(f"sample:\n{sample}\n")
    print(f"validation accuracy {result['val_accuracy']:.4f}; certified Lipschitz bound "
          f"{result['lipschitz_bound']:.4g} (embeddings -> logits, max-RMS norms)")
    return {k: result[k] for k in ("val_accuracy", "val_loss", "lipschitz_bound", "per_layer",
                                   "train_seconds")} | {"sample": sample}
