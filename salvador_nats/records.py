"""Task records in the KV bucket, read and written through the inbox with their headers.

A record is the KV entry `t.<id>`: its value is the encoded task, its revision the fence of
every write, and its `Salvador-Lease` header names the delivery (ack subject) that holds
the task, written with the record by the holder's own writes (see backend.py). nats-py's
KV handle reads neither headers nor timestamps and parses every stored header through the
e-mail parser; the hot path (a read per claim, a write per checkpoint) goes through these
two calls instead. Reads go to the stream leader (`STREAM.MSG.GET`, never `DIRECT.GET`,
which any replica may answer while it is behind).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

from nats.js import api
from nats.js import errors as jx

from salvador_nats.layout import HEADER_LEASE
from salvador_nats.pulls import Inbox

_NO_MESSAGE = 10037  # JSNoMessageFoundErr
_WRONG_LAST = (10071, 10164)  # JSStreamWrongLastSequence(Constant)Err
_KV_OPERATION = "KV-Operation"


@dataclass(frozen=True)
class Stored:
    """A record as the bucket holds it: its bytes, its revision, the delivery holding its
    task ("" for none), and whether it is a delete or purge marker (`gone`)."""

    data: bytes
    revision: int
    lease: str = ""
    gone: bool = False


@dataclass(frozen=True)
class Published:
    """The server's acknowledgement of a publish: the message's stream sequence, and whether
    it was absorbed as a repeat of a `Nats-Msg-Id` within the duplicate window."""

    seq: int
    duplicate: bool


class Records:
    """Reads and compare-and-set writes of one bucket's entries, with their headers."""

    def __init__(self, inbox: Inbox, bucket: str) -> None:
        self.inbox = inbox
        self.prefix = f"$KV.{bucket}."
        self.get_subject = f"$JS.API.STREAM.MSG.GET.KV_{bucket}"

    async def read(self, key: str) -> Stored | None:
        """The last entry of `key` (a delete or purge marker included), or None if the key
        never had one."""
        body = b'{"last_by_subj":"%s%s"}' % (self.prefix.encode(), key.encode())  # names need no escaping
        answer = _answer((await self.inbox.request(self.get_subject, body)).data)
        if answer is None:
            return None
        message = answer["message"]
        headers = _headers(message.get("hdrs"))
        data = message.get("data")
        return Stored(
            data=base64.b64decode(data) if data else b"",
            revision=int(message["seq"]),
            lease=headers.get(HEADER_LEASE, ""),
            gone=headers.get(_KV_OPERATION) in ("DEL", "PURGE"),
        )

    async def write(self, key: str, data: bytes, *, expected: int | None, lease: str = "") -> int:
        """Write `data` with `lease` as its lease header; with `expected` (a revision, 0 for
        none), only if the key's last entry is still at it (`KeyWrongLastSequenceError`
        otherwise, nothing written). Returns the new revision."""
        headers: dict[str, str] = {}
        if expected is not None:
            headers[api.Header.EXPECTED_LAST_SUBJECT_SEQUENCE] = str(expected)
        if lease:
            headers[HEADER_LEASE] = lease
        return (await self.publish(self.prefix + key, data, headers)).seq

    async def publish(self, subject: str, data: bytes, headers: dict[str, str]) -> Published:
        """A JetStream publish, acknowledged by the stream (`KeyWrongLastSequenceError` for a
        failed expected-revision check, `APIError` for any other refusal)."""
        answer = _answer((await self.inbox.request(subject, data, headers=headers or None)).data)
        if answer is None:
            raise jx.APIError(code=404, description="no stream took the message")
        return Published(int(answer["seq"]), bool(answer.get("duplicate", False)))


def _answer(raw: bytes) -> dict[str, Any] | None:
    """A JetStream answer as a dict; None for "no message found"; refusals raised as
    nats-py's errors, so callers handle them as they handle nats-py's own calls."""
    answer: dict[str, Any] = json.loads(raw)
    error = answer.get("error")
    if error is None:
        return answer
    code = error.get("err_code")
    if code == _NO_MESSAGE:
        return None
    if code in _WRONG_LAST:
        raise jx.KeyWrongLastSequenceError(description=error.get("description"))
    jx.APIError.from_error(error)
    raise AssertionError("unreachable: from_error always raises")


def _headers(encoded: str | None) -> dict[str, str]:
    """A stored message's headers (`NATS/1.0` block, base64 in the API answer)."""
    if not encoded:
        return {}
    lines = base64.b64decode(encoded).decode(errors="replace").split("\r\n")
    found = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            found[name.strip()] = value.strip()
    return found
