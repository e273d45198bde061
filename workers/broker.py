"""What still waits in the broker: tasks sent but not yet taken by any worker.

The sweep must not mistake a job whose tasks wait their turn behind other jobs for a job whose
worker died; a task id still in a queue means the job is waiting, not lost.
"""

from __future__ import annotations

import json

import redis

QUEUES = ("cpu", "gpu")


REPLY_TTL_S = 120  # an answer nobody waits for any more expires


def reply(redis_url: str, key: str, answer: dict[str, object]) -> None:
    """Hand a task's answer to the API request waiting on `key` (BLPOP)."""
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    try:
        client.pipeline().lpush(key, json.dumps(answer, ensure_ascii=False)).expire(key, REPLY_TTL_S).execute()
    finally:
        client.close()


def waiting_task_ids(redis_url: str, queues: tuple[str, ...] = QUEUES) -> set[str]:
    """Ids of the task messages in the Redis lists of these queues (kombu's message layout)."""
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    try:
        found: set[str] = set()
        for name in queues:
            for raw in client.lrange(name, 0, -1):
                try:
                    found.add(str(json.loads(raw)["headers"]["id"]))
                except (ValueError, KeyError, TypeError):
                    continue  # not a Celery task message
        return found
    finally:
        client.close()
