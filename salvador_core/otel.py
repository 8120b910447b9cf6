"""OpenTelemetry traces and metrics for salvador, as observers (the `otel` extra).

    from salvador_core.otel import MetricsObserver, TracingObserver
    engine = Engine.from_url(url, observers=[LoggingObserver(), TracingObserver(), MetricsObserver()])

Nothing here is imported unless you import it, so an engine without these observers pays
nothing for them. They use the global tracer and meter providers unless given others.

Traces. `submit` makes a PRODUCER span (a child of whatever span is current in the
submitting code) and writes its W3C trace context (`traceparent`, `tracestate`) into the
task's `meta`. A worker, in any process on any machine, starts one CONSUMER span per run of
the task as a child of that context, with a child span per step and per compensation, so
the whole life of a task is one trace. Each run and step span carries `salvador.workflow`,
`salvador.task_id`, `salvador.step`, `salvador.attempt` and `salvador.backend`; a retried
step shows as one run span per attempt. A failing step's span records the exception and an
ERROR status. While a step runs, its span is the current span, so spans a step makes
itself (an HTTP call, a query) are its children.

Metrics. Counters of tasks submitted, completed, failed, cancelled, compensated, retried
and dead-lettered (by workflow, and by reason for dead letters); a histogram of step
durations; and the recovery figures: runs resumed after a lost worker (an expired lease),
writes refused by the version fence, and the time from a lost worker's last write to its
task resuming.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterable, Sequence
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import metrics, propagate, trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from salvador_core.observe import Observer
from salvador_core.task import Claim, DeadLetter, Task, TaskError, TaskStatus, WorkflowStats, utcnow

#: The span of the submit in progress in this asyncio task (submitting -> submitted).
_submit_span: contextvars.ContextVar[Span | None] = contextvars.ContextVar(
    "salvador_submit_span", default=None
)


def _attributes(task: Task, backend: str | None, step: str | None = None) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "salvador.workflow": task.workflow,
        "salvador.task_id": task.id,
        "salvador.attempt": task.attempt,
    }
    if step is not None:
        attributes["salvador.step"] = step
    if backend is not None:
        attributes["salvador.backend"] = backend
    return attributes


class TracingObserver(Observer):
    """Spans for submit, each run of a task, and each step and compensation.

    `backend` names the backend in the spans' `salvador.backend` attribute (e.g. "redis").
    """

    def __init__(
        self, tracer_provider: trace.TracerProvider | None = None, *, backend: str | None = None
    ) -> None:
        self.tracer = trace.get_tracer("salvador", tracer_provider=tracer_provider)
        self.backend = backend
        self._runs: dict[str, Span] = {}  # task id -> the span of its run in this process
        self._steps: dict[tuple[str, str, bool], tuple[Span, object]] = {}

    # -- producer ------------------------------------------------------------------------------

    def submitting(self, task: Task) -> Task:
        span = self.tracer.start_span(
            f"salvador submit {task.workflow}",
            kind=SpanKind.PRODUCER,
            attributes=_attributes(task, self.backend),
        )
        _submit_span.set(span)
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=trace.set_span_in_context(span))
        return task.evolve(meta={**task.meta, **carrier})

    def submitted(self, task: Task, *, created: bool) -> None:
        span = _submit_span.get()
        if span is None:
            return
        _submit_span.set(None)
        span.set_attribute("salvador.task_id", task.id)
        span.set_attribute("salvador.duplicate", not created)
        span.end()

    # -- worker --------------------------------------------------------------------------------

    def _run_span(self, task: Task) -> Span:
        span = self._runs.get(task.id)
        if span is None:
            parent = propagate.extract(dict(task.meta))
            span = self.tracer.start_span(
                f"salvador run {task.workflow}",
                context=parent,
                kind=SpanKind.CONSUMER,
                attributes=_attributes(task, self.backend),
            )
            self._runs[task.id] = span
        return span

    def _end_run(self, task_id: str, error: BaseException | str | None = None) -> None:
        span = self._runs.pop(task_id, None)
        if span is None:
            return
        if isinstance(error, BaseException):
            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
        elif error is not None:
            span.set_status(Status(StatusCode.ERROR, error))
        span.end()

    def resumed(self, task: Task, *, where: str) -> None:
        self._run_span(task).add_event("resumed after a lost worker", {"salvador.lost_attempt": task.attempt})

    def step_started(self, task: Task, step: str, *, compensation: bool) -> None:
        # The run span keeps the attempt it was started with (that of the step the run
        # began at); each step span carries its own.
        run = self._run_span(task)
        name = f"salvador {'compensate' if compensation else 'step'} {step}"
        span = self.tracer.start_span(
            name, context=trace.set_span_in_context(run), attributes=_attributes(task, self.backend, step)
        )
        span.set_attribute("salvador.compensation", compensation)
        # Current while the step runs, so spans the step makes are its children.
        token = otel_context.attach(trace.set_span_in_context(span))
        self._steps[(task.id, step, compensation)] = (span, token)

    def step_finished(
        self, task: Task, step: str, *, compensation: bool, seconds: float, error: BaseException | None
    ) -> None:
        entry = self._steps.pop((task.id, step, compensation), None)
        if entry is None:
            return
        span, token = entry
        try:
            otel_context.detach(token)  # type: ignore[arg-type]
        except ValueError:
            pass  # attached in another context (a cancelled run): nothing to restore here
        if error is not None:
            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
        span.end()

    def retry_scheduled(self, task: Task, step: str, *, delay: float, error: TaskError) -> None:
        span = self._runs.get(task.id)
        if span is not None:
            span.set_attribute("salvador.retry_in", delay)
        self._end_run(task.id, f"step {step!r} attempt {error.attempt} failed; retrying in {delay:.2f}s")

    def dead_lettered(self, task: Task, reason: DeadLetter, error: TaskError) -> None:
        span = self._runs.get(task.id)
        if span is not None:
            span.add_event(
                "dead-lettered", {"salvador.dead_letter": reason.value, "salvador.error": error.message}
            )

    def settled(self, task: Task) -> None:
        span = self._runs.get(task.id)
        if span is not None:
            span.set_attribute("salvador.status", task.status.value)
        failed = task.status is not TaskStatus.COMPLETED
        self._end_run(task.id, f"ended {task.status.value}" if failed else None)

    def released(self, task: Task, *, reason: str) -> None:
        self._end_run(task.id, f"released ({reason})")

    def lease_lost(self, claim: Claim, *, detail: str, fenced: bool) -> None:
        self._end_run(claim.task_id, detail)

    def run_failed(self, claim: Claim, error: BaseException, *, recorded: bool) -> None:
        self._end_run(claim.task_id, error)


class MetricsObserver(Observer):
    """Counters and histograms of what tasks and workers do; see the module docstring."""

    def __init__(self, meter_provider: metrics.MeterProvider | None = None) -> None:
        meter = metrics.get_meter("salvador", meter_provider=meter_provider)
        self.submitted_counter = meter.create_counter(
            "salvador.tasks.submitted", description="tasks stored by submit"
        )
        self.settled_counter = meter.create_counter(
            "salvador.tasks.settled", description="runs that wrote a final status, by status"
        )
        self.retried_counter = meter.create_counter(
            "salvador.tasks.retried", description="failed attempts retried"
        )
        self.dead_counter = meter.create_counter(
            "salvador.tasks.dead_lettered", description="tasks that failed for good, by reason"
        )
        self.step_duration = meter.create_histogram(
            "salvador.step.duration", unit="s", description="time a step or compensation call took"
        )
        self.resumed_counter = meter.create_counter(
            "salvador.leases.expired", description="runs resumed after a lost worker (its lease expired)"
        )
        self.fenced_counter = meter.create_counter(
            "salvador.writes.fenced",
            description="writes refused by the version fence (a zombie's, a takeover's)",
        )
        self._queues: dict[str, WorkflowStats] = {}
        meter.create_observable_gauge(
            "salvador.queue.depth",
            callbacks=[self._depths],
            description="tasks due and waiting for a worker, per workflow (from the last upkeep)",
        )
        meter.create_observable_gauge(
            "salvador.queue.oldest_wait",
            callbacks=[self._oldest],
            unit="s",
            description="how long the longest-waiting due task has waited, per workflow",
        )
        self.recovery_time = meter.create_histogram(
            "salvador.recovery.duration",
            unit="s",
            description="from a lost worker's last write to its task resuming elsewhere",
        )

    def submitted(self, task: Task, *, created: bool) -> None:
        if created:
            self.submitted_counter.add(1, {"salvador.workflow": task.workflow})

    def step_finished(
        self, task: Task, step: str, *, compensation: bool, seconds: float, error: BaseException | None
    ) -> None:
        self.step_duration.record(
            seconds,
            {
                "salvador.workflow": task.workflow,
                "salvador.step": step,
                "salvador.compensation": compensation,
                "salvador.outcome": "ok" if error is None else type(error).__name__,
            },
        )

    def retry_scheduled(self, task: Task, step: str, *, delay: float, error: TaskError) -> None:
        self.retried_counter.add(1, {"salvador.workflow": task.workflow, "salvador.step": step})

    def settled(self, task: Task) -> None:
        self.settled_counter.add(
            1, {"salvador.workflow": task.workflow, "salvador.status": task.status.value}
        )
        if task.dead_letter is not None:
            # Counted once, when the task settles (a rollback reports its reason twice).
            reason = str(task.dead_letter)
            self.dead_counter.add(1, {"salvador.workflow": task.workflow, "salvador.dead_letter": reason})

    def resumed(self, task: Task, *, where: str) -> None:
        self.resumed_counter.add(1, {"salvador.workflow": task.workflow})
        self.recovery_time.record(
            max(0.0, (utcnow() - task.updated_at).total_seconds()), {"salvador.workflow": task.workflow}
        )

    def queue_stats(self, stats: Sequence[WorkflowStats]) -> None:
        self._queues = {s.workflow: s for s in stats}

    def _depths(self, options: metrics.CallbackOptions) -> Iterable[metrics.Observation]:
        return [metrics.Observation(s.queued, {"salvador.workflow": w}) for w, s in self._queues.items()]

    def _oldest(self, options: metrics.CallbackOptions) -> Iterable[metrics.Observation]:
        return [
            metrics.Observation(s.oldest_wait_seconds or 0.0, {"salvador.workflow": w})
            for w, s in self._queues.items()
        ]

    def lease_lost(self, claim: Claim, *, detail: str, fenced: bool) -> None:
        if fenced:
            self.fenced_counter.add(1, {"salvador.workflow": claim.workflow})


__all__: Sequence[str] = ["MetricsObserver", "TracingObserver"]
