"""Routing: which models a frame goes to, by its header or by the config's routes."""

from __future__ import annotations

import fnmatch
import time

from inferd.config import Config
from inferd.engine.pipeline import Frame, ModelQueue, SourcePolicies
from inferd.ingest.security import RateLimiter
from inferd.outputs.replies import Replies


class Dispatcher:
    """Decides which model queues a frame goes to, and answers what cannot be routed."""

    def __init__(
        self,
        config: Config,
        queues: dict[str, ModelQueue],
        replies: Replies,
        policies: SourcePolicies | None = None,
    ) -> None:
        self.config, self.queues, self.replies = config, queues, replies
        self.policies = policies or SourcePolicies(config.sources)
        self.limiter = RateLimiter()
        self.known = {m.name for m in config.models}
        self._routes: dict[str, list[str]] = {}

    def route(self, source: str) -> list[str]:
        models = self._routes.get(source)
        if models is None:
            if not self.config.routes:
                models = [m.name for m in self.config.models]
            else:
                models = []
                for r in self.config.routes:
                    if any(fnmatch.fnmatchcase(source, pat) for pat in r.sources):
                        models += [m for m in r.models if m not in models]
            if len(self._routes) < 4096:
                self._routes[source] = models
        return models

    def submit(self, frame: Frame, router: bool = False) -> list[ModelQueue]:
        """Queue the frame for its models; returns the fifo queues that had no room (to retry)."""
        rate = self.policies(frame.source).rate_limit_fps
        if rate is not None and not self.limiter.allow(frame.source, rate):
            self.replies.reject(
                frame, frame.header.models[0] if frame.header.models else "", "rate_limited",
                f"source {frame.source!r} is over its rate limit of {rate:g} frames/s",
            )  # fmt: skip
            return []
        names = frame.header.models or self.route(frame.source)
        requested = frame.header.models[0] if frame.header.models else ""
        if not names:
            self.replies.reject(
                frame, requested, "no_route", f"no route sends source {frame.source!r} to a model"
            )
            return []
        for name in names:
            if name not in self.known:
                self.replies.reject(
                    frame,
                    name,
                    "unknown_model",
                    f"unknown model {name!r}; models: {', '.join(sorted(self.known))}",
                )
                return []
            if name not in self.queues:
                self.replies.reject(frame, name, "model_unavailable", f"model {name!r} is not loaded")
                return []
        if router and len(names) != 1:
            self.replies.reject(
                frame,
                requested,
                "multiple_models",
                f"a request gets one reply, so it must name one model (routed to {', '.join(names)})",
            )
            return []
        return [q for q in (self.queues[n] for n in names) if not q.put(frame)]

    def expire(self) -> None:
        """Answer queued router requests whose deadline passed, before the deadline is far gone."""
        now = time.time()

        def passed(frame: Frame) -> str | None:
            d = frame.header.deadline
            return "deadline" if d is not None and now > d else None

        for name, q in self.queues.items():
            if q.size:
                for frame, reason in q.remove_if(passed):
                    self.replies.drop(frame, name, reason)
