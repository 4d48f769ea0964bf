"""The adjoint lives in gradlab/instruments/adjoint.py, shared with `gradlab.watch`; this name
stays for the worker's instruments that import it."""

from gradlab.instruments.adjoint import (
    CHUNK,
    Gates,
    LayerWeights,
    Points,
    _gates,
    _lstm_coef,
    activation_derivative,
    cell_step,
    gates,
    hidden_adjoint,
    input_gradient,
    layer_kind,
    preactivation_grads,
    shifted,
    total_adjoint,
    unrolled,
)

__all__ = [
    "CHUNK",
    "Gates",
    "LayerWeights",
    "Points",
    "_gates",
    "_lstm_coef",
    "activation_derivative",
    "cell_step",
    "gates",
    "hidden_adjoint",
    "input_gradient",
    "layer_kind",
    "preactivation_grads",
    "shifted",
    "total_adjoint",
    "unrolled",
]
