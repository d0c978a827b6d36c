-- The dispatch ledger: what was selected (runs), what was sent to Cloud Tasks (dispatches), and a
-- mirror of the Firestore subscriptions so that operators can join them in plain SQL.
--
-- Why it exists: Cloud Tasks remembers task names for about an hour and has no dead-letter queue.
-- The unique dispatch key below is what keeps "one task per (subscription, slot, source)" true
-- beyond that hour, and these rows are where an operator sees history and failures.
--
-- Flyway naming and plain SQL only: production runs the Flyway CLI on this directory; locally
-- shared/ledger/migrate.py applies it and writes a Flyway-compatible flyway_schema_history.
-- Never edit this file once applied anywhere: the checksum is verified. Add V2__... instead.

-- One row per (subscription, slot) that select found due or that was requested by hand.
CREATE TABLE runs (
    id                bigserial   PRIMARY KEY,
    subscription_id   text        NOT NULL,
    -- The scheduled minute this run stands for (not when it ran): replays of the same minute
    -- land on the same row.
    slot              timestamptz NOT NULL,
    reason            text        NOT NULL
        CONSTRAINT runs_reason_check CHECK (reason IN ('schedule', 'catch-up', 'manual', 'replay')),
    -- When select decided the slot was due; can precede created_at when the due message waited
    -- in Pub/Sub (a gap here at 3 a.m. means a backlog, not a slow database).
    selected_at       timestamptz NOT NULL DEFAULT now(),
    created_at        timestamptz NOT NULL DEFAULT now(),
    -- Pub/Sub message id of the due message that first recorded the run: lets an operator find
    -- the message in logs and in the dead-letter topic.
    source_message_id text        NULL,
    -- The run key. Its index also serves "runs of subscription X, newest slot first".
    CONSTRAINT runs_subscription_slot_key UNIQUE (subscription_id, slot)
);

-- Retention (maintenance prune-ledger) deletes by age, and "what ran in the last hour" reads it.
CREATE INDEX runs_created_at_idx ON runs (created_at);

COMMENT ON TABLE runs IS
    'One row per due (subscription, slot); duplicates of the same slot are absorbed by the unique key.';
COMMENT ON COLUMN runs.slot IS 'The scheduled minute (UTC instant) this run stands for.';
COMMENT ON COLUMN runs.reason IS 'schedule | catch-up | manual | replay';

-- One row per dispatch key (subscription, slot, source): claimed before the Cloud Task is created,
-- then marked created or failed.
CREATE TABLE dispatches (
    id              bigserial   PRIMARY KEY,
    run_id          bigint      NOT NULL
        CONSTRAINT dispatches_run_fk REFERENCES runs (id) ON DELETE CASCADE,
    -- subscription_id and slot repeat the run's: the dispatch key must be enforceable by one
    -- unique index, and operators filter on them without a join.
    subscription_id text        NOT NULL,
    slot            timestamptz NOT NULL,
    source_id       text        NOT NULL,
    source_kind     text        NOT NULL,
    -- The Cloud Task name derived from the dispatch key; recreating under this name after a
    -- failure gives ALREADY_EXISTS if the first attempt did land, which counts as done.
    task_name       text        NOT NULL,
    queue           text        NOT NULL,
    -- claimed: the key is ours, the task may or may not exist yet (a crash between claim and
    --          create leaves this; maintenance reconcile re-creates it under the same name);
    -- created: Cloud Tasks accepted the task (or said ALREADY_EXISTS); final;
    -- failed:  the last create attempt failed; retried by Pub/Sub redelivery or reconcile.
    state           text        NOT NULL DEFAULT 'claimed'
        CONSTRAINT dispatches_state_check CHECK (state IN ('claimed', 'created', 'failed')),
    attempts        integer     NOT NULL DEFAULT 0
        CONSTRAINT dispatches_attempts_check CHECK (attempts >= 0),
    last_error      text        NULL,
    claimed_at      timestamptz NOT NULL DEFAULT now(),
    -- When the Cloud Task was created; NULL until state = 'created'.
    created_at      timestamptz NULL,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    -- The dispatch key. Its index also serves "dispatches of subscription X by slot".
    CONSTRAINT dispatches_key UNIQUE (subscription_id, slot, source_id),
    CONSTRAINT dispatches_created_has_time CHECK (state <> 'created' OR created_at IS NOT NULL)
);

-- ON DELETE CASCADE from runs (prune) and "dispatches of this run" would scan the table without it.
CREATE INDEX dispatches_run_id_idx ON dispatches (run_id);

-- "Stuck in claimed/failed older than X" (maintenance reconcile, and the first 3 a.m. question).
-- Partial: nearly every row ends up 'created', so the index stays tiny however big the table gets.
CREATE INDEX dispatches_unfinished_idx ON dispatches (updated_at)
    WHERE state IN ('claimed', 'failed');

COMMENT ON TABLE dispatches IS
    'One row per dispatch key (subscription_id, slot, source_id); claimed before the Cloud Task is created.';
COMMENT ON COLUMN dispatches.state IS
    'claimed (task may not exist yet) | created (final) | failed (last attempt failed, will be retried)';
COMMENT ON COLUMN dispatches.attempts IS 'Failed create attempts so far.';

-- Read-only copy of the Firestore `subscriptions` collection, kept equal by the sync function.
-- Firestore stays the source of truth; this exists so that ledger rows can be joined with names,
-- schedules and pause state in SQL.
CREATE TABLE subscriptions_mirror (
    subscription_id text        PRIMARY KEY,
    -- The whole document as synced, for anything the columns below do not lift out.
    document        jsonb       NOT NULL,
    name            text        NULL,
    paused          boolean     NOT NULL DEFAULT false,
    -- e.g. active | expired (set by maintenance expire in Firestore, copied here).
    status          text        NULL,
    next_run_at     timestamptz NULL,
    -- The document's own update time in Firestore; synced_at is when we copied it.
    updated_at      timestamptz NULL,
    synced_at       timestamptz NOT NULL DEFAULT now()
);

-- "Which active subscriptions are overdue?" (next_run_at far in the past means select is not
-- reaching them).
CREATE INDEX subscriptions_mirror_next_run_idx ON subscriptions_mirror (next_run_at)
    WHERE NOT paused;

COMMENT ON TABLE subscriptions_mirror IS
    'Copy of Firestore subscriptions (source of truth), kept equal by the sync function.';

-- One line per run with its dispatch counts: the usual first query of an investigation,
--   SELECT * FROM run_overview WHERE subscription_id = 'acme-news' ORDER BY slot DESC LIMIT 20;
CREATE VIEW run_overview AS
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
            FILTER (WHERE d.last_error IS NOT NULL))[1] AS latest_error
FROM runs r
LEFT JOIN dispatches d ON d.run_id = r.id
-- Grouping by the filtered columns (not just r.id) lets PostgreSQL push a WHERE on
-- subscription_id / slot below the aggregate, so the view reads one subscription, not all runs.
GROUP BY r.id, r.subscription_id, r.slot;

COMMENT ON VIEW run_overview IS 'Runs with dispatch counts per state; filter by subscription_id and slot.';
