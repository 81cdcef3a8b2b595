-- The job store on MySQL 8 / MariaDB 10.5+: the SQLite schema (migrations/sqlite)
-- with MySQL types. The store binds the same Rust types on every dialect, so:
-- * attempts and the unix-second timestamps are BIGINT (SQLite's INTEGER is 64-bit);
-- * transcript_json is LONGTEXT (TEXT stops at 64 KiB);
-- * the table is InnoDB (transactions, row locks) in utf8mb4 with a binary
--   collation: ids and statuses compare case-sensitively, as on SQLite and Postgres.
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
    attempts            BIGINT       NOT NULL DEFAULT 0,
    error_stage         VARCHAR(16),
    error_class         VARCHAR(32),
    error_reason        TEXT,
    transcript_json     LONGTEXT,
    audio_seconds       DOUBLE PRECISION,
    received_at         BIGINT       NOT NULL,
    updated_at          BIGINT       NOT NULL,
    completed_at        BIGINT,
    INDEX jobs_status (status),
    INDEX jobs_received_at (received_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
