"""Benchmarks that print a figure (`synthvit bench ...`), and the reference renderers they compare with."""
