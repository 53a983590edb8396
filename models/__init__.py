"""privedge: models."""
