"""The math of each bound, one module per diffusion process, kept apart from models and training loops:
forward corruption, exact posteriors, the continuous-time NELBO and its per-position integrand, and the
one-step reverse updates a sampler is built from. :mod:`.uniform` is uniform-state diffusion (Duo, Sahoo
et al., ICML 2025) and :mod:`.relaxation` its Gaussian relaxation and training curriculum.
"""
