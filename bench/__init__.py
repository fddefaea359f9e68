"""traitloop benchmarks (issue #7): `python -m bench [--quick]`. See BENCHMARKS.md."""
