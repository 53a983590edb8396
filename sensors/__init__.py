"""privedge: sensors."""
