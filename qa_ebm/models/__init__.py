"""Models: the hierarchical VAE and its latent -> text decoders."""
