-- Hourly totals per org, team, user, project, provider, model, client, task_type and status:
-- what every report reads for whole hours. Fed by a view on token_events, created after both
-- tables and before any data arrives (never POPULATE; `spendstream backfill` rebuilds a range).
-- cluster: distributed
CREATE TABLE IF NOT EXISTS ${database}.spend_hourly ${on_cluster}
(
    hour                  DateTime('UTC'),
    org_id                LowCardinality(String),
    team_id               LowCardinality(String),
    user_id               LowCardinality(String),
    project_id            LowCardinality(String),
    provider              LowCardinality(String),
    model                 LowCardinality(String),
    client                LowCardinality(String),
    task_type             LowCardinality(String),
    status                LowCardinality(String),
    requests              SimpleAggregateFunction(sum, UInt64),
    input_tokens          SimpleAggregateFunction(sum, UInt64),
    cache_read_tokens     SimpleAggregateFunction(sum, UInt64),
    cache_write_5m_tokens SimpleAggregateFunction(sum, UInt64),
    cache_write_1h_tokens SimpleAggregateFunction(sum, UInt64),
    output_tokens         SimpleAggregateFunction(sum, UInt64),
    reasoning_tokens      SimpleAggregateFunction(sum, UInt64),
    cost_nanos            SimpleAggregateFunction(sum, UInt64),
    unpriced_requests     SimpleAggregateFunction(sum, UInt64),
    sessions              AggregateFunction(uniqExact, String) COMMENT 'merge: uniqExactMerge'
)
ENGINE = AggregatingMergeTree
-- Month partitions: retention drops whole months; month-to-date reads touch one.
PARTITION BY toYYYYMM(hour)
-- The grouping key itself (AggregatingMergeTree merges rows with equal keys); org then hour
-- first, as in token_events, so that per-org ranges are contiguous.
ORDER BY (org_id, hour, team_id, user_id, project_id, provider, model, client, task_type, status)
TTL hour + INTERVAL ${retention_days} DAY
-- Views' targets need their own window: a deduplicated retry of the source insert still
-- reaches the view, and only this window drops it here.
SETTINGS non_replicated_deduplication_window = 1000;

CREATE MATERIALIZED VIEW IF NOT EXISTS ${database}.spend_hourly_mv ${on_cluster}
TO ${database}.spend_hourly
AS SELECT
    toStartOfHour(event_time) AS hour,
    org_id, team_id, user_id, project_id, provider, model, client, task_type, status,
    count() AS requests,
    sum(input_tokens) AS input_tokens,
    sum(cache_read_tokens) AS cache_read_tokens,
    sum(cache_write_5m_tokens) AS cache_write_5m_tokens,
    sum(cache_write_1h_tokens) AS cache_write_1h_tokens,
    sum(output_tokens) AS output_tokens,
    sum(reasoning_tokens) AS reasoning_tokens,
    sum(cost_nanos) AS cost_nanos,
    countIf(cost_source = 'unpriced') AS unpriced_requests,
    uniqExactStateIf(session_id, session_id != '') AS sessions
FROM ${database}.token_events
GROUP BY hour, org_id, team_id, user_id, project_id, provider, model, client, task_type, status;
