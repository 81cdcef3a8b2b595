-- The job store on PostgreSQL: the SQLite schema (migrations/sqlite) with
-- Postgres types. The store binds the same Rust types on every dialect, so:
-- * attempts and the unix-second timestamps are BIGINT (SQLite's INTEGER is 64-bit);
-- * transcript_json is TEXT (unbounded; bound as a string, so not JSONB);
-- * id sorts bytewise (COLLATE "C"), as SQLite's does.
CREATE TABLE jobs (
    id                  VARCHAR(128) COLLATE "C" NOT NULL PRIMARY KEY,
    tenant              VARCHAR(128)     NOT NULL,
    content_hash        VARCHAR(128)     NOT NULL,
    source              TEXT             NOT NULL,
    patient_reference   TEXT,
    encounter_reference TEXT,
    correlation_id      VARCHAR(128)     NOT NULL,
    status              VARCHAR(16)      NOT NULL
        CHECK (status IN ('queued', 'processing', 'completed', 'failed', 'dead_lettered')),
    attempts            BIGINT           NOT NULL DEFAULT 0,
    error_stage         VARCHAR(16),
    error_class         VARCHAR(32),
    error_reason        TEXT,
    transcript_json     TEXT,
    audio_seconds       DOUBLE PRECISION,
    received_at         BIGINT           NOT NULL,
    updated_at          BIGINT           NOT NULL,
    completed_at        BIGINT
);

CREATE INDEX jobs_status ON jobs (status);
CREATE INDEX jobs_received_at ON jobs (received_at);
