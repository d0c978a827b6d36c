-- Task outcomes and run completion: what became of each dispatched Cloud Task, and when a run was
-- done. Collectors report outcomes on dispatcher-results; the results function writes them here.
--
-- Why the ledger and not Cloud Tasks: Cloud Tasks forgets a task an hour after it ran and has no
-- dead-letter queue, so "was acme-news collected at 09:00?" can only be answered here.
--
-- Never edit this file once applied anywhere (Flyway checksums it). Add V3__... instead.

-- Execution state per dispatch. `state` (claimed | created | failed) stays what it was: whether
-- the Cloud Task was created. These columns say what the task did once it ran.
ALTER TABLE dispatches
    -- NULL: no outcome reported yet. started / failed (not final): an attempt is running or will
    -- be retried. succeeded / skipped / failed (final) / lost: nothing more will happen.
    -- lost: created long ago (longer than the queue's retry span) and never reported; written by
    -- maintenance reconcile. A late real outcome still replaces it.
    ADD COLUMN execution_state    text        NULL
        CONSTRAINT dispatches_execution_state_check
        CHECK (execution_state IN ('started', 'succeeded', 'failed', 'skipped', 'lost')),
    ADD COLUMN execution_final    boolean     NOT NULL DEFAULT false,
    -- The highest attempt any outcome reported (Cloud Tasks' retry count + 1).
    ADD COLUMN execution_attempts integer     NOT NULL DEFAULT 0
        CONSTRAINT dispatches_execution_attempts_check CHECK (execution_attempts >= 0),
    -- The precedence of the outcome the row shows (shared/outcomes.py builds it). A report only
    -- replaces the row's outcome when its key is greater, so outcomes move forward whatever order
    -- and however often they arrive. Compared byte-wise ("C"), never by locale.
    ADD COLUMN outcome_key        text COLLATE "C" NULL,
    -- The same for the last error: the failure of the highest attempt wins.
    ADD COLUMN error_key          text COLLATE "C" NULL,
    ADD COLUMN first_started_at   timestamptz NULL,
    ADD COLUMN finished_at        timestamptz NULL,
    ADD COLUMN duration_ms        integer     NULL,
    ADD COLUMN items              integer     NULL,
    ADD COLUMN execution_error    text        NULL,
    -- When the row's outcome was reported (by the collector's clock).
    ADD COLUMN reported_at        timestamptz NULL,
    ADD CONSTRAINT dispatches_final_has_state
        CHECK (NOT execution_final OR execution_state IS NOT NULL);

COMMENT ON COLUMN dispatches.execution_state IS
    'NULL (no outcome yet) | started | failed | succeeded | skipped | lost; final when execution_final';
COMMENT ON COLUMN dispatches.execution_attempts IS 'Highest attempt reported by the collector.';

-- "Created, never finished, older than X" (reconcile's lost check). Partial: once a dispatch has
-- a final outcome it leaves the index, so it stays the size of what is in flight.
CREATE INDEX dispatches_unfinished_execution_idx ON dispatches (created_at)
    WHERE state = 'created' AND NOT execution_final;

-- "Outcomes of the last hour per source kind" (dispatcher ledger outcomes).
CREATE INDEX dispatches_claimed_at_idx ON dispatches (claimed_at);

-- Completion per run.
ALTER TABLE runs
    -- Set once, when every dispatch of the run reached a final outcome.
    ADD COLUMN completed_at            timestamptz NULL,
    -- Every dispatch succeeded or was skipped (NULL until completed).
    ADD COLUMN succeeded               boolean     NULL,
    -- The run-completed event: claimed by one publisher at a time (a lease), then recorded as
    -- published. A run completed but unpublished is published by the next result of that run
    -- or by maintenance reconcile.
    ADD COLUMN completion_claimed_at   timestamptz NULL,
    ADD COLUMN completion_published_at timestamptz NULL,
    ADD COLUMN completion_message_id   text        NULL,
    ADD CONSTRAINT runs_completed_has_verdict CHECK (completed_at IS NULL OR succeeded IS NOT NULL),
    ADD CONSTRAINT runs_published_after_completed
        CHECK (completion_published_at IS NULL OR completed_at IS NOT NULL);

-- Runs still open, and runs completed whose event is not out yet: both small, both polled.
CREATE INDEX runs_open_idx ON runs (created_at) WHERE completed_at IS NULL;
CREATE INDEX runs_unpublished_idx ON runs (completed_at)
    WHERE completed_at IS NOT NULL AND completion_published_at IS NULL;

-- The overview gains execution counts and completion (new columns go last: CREATE OR REPLACE VIEW
-- can only append).
CREATE OR REPLACE VIEW run_overview AS
SELECT r.id AS run_id,
       r.subscription_id,
       r.slot,
       r.reason,
       r.selected_at,
       r.source_message_id,
       count(d.id)                                  AS dispatches,
       count(d.id) FILTER (WHERE d.state = 'created') AS created,
       count(d.id) FILTER (WHERE d.state = 'claimed') AS claimed,
       count(d.id) FILTER (WHERE d.state = 'failed')  AS failed,
       (array_agg(d.last_error ORDER BY d.updated_at DESC)
            FILTER (WHERE d.last_error IS NOT NULL))[1] AS latest_error,
       count(d.id) FILTER (WHERE d.execution_state = 'succeeded') AS succeeded,
       count(d.id) FILTER (WHERE d.execution_state = 'skipped')   AS skipped,
       count(d.id) FILTER (WHERE d.execution_state = 'failed' AND d.execution_final)
                                                                   AS failed_final,
       count(d.id) FILTER (WHERE d.execution_state = 'lost')      AS lost,
       r.completed_at,
       r.succeeded AS run_succeeded
FROM runs r
LEFT JOIN dispatches d ON d.run_id = r.id
GROUP BY r.id, r.subscription_id, r.slot;
