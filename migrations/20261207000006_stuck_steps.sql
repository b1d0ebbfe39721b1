-- Follow-up steps that stop retrying and wait for staff: a refund the gateway declined (its
-- decision will not change by asking again), or any step that kept failing for its whole retry
-- budget. A stuck step is listed (GraphQL `stuckSteps`, `fleetledger worker status`, the
-- `fleetledger_workflow_steps_stuck` gauge) until staff retries it.
ALTER TABLE workflow_steps ADD COLUMN stuck_at timestamptz;

DROP INDEX workflow_steps_due_idx;
CREATE INDEX workflow_steps_due_idx ON workflow_steps (due_at)
    WHERE done_at IS NULL AND stuck_at IS NULL;
CREATE INDEX workflow_steps_stuck_idx ON workflow_steps (stuck_at, id)
    WHERE done_at IS NULL AND stuck_at IS NOT NULL;
