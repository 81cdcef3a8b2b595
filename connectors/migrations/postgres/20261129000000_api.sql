-- What the REST API needs (see migrations/sqlite for the notes), with Postgres
-- types: counters and timestamps BIGINT, job ids and keys bytewise (COLLATE "C").

ALTER TABLE jobs ADD COLUMN priority BIGINT NOT NULL DEFAULT 0
    CHECK (priority BETWEEN 0 AND 9);

CREATE INDEX jobs_tenant_received ON jobs (tenant, received_at, id);

CREATE TABLE idempotency_keys (
    tenant       VARCHAR(128)             NOT NULL,
    idem_key     VARCHAR(255) COLLATE "C" NOT NULL,
    request_hash VARCHAR(128)             NOT NULL,
    job_id       VARCHAR(128) COLLATE "C" NOT NULL,
    created_at   BIGINT                   NOT NULL,
    PRIMARY KEY (tenant, idem_key)
);

CREATE INDEX idempotency_keys_job ON idempotency_keys (job_id);

CREATE TABLE job_callbacks (
    job_id          VARCHAR(128) COLLATE "C" NOT NULL PRIMARY KEY,
    url             TEXT                     NOT NULL,
    attempts        BIGINT                   NOT NULL DEFAULT 0,
    next_attempt_at BIGINT                   NOT NULL,
    delivered_at    BIGINT,
    gave_up_at      BIGINT,
    last_error      TEXT
);

CREATE INDEX job_callbacks_pending ON job_callbacks (delivered_at, gave_up_at, next_attempt_at);
