"""The one place in ``verify`` that depends on how a jax version represents jaxpr equations.

The interpreters (``ibp``, ``crown``, ``interval_rules``) read equations only through
these functions: evaluating an equation, opening call, ``cond`` and ``scan`` bodies, and
telling literals and dropped outputs apart.
"""

from __future__ import annotations

import jax
import jax.extend


def bind_equation(eqn, values) -> list:
    """Evaluate the equation ``eqn`` on concrete (or traced) ``values``: a list of outputs.

    ``Primitive.get_bind_params`` returns ``(subfuns, params)`` before jax 0.7 and the
    params alone since.
    """
    bind_params = eqn.primitive.get_bind_params(eqn.params)
    subfuns = []
    if isinstance(bind_params, tuple):  # jax < 0.7: (subfuns, params)
        subfuns, bind_params = bind_params
    outs = eqn.primitive.bind(*subfuns, *values, **bind_params)
    return list(outs) if eqn.primitive.multiple_results else [outs]


def open_jaxpr(jaxpr_like):
    """``(jaxpr, consts)`` of a ClosedJaxpr, or of an open Jaxpr (no consts)."""
    if hasattr(jaxpr_like, "consts"):
        return jaxpr_like.jaxpr, list(jaxpr_like.consts)
    return jaxpr_like, []


def call_body(params):
    """``(jaxpr, consts)`` of the body of a call-like equation (``jit``/``pjit``,
    ``closed_call``, ``remat``, ``custom_jvp_call``, ...), or ``None`` if it has none.

    The body sits under ``jaxpr``, ``call_jaxpr`` or ``fun_jaxpr`` depending on the primitive
    and the jax version.
    """
    inner = params.get("jaxpr") or params.get("call_jaxpr") or params.get("fun_jaxpr")
    return None if inner is None else open_jaxpr(inner)


def scan_params(params):
    """``(body jaxpr, body consts, num_consts, num_carry, length, reverse)`` of a ``scan``.

    Up to jax 0.11 the counts are the params ``num_consts`` and ``num_carry``. From jax 0.12
    the param ``ft_in`` is a flat tree of three groups, ``(consts, carry, xs)``, with one leaf
    per operand.
    """
    jaxpr, consts = open_jaxpr(params["jaxpr"])
    if "num_consts" in params:
        num_consts, num_carry = params["num_consts"], params["num_carry"]
    elif "ft_in" in params and hasattr(params["ft_in"], "unpack"):
        groups = params["ft_in"]
        counts = [len(group.vals) for group in groups.unpack()]
        num_consts, num_carry = counts[0], counts[1]
        if len(counts) != 3 or sum(counts) != len(jaxpr.invars):
            raise NotImplementedError(
                f"scan with ft_in={groups!r} does not match its body's "
                f"{len(jaxpr.invars)} inputs: this jax version's scan is not supported.")
    else:
        raise NotImplementedError(
            f"scan params {sorted(params)} carry neither num_consts/num_carry nor ft_in: "
            f"jax {jax.__version__} is not supported by the interval interpreter.")
    return jaxpr, consts, num_consts, num_carry, params["length"], params["reverse"]


def is_literal(var) -> bool:
    """True for a literal operand of a jaxpr equation (its value is ``var.val``)."""
    return isinstance(var, jax.extend.core.Literal)


def is_dropvar(var) -> bool:
    """True for an output variable that nothing reads (``_`` in a printed jaxpr)."""
    return isinstance(var, jax.extend.core.DropVar)
