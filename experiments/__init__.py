"""Paper reproductions: ``python -m experiments <name> [--full] [--out DIR] [--seed N]``.

Run from the repository root; this package is deliberately not installed into
site-packages. ``python -m experiments list`` prints every experiment.
"""
