"""salvador on NATS JetStream: `nats://` and `tls://` URLs.

Install with `pip install 'salvador-workflows[nats]'`. Task records live in a JetStream KV
bucket, delivery goes through a work-queue stream; see docs/backends/nats.md for the
layout, the settings and what they mean for durability.
"""

from salvador_nats.backend import NatsBackend

__all__ = ["NatsBackend"]
