"""One module per experiment of shared/paper.md section 5, each with KEY, NAME, TITLE, CLAIM and analyse()."""

from analysis.experiments import (
    e1_equivalence,
    e2_lr_wd,
    e3_init_scale,
    e4_momentum_gamma,
    e5_alpha_gamma,
    e6_schedules,
    e7_adam,
    e8_optimizers,
    e9_tuning_cost,
)

MODULES = (e1_equivalence, e2_lr_wd, e3_init_scale, e4_momentum_gamma, e5_alpha_gamma, e6_schedules, e7_adam)
TABLE_MODULES = (e8_optimizers, e9_tuning_cost)  # analyse() also takes the tables directory
