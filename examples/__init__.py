"""Examples of calling adrank, and the Criteo row reader they, the tests and perf/ share (criteo.py)."""
