"""privedge: models/data."""
