"""Course programs and credit packages: authoring, validation and views.

A course is written whole (create or replace). Steps keep their identity by label, so an edit of a
published course keeps the step ids that enrollments point at; options keep theirs by class id.
Removing a step that enrollments already have, or an option with an active booking, is refused; a new
step is owed to the active and suspended enrollments at once; a bundle change applies to new purchases
(what each edit does to existing enrollments, and its what-if, is `tasks.catalog.changes`).
Nothing here talks to Stripe: publishing is `tasks.catalog.publishing`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any, Callable, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)
from sqlalchemy import bindparam, func, insert, literal, select, update
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Session

from db.enums import BookingStatus, BundleKind, ClassStatus, CreditType, EnrollmentStatus, ProgramStatus, ProgressStatus
from db.models import (
    Booking,
    CourseBundleComponent,
    CourseProgram,
    CourseStep,
    CourseStepOption,
    CreditPackage,
    GroupClass,
    StudentCourseEnrollment,
    StudentCourseProgress,
)
from db import jsoncodec
from db.types import utcnow
from tasks import currencies
from tasks.errors import NotFound, PermanentError, ValidationFailed
from tasks.events import known_timezone

# ISO 4217 codes in circulation (Stripe takes them lower-case).
ISO_CURRENCIES = frozenset("""
AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BHD BIF BMD BND BOB BRL BSD BTN BWP BYN BZD CAD CDF
CHF CLP CNY COP CRC CUP CVE CZK DJF DKK DOP DZD EGP ERN ETB EUR FJD FKP GBP GEL GHS GIP GMD GNF GTQ GYD HKD
HNL HTG HUF IDR ILS INR IQD IRR ISK JMD JOD JPY KES KGS KHR KMF KPW KRW KWD KYD KZT LAK LBP LKR LRD LSL LYD
MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MYR MZN NAD NGN NIO NOK NPR NZD OMR PAB PEN PGK PHP PKR PLN
PYG QAR RON RSD RUB RWF SAR SBD SCR SDG SEK SGD SHP SLE SLL SOS SRD SSP STN SVC SYP SZL THB TJS TMT TND TOP
TRY TTD TWD TZS UAH UGX USD UYU UZS VES VND VUV WST XAF XCD XOF XPF YER ZAR ZMW ZWL
""".split())
CODE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
PRICE_ID_PATTERN = r"^price_[A-Za-z0-9]{1,60}$"
MAX_STEPS = 100
# enrollments a step added later is seeded for at once (a completed one reopens when it books the step)
OWED_NEW_STEPS = (EnrollmentStatus.ACTIVE, EnrollmentStatus.SUSPENDED)
# enrollments that bought the course (pending may still pay; failed and revoked hold nothing)
HOLDERS = (EnrollmentStatus.PENDING, EnrollmentStatus.ACTIVE, EnrollmentStatus.SUSPENDED, EnrollmentStatus.COMPLETED)

Code = Annotated[str, StringConstraints(pattern=CODE_PATTERN)]
Text = Annotated[str, StringConstraints(strip_whitespace=True, max_length=20_000)]
Title = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
ClassId = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)]
Label = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)]


class StepInUse(PermanentError):
    """Raised when an edit would remove a step (or an option) that enrollments already use."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class PriceInUse(PermanentError):
    """Raised when a package is linked to a Stripe price another course or package holds, a deleted one
    included: a checkout with that price buys its holder."""

    def __init__(self, message: str, field: str | None = "stripe_price_id") -> None:
        super().__init__(message)
        self.field = field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)
    # what GET answers beside the written fields: taken back and ignored, so a GET can be PUT back unchanged
    READ_ONLY: ClassVar[frozenset[str]] = frozenset()

    @model_validator(mode="before")
    @classmethod
    def _without_read_only(cls, data: Any) -> Any:
        if cls.READ_ONLY and isinstance(data, dict):
            return {name: value for name, value in data.items() if name not in cls.READ_ONLY}
        return data


class Price(_Strict):
    amount: StrictInt = Field(ge=0, le=99_999_999)  # minor units; Stripe's upper bound
    currency: str

    @field_validator("currency")
    @classmethod
    def _iso_currency(cls, value: str) -> str:
        if value.upper() not in ISO_CURRENCIES:
            raise ValueError(f"{value!r} is not an ISO 4217 currency code")
        return value.lower()

    @model_validator(mode="after")
    def _chargeable(self) -> "Price":
        problem = currencies.charge_problem(self.amount, self.currency)
        if problem:  # published, the price could not be paid
            raise ValueError(problem)
        return self


class StepIn(_Strict):
    READ_ONLY = frozenset({"id"})  # a step is known by its label

    label: Label
    title: Title | None = None
    summary: Text | None = None
    position: StrictInt | None = None  # optional; when given it must match the step's place in the list
    options: list[ClassId] = Field(default_factory=list)


class BundleIn(_Strict):
    kind: BundleKind
    quantity: StrictInt = Field(gt=0, le=1000)


class CourseIn(_Strict):
    """A course as an admin writes it (PUT body or one entry of an import file)."""

    READ_ONLY = frozenset({"status", "published", "published_at", "stripe"})  # publishing sets them

    code: Code | None = None
    title: Title
    description: Text | None = None
    marketing_copy: Text | None = None
    timezone: str = "UTC"
    price: Price
    steps: list[StepIn] = Field(min_length=1, max_length=MAX_STEPS)
    bundle: list[BundleIn] = Field(default_factory=list)

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        return known_timezone(value)

    @field_validator("bundle", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, dict) else ([] if value is None else value)


class CreditsIn(_Strict):
    kind: Literal["group", "private", "group_credit", "private_credit"]
    quantity: StrictInt = Field(gt=0, le=1000)

    @property
    def credit_type(self) -> CreditType:
        return CreditType(self.kind.removesuffix("_credit"))


class PackageIn(_Strict):
    """A credit package as an admin writes it."""

    READ_ONLY = frozenset({"stripe_product_id", "stripe"})  # publishing sets them

    code: Code | None = None
    title: Title
    price: Price
    credits: CreditsIn  # one object: a package grants one kind of credit
    validity_days: StrictInt | None = Field(default=None, gt=0, le=3650)
    stripe_price_id: Annotated[str, StringConstraints(pattern=PRICE_ID_PATTERN)] | None = None


# --------------------------------------------------------------------------- validation


def field_path(loc: tuple | list, prefix: str = "") -> str:
    """('steps', 1, 'label') → "steps[1].label" (indices from 0)."""
    path = prefix
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path


def _first_error(exc: ValidationError, prefix: str) -> ValidationFailed:
    error = exc.errors()[0]
    # a tagged/union member name may appear in loc; keep only the data path
    loc = [p for p in error["loc"] if not (isinstance(p, str) and p.startswith("function-"))]
    field = field_path(loc, prefix) or prefix or "body"
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = "unknown field"
    elif error["type"] == "missing":
        message = "required"
    elif error["type"] == "model_type":  # not "… or instance of Price": our class names mean nothing to the caller
        message = "must be an object"
    return ValidationFailed(f"{field}: {message}", field=field)


def parse_course(data: Any, *, code: str | None = None, prefix: str = "") -> CourseIn:
    """Validate one course; raise ValidationFailed naming the first bad field (a dotted path)."""
    course = _validated(CourseIn, data, code, prefix)
    labels: dict[str, int] = {}
    classes: dict[str, str] = {}
    for i, step in enumerate(course.steps):
        if step.label in labels:
            raise ValidationFailed(f"{field_path(('steps', i, 'label'), prefix)}: duplicate label {step.label!r}",
                                   field=field_path(("steps", i, "label"), prefix))
        labels[step.label] = i
        if step.position is not None and step.position != i + 1:
            where = field_path(("steps", i, "position"), prefix)
            raise ValidationFailed(f"{where}: must be {i + 1} (steps are ordered by their place in the list)",
                                   field=where)
        for j, class_id in enumerate(step.options):
            if class_id in classes:
                where = field_path(("steps", i, "options", j), prefix)
                raise ValidationFailed(f"{where}: class {class_id!r} already serves step {classes[class_id]} "
                                       "(a class serves one step only within a course)", field=where)
            classes[class_id] = step.label
    kinds: set[BundleKind] = set()
    for i, component in enumerate(course.bundle):
        if component.kind in kinds:
            where = field_path(("bundle", i, "kind"), prefix)
            raise ValidationFailed(f"{where}: duplicate bundle kind {component.kind.value!r}", field=where)
        kinds.add(component.kind)
    return course


def parse_package(data: Any, *, code: str | None = None, prefix: str = "") -> PackageIn:
    return _validated(PackageIn, data, code, prefix)


def _validated(model, data: Any, code: str | None, prefix: str):
    """`data` as `model`, its code checked against the URL's; ValidationFailed names the first bad field."""
    if not isinstance(data, dict):
        raise ValidationFailed(f"{prefix or 'body'}: must be an object", field=prefix or "body")
    try:
        item = model.model_validate(data)
    except ValidationError as exc:
        raise _first_error(exc, prefix) from None
    _check_code(item, code, prefix)
    return item


def _check_code(item: CourseIn | PackageIn, code: str | None, prefix: str) -> None:
    where = field_path(("code",), prefix)
    if code is not None:
        if not re.fullmatch(CODE_PATTERN, code):
            raise ValidationFailed(f"code: {code!r} must be 1-64 letters, digits, '-' or '_'", field="code")
        if item.code is not None and item.code != code:
            raise ValidationFailed(f"{where}: {item.code!r} does not match the code in the path {code!r}",
                                   field=where)
        item.code = code
    elif item.code is None:
        raise ValidationFailed(f"{where}: required", field=where)


# --------------------------------------------------------------------------- lookups


def _live_by_code(session: Session, model, code: str, lock: bool):
    query = select(model).where(model.code == code, model.deleted_at.is_(None))
    return session.scalar(query.with_for_update() if lock else query)


def live_program(session: Session, code: str, *, lock: bool = False) -> CourseProgram | None:
    return _live_by_code(session, CourseProgram, code, lock)


def get_program(session: Session, code: str, *, lock: bool = False) -> CourseProgram:
    return _required(live_program(session, code, lock=lock), "course", code)


def live_package(session: Session, code: str, *, lock: bool = False) -> CreditPackage | None:
    return _live_by_code(session, CreditPackage, code, lock)


def get_package(session: Session, code: str, *, lock: bool = False) -> CreditPackage:
    return _required(live_package(session, code, lock=lock), "package", code)


def _required(row, what: str, code: str):
    if row is None:
        raise NotFound(f"{what} {code!r} does not exist")
    return row


def live_steps(session: Session, program_id: int) -> list[CourseStep]:
    """The course's live steps in order (a plain query: cheaper than the relationship's lazy load)."""
    return list(session.scalars(select(CourseStep).where(CourseStep.program_id == program_id,
                                                         CourseStep.deleted_at.is_(None))
                                .order_by(CourseStep.position)))


def live_options(session: Session, program_id: int) -> list[CourseStepOption]:
    return list(session.scalars(select(CourseStepOption).where(CourseStepOption.program_id == program_id,
                                                               CourseStepOption.deleted_at.is_(None))
                                .order_by(CourseStepOption.id)))


def live_bundle(session: Session, program_id: int) -> list[CourseBundleComponent]:
    return list(session.scalars(select(CourseBundleComponent).where(
        CourseBundleComponent.program_id == program_id, CourseBundleComponent.deleted_at.is_(None))
        .order_by(CourseBundleComponent.id)))


def bundle_summary(components) -> str:
    """`private_credit:2,group_credit:1` — in a fixed kind order, so the same bundle reads the same."""
    order = {kind: n for n, kind in enumerate(BundleKind)}
    parts = sorted(((c.kind, c.quantity) for c in components), key=lambda kq: order[BundleKind(kq[0])])
    return ",".join(f"{BundleKind(kind).value}:{quantity}" for kind, quantity in parts)


# --------------------------------------------------------------------------- authoring


@dataclass
class Saved:
    code: str
    change: str  # created | updated | unchanged
    id: int

    def as_dict(self) -> dict[str, Any]:
        return {"code": self.code, "change": self.change, "id": self.id}


def _assign(row: Any, **values: Any) -> bool:
    changed = False
    for name, value in values.items():
        if getattr(row, name) != value:
            setattr(row, name, value)
            changed = True
    return changed


def save_course(*, session: Session, course: CourseIn) -> Saved:
    """Create or replace a course from a validated `CourseIn` (its `code` set). Steps match by label,
    options by class id; unchanged rows are not touched, so saving the same course twice is a no-op."""
    code = course.code
    assert code is not None
    program = live_program(session, code, lock=True)
    created = program is None
    if program is None:
        program = CourseProgram(code=code, status=ProgramStatus.DRAFT, title=course.title)
        session.add(program)
        session.flush()
    changed = _assign(program, title=course.title, description=course.description,
                      marketing_copy=course.marketing_copy, timezone=course.timezone,
                      price_amount=course.price.amount, price_currency=course.price.currency)
    changed |= _save_steps(session, program, course)
    changed |= _save_bundle(session, program, course)
    session.flush()
    return Saved(code=code, change="created" if created else ("updated" if changed else "unchanged"),
                 id=program.id)


@dataclass(frozen=True)
class StepRemoval:
    """What removing a step would take away: any progress row (a revoked enrollment's too: its history names
    the step) and any booking naming it; `refusal` says why it may not, or is None. The save and its what-if
    (`tasks.catalog.changes`) ask this same question."""
    progress_rows: int
    bookings: int
    refusal: str | None


def step_removal(session: Session, step: CourseStep, label: str) -> StepRemoval:
    had = session.scalar(select(func.count()).select_from(StudentCourseProgress)
                         .where(StudentCourseProgress.step_id == step.id)) or 0
    booked = session.scalar(select(func.count()).select_from(Booking).where(Booking.course_step_id == step.id)) or 0
    refusal = None
    if had or booked:
        refusal = (f"steps: step {label!r} cannot be removed: {had} enrollment(s) already have it"
                   + (f" and {booked} booking(s) name it" if booked else ""))
    return StepRemoval(had, booked, refusal)


def _save_steps(session: Session, program: CourseProgram, course: CourseIn) -> bool:
    now = utcnow()
    changed = False
    existing = {step.label: step for step in live_steps(session, program.id)}
    wanted = {step.label for step in course.steps}
    options = live_options(session, program.id)

    for label, step in existing.items():
        if label in wanted:
            continue
        refusal = step_removal(session, step, label).refusal
        if refusal:
            raise StepInUse(refusal, field="steps")
        step.deleted_at = now
        for option in options:
            if option.step_id == step.id:
                option.deleted_at = now
        changed = True
    session.flush()

    # positions are unique among live steps: park the moving ones out of the way first
    final = {step.label: i + 1 for i, step in enumerate(course.steps)}
    moving = [s for label, s in existing.items() if label in wanted and s.position != final[label]]
    if moving:
        top = max([s.position for s in existing.values()] + [len(course.steps)])
        for n, step in enumerate(moving, start=1):
            step.position = top + n
        session.flush()
        changed = True

    steps: dict[str, CourseStep] = {}
    added: list[CourseStep] = []
    for i, data in enumerate(course.steps):
        step = existing.get(data.label)
        if step is None:
            step = CourseStep(program_id=program.id, position=i + 1, label=data.label, title=data.title,
                              summary=data.summary)
            session.add(step)
            added.append(step)
            changed = True
        else:
            changed |= _assign(step, position=i + 1, title=data.title, summary=data.summary)
        steps[data.label] = step
    session.flush()
    if added:
        _seed_new_steps(session, program, added)

    # options: a class serves one step within a course, so soft-delete moved/removed ones before inserting
    want = {class_id: steps[data.label] for data in course.steps for class_id in data.options}
    keep: set[str] = set()
    for option in options:
        if option.deleted_at is not None:
            continue
        target = want.get(option.group_class_id)
        if target is not None and target.id == option.step_id:
            keep.add(option.group_class_id)
            continue
        booked = session.scalar(select(func.count()).select_from(Booking).where(
            Booking.class_id == option.group_class_id, Booking.course_step_id == option.step_id,
            Booking.status == BookingStatus.ACTIVE))
        if booked:
            label = next((s.label for s in steps.values() if s.id == option.step_id), str(option.step_id))
            raise StepInUse(f"steps: class {option.group_class_id!r} of step {label!r} cannot be removed: "
                            f"{booked} active booking(s) use it", field="steps")
        option.deleted_at = now
        changed = True
    session.flush()
    for class_id, step in want.items():
        if class_id not in keep:
            session.add(CourseStepOption(program_id=program.id, step_id=step.id, group_class_id=class_id))
            changed = True
    return changed


# an enrollment without a record of the bundle it bought (missing or null: older purchases), in SQL
BUNDLE_UNRECORDED = StudentCourseEnrollment.fulfilment_metadata["bundle"].as_string().is_(None)


def _seed_new_steps(session: Session, program: CourseProgram, steps: list[CourseStep]) -> None:
    """A step added to a sold course is owed to its active and suspended enrollments: unbooked at once.
    One INSERT … SELECT a step, however many enrollments the course has. A suspended one that had completed the
    course has not any more (`completed_at` cleared, as a reopened step clears it): completing it again is a new
    completion, told to the platform."""
    now = utcnow()
    for step in steps:
        session.execute(_give_step(step.id, program.id, now))
    if steps:
        enrollment = StudentCourseEnrollment
        session.execute(update(enrollment).where(enrollment.program_id == program.id,
                                                 enrollment.status.in_(OWED_NEW_STEPS),
                                                 enrollment.completed_at.is_not(None))
                        .values(completed_at=None).execution_options(synchronize_session=False))


def _give_step(step_id: int, program_id: int, now: datetime, *where: Any):
    """INSERT … SELECT: the step, unbooked, for every owed enrollment of the course (and `where`)."""
    enrollment, table = StudentCourseEnrollment, StudentCourseProgress.__table__
    stamp = literal(now, table.c.created_at.type)
    return insert(table).from_select(
        ["enrollment_id", "step_id", "status", "skipped_ahead", "created_at", "updated_at"],
        select(enrollment.id, literal(step_id, table.c.step_id.type),
               literal(ProgressStatus.UNBOOKED, table.c.status.type), literal(False, table.c.skipped_ahead.type),
               stamp, stamp)
        .where(enrollment.program_id == program_id, enrollment.status.in_(OWED_NEW_STEPS), *where))


# a step added this recently may have been missed by a purchase fulfilled while it was being added
ADDED_STEPS_WINDOW = timedelta(minutes=15)
PURCHASE_MARGIN = timedelta(minutes=5)  # far longer than a purchase's transaction


def provide_added_steps(session: Session, *, now: datetime | None = None, covered_at: datetime | None = None) -> int:
    """The `new-steps` job. A purchase fulfilled while a step was being added read the course before the step
    committed, and the step's own insert (`_seed_new_steps`) ran before that enrollment committed: it lacks
    the step. Each step added within ADDED_STEPS_WINDOW — of `now`, or of `covered_at` when earlier (when the
    job last ran to its end: after the workers or the scheduler were down, the steps added meanwhile) — is given
    to every owed enrollment of its course created since shortly before it that lacks it (none, almost always:
    one indexed look-up a recent step). Returns how many progress rows it wrote."""
    now = now or utcnow()
    oldest = now - ADDED_STEPS_WINDOW
    if covered_at is not None:
        oldest = min(oldest, covered_at - ADDED_STEPS_WINDOW)
    enrollment, progress = StudentCourseEnrollment, StudentCourseProgress
    recent = session.execute(select(CourseStep.id, CourseStep.program_id, CourseStep.created_at).where(
        CourseStep.created_at >= oldest, CourseStep.deleted_at.is_(None))).all()
    written = 0
    for step_id, program_id, added_at in recent:
        lacking = ~select(progress.id).where(progress.enrollment_id == enrollment.id,
                                             progress.step_id == step_id).exists()
        given = _give_step(step_id, program_id, now, enrollment.created_at >= added_at - PURCHASE_MARGIN, lacking)
        written += len(session.execute(given.returning(progress.id)).all())
    return written


def _record_sold_bundle(session: Session, program: CourseProgram, components: list[CourseBundleComponent]) -> None:
    """Before a bundle changes, an enrollment without a record of the bundle it bought gets the old one,
    so the change reaches new purchases only (the same shape as the record fulfilment writes). One UPDATE
    of the enrollments without a record, however many the course has."""
    sold = [{"component_id": c.id, "kind": c.kind.value, "quantity": c.quantity} for c in components]
    enrollment = StudentCourseEnrollment
    if session.get_bind().dialect.name == "postgresql":
        recorded = enrollment.fulfilment_metadata.op("||")(
            func.jsonb_build_object("bundle", bindparam("sold_bundle", sold, type_=JSONB)))
    else:
        recorded = func.json_set(enrollment.fulfilment_metadata, "$.bundle", func.json(jsoncodec.dumps(sold)))
    session.execute(
        update(enrollment)
        .where(enrollment.program_id == program.id, enrollment.status.in_(HOLDERS), BUNDLE_UNRECORDED)
        .values(fulfilment_metadata=recorded, updated_at=utcnow())
        .execution_options(synchronize_session=False))


def _save_bundle(session: Session, program: CourseProgram, course: CourseIn) -> bool:
    now = utcnow()
    changed = False
    wanted = {c.kind: c.quantity for c in course.bundle}
    current = live_bundle(session, program.id)
    if bundle_summary(current) != bundle_summary(course.bundle):
        _record_sold_bundle(session, program, current)
    for component in current:
        if wanted.get(component.kind) == component.quantity:
            wanted.pop(component.kind)
        else:
            component.deleted_at = now
            changed = True
    for kind, quantity in wanted.items():
        session.add(CourseBundleComponent(program_id=program.id, kind=kind, quantity=quantity))
        changed = True
    return changed


def delete_course(*, session: Session, code: str) -> CourseProgram:
    """Soft delete: the course leaves the catalog; enrollments and their history stay, and it keeps its Stripe
    product and price (a checkout opened for it still buys it; a course made again under its code is another row,
    published with a price of its own)."""
    program = get_program(session, code, lock=True)
    program.deleted_at = utcnow()
    return program


def save_package(*, session: Session, package: PackageIn) -> Saved:
    code = package.code
    assert code is not None
    row = live_package(session, code, lock=True)
    created = row is None
    if row is None:
        row = CreditPackage(code=code, title=package.title, credit_type=package.credits.credit_type,
                            quantity=package.credits.quantity)
        session.add(row)
    changed = _assign(row, title=package.title, price_amount=package.price.amount,
                      price_currency=package.price.currency, credit_type=package.credits.credit_type,
                      quantity=package.credits.quantity, validity_days=package.validity_days)
    if "stripe_price_id" in package.model_fields_set:  # linked to a price made by hand in Stripe; null unlinks
        _refuse_price_in_use(session, package.stripe_price_id, row)
        changed |= _assign(row, stripe_price_id=package.stripe_price_id)
    session.flush()
    return Saved(code=code, change="created" if created else ("updated" if changed else "unchanged"), id=row.id)


def _refuse_price_in_use(session: Session, price_id: str | None, row: CreditPackage) -> None:
    """A Stripe price sells one listing: linking one that another package or a course holds is refused
    (PriceInUse), naming the holder. A deleted holder keeps its price, as `delete_course` and `delete_package`
    leave it: a checkout opened with it before the delete, or a payment link still selling it, buys what it was
    made for, never the listing that took its code or its price since."""
    if price_id is None:
        return
    others = select(CreditPackage.code, CreditPackage.deleted_at).where(CreditPackage.stripe_price_id == price_id)
    if row.id is not None:
        others = others.where(CreditPackage.id != row.id)
    held = session.execute(others.limit(1)).first()
    holder = ("package", *held) if held is not None else None
    if holder is None:
        course = session.execute(select(CourseProgram.code, CourseProgram.deleted_at)
                                 .where(CourseProgram.stripe_price_id == price_id).limit(1)).first()
        holder = ("course", *course) if course is not None else None
    if holder is None:
        return
    kind, code, deleted_at = holder
    why = (": a price sells one course or package" if deleted_at is None else
           f" (deleted {deleted_at:%Y-%m-%d}): a deleted {kind} keeps its price, so that a checkout opened with it "
           "still buys what it was sold as")
    raise PriceInUse(f"stripe_price_id: {price_id} is already the price of {kind} {code}{why}; create another "
                     "price in Stripe for this package, or leave stripe_price_id out and publish to have one made")


def delete_package(*, session: Session, code: str) -> CreditPackage:
    """Soft delete, as `delete_course`: the package leaves the catalog and keeps its Stripe product and price
    (a package made again under its code is published with a price of its own)."""
    package = get_package(session, code, lock=True)
    package.deleted_at = utcnow()
    return package


# --------------------------------------------------------------------------- import files


@dataclass
class Catalog:
    courses: list[CourseIn]
    packages: list[PackageIn]


def parse_catalog(data: Any) -> Catalog:
    """An import file: one course (an object with `steps`), a list of courses, or
    `{"courses": [...], "packages": [...]}`. The first bad field is named with its path."""
    if isinstance(data, list):  # its entries' paths are their indexes, `[1].code`
        return Catalog(_entries(parse_course, data, ""), [])
    if isinstance(data, dict) and ("courses" in data or "packages" in data) and "steps" not in data:
        unknown = sorted(set(data) - {"courses", "packages"}, key=str)  # YAML keys may be numbers too
        if unknown:
            raise ValidationFailed(f"{unknown[0]}: unknown field", field=str(unknown[0]))
        courses, packages = data.get("courses") or [], data.get("packages") or []
        for name, value in (("courses", courses), ("packages", packages)):
            if not isinstance(value, list):
                raise ValidationFailed(f"{name}: must be a list", field=name)
        return Catalog(_entries(parse_course, courses, "courses"), _entries(parse_package, packages, "packages"))
    if isinstance(data, dict):
        return Catalog([parse_course(data)], [])
    raise ValidationFailed("file: must hold a course object, a list of courses, or {courses, packages}",
                           field="file")


def _entries(parse: Callable[..., Any], entries: list[Any], where: str) -> list[Any]:
    """Each entry parsed, its path `where[i]`; a code named twice is refused, or saving the file in order
    would have the later entry silently replace the earlier one."""
    items: list[Any] = []
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        item = parse(entry, prefix=f"{where}[{i}]")
        if item.code in seen:
            raise ValidationFailed(f"{where}[{i}].code: duplicate code {item.code!r} in the file",
                                   field=f"{where}[{i}].code")
        seen.add(item.code)
        items.append(item)
    return items


def save_catalog(*, session: Session, catalog: Catalog) -> list[dict[str, Any]]:
    """Save every course and package of a parsed file in the caller's one transaction."""
    results = []
    for course in catalog.courses:
        results.append({"kind": "course", **save_course(session=session, course=course).as_dict()})
    for package in catalog.packages:
        results.append({"kind": "package", **save_package(session=session, package=package).as_dict()})
    return results


# --------------------------------------------------------------------------- views


def course_view(session: Session, program: CourseProgram, *, with_classes: bool = False) -> dict[str, Any]:
    """The admin view (ids, options as class ids); `with_classes` adds each option's mirrored class."""
    steps = live_steps(session, program.id)
    options = live_options(session, program.id)
    classes: dict[str, GroupClass] = {}
    if with_classes and options:
        ids = [o.group_class_id for o in options]
        classes = {c.id: c for c in session.scalars(select(GroupClass).where(GroupClass.id.in_(ids)))}
    view_steps = []
    for step in steps:
        own = [o for o in options if o.step_id == step.id]
        entry: dict[str, Any] = {"id": step.id, "label": step.label, "position": step.position,
                                 "title": step.title, "summary": step.summary}
        if with_classes:
            entry["options"] = sorted((option_view(o.group_class_id, classes.get(o.group_class_id)) for o in own),
                                      key=lambda o: (o["starts_at"] is None, o["starts_at"] or "", o["class_id"]))
        else:
            entry["options"] = [o.group_class_id for o in own]
        view_steps.append(entry)
    return {
        "code": program.code,
        "title": program.title,
        "description": program.description,
        "marketing_copy": program.marketing_copy,
        "timezone": program.timezone,
        "price": {"amount": program.price_amount, "currency": program.price_currency},
        "status": program.status.value,
        "published": program.status is ProgramStatus.PUBLISHED,
        "published_at": program.published_at.isoformat() if program.published_at else None,
        "steps": view_steps,
        "bundle": [{"kind": c.kind.value, "quantity": c.quantity} for c in live_bundle(session, program.id)],
    }


def bookable_seats(group_class: GroupClass) -> int:
    """The seats a reader is told are left: a cancelled class has nothing left to book, whatever its counters say."""
    return 0 if group_class.status is ClassStatus.CANCELLED else group_class.seats_left


def option_view(class_id: str, group_class: GroupClass | None) -> dict[str, Any]:
    if group_class is None:  # named by the admin, not mirrored from the platform yet
        return {"class_id": class_id, "starts_at": None, "ends_at": None, "seats_left": None, "status": None}
    return {"class_id": class_id, "starts_at": group_class.starts_at.isoformat(),
            "ends_at": group_class.ends_at.isoformat() if group_class.ends_at else None,
            "seats_left": bookable_seats(group_class), "status": group_class.status.value}


def package_view(package: CreditPackage) -> dict[str, Any]:
    return {
        "code": package.code,
        "title": package.title,
        "price": {"amount": package.price_amount, "currency": package.price_currency},
        "credits": {"kind": package.credit_type.value, "quantity": package.quantity},
        "validity_days": package.validity_days,
        "stripe_product_id": package.stripe_product_id,
        "stripe_price_id": package.stripe_price_id,
    }


def published_programs(session: Session) -> list[CourseProgram]:
    return list(session.scalars(select(CourseProgram).where(
        CourseProgram.status == ProgramStatus.PUBLISHED, CourseProgram.deleted_at.is_(None))
        .order_by(CourseProgram.code)))


def live_programs(session: Session) -> list[CourseProgram]:
    return list(session.scalars(select(CourseProgram).where(CourseProgram.deleted_at.is_(None))
                                .order_by(CourseProgram.code)))


def live_packages(session: Session) -> list[CreditPackage]:
    return list(session.scalars(select(CreditPackage).where(CreditPackage.deleted_at.is_(None))
                                .order_by(CreditPackage.code)))
