"""EventBus: fan-out of live events (log lines, progress, status changes) to watchers.

Each subscriber has a bounded queue; a subscriber that falls behind loses events (it is
told so by a ``lagged`` event) rather than slowing down a backup.
"""

from __future__ import annotations

import queue
import threading
from typing import Any

QUEUE_SIZE = 1000


class Subscription:
    def __init__(self, bus: EventBus, execution_id: int | None) -> None:
        self.queue: queue.Queue[dict[str, Any]] = queue.Queue(QUEUE_SIZE)
        self.execution_id = execution_id
        self.lagged = False
        self._bus = bus

    def offer(self, event: dict[str, Any]) -> None:
        if self.execution_id is not None and event.get("execution_id") != self.execution_id:
            return
        try:
            if self.lagged:
                self.queue.put_nowait({"type": "lagged"})
                self.lagged = False
            self.queue.put_nowait(event)
        except queue.Full:
            self.lagged = True

    def get(self, timeout: float) -> dict[str, Any] | None:
        try:
            return self.queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def close(self) -> None:
        self._bus.unsubscribe(self)


class EventBus:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subs: list[Subscription] = []

    def subscribe(self, execution_id: int | None = None) -> Subscription:
        sub = Subscription(self, execution_id)
        with self._lock:
            self._subs.append(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            if sub in self._subs:
                self._subs.remove(sub)

    def publish(self, event: dict[str, Any]) -> None:
        with self._lock:
            subs = list(self._subs)
        for sub in subs:
            sub.offer(event)
