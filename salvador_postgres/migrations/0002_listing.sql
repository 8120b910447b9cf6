-- Listing by status (and purging finished tasks) and by workflow, in id order.
CREATE INDEX tasks_status ON __SCHEMA__.tasks (status, id) WHERE record IS NOT NULL;
CREATE INDEX tasks_workflow ON __SCHEMA__.tasks (workflow, id) WHERE record IS NOT NULL;
