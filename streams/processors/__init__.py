"""Pure stream-processing logic (no Kafka, no faust): windows, budgets, alerts, detectors.

The faust app in ``streams/worker/`` only moves bytes between topics, tables and these
functions, so everything here is unit-tested without services.
"""
