"""The ClickHouse sink: Kafka token events into ``token_events`` (and its rollups) exactly once.

See ``clickhouse/README.md`` for the design; ``spendstream sink`` runs it.
"""
