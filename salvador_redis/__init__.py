"""salvador on Redis: `redis://` and `rediss://` URLs, or `RedisBackend(client=...)`.

Install with `pip install 'salvador-workflows[redis]'` (add `hiredis` for faster replies). See
docs/backends/redis.md for the key layout, the scripts and their guarantees.
"""

from salvador_redis.backend import RedisBackend

__all__ = ["RedisBackend"]
