"""Step reminders (REMINDERS_ENABLED): nudge students about unbooked steps whose next class is near.

Eligible: an active enrollment, a step still `unbooked`, and a scheduled, not-yet-started option of
that step starting within REMINDER_WINDOW_DAYS. The window is named by the earliest such option, the class
the reminder is about (`window_key = "class:<digest of its id>"`): one reminder per (enrollment, step,
window), enforced by the unique key of `reminder_log`, so re-runs never send twice. While a class the step
was reminded about is still to come (in range), no other reminder goes out for the step, also when that
class is moved to another time (once its reminder was sent: one still waiting is replaced, below) or an
earlier class is added; once it has passed (or was cancelled, or moved out of range), the next class in range
opens a new window. A reminder written by an earlier version is keyed by its class's start
(`start:<UTC yyyymmddThhmm>Z`) and counts until that time.

A reminder counts only while its mail may still go or went: one whose mail ended `expired` (held up past the
class's start as queued, SMTP down meanwhile) is set aside by the next run (`forget_expired`: its window key
becomes `expired:<row id>`), so a class moved later gets its step a fresh reminder naming the new time. The
mail names its `reminder_log` row (`reminder_id`, and in its dedupe key): a fresh row is a fresh mail.

A move of a class (its start changed by a `class.upserted`, tasks.bookings.handlers) ends the reminders still
`pending` that list it (`options`: up to three classes of the step, the one the reminder is about first) with
another start, and its cancellation every one still `pending` that lists it (`class_changed`): `expired`,
never sent, set aside by the next run like any expired one, which then reminds the step naming the new time (or
the next class in range), once. A `sending` one is its relay's (made to expire at once, should its attempt
fail); one without `reminder_id` (an earlier version's) goes as before; one already sent stands (no second
reminder for a class merely moved). A batch re-reads the classes its mails would list under a share lock and
leaves to the next run a step any of them moved (or was cancelled) since the run began, so no reminder is
written naming a time a class no longer has.
"""
from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import BigInteger, String, and_, cast, literal, literal_column, or_, select, text, update
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Session

from db.database import upsert_insert
from db.enums import ClassStatus, EnrollmentStatus, OutboxStatus, ProgressStatus
from db.models import (
    CourseProgram,
    CourseStep,
    CourseStepOption,
    GroupClass,
    OutboxMessage,
    ReminderLog,
    Student,
    StudentCourseEnrollment,
    StudentCourseProgress,
)
from db.models.messaging import REMINDER_OPTIONS
from db.types import utcnow
from tasks.machines import OUTBOX
from tasks.messaging.mail import parse_when
from tasks.messaging.outbox import add_mails

log = logging.getLogger("coursepipe.reminders")

OPTIONS_LISTED = 3
EXPIRED_PREFIX = "expired:"
TOPIC = "step_reminder"
MOVED_CAUSE = "class moved"
CANCELLED_CAUSE = "class cancelled"
DELETED_CAUSE = "course deleted"


def window_key(class_id: str) -> str:
    """A reminder's window: the class it is about (a digest: a platform id may be longer than the column)."""
    return "class:" + hashlib.sha256(class_id.encode()).hexdigest()[:24]


def _start_key(at: datetime) -> str:
    """The window key of an earlier version, named by the class's start: it counts until that time."""
    return f"start:{at:%Y%m%dT%H%M}Z"


@dataclass(frozen=True)
class ReminderRun:
    """What one run reminds about, fixed when it starts: its clock, and each step with an option starting
    inside the window (the classes earliest first)."""

    now: datetime
    upcoming: dict[int, list[tuple[str, str, datetime, str | None]]]

    def window(self, step_id: int) -> str:
        return window_key(self.upcoming[step_id][0][0])

    def standing(self) -> list[str]:
        """The windows of every class still to come in range: a step reminded about one of them is not reminded
        again (each key names one class; the look-up is by the step's own rows)."""
        return sorted({window_key(c[0]) for classes in self.upcoming.values() for c in classes})


def plan(*, session: Session, settings, now: datetime | None = None) -> ReminderRun | None:
    """The steps that have an option starting inside the window (few); None when off or when none has."""
    if not settings.reminders_enabled:
        return None
    now = now or utcnow()
    horizon = now + timedelta(days=settings.reminder_window_days)
    upcoming: dict[int, list] = defaultdict(list)
    for step_id, class_id, title, starts_at, class_tz in session.execute(
        select(CourseStepOption.step_id, GroupClass.id, GroupClass.title, GroupClass.starts_at, GroupClass.timezone)
        .join(GroupClass, GroupClass.id == CourseStepOption.group_class_id)
        # a deleted course's steps cannot be booked: nothing to remind of
        .join(CourseProgram, CourseProgram.id == CourseStepOption.program_id)
        .where(
            CourseProgram.deleted_at.is_(None),
            CourseStepOption.deleted_at.is_(None),
            GroupClass.status == ClassStatus.SCHEDULED,
            GroupClass.starts_at > now,
            GroupClass.starts_at <= horizon,
        )
        .order_by(GroupClass.starts_at, GroupClass.id)
    ).all():
        upcoming[step_id].append((class_id, title, starts_at, class_tz))
    return ReminderRun(now=now, upcoming=dict(upcoming)) if upcoming else None


def expired_key(reminder_id: int) -> str:
    """The window key of a reminder whose mail expired unsent: it holds no window (and stays unique)."""
    return f"{EXPIRED_PREFIX}{reminder_id}"


def forget_expired(*, session: Session) -> int:
    """The `reminder_log` rows whose mail ended `expired` stop holding their window: that reminder never reached
    the student, and the step is reminded again while its class is still to come. Each row is kept, its window
    key made `expired:<its id>` (a row is never deleted: SQLite would give a later row its id, and the expired
    mail naming that id would take the later reminder for its own). Expired mails are few (found through the
    status index). Returns how many were forgotten."""
    expired = (select(cast(OutboxMessage.payload[("context", "reminder_id")].as_string(), BigInteger))
               .where(OutboxMessage.status == OutboxStatus.EXPIRED, OutboxMessage.topic == TOPIC))
    forgotten = session.execute(
        update(ReminderLog)
        .where(ReminderLog.id.in_(expired), ~ReminderLog.window_key.startswith(EXPIRED_PREFIX))
        .values(window_key=literal(EXPIRED_PREFIX) + cast(ReminderLog.id, String))
        .execution_options(synchronize_session=False)).rowcount
    if forgotten:
        log.info("forgot %d reminder(s) whose mail expired unsent: their steps may be reminded again", forgotten)
    return forgotten


def course_deleted(*, session: Session, program_id: int, now: datetime | None = None) -> int:
    """The course was deleted: its steps can no longer be booked, so the step reminders about it still to send end
    `expired` (not sent, their last error saying why), and one being sent expires at its next attempt. Its steps
    are not reminded again (`plan` skips deleted courses). Returns how many ended."""
    now = now or utcnow()
    of_course = (OutboxMessage.topic == TOPIC, OutboxMessage.enrollment_id.in_(
        select(StudentCourseEnrollment.id).where(StudentCourseEnrollment.program_id == program_id)))
    _expire_when_tried(session.scalars(select(OutboxMessage).where(OutboxMessage.status == OutboxStatus.SENDING,
                                                                    *of_course)
                                       .order_by(OutboxMessage.id).with_for_update()), now)
    return _end(session, of_course, cause=DELETED_CAUSE,
                why="course deleted before it was sent: its steps cannot be booked", now=now)


def _expire_when_tried(sending, now: datetime) -> None:
    """Reminders being sent are their relays': each expires at its next attempt, should this one fail."""
    for message in sending:
        message.payload = {**message.payload, "context": {**message.payload["context"], "expires_at": now.isoformat()}}


def _end(session: Session, which, *, cause: str, why: str, now: datetime) -> int:
    """The pending reminders `which` (SQL conditions) end `expired`, `why` their last error, each move logged under
    `cause`. Returns how many ended."""
    ended = session.execute(
        update(OutboxMessage)
        .where(OutboxMessage.status == OutboxStatus.PENDING, *which)
        .values(status=OutboxStatus.EXPIRED, last_error=why)
        .returning(OutboxMessage.id, OutboxMessage.enrollment_id)
        .execution_options(synchronize_session=False)).all()
    OUTBOX.log_moves(session, [(row.id, OutboxStatus.PENDING, OutboxStatus.EXPIRED, cause, row.enrollment_id)
                               for row in ended], at=now)
    return len(ended)


def _listing(session: Session, class_id: str):
    """The step reminders listing the class (`options`, which holds the class a reminder is about first), as SQL:
    on PostgreSQL the expression of the GIN index of the pending reminders' options
    (ix_outbox_message_reminder_options), so a move reads only the mails that list its class. None on SQLite: the
    rows are read through the status index and `_starts_given` decides."""
    if session.get_bind().dialect.name != "postgresql":
        return None
    return literal_column(REMINDER_OPTIONS).op("@>")(literal([{"class_id": class_id}], JSONB))


def _starts_given(context: dict, class_id: str) -> list[str]:
    """The starts a reminder's mail gives the class among its `options` (the class it is about is listed first)."""
    return [option["starts_at"] for option in context.get("options") or []
            if isinstance(option, dict) and option.get("class_id") == class_id
            and isinstance(option.get("starts_at"), str)]


def class_changed(*, session: Session, class_id: str, starts_at: datetime, cancelled: bool = False,
                  now: datetime | None = None) -> int:
    """The class moved, or was cancelled (a `class.upserted`): the step reminders still to send (`pending`) that
    name or list it with another start — every one, when it was cancelled — end `expired`, as one held up past
    its class does:
    not sent, their last error saying why, and the next run sets them aside (`forget_expired`) and reminds the
    step again, of the class's current time or of the next class in range. One being sent (`sending`) is its
    relay's: if that attempt fails, the row comes back `pending` expiring now, so its next attempt ends it
    `expired` like the others. A reminder written before reminders named their `reminder_log` row
    (no `reminder_id`) could not be set aside, and so is left to go as before. Returns how many ended."""
    now = now or utcnow()
    listing = _listing(session, class_id)

    def stale(status: OutboxStatus) -> list[OutboxMessage]:
        # locked in id order, as the relay records its outcomes
        query = (select(OutboxMessage).where(OutboxMessage.status == status, OutboxMessage.topic == TOPIC)
                 .order_by(OutboxMessage.id).with_for_update())
        found = []
        for message in session.scalars(query if listing is None else query.where(listing)):
            context = (message.payload or {}).get("context") or {}
            given = _starts_given(context, class_id)
            if context.get("reminder_id") is not None and given and (
                    cancelled or any(parse_when(start) != starts_at for start in given)):
                found.append(message)
        return found

    _expire_when_tried(stale(OutboxStatus.SENDING), now)  # few: found through the status index
    queued = [message.id for message in stale(OutboxStatus.PENDING)]
    if not queued:
        return 0
    cause, why = ((CANCELLED_CAUSE, "class cancelled before it was sent: no longer true") if cancelled else
                  (MOVED_CAUSE, f"class moved to {starts_at.isoformat()} before it was sent: no longer true"))
    ended = _end(session, (OutboxMessage.id.in_(queued),), cause=cause, why=why, now=now)
    if ended:
        log.info("class %s %s: %d step reminder(s) about it will not be sent; their steps are reminded again",
                 class_id, "cancelled" if cancelled else f"moved to {starts_at.isoformat()}", ended)
    return ended


def _unchanged(session: Session, run: ReminderRun, step_ids: set[int]) -> set[int]:
    """The steps whose classes the mail would list (the one reminded about and the other options) are still as the
    run planned them (their starts, scheduled). Their rows are read under a share lock (PostgreSQL): a
    `class.upserted` moving one waits for this batch to commit, and then ends its mails (class_changed); one that
    committed first is seen here, and that step is left to the next run."""
    planned = {step_id: run.upcoming[step_id][:OPTIONS_LISTED] for step_id in step_ids}
    current = dict(session.execute(
        select(GroupClass.id, GroupClass.starts_at)
        .where(GroupClass.id.in_(sorted({c[0] for classes in planned.values() for c in classes})),
               GroupClass.status == ClassStatus.SCHEDULED)
        .order_by(GroupClass.id).with_for_update(read=True)).all())
    unchanged = {step_id for step_id, classes in planned.items() if all(current.get(c[0]) == c[2] for c in classes)}
    if len(unchanged) < len(planned):
        log.info("%d step(s) left to the next reminders run: their class moved or was cancelled since this one "
                 "began", len(planned) - len(unchanged))
    return unchanged


def _candidates(run: ReminderRun, *columns):
    """Those steps' unbooked progress rows of active enrollments not reminded about a class still to come: a
    run after the first reads only what is new (the unique key of reminder_log still guards the insert)."""
    reminded = select(ReminderLog.id).where(
        ReminderLog.enrollment_id == StudentCourseProgress.enrollment_id,
        ReminderLog.step_id == StudentCourseProgress.step_id,
        or_(ReminderLog.window_key.in_(run.standing()),
            and_(ReminderLog.window_key.startswith("start:"), ReminderLog.window_key > _start_key(run.now))))
    return (
        select(*columns)
        .select_from(StudentCourseProgress)
        .join(StudentCourseEnrollment, StudentCourseEnrollment.id == StudentCourseProgress.enrollment_id)
        .join(Student, Student.id == StudentCourseEnrollment.student_id)
        .join(CourseStep, CourseStep.id == StudentCourseProgress.step_id)
        .where(
            StudentCourseProgress.step_id.in_(sorted(run.upcoming)),
            StudentCourseProgress.status == ProgressStatus.UNBOOKED,
            StudentCourseEnrollment.status == EnrollmentStatus.ACTIVE,
            CourseStep.deleted_at.is_(None),
            Student.email.is_not(None),
            ~reminded.exists(),
        )
    )


def batches(*, session: Session, run: ReminderRun, size: int | None = None) -> list[tuple[int, int]]:
    """The run cut into ranges of enrollment ids (first, last), each holding about `size` reminders
    (an enrollment's steps are never split). The ids are streamed, never held all at once."""
    size = size or BATCH
    ranges: list[tuple[int, int]] = []
    first = last = None
    count = 0
    rows = session.execute(_candidates(run, StudentCourseProgress.enrollment_id)
                           .order_by(StudentCourseProgress.enrollment_id),
                           execution_options={"yield_per": 10_000}).scalars()
    for enrollment_id in rows:
        if count >= size and enrollment_id != last:
            ranges.append((first, last))
            first, count = None, 0
        if first is None:
            first = enrollment_id
        last = enrollment_id
        count += 1
    if first is not None:
        ranges.append((first, last))
    return ranges


def remind(*, session: Session, run: ReminderRun, first: int, last: int) -> int:
    """Queue one `step_reminder` mail per eligible (enrollment, step) of the enrollments `first`..`last`:
    one insert into `reminder_log` (ON CONFLICT DO NOTHING RETURNING: a concurrent run's are skipped) and
    one into the outbox. Returns how many were queued."""
    candidates = session.execute(
        _candidates(run, StudentCourseProgress.enrollment_id, StudentCourseProgress.step_id, CourseStep.label,
                    CourseStep.title, Student.email, Student.name, Student.timezone, CourseProgram.code,
                    CourseProgram.title, CourseProgram.timezone)
        .join(CourseProgram, CourseProgram.id == StudentCourseEnrollment.program_id)
        # the range on both sides lets the database read only these enrollments' rows of each table
        .where(StudentCourseProgress.enrollment_id.between(first, last),
               StudentCourseEnrollment.id.between(first, last))
        .order_by(StudentCourseProgress.enrollment_id, CourseStep.position)
        # the students' rows under a key-share lock (PostgreSQL): an erasure committing meanwhile is waited
        # for, and its student then drops out (no address), instead of getting a mail written after the
        # erasure had looked for their mails
        .with_for_update(read=True, key_share=True, of=Student)
    ).all()
    unchanged = _unchanged(session, run, {row[1] for row in candidates}) if candidates else set()
    candidates = [row for row in candidates if row[1] in unchanged]
    keys = {(row[0], row[1]): run.window(row[1]) for row in candidates}
    fresh = _log_once_many(session, keys, run.now)
    mails = []
    for enrollment_id, step_id, label, step_title, email, name, student_tz, code, course_title, course_tz in candidates:
        reminder_id = fresh.get((enrollment_id, step_id))
        if reminder_id is None:
            continue
        classes = run.upcoming[step_id]
        class_id, class_title, starts_at, class_tz = classes[0]
        mails.append((email, {
            "reminder_id": reminder_id,  # its reminder_log row, forgotten if this mail expires (forget_expired)
            "student_name": name,
            "course_code": code,
            "course_title": course_title,
            "step_label": label,
            "step_title": step_title,
            "class_id": class_id,
            "class_title": class_title,
            "starts_at": starts_at.isoformat(),
            "expires_at": starts_at.isoformat(),  # a reminder held up past its class (SMTP down) is not sent
            "timezone": student_tz or class_tz or course_tz,
            "options": [{"class_id": c[0], "class_title": c[1], "starts_at": c[2].isoformat()}
                        for c in classes[:OPTIONS_LISTED]],
        }, f"reminder:{reminder_id}", enrollment_id))
    return add_mails(session=session, template=TOPIC, mails=mails)


def send_reminders(*, unit_of_work, settings, now: datetime | None = None) -> int:
    """A whole run, for 100,000s of enrollments: the plan and its batches in one unit of work, then one unit
    of work per batch, so a run stopped part-way (a deploy, the job's time limit) keeps what it queued and
    the next run goes on from there. Returns how many were queued."""
    with unit_of_work() as session:
        run = plan(session=session, settings=settings, now=now)
        if run:
            forget_expired(session=session)
        ranges = batches(session=session, run=run) if run else []
    queued = 0
    for first, last in ranges:
        with unit_of_work() as session:
            queued += remind(session=session, run=run, first=first, last=last)
    if queued:
        log.info("queued %d step reminder(s)", queued)
    if queued >= ANALYZE_AFTER:
        try:
            with unit_of_work() as session:
                refresh_statistics(session)
        except Exception as exc:  # what matters is queued; autovacuum analyzes the table in time
            log.warning("could not analyze reminder_log after the run: %s", exc)
    return queued


BATCH = 2000
# a run that queued this many refreshes reminder_log's statistics (PostgreSQL) at its end, not waiting for
# autovacuum: planned on a table it believes nearly empty, the next run's "not reminded yet" check read the
# whole log once per candidate (100,000 enrollments: 61 s instead of 0.3 s)
ANALYZE_AFTER = 1000


def refresh_statistics(session: Session) -> None:
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text(f"ANALYZE {ReminderLog.__tablename__}"))


def _log_once_many(session: Session, keys: dict[tuple[int, int], str], now: datetime) -> dict[tuple[int, int], int]:
    """Insert reminder_log rows; returns the (enrollment, step) pairs not reminded in that window before, with
    their new row's id."""
    if not keys:  # an empty parameter list would be one insert of defaults, not none
        return {}
    table = ReminderLog.__table__
    statement = (upsert_insert(session)(table)
                 .on_conflict_do_nothing(index_elements=["enrollment_id", "step_id", "window_key"])
                 .returning(table.c.enrollment_id, table.c.step_id, table.c.id))
    rows = [dict(enrollment_id=e, step_id=s, window_key=k, created_at=now) for (e, s), k in keys.items()]
    return {(e, s): row_id for e, s, row_id in session.execute(statement, rows).all()}
