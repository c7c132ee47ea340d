"""`make bench`: performance measured against this machine's ceilings, in the same run.

Not a test: it asserts nothing about speed; it prints figures and ratios and writes them as JSON
under bench/results/.
"""
