-- Budgets and budget alerts, loaded from their Kafka topics by the sink (streams/sink/records.py),
-- shaped like schemas/budget.avsc and schemas/budget_alert.avsc (v1). Nullable strings of the
-- schemas are stored as ''; `limit` is `limit_value` (a keyword otherwise).

-- The compacted budgets topic: one row per message; the highest Kafka offset of a budget_id
-- wins and a tombstone (deleted = 1) removes it. Read with FINAL.
-- cluster: distributed by cityHash64(budget_id)
CREATE TABLE IF NOT EXISTS ${database}.budgets ${on_cluster}
(
    budget_id        String,
    description      String,
    org_id           LowCardinality(String),
    team_id          LowCardinality(String),
    user_id          LowCardinality(String),
    project_id       LowCardinality(String),
    model            LowCardinality(String),
    client           LowCardinality(String),
    task_type        LowCardinality(String),
    labels           Map(LowCardinality(String), String),
    period           LowCardinality(String),
    timezone         LowCardinality(String),
    rolling_window_s Nullable(Int64),
    limit_value      Int64,
    unit             LowCardinality(String),
    thresholds_pct   Array(Int32),
    mode             LowCardinality(String),
    forecast         Bool,
    created_at       DateTime64(3, 'UTC'),
    updated_at       DateTime64(3, 'UTC'),
    kafka_offset     UInt64 COMMENT 'version: the latest message of a budget wins',
    deleted          UInt8,
    ingested_at      DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(kafka_offset, deleted)
-- The identity of a budget: rows of the same budget_id replace each other.
ORDER BY budget_id
SETTINGS non_replicated_deduplication_window = 1000;

-- Breach alerts; alert_id is deterministic (the same alert raised again has the same id), so
-- replays replace rather than add. Read with FINAL for exact counts.
-- cluster: distributed by cityHash64(alert_id)
CREATE TABLE IF NOT EXISTS ${database}.budget_alerts ${on_cluster}
(
    alert_id            String,
    kind                LowCardinality(String),
    detected_at         DateTime64(3, 'UTC'),
    severity            LowCardinality(String),
    message             String,
    budget_id           String,
    org_id              LowCardinality(String),
    team_id             LowCardinality(String),
    user_id             LowCardinality(String),
    scope               Map(LowCardinality(String), String),
    period              LowCardinality(String),
    period_start        Nullable(DateTime64(3, 'UTC')),
    period_end          Nullable(DateTime64(3, 'UTC')),
    timezone            LowCardinality(String),
    unit                LowCardinality(String),
    spent               Int64,
    limit_value         Nullable(Int64),
    threshold_pct       Nullable(Int32),
    percent             Nullable(Float64),
    projected           Nullable(Int64),
    projected_breach_at Nullable(DateTime64(3, 'UTC')),
    mode                LowCardinality(String),
    event_id            String,
    event_time          Nullable(DateTime64(3, 'UTC')),
    session_id          String,
    details             Map(LowCardinality(String), String),
    kafka_partition     UInt32,
    kafka_offset        UInt64,
    ingested_at         DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
-- Month of detection: alerts are listed by recent period and dropped with retention.
PARTITION BY toYYYYMM(detected_at)
-- Org first (alerts are read per org), then the alert identity that replays replace.
ORDER BY (org_id, alert_id)
TTL toDateTime(detected_at) + INTERVAL ${retention_days} DAY
SETTINGS non_replicated_deduplication_window = 1000;
