"""Paper reproductions and benchmarks, run from the repository root (this package is not
installed into site-packages):

    python -m experiments list
    python -m experiments <name> [--full] [--out DIR] [--seed N] [--<setting> VALUE ...]
    python -m experiments bench <name> [flags]
    python -m experiments gpu-check [--record]

Each experiment registers itself with :func:`experiments._runner.experiment`, each benchmark
with :func:`experiments._runner.bench`.
"""
