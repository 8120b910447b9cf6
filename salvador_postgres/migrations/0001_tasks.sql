-- The task table: each record (the versioned JSON of encode_task) beside the columns the
-- compare-and-set, listing and queue need. A row with q_workflow set is queued: due at
-- q_due when q_receipt is NULL, leased until q_due (the lease deadline) otherwise.
-- fillfactor leaves room on each page so a checkpoint (which changes no indexed column)
-- can be a HOT update.
CREATE TABLE __SCHEMA__.tasks (
    id text PRIMARY KEY,
    workflow text NOT NULL,
    record bytea,
    status text,
    version bigint,
    idempotency_key text,
    updated_at timestamptz,
    q_workflow text,
    q_due timestamptz,
    q_receipt text,
    q_granted timestamptz,
    q_deliveries integer NOT NULL DEFAULT 0
) WITH (fillfactor = 80);

CREATE UNIQUE INDEX tasks_idempotency ON __SCHEMA__.tasks (workflow, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- The claim reads the first due entry of its workflow; only queued rows are in it, so its
-- size follows the queue, not the table.
CREATE INDEX tasks_queue ON __SCHEMA__.tasks (q_workflow, q_due) WHERE q_workflow IS NOT NULL;
