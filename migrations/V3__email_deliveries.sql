-- Email-delivery transactions: one row per (delivery key, recipient).
--
-- Why a row per email: Cloud Tasks forgets task names after about an hour and SMTP has no
-- idempotency of its own, so "did ops@acme get the 08:00 digest of 2026-03-09, once?" can only
-- be answered, and enforced, here. The planner claims the row before it creates the Cloud Task
-- (task_state, like dispatches.state); the deliver function claims it again with one conditional
-- write before it talks to SMTP (state), and records what SMTP answered.
--
-- Never edit this file once applied anywhere (Flyway checksums it). Add V4__... instead.

CREATE TABLE email_deliveries (
    id              bigserial   PRIMARY KEY,
    -- The delivery key (shared/delivery_key.py). slot: the digest's cron slot, or for an
    -- after-run alert the slot of the completed run. recipient: lower case, as in the key.
    subscription_id text        NOT NULL,
    delivery_id     text        NOT NULL,
    slot            timestamptz NOT NULL,
    recipient       text        NOT NULL
        CONSTRAINT email_deliveries_recipient_lower CHECK (recipient = lower(recipient)),
    format          text        NOT NULL
        CONSTRAINT email_deliveries_format_check CHECK (format IN ('digest', 'alert')),
    -- The completed run an alert reports on (NULL for digests). No foreign key: pruning old
    -- runs must not delete the proof that an email went out.
    run_id          bigint      NULL,
    -- Cloud Task bookkeeping, as for dispatches: claimed (task may not exist yet), created,
    -- failed (the last create failed; the planner's redelivery re-creates under task_name).
    task_name       text        NOT NULL,
    queue           text        NOT NULL,
    task_state      text        NOT NULL DEFAULT 'claimed'
        CONSTRAINT email_deliveries_task_state_check
        CHECK (task_state IN ('claimed', 'created', 'failed')),
    task_error      text        NULL,
    -- The email transaction:
    -- queued:  nothing sent, or the last attempt got a temporary refusal (4xx, connection);
    -- sending: an attempt holds the row since sending_since; if that attempt died, the next one
    --          takes over after the lease (the crash window: the email may have left once);
    -- sent:    the SMTP server accepted the message (final);
    -- failed:  the server refused it permanently (5xx) (final).
    state           text        NOT NULL DEFAULT 'queued'
        CONSTRAINT email_deliveries_state_check
        CHECK (state IN ('queued', 'sending', 'sent', 'failed')),
    -- Send attempts that reached the claim (each one is a possible SMTP conversation).
    attempts        integer     NOT NULL DEFAULT 0
        CONSTRAINT email_deliveries_attempts_check CHECK (attempts >= 0),
    -- The stable Message-ID header (derived from the key), fixed when the row is claimed.
    message_id      text        NOT NULL,
    -- What the SMTP server answered on acceptance (often its own queue id).
    smtp_reply      text        NULL,
    last_error      text        NULL,
    sending_since   timestamptz NULL,
    -- The current attempt took over a row another attempt left in 'sending' (crash window).
    resumed         boolean     NOT NULL DEFAULT false,
    sent_at         timestamptz NULL,
    failed_at       timestamptz NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT email_deliveries_key UNIQUE (subscription_id, delivery_id, slot, recipient),
    CONSTRAINT email_deliveries_sending_has_time
        CHECK (state <> 'sending' OR sending_since IS NOT NULL),
    CONSTRAINT email_deliveries_sent_has_time CHECK (state <> 'sent' OR sent_at IS NOT NULL)
);

-- "Emails not sent yet, oldest first" (status, reconcile): partial, it stays small.
CREATE INDEX email_deliveries_open_idx ON email_deliveries (updated_at)
    WHERE state IN ('queued', 'sending');
-- "Emails of the last day" and retention.
CREATE INDEX email_deliveries_created_at_idx ON email_deliveries (created_at);

COMMENT ON TABLE email_deliveries IS
    'One row per (subscription, delivery, slot, recipient): the email transaction, sent at most once.';
COMMENT ON COLUMN email_deliveries.state IS
    'queued | sending (an attempt holds it) | sent (final) | failed (permanent refusal, final)';
COMMENT ON COLUMN email_deliveries.message_id IS
    'The Message-ID header, derived from the key: a duplicate in the crash window carries the same.';
