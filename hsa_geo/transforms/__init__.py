r"""Builders of nested signals, as PyG transforms."""
