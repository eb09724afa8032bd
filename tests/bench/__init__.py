"""llmserve's Python benchmarks (docs/benchmarks.md has their figures). Run from the repository
root with `tests/` on the path, the test virtual environment's Python:

    PYTHONPATH=tests ~/.cache/llmserve/venv/bin/python -m bench.server --seconds 8
    PYTHONPATH=tests ~/.cache/llmserve/venv/bin/python -m bench.router
"""
