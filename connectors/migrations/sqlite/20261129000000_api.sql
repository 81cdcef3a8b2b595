-- What the REST API needs: a job's priority, listing a tenant's jobs page by
-- page, idempotency keys of submissions, and completion callbacks.
--
-- Same content on every dialect (migrations/postgres, migrations/mysql); the
-- servers use BIGINT where SQLite's INTEGER is 64-bit, as in the first migration.

-- 0..9, higher is sooner (the job envelope's priority). Jobs recorded before
-- this column existed, and those the pipeline records itself, have 0.
ALTER TABLE jobs ADD COLUMN priority INTEGER NOT NULL DEFAULT 0
    CHECK (priority BETWEEN 0 AND 9);

-- A tenant's jobs, newest received first, by keyset (received_at, id).
CREATE INDEX jobs_tenant_received ON jobs (tenant, received_at, id);

-- An API client's Idempotency-Key, per tenant: the hash of the request that
-- first used it, and the job it named. Deleted with the job (delete, purge).
CREATE TABLE idempotency_keys (
    tenant       VARCHAR(128) NOT NULL,
    idem_key     VARCHAR(255) NOT NULL,
    request_hash VARCHAR(128) NOT NULL,
    job_id       VARCHAR(128) NOT NULL,
    created_at   BIGINT       NOT NULL,
    PRIMARY KEY (tenant, idem_key)
);

CREATE INDEX idempotency_keys_job ON idempotency_keys (job_id);

-- The URL to notify once the job is final, and where its delivery stands.
-- The URL may hold a token and last_error is PHI-free text: neither is logged.
CREATE TABLE job_callbacks (
    job_id          VARCHAR(128) NOT NULL PRIMARY KEY,
    url             TEXT         NOT NULL,
    attempts        INTEGER      NOT NULL DEFAULT 0,
    next_attempt_at BIGINT       NOT NULL,
    delivered_at    BIGINT,
    gave_up_at      BIGINT,
    last_error      TEXT
);

-- Callbacks still to deliver (neither delivered nor given up), soonest first.
CREATE INDEX job_callbacks_pending ON job_callbacks (delivered_at, gave_up_at, next_attempt_at);
