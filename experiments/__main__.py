"""Command line: `python -m experiments list` or `python -m experiments <name> [flags]`."""

from __future__ import annotations

import argparse
import importlib
import pathlib
import sys

from experiments._runner import RunConfig

# name -> (module, one-line description). Each module defines ``run(config) -> dict``.
EXPERIMENTS: dict[str, tuple[str, str]] = {
    "quickstart": (
        "experiments.quickstart",
        "Tour of the framework on its embedded default (for now: the DoRA experiment).",
    ),
    "dora": (
        "experiments.dora",
        "DoRA: pretrain a char-level model on Shakespeare, adapt to a held-out play; "
        "frozen base stays bit-identical; factored-norm memory table.",
    ),
    "generalization_measures": (
        "experiments.generalization_measures",
        "Jiang et al. measures on a 2^6 grid of digits MLPs: Kendall tau, granulated Psi, "
        "PAC-Bayes tightness gaps.",
    ),
    "data_diet": (
        "experiments.data_diet",
        "Data Diet: EL2N-pruned vs random subsets of digits, accuracy vs fraction kept.",
    ),
    "limit": (
        "experiments.limit",
        "LIMIT: critical n per embedding dimension d by free-embedding optimisation, vs the fit.",
    ),
    "sensitivity_sampling": (
        "experiments.sensitivity_sampling",
        "lp subspace embeddings: distortion vs sample size for uniform, leverage, root-leverage, "
        "Lewis and sensitivity sampling; lp regression on the sample.",
    ),
    "weighted_least_squares": (
        "experiments.weighted_least_squares",
        "Optimal weighted least squares on Legendre bases: i.i.d. Christoffel, DPP, volume and "
        "repeated-DPP sampling; L2 error and stability vs n/m.",
    ),
    "svd_clustering": (
        "experiments.svd_clustering",
        "Concatenated-matrix SVD compression: greedy clustering with Weyl, residual, approximate "
        "and certified projection bounds; compression ratio and true error.",
    ),
    "ldp_regression": (
        "experiments.ldp_regression",
        "Sparse linear regression under local differential privacy: error vs n and eps beside "
        "the upper and lower bound rates.",
    ),
    "nalaformer": (
        "experiments.nalaformer",
        "NaLaFormer: char-level LMs on Shakespeare with causal norm-aware linear attention vs "
        "softmax; validation loss and bits per character.",
    ),
    "hyperattention": (
        "experiments.hyperattention",
        "HyperAttention: train with exact attention, patch the last l layers with "
        "HyperAttention; validation perplexity vs l.",
    ),
    "lipschitz_transformer": (
        "experiments.lipschitz_transformer",
        "Lipschitz-constrained char transformer on Shakespeare (Muon + spectral caps): "
        "accuracy vs certified Lipschitz bound per constraint method.",
    ),
    "certified_training": (
        "experiments.certified_training",
        "Certified training on digits: standard vs IBP (vs CROWN-IBP); verified accuracy, IBP "
        "tightness, naive/local/LipSDP Lipschitz bounds.",
    ),
}


def print_list(stream=None) -> None:
    stream = sys.stdout if stream is None else stream
    width = max(map(len, EXPERIMENTS))
    for name, (_, description) in EXPERIMENTS.items():
        print(f"{name.ljust(width)}  {description}", file=stream)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m experiments", description=__doc__)
    parser.add_argument("name", help="an experiment name, or 'list'")
    parser.add_argument("--full", action="store_true", help="paper-sized run (meant for a GPU)")
    parser.add_argument("--out", default="runs", help="output folder (default: runs)")
    parser.add_argument("--seed", type=int, default=0, help="PRNG seed (default: 0)")
    args = parser.parse_args(argv)
    if args.name == "list":
        print_list()
        return 0
    if args.name not in EXPERIMENTS:
        print(f"unknown experiment {args.name!r}; the experiments are:", file=sys.stderr)
        print_list(sys.stderr)
        return 2
    module = importlib.import_module(EXPERIMENTS[args.name][0])
    config = RunConfig(name=args.name, full=args.full, out_dir=pathlib.Path(args.out),
                       seed=args.seed)
    module.run(config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
