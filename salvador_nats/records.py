"""Task records in the KV bucket, read and written through the inbox with their headers.

A record is the KV entry `t.<id>` (or, until anything wrote the task after its submit,
`s.<id>`): its value is the encoded task, its revision the fence of every write, and its
`Salvador-Lease` header names the delivery (ack subject) that holds the task, written with
the record by the holder's own writes (see backend.py). nats-py's
KV handle reads neither headers nor timestamps and parses every stored header through the
e-mail parser; the hot path (a read per claim, a write per checkpoint) goes through these
two calls instead. Reads go to the stream leader (`STREAM.MSG.GET`, never `DIRECT.GET`,
which any replica may answer while it is behind).
"""

from __future__ import annotations

import json
import re
from base64 import b64decode
from typing import Any, NamedTuple

from nats.js import errors as jx

from salvador_nats.layout import HEADER_EXPECTED_LAST, HEADER_LEASE
from salvador_nats.pulls import Inbox

_NO_MESSAGE = 10037  # JSNoMessageFoundErr
_WRONG_LAST = (10071, 10164)  # JSStreamWrongLastSequence(Constant)Err
_KV_OPERATION = b"KV-Operation"
_LEASE = HEADER_LEASE.encode()

#: The usual acknowledgement of a publish, as 2.9 and 2.15 write it (`{"stream":"KV_b", "seq":7}`,
#: `,"duplicate": true` for a repeat): its sequence read without the JSON parser, the
#: hot path's commonest answer. Anything else (an error, other fields) goes to `_answer`.
_PUB_ACK = re.compile(
    rb'\{"stream":\s*"[^"\\]*",\s*"seq":\s*(\d+)\s*(,\s*"duplicate":\s*true\s*)?\}'
)
#: The usual answer to a record read (`STREAM.MSG.GET`), as 2.9 and 2.15 write it: its
#: sequence, headers and data read without the JSON parser. Anything else goes to `_answer`.
_GOT = re.compile(
    rb'\{"type":"io\.nats\.jetstream\.api\.v1\.stream_msg_get_response","message":\{"subject":"[^"\\]*",'
    rb'"seq":(\d+),(?:"hdrs":"([A-Za-z0-9+/=]*)",)?(?:"data":"([A-Za-z0-9+/=]*)",)?"time":"[^"\\]*"\}\}'
)


class Stored(NamedTuple):
    """A record as the bucket holds it: its bytes, its revision, the delivery holding its
    task ("" for none), and whether it is a delete or purge marker (`gone`)."""

    data: bytes
    revision: int
    lease: str = ""
    gone: bool = False


class Published(NamedTuple):
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
        self._get_body = '{"last_by_subj":"' + self.prefix  # names and keys need no escaping

    async def read(self, key: str) -> Stored | None:
        """The last entry of `key` (a delete or purge marker included), or None if the key
        never had one."""
        body = (self._get_body + key + '"}').encode()
        raw = (await self.inbox.request(self.get_subject, body)).data
        plain = _GOT.fullmatch(raw)
        if plain is not None:
            seq, encoded_headers, data = plain.groups()
        else:
            answer = _answer(raw)
            if answer is None:
                return None
            message = answer["message"]
            seq, encoded_headers, data = message["seq"], message.get("hdrs"), message.get("data")
        headers = b64decode(encoded_headers) if encoded_headers else b""
        return Stored(
            b64decode(data) if data else b"",
            int(seq),
            _header(headers, _LEASE),
            _header(headers, _KV_OPERATION) in ("DEL", "PURGE"),
        )

    async def write(self, key: str, data: bytes, *, expected: int | None, lease: str = "") -> int:
        """Write `data` with `lease` as its lease header; with `expected` (a revision, 0 for
        none), only if the key's last entry is still at it (`KeyWrongLastSequenceError`
        otherwise, nothing written). Returns the new revision."""
        headers: dict[str, str] = {}
        if expected is not None:
            headers[HEADER_EXPECTED_LAST] = str(expected)
        if lease:
            headers[HEADER_LEASE] = lease
        return (await self.publish(self.prefix + key, data, headers)).seq

    async def publish(self, subject: str, data: bytes, headers: dict[str, str]) -> Published:
        """A JetStream publish, acknowledged by the stream (`KeyWrongLastSequenceError` for a
        failed expected-revision check, `APIError` for any other refusal)."""
        raw = (await self.inbox.request(subject, data, headers=headers or None)).data
        plain = _PUB_ACK.fullmatch(raw)
        if plain is not None:
            return Published(int(plain[1]), plain[2] is not None)
        answer = _answer(raw)
        if answer is None:
            raise jx.APIError(code=404, description="no stream took the message")
        return Published(int(answer["seq"]), bool(answer.get("duplicate", False)))


def _answer(raw: bytes) -> dict[str, Any] | None:
    """A JetStream answer as a dict; None for "no message found"; refusals raised as
    nats-py's errors, so callers handle them as they handle nats-py's own calls."""
    answer: dict[str, Any] = json.loads(raw.decode())
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


def _header(block: bytes, name: bytes) -> str:
    """The value of header `name` in a stored message's `NATS/1.0` header block ("" when
    it has none; the last, if repeated)."""
    start = block.rfind(b"\r\n" + name + b":")
    if start < 0:
        return ""
    start += len(name) + 3
    end = block.find(b"\r\n", start)
    return block[start : end if end >= 0 else len(block)].decode(errors="replace").strip()
