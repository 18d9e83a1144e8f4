"""Relay jobs: started in the edge's root nursery, bounded, watched, and cancelled.

A job runs in the process's root nursery, not in the request that created it: the request
only follows the job's events. When every follower is gone (the CLI's connection dropped)
the job's watchdog waits ``relay_grace_seconds`` for one to come back (reattaching with
``GET /api/v1/relay/jobs/<id>``), then cancels it. A ``DELETE`` cancels it at once.

At most ``relay_max_jobs`` jobs run at once on an edge and ``relay_max_jobs_per_principal``
per credential; one more is ``TOOMANYREQUESTS``. Ended jobs are kept
:data:`KEEP_ENDED_SECONDS` for a follower to read how they ended.

The target credentials come in the :class:`RelayRequest` and are held by the job's task
only: nothing stores, logs or emits them, and they are gone when the job ends.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import trio

from config.settings import EdgeSettings
from core.client.credentials import ANONYMOUS, Credentials, CredentialsProvider, StaticCredentials
from core.client.registry import RegistryClient
from core.errors import NotFound, RegistryError, TooManyRequests
from core.reference import RepositoryName
from edge.relay.copy import CopyCounters, CopyOptions, TargetCopy, TargetFailed
from edge.relay.job import CANCELLED, DONE, FAILED, RelayJob
from edge.relay.plan import BuildPlan, SourceManifest, TargetRegistry, parse_insecure
from edge.relay.source import BuildReader

log = logging.getLogger("depot.edge.relay")

KEEP_ENDED_SECONDS = 300.0
RETRY_AFTER_SECONDS = "5"


@dataclass(frozen=True)
class RelayRequest:
    repository: RepositoryName  # internal name of the source repository
    source: str  # the source as the caller named it, for events
    root: SourceManifest
    targets: tuple[TargetRegistry, ...]
    #: By registry name (``TargetRegistry.registry``); registries absent go anonymous.
    credentials: Mapping[str, Credentials] = field(repr=False)


class RelayService:
    def __init__(self, nursery: trio.Nursery, reader: BuildReader, settings: EdgeSettings):
        """``nursery`` must be the process's root nursery."""
        self._nursery = nursery
        self._reader = reader
        self._settings = settings
        self.insecure = parse_insecure(settings.insecure_registries)
        self._jobs: dict[str, RelayJob] = {}

    @property
    def reader(self) -> BuildReader:
        return self._reader

    def running(self) -> int:
        return sum(1 for job in self._jobs.values() if not job.ended)

    def start(self, request: RelayRequest, owner: str) -> RelayJob:
        """A new job, running; ``TooManyRequests`` over the limits."""
        self._forget_ended()
        running = [job for job in self._jobs.values() if not job.ended]
        retry = {"Retry-After": RETRY_AFTER_SECONDS}
        if len(running) >= self._settings.relay_max_jobs:
            raise TooManyRequests("this edge runs its maximum of relay jobs", headers=retry)
        mine = sum(job.owner == owner for job in running)
        if mine >= self._settings.relay_max_jobs_per_principal:
            raise TooManyRequests("too many relay jobs running for this token", headers=retry)
        job = RelayJob(secrets.token_hex(8), owner)
        job.emit(
            "accepted",
            job=job.id,
            source=request.source,
            digest=str(request.root.digest),
            targets=[
                f"{repository.label}:{tag}"
                for target in request.targets
                for repository in target.repositories
                for tag in repository.tags
            ],
        )
        self._nursery.start_soon(self._run, job, request)  # raises if the edge is stopping
        self._nursery.start_soon(self._watchdog, job)
        self._jobs[job.id] = job
        log.info("relay job %s: %s to %d registries", job.id, request.source, len(request.targets))
        return job

    def job(self, job_id: str, owner: str) -> RelayJob:
        """The job ``job_id`` if ``owner`` made it; ``NotFound`` otherwise (whether it exists
        is nobody else's business)."""
        job = self._jobs.get(job_id)
        if job is None or not secrets.compare_digest(job.owner, owner):
            raise NotFound("no such relay job", detail={"job": job_id[:64]})
        return job

    def _forget_ended(self) -> None:
        now = trio.current_time()
        for job_id, job in list(self._jobs.items()):
            if job.ended_at is not None and now - job.ended_at > KEEP_ENDED_SECONDS:
                del self._jobs[job_id]

    async def _watchdog(self, job: RelayJob) -> None:
        """Cancel ``job`` once it has had no follower for the grace period."""
        while not job.ended:
            if job.followers:
                await job.wait_followers_changed()
                continue
            with trio.move_on_after(self._settings.relay_grace_seconds) as waited:
                await job.wait_followers_changed()
            if waited.cancelled_caught and not job.followers:
                log.info("relay job %s: its client went away; cancelling", job.id)
                job.cancel("the client went away")
                return

    async def _run(self, job: RelayJob, request: RelayRequest) -> None:
        started = trio.current_time()
        deadline = self._settings.relay_deadline_seconds
        try:
            with job.scope, trio.fail_after(deadline):
                summary = await self._relay(job, request)
            if job.scope.cancelled_caught:
                job.end(CANCELLED, reason=job.cancel_reason or "cancelled")
            else:
                job.end(DONE, **summary, seconds=round(trio.current_time() - started, 3))
        except trio.TooSlowError:
            job.end(FAILED, code="UNAVAILABLE", message=f"the relay took more than {deadline:g} s")
        except TargetFailed as exc:
            log.info("relay job %s failed at %s: %s", job.id, exc.target, exc.error.message)
            job.end(FAILED, target=exc.target, **_error_fields(exc.error))
        except RegistryError as exc:  # reading the build (origin, the cache)
            log.info("relay job %s failed reading the build: %s", job.id, exc.message)
            job.end(FAILED, **_error_fields(exc))
        except Exception:
            log.exception("relay job %s failed", job.id)
            job.end(FAILED, code="UNKNOWN", message="internal error in the relay")
        finally:
            job.end(CANCELLED, reason="the edge is stopping")  # no-op unless cancelled from above
            log.info("relay job %s ended: %s", job.id, job.outcome)

    async def _relay(self, job: RelayJob, request: RelayRequest) -> dict[str, Any]:
        plan = await self._reader.plan(request.repository, request.root)
        job.emit(
            "plan",
            digest=str(plan.root.digest),
            media_type=plan.root.media_type,
            manifests=1 + len(plan.children),
            referrers=sum(1 for m in plan.referrers if m.parsed.subject is not None),
            blobs=len(plan.blobs),
            bytes=plan.total_bytes,
        )
        copies: list[TargetCopy] = []
        failures: list[BaseException] = []

        async def copy_to(target: TargetRegistry, cancel: trio.CancelScope) -> None:
            try:
                copies.append(await self._copy(job, request, plan, target))
            except Exception as exc:
                failures.append(exc)
                cancel.cancel()

        async with trio.open_nursery() as nursery:
            for target in request.targets:
                nursery.start_soon(copy_to, target, nursery.cancel_scope)
        if failures:
            raise failures[0]
        total = CopyCounters()
        for copy in copies:
            total.copied += copy.counters.copied
            total.skipped += copy.counters.skipped
            total.mounted += copy.counters.mounted
            total.bytes_copied += copy.counters.bytes_copied
        return {
            "digest": str(plan.root.digest),
            "blobs_copied": total.copied,
            "blobs_skipped": total.skipped,
            "blobs_mounted": total.mounted,
            "bytes_copied": total.bytes_copied,
        }

    async def _copy(
        self, job: RelayJob, request: RelayRequest, plan: BuildPlan, target: TargetRegistry
    ) -> TargetCopy:
        found = request.credentials.get(target.registry)
        provider: CredentialsProvider = ANONYMOUS if found is None else StaticCredentials(found)
        concurrency = max(1, self._settings.relay_blob_concurrency)
        options = CopyOptions(concurrency, max(1, self._settings.relay_chunk_bytes))
        async with RegistryClient.open(
            target.base_url, provider, max_connections=concurrency + 2
        ) as client:
            copy = TargetCopy(
                client,
                target,
                plan,
                lambda digest: self._reader.blob_source(request.repository, digest),
                job.emit,
                options,
            )
            await copy.run()
        return copy


def _error_fields(error: RegistryError) -> dict[str, Any]:
    """What a follower is told of an error: the registry's own code and message, verbatim."""
    return {"code": error.code, "status": error.status, "message": error.message}
