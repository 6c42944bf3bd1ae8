"""The test suite of hsa_geo; it mirrors the package."""
