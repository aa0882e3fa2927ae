# Copyright 2026 The gradvar-optax Authors.
# SPDX-License-Identifier: Apache-2.0
"""gradvar_optax: a learning-rate scale set from the variability of the gradients.

``gradvar`` is the seed's rule (the variability of the gradient norm); ``gns`` sets the scale
from the gradient noise scale; ``reduce_on_stationarity`` drops it by a factor when a
statistical test finds the iterates stationary.
"""

from gradvar_optax._gns import GNSState
from gradvar_optax._gns import gns
from gradvar_optax._gradvar import GradVarState
from gradvar_optax._gradvar import gradvar
from gradvar_optax._gradvar import scale_by_gradvar
from gradvar_optax._groups import GroupedGrads
from gradvar_optax._groups import grouped_grad
from gradvar_optax._groups import microbatch_grad
from gradvar_optax._readout import lr_scale
from gradvar_optax._readout import noise_scale
from gradvar_optax._readout import noise_to_signal
from gradvar_optax._readout import variability
from gradvar_optax._stationarity import StationarityState
from gradvar_optax._stationarity import reduce_on_stationarity
from gradvar_optax._stationarity_readout import StationarityTest
from gradvar_optax._stationarity_readout import stationarity_drops
from gradvar_optax._stationarity_readout import stationarity_test

__version__ = "0.4.0"

__all__ = (
    "GNSState",
    "GradVarState",
    "GroupedGrads",
    "gns",
    "gradvar",
    "grouped_grad",
    "lr_scale",
    "microbatch_grad",
    "noise_scale",
    "noise_to_signal",
    "scale_by_gradvar",
    "variability",
    # reduce_on_stationarity
    "StationarityState",
    "StationarityTest",
    "reduce_on_stationarity",
    "stationarity_drops",
    "stationarity_test",
)
