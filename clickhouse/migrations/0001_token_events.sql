-- Every token event exactly once, with the cost the sink computed (integer nano-USD).
-- The sink guarantees one row per event_id (see clickhouse/README.md): plain MergeTree, no FINAL.
-- Strings that the contract allows to be null are stored as '' (no Nullable cost); turn is
-- Nullable because 0 is not a turn.
-- cluster: distributed by cityHash64(event_id)
CREATE TABLE IF NOT EXISTS ${database}.token_events ${on_cluster}
(
    event_id              UUID,
    event_time            DateTime64(3, 'UTC'),
    org_id                LowCardinality(String),
    team_id               LowCardinality(String),
    user_id               LowCardinality(String),
    project_id            LowCardinality(String),
    api_key_id            LowCardinality(String),
    session_id            String,
    turn                  Nullable(UInt32),
    client                LowCardinality(String),
    task_type             LowCardinality(String),
    provider              LowCardinality(String),
    model                 LowCardinality(String),
    input_tokens          UInt64,
    cache_read_tokens     UInt64,
    cache_write_5m_tokens UInt64,
    cache_write_1h_tokens UInt64,
    output_tokens         UInt64,
    reasoning_tokens      UInt64,
    cost_nanos            UInt64 COMMENT 'reported by the provider, else priced by the sink',
    cost_source           LowCardinality(String) COMMENT 'reported | catalog | unpriced',
    price_version         LowCardinality(String),
    status                LowCardinality(String),
    labels                Map(LowCardinality(String), String),
    kafka_partition       UInt32 COMMENT 'where the sink read it: audit and replay',
    kafka_offset          UInt64,
    ingested_at           DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = MergeTree
-- Month partitions: the retention TTL drops whole months, and month-to-date reads touch one.
PARTITION BY toYYYYMM(event_time)
-- Org first (every report filters or groups by it, few distinct values), then the hour, so that
-- a time range inside an org is a contiguous slice: the raw edges of rollup queries and the
-- top-sessions scan read only their hours; team and user give locality for per-user reads.
ORDER BY (org_id, toStartOfHour(event_time), team_id, user_id)
TTL toDateTime(event_time) + INTERVAL ${retention_days} DAY
-- The window makes a retried insert with the same insert_deduplication_token a no-op.
SETTINGS non_replicated_deduplication_window = 1000, ttl_only_drop_parts = 1;
