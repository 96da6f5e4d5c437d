"""spendstream: real-time AI token spend from Kafka to ClickHouse, with budgets and alerts."""

__version__ = "0.1.0"
