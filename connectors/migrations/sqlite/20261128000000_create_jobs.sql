-- The job store: one row per job, its status, its last failure and its transcript.
--
-- Written in SQL that Postgres and MySQL also accept, so their migrations
-- (migrations/postgres, migrations/mysql) can start as copies. Dialect notes:
-- * transcript_json: Postgres JSONB; MySQL LONGTEXT (TEXT stops at 64 KiB).
-- * audio_seconds: DOUBLE PRECISION works everywhere (SQLite gives it REAL affinity).
-- * Timestamps are unix seconds (BIGINT): no time-zone or DATETIME differences.
-- * Keyed columns are VARCHAR(n): MySQL cannot index an unbounded TEXT.
CREATE TABLE jobs (
    id                  VARCHAR(128) NOT NULL PRIMARY KEY,
    tenant              VARCHAR(128) NOT NULL,
    content_hash        VARCHAR(128) NOT NULL,
    source              TEXT         NOT NULL,
    patient_reference   TEXT,
    encounter_reference TEXT,
    correlation_id      VARCHAR(128) NOT NULL,
    status              VARCHAR(16)  NOT NULL
        CHECK (status IN ('queued', 'processing', 'completed', 'failed', 'dead_lettered')),
    attempts            INTEGER      NOT NULL DEFAULT 0,
    error_stage         VARCHAR(16),
    error_class         VARCHAR(32),
    error_reason        TEXT,
    transcript_json     TEXT,
    audio_seconds       DOUBLE PRECISION,
    received_at         BIGINT       NOT NULL,
    updated_at          BIGINT       NOT NULL,
    completed_at        BIGINT
);

CREATE INDEX jobs_status ON jobs (status);
CREATE INDEX jobs_received_at ON jobs (received_at);
