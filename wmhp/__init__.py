"""The `wmhp` command: one entry point dispatching to bnn, pipeline and analysis."""
