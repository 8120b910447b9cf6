"""Workflows the CLI tests run, importable as `tests.cli.app:...` (by `--app` and `worker`)."""

from __future__ import annotations

from salvador_core import NO_RETRY, Engine, StepContext, Workflow
from salvador_core.backends.memory import MemoryBackend

ok = Workflow("cli-ok")


@ok.step("first")
def first(ctx: StepContext) -> dict[str, int]:
    return {"n": ctx.json()["n"]}


@ok.step("second")
async def second(ctx: StepContext) -> dict[str, int]:
    return {"doubled": ctx.results["first"]["n"] * 2}


fail = Workflow("cli-fail", retry=NO_RETRY)


@fail.step("prepare")
def prepare(ctx: StepContext) -> str:
    return "prepared"


@fail.step("explode")
def explode(ctx: StepContext) -> None:
    raise ValueError("the explode step always fails")


#: For `salvador worker tests.cli.app:workflows`.
workflows = [ok, fail]

#: For `salvador worker tests.cli.app:engine --url ...`: built on memory://, so a worker that
#: ran it as it is would never see tasks submitted to the URL.
engine = Engine(MemoryBackend(), workflows=workflows, poll_interval=0.1)

#: Not something `worker` can run.
not_a_workflow = 42
