"""privedge: gateway."""
