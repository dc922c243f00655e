"""Sound calculators for the theoretical bounds of recent papers: pure, jit-compiled,
vmappable, float64-capable functions. One module per family."""
