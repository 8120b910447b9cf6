"""Where everything lives on the server: subjects, consumer names, KV keys and headers.

Workflow names are chosen by users, so they never reach a subject, a consumer name or a
key as they are: a name is written as `w` + the hex of its UTF-8 bytes. Hex has no `.`,
`*`, `>` or space, so no name can split a subject into extra tokens, act as a wildcard or
spell another workflow's subject; the encoding is one-to-one, so a name that *is* another
name's encoding gets an encoding of its own. Idempotency keys are encoded the same way.

Stream `<stream>` (work-queue retention) holds two subjects per workflow:

- `<stream>.q.<w>`: ready tasks, read by the durable pull consumer `q-<w>`;
- `<stream>.d.<w>`: delayed tasks, read by `d-<w>`, whose reader (`delays.Promoter`) holds
  each message back with `nak(delay)` until it is due and then republishes it to `q`.

A message's body is the task id; a submit's message adds a newline and the submitted record
(`<id>\n<record>`), so the claimer of its first delivery needs no read to run it.

KV bucket `<bucket>` holds, per task:

- `s.<id>`: the record as submitted (version 1, `encode_task`), created by `submit` and
  never written again;
- `t.<id>`: the record from its first write after the submit on (usually the worker's
  ownership write, a KV `create`); once there it is the task's record, its KV revision is
  the fence of every write, and its `Salvador-Lease` header names the delivery (ack
  subject) holding the task, written with the record by the holder's own writes
  (backend.py). A delete marker on it (the task was deleted or purged) hides `s.<id>`;
- `k.<w>.<key hex>`: the task id holding an idempotency key, created before the record.
"""

from __future__ import annotations

import hashlib
import re

#: Stream and bucket names: what JetStream allows in both and in a subject token.
NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

#: Task ids become KV keys; the engine's ids are hex, a caller's own must fit a key token.
TASK_ID = re.compile(r"^[A-Za-z0-9_=-]{1,200}$")

#: Consumer names longer than this are replaced by a digest (servers keep them as
#: directory names, which file systems limit to 255 bytes).
MAX_CONSUMER_NAME = 120

HEADER_MSG_ID = "Nats-Msg-Id"
#: The record version a message was published for (a submit: 1; a requeue: the version it
#: writes). A claimer that finds an older record waits for the write still in flight, and
#: drops the message once the publisher's grace is over (it crashed before writing); a
#: submit's message, which carries its record, is run from that record instead.
HEADER_VERSION = "Salvador-Version"
#: Due time of a delayed message, epoch milliseconds.
HEADER_DUE = "Salvador-Due"
#: The format of a message's body where it is not `MESSAGE_FORMAT` (this version writes
#: none: the task id, and for a submit a newline and its record). A worker leaves a message
#: in a format it does not know to a newer worker (`-NAK` with its lease as delay) instead
#: of taking its body for something it is not, so a later format can reach producers first.
HEADER_FORMAT = "Salvador-Format"
MESSAGE_FORMAT = "1"
#: On a record: the ack subject of the delivery holding the task (absent: nobody holds it).
HEADER_LEASE = "Salvador-Lease"
#: On a write: the KV revision the key must still be at (JetStream's own header).
HEADER_EXPECTED_LAST = "Nats-Expected-Last-Subject-Sequence"
#: Every header this package writes.
HEADERS = frozenset({HEADER_MSG_ID, HEADER_VERSION, HEADER_DUE, HEADER_LEASE, HEADER_EXPECTED_LAST})


def token(text: str) -> str:
    """`w` + hex of the UTF-8 bytes: a subject token and key part that is never a wildcard,
    never empty and never another text's token."""
    return "w" + text.encode("utf-8", "surrogatepass").hex()


def ready_subject(stream: str, workflow: str) -> str:
    return f"{stream}.q.{token(workflow)}"


def delayed_subject(stream: str, workflow: str) -> str:
    return f"{stream}.d.{token(workflow)}"


def consumer_name(kind: str, workflow: str) -> str:
    """`q-w<hex>` / `d-w<hex>`, or `q-sha-<digest>` for a long name (`s`, `h` and the dash
    never occur in hex, so a digest name never equals a plain one)."""
    name = f"{kind}-{token(workflow)}"
    if len(name) <= MAX_CONSUMER_NAME:
        return name
    digest = hashlib.sha256(workflow.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{kind}-sha-{digest}"


def record_key(task_id: str) -> str:
    return f"t.{task_id}"


def submitted_key(task_id: str) -> str:
    return f"s.{task_id}"


def idempotency_key(workflow: str, key: str) -> str:
    return f"k.{token(workflow)}.{token(key)}"


def check_task_id(task_id: str) -> str:
    """`task_id` if it can be a KV key token, else ValueError saying what fits."""
    if not isinstance(task_id, str) or not TASK_ID.match(task_id):
        raise ValueError(
            f"task id {task_id!r} cannot be stored in a NATS KV key: use letters, digits, '_', "
            "'=' or '-' (1 to 200 of them), as the engine's own ids do"
        )
    return task_id


def delivery_of(ack_subject: str) -> tuple[int, int]:
    """(stream sequence, delivery count) of the delivery behind a JetStream ack subject:
    `$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>...` or, with a domain and account hash,
    `$JS.ACK.<domain>.<hash>.<stream>.<consumer>.<delivered>.<sseq>...`; (0, 0) if it is
    neither."""
    tokens = ack_subject.split(".")
    at = 4 if len(tokens) == 9 else 6 if len(tokens) >= 12 else None
    if at is None or tokens[:2] != ["$JS", "ACK"]:
        return 0, 0
    try:
        return int(tokens[at + 1]), int(tokens[at])
    except ValueError:
        return 0, 0
