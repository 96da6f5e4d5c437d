"""The load-test harness behind ``spendstream loadtest`` and ``spendstream demo``: traffic,
scenarios, the run, its charts, and the live display (``streams.loadtest.display``).
"""
