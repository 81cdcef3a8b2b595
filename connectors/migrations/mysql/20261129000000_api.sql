-- What the REST API needs (see migrations/sqlite for the notes), with MySQL
-- types: counters and timestamps BIGINT, InnoDB tables in utf8mb4 with a binary
-- collation (keys and ids compare exactly, as on SQLite and Postgres). The
-- primary key of idempotency_keys is (128 + 255) * 4 bytes, within InnoDB's 3072.

ALTER TABLE jobs ADD COLUMN priority BIGINT NOT NULL DEFAULT 0
    CHECK (priority BETWEEN 0 AND 9);

CREATE INDEX jobs_tenant_received ON jobs (tenant, received_at, id);

CREATE TABLE idempotency_keys (
    tenant       VARCHAR(128) NOT NULL,
    idem_key     VARCHAR(255) NOT NULL,
    request_hash VARCHAR(128) NOT NULL,
    job_id       VARCHAR(128) NOT NULL,
    created_at   BIGINT       NOT NULL,
    PRIMARY KEY (tenant, idem_key),
    INDEX idempotency_keys_job (job_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE job_callbacks (
    job_id          VARCHAR(128) NOT NULL PRIMARY KEY,
    url             TEXT         NOT NULL,
    attempts        BIGINT       NOT NULL DEFAULT 0,
    next_attempt_at BIGINT       NOT NULL,
    delivered_at    BIGINT,
    gave_up_at      BIGINT,
    last_error      TEXT,
    INDEX job_callbacks_pending (delivered_at, gave_up_at, next_attempt_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
