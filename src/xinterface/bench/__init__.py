"""Benchmarks: what each path costs, next to the C floor. Run with ``xinterface bench``."""
