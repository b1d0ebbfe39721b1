-- Follow-up steps of the booking path (expire a hold, confirm after payment, refund), written
-- in the same transaction as the events that call for them and run by the worker until done.
-- Claimed with a short lease, never held in an open transaction, so the log's readers are
-- not held back while a step runs.

CREATE TABLE workflow_steps (
    id          uuid        PRIMARY KEY,
    kind        text        NOT NULL,
    booking_id  uuid        NOT NULL,
    payload     jsonb       NOT NULL DEFAULT '{}',
    due_at      timestamptz NOT NULL,
    lease_until timestamptz,
    attempts    integer     NOT NULL DEFAULT 0,
    last_error  text,
    done_at     timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX workflow_steps_due_idx ON workflow_steps (due_at) WHERE done_at IS NULL;
CREATE INDEX workflow_steps_booking_idx ON workflow_steps (booking_id);
