"""privedge: bench."""
