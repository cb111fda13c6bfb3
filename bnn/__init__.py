"""wmhp's science: binary layers and models, latent-weight optimizers, Bop, the gradient filter, the exact
hyperparameter mapping between them, flip statistics, datasets and the one training loop.

Knows nothing of Ray or MLflow: ``from bnn.train import train`` works on its own.
"""
