"""Cases: the lifecycle state machine, SLA deadlines and breaches, and the figures (first-contact
resolution, transfers, repeats, handling time and cost). Pure: no I/O; time comes from the
events and the clock's ticks, never the wall clock, so a rebuild gives what the live run gave.

The lifecycle (a step not allowed from the current status is kept as a rejected step, with the
reason, and changes nothing; docs/decisions.md):

    (none) --opened--> open | assigned (when the opening names an employee)
    open | assigned --assigned | transferred--> assigned (open when transferred to a queue)
    open | assigned --escalated--> the same status, one level up
    open | assigned --resolved--> resolved --reopened--> assigned (the last owner) | open
    any but closed --closed--> closed (final)

Handling time is the time a case spends open or assigned, in stints: one per owner (department
and employee, or a department's queue), ended by the next owner, a resolution or a closing.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal
from functools import singledispatch
from typing import Any, Literal, TypeVar

from crm_shared.contracts.events import (
    CASE_SLA_BREACHED,
    COMPLAINT_CLOSED,
    COMPLAINT_OPENED,
    CaseAssigned,
    CaseClosed,
    CaseEscalated,
    CaseKind,
    CaseOpened,
    CasePriority,
    CaseReopened,
    CaseResolved,
    CaseSlaBreached,
    CaseStep,
    CaseTransferred,
    ComplaintClosed,
    ComplaintOpened,
    Event,
    SlaTarget,
)
from crm_shared.runtime.derived import Derived, derive

SOURCE = "interaction-service"
"""The source of the events the interaction service derives."""

Status = Literal["open", "assigned", "resolved", "closed"]
ACTIVE: frozenset[Status] = frozenset({"open", "assigned"})
"""Statuses in which the case is being handled: its clock runs and its deadlines apply."""
K = TypeVar("K")


@dataclass(frozen=True)
class SlaPolicy:
    """Hours to the first response and to resolution, per priority; the repeat window."""

    first_response_hours: Mapping[CasePriority, float]
    resolution_hours: Mapping[CasePriority, float]
    repeat_window: timedelta

    def deadlines(self, priority: CasePriority, opened_at: datetime) -> tuple[datetime, datetime]:
        return (
            opened_at + timedelta(hours=self.first_response_hours[priority]),
            opened_at + timedelta(hours=self.resolution_hours[priority]),
        )


@dataclass(frozen=True)
class Stint:
    """A spell of one owner: a department and an employee, or the department's queue (None)."""

    department: str
    employee_id: str | None
    started_at: datetime
    ended_at: datetime | None = None

    def seconds(self, until: datetime) -> float:
        """How long it lasted, or has lasted by `until` while it goes on (never negative)."""
        end = self.ended_at if self.ended_at is not None else until
        return max(0.0, (end - self.started_at).total_seconds())


@dataclass(frozen=True)
class Case:
    """One case as its steps made it."""

    case_id: str
    customer_id: str
    partition: int
    kind: CaseKind
    priority: CasePriority
    topic: str
    channel: str
    opened_at: datetime
    status: Status
    department: str
    employee_id: str | None
    first_response_due: datetime
    resolution_due: datetime
    updated_at: datetime
    first_response_at: datetime | None = None
    resolved_at: datetime | None = None
    closed_at: datetime | None = None
    first_response_breached: bool = False
    resolution_breached: bool = False
    transfers: int = 0
    agent_transfers: int = 0
    department_transfers: int = 0
    reopens: int = 0
    escalations: int = 0
    escalation_level: int = 0
    first_contact_claimed: bool | None = None
    resolution: str | None = None
    repeat_of: str | None = None
    contact_id: str | None = None
    order_id: str | None = None
    stints: tuple[Stint, ...] = ()

    @property
    def first_contact_resolution(self) -> bool | None:
        """Resolved without a transfer, an escalation or a reopening, unless the resolver said
        it took more than the first contact; None while it was never resolved."""
        if self.resolved_at is None:
            return None
        return (
            self.transfers == 0
            and self.escalations == 0
            and self.reopens == 0
            and self.first_contact_claimed is not False
        )

    def handling_seconds(self, until: datetime) -> float:
        """Time spent open or assigned; a stint still going counts up to `until`."""
        return sum(stint.seconds(until) for stint in self.stints)

    def resolution_seconds(self) -> float | None:
        """From opening to the (latest) resolution."""
        if self.resolved_at is None:
            return None
        return (self.resolved_at - self.opened_at).total_seconds()


class StepRejected(ValueError):
    """A step the case's status does not allow; the message says why."""


@dataclass(frozen=True)
class Breach:
    """A missed SLA target: the deadline that passed, and the department that held the case."""

    case_id: str
    customer_id: str
    target: SlaTarget
    due_at: datetime
    priority: CasePriority
    department: str


@dataclass(frozen=True)
class StepRecord:
    """A step as the case's history shows it: applied, or rejected with the reason."""

    source: str
    event_id: str
    case_id: str
    customer_id: str
    occurred_at: datetime
    step: str
    accepted: bool
    reason: str | None
    details: dict[str, Any]
    """The step's data (stored as jsonb)."""


@dataclass
class Folded:
    """What folding case steps or ticks produced: states to save, history, breaches, events."""

    cases: dict[str, Case] = field(default_factory=dict)
    steps: list[StepRecord] = field(default_factory=list)
    breaches: list[Breach] = field(default_factory=list)
    derived: list[Derived] = field(default_factory=list)


# ----------------------------------------------------------------------------- stints


def _end_stint(case: Case, at: datetime) -> tuple[Stint, ...]:
    if not case.stints or case.stints[-1].ended_at is not None:
        return case.stints
    last = case.stints[-1]
    return (*case.stints[:-1], replace(last, ended_at=max(at, last.started_at)))


def _hand_over(case: Case, department: str, employee_id: str | None, at: datetime) -> Case:
    """The case with a new owner from `at`: the current stint ends, a new one starts."""
    stints = (*_end_stint(case, at), Stint(department, employee_id, at))
    status: Status = "assigned" if employee_id is not None else "open"
    first_response_at = case.first_response_at
    if employee_id is not None and first_response_at is None:
        first_response_at = at
    return replace(
        case,
        status=status,
        department=department,
        employee_id=employee_id,
        stints=stints,
        first_response_at=first_response_at,
        updated_at=at,
    )


# ----------------------------------------------------------------------------- steps


def normalised_topic(topic: str) -> str:
    """A topic as repeats compare it: case and spacing do not matter."""
    return re.sub(r"\s+", " ", topic).strip().casefold()


def open_case(event: Event, data: CaseOpened, policy: SlaPolicy, repeat_of: str | None) -> Case:
    first_response_due, resolution_due = policy.deadlines(data.priority, event.time)
    case = Case(
        case_id=data.case_id,
        customer_id=event.customer_id,
        partition=event.partition,
        kind=data.kind,
        priority=data.priority,
        topic=data.topic,
        channel=data.channel.value,
        opened_at=event.time,
        status="open",
        department=data.department,
        employee_id=None,
        first_response_due=first_response_due,
        resolution_due=resolution_due,
        updated_at=event.time,
        repeat_of=repeat_of,
        contact_id=data.contact_id,
        order_id=data.order_id,
    )
    return _hand_over(case, data.department, data.employee_id, event.time)


@singledispatch
def _step(data: CaseStep, case: Case, at: datetime) -> Case:
    """How a step after the opening changes a case (the opening is `open_case`)."""
    raise StepRejected(f"case {data.case_id!r} was opened before")


def _require_active(case: Case, step: str) -> None:
    if case.status not in ACTIVE:
        raise StepRejected(f"cannot {step} a {case.status} case")


@_step.register
def _assigned(data: CaseAssigned, case: Case, at: datetime) -> Case:
    _require_active(case, "assign")
    return _hand_over(case, data.department, data.employee_id, at)


@_step.register
def _transferred(data: CaseTransferred, case: Case, at: datetime) -> Case:
    _require_active(case, "transfer")
    if (data.to_department, data.to_employee_id) == (case.department, case.employee_id):
        raise StepRejected("the case is already with that department and employee")
    between_departments = data.to_department != case.department
    moved = _hand_over(case, data.to_department, data.to_employee_id, at)
    return replace(
        moved,
        transfers=case.transfers + 1,
        department_transfers=case.department_transfers + between_departments,
        agent_transfers=case.agent_transfers + (not between_departments),
    )


@_step.register
def _escalated(data: CaseEscalated, case: Case, at: datetime) -> Case:
    _require_active(case, "escalate")
    return replace(
        case,
        escalations=case.escalations + 1,
        escalation_level=max(case.escalation_level, data.level),
        updated_at=at,
    )


@_step.register
def _resolved(data: CaseResolved, case: Case, at: datetime) -> Case:
    _require_active(case, "resolve")
    return replace(
        case,
        status="resolved",
        resolved_at=at,
        resolution=data.resolution,
        first_contact_claimed=data.first_contact,
        first_response_at=case.first_response_at or at,
        stints=_end_stint(case, at),
        updated_at=at,
    )


@_step.register
def _reopened(data: CaseReopened, case: Case, at: datetime) -> Case:
    if case.status != "resolved":
        raise StepRejected(f"only a resolved case can be reopened, this one is {case.status}")
    reopened = _hand_over(case, case.department, case.employee_id, at)
    return replace(reopened, reopens=case.reopens + 1)


@_step.register
def _closed(data: CaseClosed, case: Case, at: datetime) -> Case:
    if case.status == "closed":
        raise StepRejected("the case is already closed")
    return replace(case, status="closed", closed_at=at, stints=_end_stint(case, at), updated_at=at)


def step_name(event_type: str) -> str:
    """'crm.case.transferred.v1' -> 'transferred'."""
    return event_type.split(".")[2]


# ----------------------------------------------------------------------------- SLA


def overdue(case: Case, now: datetime) -> list[SlaTarget]:
    """The targets the case misses at `now` that were not yet counted as missed."""
    if case.status not in ACTIVE:
        return []
    missed: list[SlaTarget] = []
    if (
        case.first_response_at is None
        and not case.first_response_breached
        and case.first_response_due < now
    ):
        missed.append("first_response")
    if not case.resolution_breached and case.resolution_due < now:
        missed.append("resolution")
    return missed


def _breach(case: Case, target: SlaTarget, cause: Event, folded: Folded) -> Case:
    due = case.first_response_due if target == "first_response" else case.resolution_due
    breach = Breach(case.case_id, case.customer_id, target, due, case.priority, case.department)
    folded.breaches.append(breach)
    folded.derived.append(
        derive(
            cause,
            CASE_SLA_BREACHED,
            case.customer_id,
            CaseSlaBreached(
                case_id=case.case_id,
                target=target,
                priority=case.priority,
                department=case.department,
                due_at=due,
            ),
            source=SOURCE,
            time=due,
            part=f"{case.case_id}:{target}",
        )
    )
    if target == "first_response":
        return replace(case, first_response_breached=True)
    return replace(case, resolution_breached=True)


def breach_overdue(case: Case, now: datetime, cause: Event, folded: Folded) -> Case:
    """Count the targets the case misses at `now` as missed, caused by `cause`."""
    for target in overdue(case, now):
        case = _breach(case, target, cause, folded)
    return case


# ----------------------------------------------------------------------------- complaints


def _complaint_signal(before: Case | None, after: Case, cause: Event) -> Derived | None:
    """A complaint that became open, or stopped being open, with this step."""
    if after.kind != "complaint":
        return None
    was_open = before is not None and before.status in ACTIVE
    is_open = after.status in ACTIVE
    if is_open and not was_open:
        return derive(
            cause,
            COMPLAINT_OPENED,
            after.customer_id,
            ComplaintOpened(
                case_id=after.case_id,
                topic=after.topic,
                priority=after.priority,
                department=after.department,
                reopened=before is not None,
            ),
            source=SOURCE,
            part=after.case_id,
        )
    if was_open and not is_open:
        outcome: Literal["resolved", "closed"] = (
            "resolved" if after.status == "resolved" else "closed"
        )
        return derive(
            cause,
            COMPLAINT_CLOSED,
            after.customer_id,
            ComplaintClosed(case_id=after.case_id, outcome=outcome),
            source=SOURCE,
            part=after.case_id,
        )
    return None


# ----------------------------------------------------------------------------- folding


@dataclass(frozen=True)
class Opening:
    """A case's opening, as repeat detection compares them."""

    case_id: str
    customer_id: str
    topic: str
    opened_at: datetime


def repeat_of(
    openings: Iterable[Opening], customer_id: str, topic: str, at: datetime, window: timedelta
) -> str | None:
    """The latest case the customer opened on the same topic within `window` before `at`."""
    key = normalised_topic(topic)
    earlier = [
        o
        for o in openings
        if o.customer_id == customer_id
        and normalised_topic(o.topic) == key
        and at - window <= o.opened_at <= at
    ]
    return max(earlier, key=lambda o: (o.opened_at, o.case_id)).case_id if earlier else None


def fold_steps(
    cases: Mapping[str, Case],
    openings: Sequence[Opening],
    events: Iterable[Event],
    policy: SlaPolicy,
) -> Folded:
    """Apply case steps in log order to the cases they name (`cases`: the stored ones they
    touch; `openings`: the customers' earlier openings, for repeats). A step first lets the
    deadlines it comes after pass, then applies, or is kept as rejected with the reason."""
    folded = Folded()
    known = dict(cases)
    seen_openings = list(openings)
    for event in events:
        data = event.data
        assert isinstance(data, CaseStep)
        before = known.get(data.case_id)
        if before is not None and before.customer_id == event.customer_id:
            breached = breach_overdue(before, event.time, event, folded)
            if breached is not before:  # the breach stands even if the step is rejected
                before = known[data.case_id] = folded.cases[data.case_id] = breached
        try:
            after = _apply(before, event, data, policy, seen_openings)
        except StepRejected as rejected:
            folded.steps.append(_record(event, data, str(rejected)))
            continue
        folded.steps.append(_record(event, data, None))
        signal = _complaint_signal(before, after, event)
        if signal is not None:
            folded.derived.append(signal)
        if before is None:
            seen_openings.append(
                Opening(after.case_id, after.customer_id, after.topic, after.opened_at)
            )
        known[data.case_id] = folded.cases[data.case_id] = after
    return folded


def _apply(
    before: Case | None,
    event: Event,
    data: CaseStep,
    policy: SlaPolicy,
    openings: Sequence[Opening],
) -> Case:
    if before is None:
        if not isinstance(data, CaseOpened):
            raise StepRejected(f"case {data.case_id!r} was never opened")
        repeat = repeat_of(
            openings, event.customer_id, data.topic, event.time, policy.repeat_window
        )
        return open_case(event, data, policy, repeat)
    if before.customer_id != event.customer_id:
        raise StepRejected(f"case {data.case_id!r} belongs to another customer")
    return _step(data, before, event.time)


def _record(event: Event, data: CaseStep, reason: str | None) -> StepRecord:
    return StepRecord(
        source=event.source,
        event_id=event.id,
        case_id=data.case_id,
        customer_id=event.customer_id,
        occurred_at=event.time,
        step=step_name(event.type),
        accepted=reason is None,
        reason=reason,
        details=data.model_dump(mode="json"),
    )


def fold_ticks(cases: Iterable[Case], ticks: Sequence[Event]) -> Folded:
    """Cases of one partition whose deadlines the partition's ticks (in log order) pass: each
    missed target at the first tick after its deadline, as if the ticks came one at a time."""
    folded = Folded()
    for case in cases:
        current = case
        for tick in ticks:
            current = breach_overdue(current, tick.time, tick, folded)
        if current is not case:
            folded.cases[case.case_id] = current
    return folded


# ----------------------------------------------------------------------------- figures


def cost_of_handling(
    case: Case, rates: Mapping[str, Decimal], default_rate: Decimal, until: datetime
) -> Decimal:
    """Hours in each department times its hourly rate, to the cent."""
    total = sum(
        (
            Decimal(str(stint.seconds(until))) / 3600 * rates.get(stint.department, default_rate)
            for stint in case.stints
        ),
        Decimal(0),
    )
    return total.quantize(Decimal("0.01"))


def handling_by(case: Case, key: Callable[[Stint], K], until: datetime) -> dict[K, float]:
    """Seconds of handling per department, per employee, or any key of a stint."""
    totals: dict[K, float] = {}
    for stint in case.stints:
        name = key(stint)
        totals[name] = totals.get(name, 0.0) + stint.seconds(until)
    return totals


@dataclass(frozen=True)
class Backlog:
    """Age of a department's open cases at one moment, in seconds."""

    open_cases: int
    oldest_seconds: float | None
    median_seconds: float | None


def backlog(opened_at: Sequence[datetime], at: datetime) -> Backlog:
    ages = [max(0.0, (at - when).total_seconds()) for when in opened_at]
    if not ages:
        return Backlog(0, None, None)
    return Backlog(len(ages), max(ages), statistics.median(ages))
