"""qa-ebm: question answering by energy-based reasoning in a continuous latent space."""

__version__ = "0.1.0"
