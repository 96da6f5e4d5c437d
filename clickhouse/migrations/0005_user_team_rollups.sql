-- Narrower rollups for the common questions: per user (top users) and per team/org (spend per
-- org or team). The wide rollups have nine dimensions, so with many users they hold several
-- rows per user-hour; these hold one. They are fed by views on the wide rollups (cascades: each
-- reads an already aggregated block, so they add little to an insert), and the report builder
-- reads the narrowest rollup that has every column a report groups or filters by.
-- cluster: distributed
CREATE TABLE IF NOT EXISTS ${database}.spend_user_hourly ${on_cluster}
(
    hour                  DateTime('UTC'),
    org_id                LowCardinality(String),
    team_id               LowCardinality(String),
    user_id               LowCardinality(String),
    requests              SimpleAggregateFunction(sum, UInt64),
    input_tokens          SimpleAggregateFunction(sum, UInt64),
    cache_read_tokens     SimpleAggregateFunction(sum, UInt64),
    cache_write_5m_tokens SimpleAggregateFunction(sum, UInt64),
    cache_write_1h_tokens SimpleAggregateFunction(sum, UInt64),
    output_tokens         SimpleAggregateFunction(sum, UInt64),
    reasoning_tokens      SimpleAggregateFunction(sum, UInt64),
    cost_nanos            SimpleAggregateFunction(sum, UInt64),
    unpriced_requests     SimpleAggregateFunction(sum, UInt64),
    sessions              AggregateFunction(uniqExact, String)
)
ENGINE = AggregatingMergeTree
-- Month partitions: retention drops whole months.
PARTITION BY toYYYYMM(hour)
-- The grouping key; org and hour first so that per-org ranges are contiguous.
ORDER BY (org_id, hour, team_id, user_id)
TTL hour + INTERVAL ${retention_days} DAY
SETTINGS non_replicated_deduplication_window = 1000;

CREATE MATERIALIZED VIEW IF NOT EXISTS ${database}.spend_user_hourly_mv ${on_cluster}
TO ${database}.spend_user_hourly
AS SELECT
    hour, org_id, team_id, user_id,
    sum(requests) AS requests,
    sum(input_tokens) AS input_tokens,
    sum(cache_read_tokens) AS cache_read_tokens,
    sum(cache_write_5m_tokens) AS cache_write_5m_tokens,
    sum(cache_write_1h_tokens) AS cache_write_1h_tokens,
    sum(output_tokens) AS output_tokens,
    sum(reasoning_tokens) AS reasoning_tokens,
    sum(cost_nanos) AS cost_nanos,
    sum(unpriced_requests) AS unpriced_requests,
    uniqExactMergeState(sessions) AS sessions
FROM ${database}.spend_hourly
GROUP BY hour, org_id, team_id, user_id;

-- cluster: distributed
CREATE TABLE IF NOT EXISTS ${database}.spend_user_daily ${on_cluster}
(
    day                   Date,
    org_id                LowCardinality(String),
    team_id               LowCardinality(String),
    user_id               LowCardinality(String),
    requests              SimpleAggregateFunction(sum, UInt64),
    input_tokens          SimpleAggregateFunction(sum, UInt64),
    cache_read_tokens     SimpleAggregateFunction(sum, UInt64),
    cache_write_5m_tokens SimpleAggregateFunction(sum, UInt64),
    cache_write_1h_tokens SimpleAggregateFunction(sum, UInt64),
    output_tokens         SimpleAggregateFunction(sum, UInt64),
    reasoning_tokens      SimpleAggregateFunction(sum, UInt64),
    cost_nanos            SimpleAggregateFunction(sum, UInt64),
    unpriced_requests     SimpleAggregateFunction(sum, UInt64),
    sessions              AggregateFunction(uniqExact, String)
)
ENGINE = AggregatingMergeTree
-- Month partitions: retention drops whole months.
PARTITION BY toYYYYMM(day)
-- The grouping key; org and day first so that per-org ranges are contiguous.
ORDER BY (org_id, day, team_id, user_id)
TTL day + INTERVAL ${retention_days} DAY
SETTINGS non_replicated_deduplication_window = 1000;

CREATE MATERIALIZED VIEW IF NOT EXISTS ${database}.spend_user_daily_mv ${on_cluster}
TO ${database}.spend_user_daily
AS SELECT
    day, org_id, team_id, user_id,
    sum(requests) AS requests,
    sum(input_tokens) AS input_tokens,
    sum(cache_read_tokens) AS cache_read_tokens,
    sum(cache_write_5m_tokens) AS cache_write_5m_tokens,
    sum(cache_write_1h_tokens) AS cache_write_1h_tokens,
    sum(output_tokens) AS output_tokens,
    sum(reasoning_tokens) AS reasoning_tokens,
    sum(cost_nanos) AS cost_nanos,
    sum(unpriced_requests) AS unpriced_requests,
    uniqExactMergeState(sessions) AS sessions
FROM ${database}.spend_daily
GROUP BY day, org_id, team_id, user_id;

-- cluster: distributed
CREATE TABLE IF NOT EXISTS ${database}.spend_team_hourly ${on_cluster}
(
    hour                  DateTime('UTC'),
    org_id                LowCardinality(String),
    team_id               LowCardinality(String),
    requests              SimpleAggregateFunction(sum, UInt64),
    input_tokens          SimpleAggregateFunction(sum, UInt64),
    cache_read_tokens     SimpleAggregateFunction(sum, UInt64),
    cache_write_5m_tokens SimpleAggregateFunction(sum, UInt64),
    cache_write_1h_tokens SimpleAggregateFunction(sum, UInt64),
    output_tokens         SimpleAggregateFunction(sum, UInt64),
    reasoning_tokens      SimpleAggregateFunction(sum, UInt64),
    cost_nanos            SimpleAggregateFunction(sum, UInt64),
    unpriced_requests     SimpleAggregateFunction(sum, UInt64),
    sessions              AggregateFunction(uniqExact, String)
)
ENGINE = AggregatingMergeTree
-- Month partitions: retention drops whole months.
PARTITION BY toYYYYMM(hour)
-- The grouping key; org and hour first so that per-org ranges are contiguous.
ORDER BY (org_id, hour, team_id)
TTL hour + INTERVAL ${retention_days} DAY
SETTINGS non_replicated_deduplication_window = 1000;

CREATE MATERIALIZED VIEW IF NOT EXISTS ${database}.spend_team_hourly_mv ${on_cluster}
TO ${database}.spend_team_hourly
AS SELECT
    hour, org_id, team_id,
    sum(requests) AS requests,
    sum(input_tokens) AS input_tokens,
    sum(cache_read_tokens) AS cache_read_tokens,
    sum(cache_write_5m_tokens) AS cache_write_5m_tokens,
    sum(cache_write_1h_tokens) AS cache_write_1h_tokens,
    sum(output_tokens) AS output_tokens,
    sum(reasoning_tokens) AS reasoning_tokens,
    sum(cost_nanos) AS cost_nanos,
    sum(unpriced_requests) AS unpriced_requests,
    uniqExactMergeState(sessions) AS sessions
FROM ${database}.spend_hourly
GROUP BY hour, org_id, team_id;

-- cluster: distributed
CREATE TABLE IF NOT EXISTS ${database}.spend_team_daily ${on_cluster}
(
    day                   Date,
    org_id                LowCardinality(String),
    team_id               LowCardinality(String),
    requests              SimpleAggregateFunction(sum, UInt64),
    input_tokens          SimpleAggregateFunction(sum, UInt64),
    cache_read_tokens     SimpleAggregateFunction(sum, UInt64),
    cache_write_5m_tokens SimpleAggregateFunction(sum, UInt64),
    cache_write_1h_tokens SimpleAggregateFunction(sum, UInt64),
    output_tokens         SimpleAggregateFunction(sum, UInt64),
    reasoning_tokens      SimpleAggregateFunction(sum, UInt64),
    cost_nanos            SimpleAggregateFunction(sum, UInt64),
    unpriced_requests     SimpleAggregateFunction(sum, UInt64),
    sessions              AggregateFunction(uniqExact, String)
)
ENGINE = AggregatingMergeTree
-- Month partitions: retention drops whole months.
PARTITION BY toYYYYMM(day)
-- The grouping key; org and day first so that per-org ranges are contiguous.
ORDER BY (org_id, day, team_id)
TTL day + INTERVAL ${retention_days} DAY
SETTINGS non_replicated_deduplication_window = 1000;

CREATE MATERIALIZED VIEW IF NOT EXISTS ${database}.spend_team_daily_mv ${on_cluster}
TO ${database}.spend_team_daily
AS SELECT
    day, org_id, team_id,
    sum(requests) AS requests,
    sum(input_tokens) AS input_tokens,
    sum(cache_read_tokens) AS cache_read_tokens,
    sum(cache_write_5m_tokens) AS cache_write_5m_tokens,
    sum(cache_write_1h_tokens) AS cache_write_1h_tokens,
    sum(output_tokens) AS output_tokens,
    sum(reasoning_tokens) AS reasoning_tokens,
    sum(cost_nanos) AS cost_nanos,
    sum(unpriced_requests) AS unpriced_requests,
    uniqExactMergeState(sessions) AS sessions
FROM ${database}.spend_daily
GROUP BY day, org_id, team_id;
