-- The sink's start-up check (streams/sink/store.py check_dedup): one row inserted twice under
-- one insert_deduplication_token, as a retry does, must be stored once here AND once in the
-- view's target, as token_events and its rollups must. One row per sink start; a day is kept.
CREATE TABLE IF NOT EXISTS ${database}.sink_dedup_probe ${on_cluster}
(
    probe_id String,
    at       DateTime('UTC') DEFAULT now()
)
ENGINE = MergeTree
-- looked up by probe id only
ORDER BY probe_id
TTL at + INTERVAL 1 DAY
-- the same window as token_events: the retry is dropped here by the token
SETTINGS non_replicated_deduplication_window = 1000;

CREATE TABLE IF NOT EXISTS ${database}.sink_dedup_probe_view ${on_cluster}
(
    probe_id String,
    rows     UInt64,
    at       DateTime('UTC') DEFAULT now()
)
ENGINE = MergeTree
-- looked up by probe id only
ORDER BY probe_id
TTL at + INTERVAL 1 DAY
-- as every rollup's target: its own window drops the retried block the view passes on
SETTINGS non_replicated_deduplication_window = 1000;

CREATE MATERIALIZED VIEW IF NOT EXISTS ${database}.sink_dedup_probe_mv ${on_cluster}
TO ${database}.sink_dedup_probe_view
AS SELECT probe_id, count() AS rows
FROM ${database}.sink_dedup_probe
GROUP BY probe_id;
