"""privedge: schemas."""
