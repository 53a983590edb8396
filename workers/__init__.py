"""privedge: workers."""
