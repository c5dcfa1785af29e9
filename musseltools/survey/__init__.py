"""Survey answers from per-image counts and the survey's design: the sample sheet (which image is which site,
date, treatment and quadrat), density and mortality by group with intervals, and group comparisons.

Pure functions over tables: :class:`musseltools.runs.run.Run` assembles the tables and calls them.
"""
