"""Flow matching on padded token sets: the linear path and its loss (``path``), ODE samplers (``solvers``)."""

from sciDiT.flow.path import (
    TIME_SCHEDULES,
    VelocityModel,
    flow_matching_loss,
    interpolate,
    masked_mse,
    sample_noise,
    sample_time,
    target_velocity,
    x1_from_velocity,
)
from sciDiT.flow.solvers import (
    SOLVERS,
    SelfConditioning,
    VelocityFn,
    euler,
    guided_velocity,
    heun,
    integrate,
    midpoint,
    model_velocity,
    network_evaluations,
    sample,
)

__all__ = [
    "SOLVERS",
    "TIME_SCHEDULES",
    "SelfConditioning",
    "VelocityFn",
    "VelocityModel",
    "euler",
    "flow_matching_loss",
    "guided_velocity",
    "heun",
    "integrate",
    "interpolate",
    "masked_mse",
    "midpoint",
    "model_velocity",
    "network_evaluations",
    "sample",
    "sample_noise",
    "sample_time",
    "target_velocity",
    "x1_from_velocity",
]
