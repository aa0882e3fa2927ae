# Copyright 2026 The gradvar-optax Authors.
# SPDX-License-Identifier: Apache-2.0
"""gradvar_optax: a learning-rate scale set from the variability of the gradients."""

from gradvar_optax._gradvar import GradVarState
from gradvar_optax._gradvar import gradvar
from gradvar_optax._gradvar import scale_by_gradvar
from gradvar_optax._readout import lr_scale
from gradvar_optax._readout import variability

__version__ = "0.1.0"

__all__ = (
    "GradVarState",
    "gradvar",
    "lr_scale",
    "scale_by_gradvar",
    "variability",
)
