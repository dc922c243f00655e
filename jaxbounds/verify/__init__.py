"""Verification: interval bound propagation through any JAX function, CROWN, IBP tightness
and certified training, local Lipschitz constants, and LipSDP.

The public functions are re-exported here on first use, e.g.
``from jaxbounds.verify import interval_bounds``.
"""

import importlib

# public name -> defining module
_EXPORTS = {
    "interval_bounds": "ibp",
    "crown_bounds": "crown",
    "ibp_tightness": "tightness",
    "local_lipschitz_upper": "local_lipschitz",
    "local_lipschitz_lower": "local_lipschitz",
    "lipsdp_bound": "lipsdp",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        module = importlib.import_module(f"jaxbounds.verify.{_EXPORTS[name]}")
        return getattr(module, name)
    raise AttributeError(f"module 'jaxbounds.verify' has no attribute {name!r}")
