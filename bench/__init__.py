"""Benchmarks for Roost, run with ``python -m roost.bench <name>``.

They measure; they never assert on timings, so a slow or noisy machine cannot make anything fail.
Each prints a human-readable table and then, as its last line, one JSON object with every figure,
so runs can be compared by tools without scraping the table.
"""
