"""From a `nats://` or `tls://` URL to a connection, a stream and a KV bucket.

`NatsSettings.from_url` reads the URL and its options (through `UrlOptions`, the rules every
backend shares); `provision` finds or creates the stream and the bucket and refuses or
warns about settings that lose tasks. The password, token and key material never appear in
a message or a repr: only `where`, the redacted URL, does.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from nats.js import JetStreamContext, api
from nats.js.errors import BucketNotFoundError, NotFoundError
from nats.js.kv import KeyValue

from salvador_core.config import UrlOptions, redact_url
from salvador_core.errors import ConfigurationError
from salvador_nats.layout import NAME

log = logging.getLogger("salvador.nats")

DEFAULT_STREAM = "salvador"
DEFAULT_BUCKET = "salvador"

#: The URL query options (and `from_url` keyword options) this backend understands.
OPTIONS = frozenset({
    "stream", "bucket", "replicas", "publish_grace", "duplicate_window", "connect_timeout",
    "token", "nkey", "creds", "tls_ca", "tls_cert", "tls_key", "tls_verify", "name", "monitor",
})


@dataclass(frozen=True)
class NatsSettings:
    """Where and how to connect, and which stream and bucket to use. Never shows secrets."""

    where: str  # the redacted URL, for messages
    servers: list[str]
    stream: str
    bucket: str
    replicas: int
    #: How long a message whose record is missing (or older than the message says) waits for
    #: the producer's write before it is dropped as a crashed producer's leftover.
    publish_grace: float
    duplicate_window: float
    connect_timeout: float
    name: str
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    nkey: str | None = None  # a path to an NKEY seed file
    creds: str | None = None  # a path to a .creds file (JWT + seed)
    tls: bool = False
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_verify: bool = True
    #: The servers' monitoring endpoints (http(s)://host:8222), where the durability
    #: preflight reads the fsync interval no client request can read (durability.py).
    monitor: tuple[str, ...] = ()

    @classmethod
    def from_url(cls, url: str, options: dict[str, Any]) -> NatsSettings:
        """Settings for `url` plus keyword `options`; `ConfigurationError` naming the
        redacted URL for anything wrong."""
        if not isinstance(url, str):
            raise ConfigurationError(f"a NATS URL must be a string, got {type(url).__name__}")
        scheme, _, rest = url.partition("://")
        scheme = scheme.lower()
        opts = UrlOptions(url, urlsplit(url).query, options, known=OPTIONS, kind="NATS")
        if scheme not in ("nats", "tls"):
            raise opts.error("the scheme must be nats:// or tls:// (TLS)")
        netloc = rest.split("/", 1)[0].split("?", 1)[0]
        user = password = None
        if "@" in netloc:
            userinfo, netloc = netloc.rsplit("@", 1)
            name, sep, secret = userinfo.partition(":")
            user = unquote(name) or None
            password = unquote(secret) if sep else None
            if password is None and user is not None and "token" not in opts:
                # nats://TOKEN@host is the NATS convention for a token in the URL.
                user, password = None, None
                opts.values["token"] = unquote(name)
        hosts = [h for h in netloc.split(",") if h] or ["127.0.0.1:4222"]
        servers = []
        for host in hosts:
            if host.count(":") > 1 and not host.startswith("["):
                raise opts.error(f"host {host!r}: write an IPv6 address in brackets, e.g. [::1]:4222")
            port = host.rsplit(":", 1)[1] if ":" in host and not host.endswith("]") else "4222"
            if not port.isdigit() or not 0 < int(port) < 65536:
                raise opts.error(f"host {host!r} has no valid port")
            base = host if ":" in host and not host.endswith("]") else f"{host}:4222"
            servers.append(f"{scheme}://{base}")
        stream = _name(opts, "stream", DEFAULT_STREAM)
        bucket = _name(opts, "bucket", DEFAULT_BUCKET)
        tls = scheme == "tls" or any(k in opts for k in ("tls_ca", "tls_cert", "tls_key"))
        if ("tls_cert" in opts) != ("tls_key" in opts):
            raise opts.error("tls_cert and tls_key go together (a client certificate and its key)")
        for path_option in ("nkey", "creds", "tls_ca", "tls_cert", "tls_key"):
            if path_option in opts and not Path(opts.text(path_option, "")).is_file():
                raise opts.error(f"{path_option}: no such file {opts.text(path_option, '')!r}")
        auth = [k for k in ("token", "nkey", "creds") if k in opts] + (["user"] if user else [])
        if len(auth) > 1:
            raise opts.error(f"give one way to authenticate, not {', '.join(auth)}")
        replicas = opts.count("replicas", 1)
        if replicas > 5:
            raise opts.error(f"replicas must be 1 to 5 (JetStream's limit), not {replicas}")
        return cls(
            where=redact_url(_without_token(url, opts)),
            servers=servers,
            stream=stream,
            bucket=bucket,
            replicas=replicas,
            publish_grace=opts.seconds("publish_grace", 30.0) or 30.0,
            duplicate_window=opts.seconds("duplicate_window", 120.0) or 120.0,
            connect_timeout=opts.seconds("connect_timeout", 2.0) or 2.0,
            name=opts.text("name", "salvador"),
            user=user,
            password=password,
            token=str(opts.values["token"]) if "token" in opts else None,
            nkey=opts.text("nkey", "") or None,
            creds=opts.text("creds", "") or None,
            tls=tls,
            tls_ca=opts.text("tls_ca", "") or None,
            tls_cert=opts.text("tls_cert", "") or None,
            tls_key=opts.text("tls_key", "") or None,
            tls_verify=opts.flag("tls_verify", True),
            monitor=tuple(_monitors(opts)),
        )

    def connect_options(self) -> dict[str, Any]:
        """Keyword arguments for `nats.connect`."""
        options: dict[str, Any] = {
            "servers": self.servers,
            "name": self.name,
            "connect_timeout": self.connect_timeout,
            # The first connection fails fast (the caller gets BackendUnavailableError and
            # the engine retries); once connected, the client reconnects for ever.
            "allow_reconnect": True,
            "max_reconnect_attempts": -1,
            "reconnect_time_wait": 0.25,
        }
        if self.user is not None:
            options.update(user=self.user, password=self.password)
        if self.token is not None:
            options["token"] = self.token
        if self.nkey is not None:
            options["nkeys_seed"] = self.nkey
        if self.creds is not None:
            options["user_credentials"] = self.creds
        if self.tls:
            options["tls"] = self.tls_context()
        return options

    def tls_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.tls_ca)
        if self.tls_cert is not None:
            context.load_cert_chain(self.tls_cert, self.tls_key)
        if not self.tls_verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context


def _monitors(opts: UrlOptions) -> list[str]:
    """`monitor`: comma-separated http(s) URLs of the servers' monitoring ports."""
    urls = [url.strip() for url in opts.text("monitor", "").split(",") if url.strip()]
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise opts.error(
                f"monitor: {redact_url(url)!r} is not the http:// or https:// URL of a nats-server "
                "monitoring port (e.g. monitor=http://nats:8222, comma-separated for several)"
            )
    return urls


def _name(opts: UrlOptions, option: str, default: str) -> str:
    value = opts.text(option, default)
    if not NAME.match(value):
        raise opts.error(
            f"{option} {value!r} is not a valid JetStream name: use 1 to 64 letters, digits, "
            "'_' or '-'"
        )
    return value


def _without_token(url: str, opts: UrlOptions) -> str:
    """`url` with a token in the user part or the query replaced by `***`."""
    token = opts.values.get("token")
    if isinstance(token, str) and token:
        return url.replace(token, "***")
    return url


async def provision(js: JetStreamContext, settings: NatsSettings) -> KeyValue:
    """Find or create the stream and the KV bucket; refuse a stream that cannot hold a
    queue and warn about storage that loses tasks. Returns the bucket."""
    await _provision_stream(js, settings)
    return await _provision_bucket(js, settings)


async def _provision_stream(js: JetStreamContext, settings: NatsSettings) -> None:
    name = settings.stream
    wanted = [f"{name}.q.*", f"{name}.d.*"]
    try:
        info = await js.stream_info(name)
    except NotFoundError:
        await js.add_stream(api.StreamConfig(
            name=name,
            description="salvador task queues: <stream>.q.<workflow> ready, <stream>.d.<workflow> delayed",
            subjects=wanted,
            retention=api.RetentionPolicy.WORK_QUEUE,
            storage=api.StorageType.FILE,
            num_replicas=settings.replicas,
            duplicate_window=settings.duplicate_window,
            # A queued task must never age out or be discarded: no limits at all.
            max_age=0,
            discard=api.DiscardPolicy.NEW,
        ))
        return
    config = info.config
    if config.retention != api.RetentionPolicy.WORK_QUEUE:
        raise ConfigurationError(
            f"NATS stream {name!r} at {settings.where} has {config.retention} retention; salvador "
            "needs work-queue retention (a message is removed when acked, each subject has one "
            "consumer). Use another stream name (?stream=...) or recreate this stream."
        )
    missing = [s for s in wanted if s not in (config.subjects or [])]
    if missing:
        raise ConfigurationError(
            f"NATS stream {name!r} at {settings.where} does not take subjects {missing}; it holds "
            f"{config.subjects}. Use another stream name (?stream=...), or add the subjects."
        )
    if config.storage == api.StorageType.MEMORY:
        log.warning(
            "NATS stream %r at %s uses memory storage: queued tasks are lost when the server "
            "restarts. Recreate it with file storage.", name, settings.where,
        )
    if config.max_age or (config.max_msgs or -1) > 0 or (config.max_bytes or -1) > 0:
        log.warning(
            "NATS stream %r at %s has limits (max_age=%s, max_msgs=%s, max_bytes=%s): the "
            "server may drop queued tasks when they are reached. Remove the limits.",
            name, settings.where, config.max_age, config.max_msgs, config.max_bytes,
        )
    if (config.num_replicas or 1) < settings.replicas:
        log.warning(
            "NATS stream %r at %s has %s replica(s), fewer than the %d asked for; salvador does "
            "not change an existing stream.", name, settings.where, config.num_replicas, settings.replicas,
        )


async def _provision_bucket(js: JetStreamContext, settings: NatsSettings) -> KeyValue:
    try:
        await js.key_value(settings.bucket)
    except (BucketNotFoundError, NotFoundError):
        await js.create_key_value(api.KeyValueConfig(
            bucket=settings.bucket,
            description="salvador task records (t.<id>), leases (l.<id>), idempotency keys (k.*)",
            history=1,
            storage=api.StorageType.FILE,
            replicas=settings.replicas,
            direct=False,
        ))
        return _leader_reads(js, settings.bucket)
    info = await js.stream_info(f"KV_{settings.bucket}")
    if info.config.storage == api.StorageType.MEMORY:
        log.warning(
            "NATS KV bucket %r at %s uses memory storage: task records are lost when the server "
            "restarts. Recreate it with file storage.", settings.bucket, settings.where,
        )
    if info.config.max_age:
        log.warning(
            "NATS KV bucket %r at %s has a TTL (%ss): records of unfinished tasks expire with it. "
            "Remove the TTL; use the engine's retention setting to purge finished tasks.",
            settings.bucket, settings.where, info.config.max_age,
        )
    return _leader_reads(js, settings.bucket)


def _leader_reads(js: JetStreamContext, bucket: str) -> KeyValue:
    """A handle on `bucket` whose reads go to the stream's leader (`STREAM.MSG.GET`), never
    to a replica (`DIRECT.GET`, which any replica may answer, possibly behind the leader): a
    worker must see the last checkpoint before it runs the next step, or it would run a
    saved step again (its write would be refused, but the step's effects would be done)."""
    return KeyValue(name=bucket, stream=f"KV_{bucket}", pre=f"$KV.{bucket}.", js=js, direct=False)
