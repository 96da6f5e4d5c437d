-- The sink's memory of recent event_ids: before inserting a batch it asks which of the batch's
-- ids are already here, so that an agent's re-send within the horizon is dropped before it
-- reaches token_events or any rollup. Fed by a view, i.e. by the same insert as token_events.
-- cluster: distributed
CREATE TABLE IF NOT EXISTS ${database}.event_ids ${on_cluster}
(
    hour        DateTime('UTC') COMMENT 'toStartOfHour(event_time): a re-send carries the same time',
    event_id    UUID,
    ingested_at DateTime('UTC')
)
ENGINE = MergeTree
-- Day partitions of arrival: the horizon TTL drops whole days, cheaply.
PARTITION BY toYYYYMMDD(ingested_at)
-- A batch's lookup is (hour, event_id) IN (...): the hour prefix confines it to the hours the
-- batch touches instead of every id of the horizon.
ORDER BY (hour, event_id)
TTL ingested_at + INTERVAL ${dedup_horizon_hours} HOUR
SETTINGS non_replicated_deduplication_window = 1000, ttl_only_drop_parts = 1;

CREATE MATERIALIZED VIEW IF NOT EXISTS ${database}.event_ids_mv ${on_cluster}
TO ${database}.event_ids
AS SELECT
    toStartOfHour(event_time) AS hour,
    event_id,
    toDateTime(ingested_at) AS ingested_at
FROM ${database}.token_events;
