"""Shared test helpers: hypothesis strategies for random forests, the
optimiser-side construction of the constrained family, a pre_transform
dataset."""
