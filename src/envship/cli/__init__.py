"""The command line: a thin layer that turns library results into text or JSON."""
