-- A job's generation: set when its row is created, so a job deleted (or
-- purged) and submitted again is told apart from its earlier record, while
-- every redelivery of one record keeps it. The audit trail keys its events by
-- it (one event per occurrence, none twice on a replay). Rows from before this
-- column share generation 0.
ALTER TABLE jobs ADD COLUMN generation BIGINT NOT NULL DEFAULT 0;
