"""Percentiles for the benchmarks' tables."""


def percentile(xs, p):
    """The `p`-th percentile of `xs` (nearest rank below; NaN when empty)."""
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))] if xs else float("nan")


def table_row(*cells):
    """A Markdown table row."""
    return "| " + " | ".join(str(c) for c in cells) + " |"


def ms(seconds, digits):
    """Seconds as milliseconds with `digits` decimals."""
    return f"{seconds * 1e3:.{digits}f}"
