-- token_events is sorted org first (per-org reads are contiguous); a slice of time across
-- ALL orgs then touches at least one granule per org and part. The report builder reads raw
-- events only for such slices (the partial hours at the edges of a range, top sessions), so
-- this projection keeps their columns sorted by hour as well: measured on 100M events, a
-- 40-minute slice read 33k rows instead of 488k (21 ms instead of 130 ms). It costs the
-- projection's storage and write on every insert (see clickhouse/README.md).
ALTER TABLE ${database}.token_events ${on_cluster}
ADD PROJECTION IF NOT EXISTS by_hour
(
    SELECT event_time, org_id, team_id, user_id, project_id, provider, model, client,
        task_type, status, session_id, turn, input_tokens, cache_read_tokens,
        cache_write_5m_tokens, cache_write_1h_tokens, output_tokens, reasoning_tokens,
        cost_nanos, cost_source
    -- the hour first: a time slice is one contiguous range of every part
    ORDER BY toStartOfHour(event_time)
);
