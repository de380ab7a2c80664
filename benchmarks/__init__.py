"""Side-by-side benchmarks of qbench (issue 5); run ``python -m benchmarks.run_all`` from the repo root."""
