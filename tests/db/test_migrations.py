"""Migrations run up and down on SQLite and on an empty PostgreSQL database."""
from __future__ import annotations

import contextlib

import os
import secrets
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa

from db.migrate import downgrade, head_revision, upgrade
from db.models import Base
from tests.conftest import PG_URL, need
from tests.netutil import wait_until


def _tables(url):
    engine = sa.create_engine(url)
    try:
        return set(sa.inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def test_sqlite_up_down_up(tmp_path):
    url = f"sqlite:///{tmp_path / 'm.db'}"
    upgrade(url)
    assert _tables(url) == set(Base.metadata.tables)
    downgrade(url)
    assert _tables(url) == set()
    upgrade(url)
    assert _tables(url) == set(Base.metadata.tables)


def test_cli_upgrade_on_empty_postgres_then_downgrade_base():
    need("postgres")
    name = f"coursepipe_mig_{secrets.token_hex(4)}"
    admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    try:
        env = {**os.environ, "DATABASE_URL": url}
        cli = [sys.executable, "-m", "coursepipe.cli"]
        subprocess.run([*cli, "db", "upgrade"], env=env, check=True, capture_output=True)
        assert _tables(url) == set(Base.metadata.tables)
        refused = subprocess.run([*cli, "db", "downgrade", "base"], env=env, capture_output=True, input=b"n\n")
        assert refused.returncode != 0 and _tables(url) == set(Base.metadata.tables)  # asked, and told no
        bare = subprocess.run([*cli, "db", "downgrade"], env=env, capture_output=True, stdin=subprocess.DEVNULL)
        assert bare.returncode != 0 and _tables(url) == set(Base.metadata.tables)  # no revision: nothing done
        subprocess.run([*cli, "db", "downgrade", "base", "--yes"], env=env, check=True, capture_output=True)
        assert _tables(url) == set()
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


# on SQLite autogenerate cannot compare an index on an expression (it says so): the next test checks that one;
# nor does it compare partial indexes' predicates: test_index_definitions_of_migrations_and_models_agree does
@pytest.mark.filterwarnings("ignore:.*expression-based index:UserWarning", "ignore:.*expression-based index")
def test_models_match_migrations(database):
    """Autogenerate finds nothing to add: the migration files describe the models."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    with database.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_the_expression_index_is_in_the_migrated_schema(database):
    """ix_student_email_lower, on lower(email), as the models declare it (autogenerate skips it)."""
    with database.engine.connect() as conn:
        if database.dialect == "postgresql":
            definition = conn.scalar(sa.text("SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_student_email_lower'"))
            assert definition is not None and "ON public.student USING btree (lower((email)::text))" in definition
        else:
            definition = conn.scalar(sa.text("SELECT sql FROM sqlite_master WHERE name = 'ix_student_email_lower'"))
            assert definition is not None and "ON student (lower(email))" in definition


def test_0004_gives_rows_written_before_it_random_ids_and_their_sequence(tmp_path):
    """Outbox rows and enrollments that existed before the public ids: each row gets its own random id,
    platform events their per-enrollment sequence in the order written, the enrollment its counter."""
    url = f"sqlite:///{tmp_path / 'old.db'}"
    upgrade(url, "0003")
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO student (id, created_at, updated_at) VALUES ('s', '2026-01-01', '2026-01-01')"))
        conn.execute(sa.text("INSERT INTO course_program (id, code, title, timezone, price_amount, price_currency, "
                             "status, created_at, updated_at) VALUES (1, 'C', 'C', 'UTC', 0, 'usd', 'published', "
                             "'2026-01-01', '2026-01-01')"))
        for eid in (1, 2):
            conn.execute(sa.text(
                "INSERT INTO student_course_enrollment (id, student_id, program_id, status, "
                "stripe_checkout_session_id, amount_total, amount_refunded, fulfilment_metadata, created_at, "
                "updated_at) VALUES (:id, 's', 1, 'active', :cs, 0, 0, '{}', '2026-01-01', '2026-01-01')"),
                {"id": eid, "cs": f"cs_{eid}"})
        rows = [(1, "platform", 1), (2, "mail", 1), (3, "platform", 2), (4, "platform", 1), (5, "platform", None)]
        for row_id, channel, eid in rows:
            conn.execute(sa.text(
                "INSERT INTO outbox_message (id, dedupe_key, channel, topic, payload, status, attempts, "
                "enrollment_id, created_at, next_attempt_at) VALUES (:id, :k, :c, 't', '{}', 'sent', 1, :e, "
                "'2026-01-01', '2026-01-01')"), {"id": row_id, "k": f"k{row_id}", "c": channel, "e": eid})
    upgrade(url)
    with engine.connect() as conn:
        found = conn.execute(sa.text("SELECT id, public_id, sequence FROM outbox_message ORDER BY id")).all()
        counters = dict(conn.execute(sa.text("SELECT id, last_event_sequence FROM student_course_enrollment")).all())
    engine.dispose()
    assert [(row_id, seq) for row_id, _, seq in found] == [(1, 1), (2, None), (3, 1), (4, 2), (5, 1)]
    public_ids = [public_id for _, public_id, _ in found]
    assert len(set(public_ids)) == 5 and all(len(p) == 32 and int(p, 16) >= 0 for p in public_ids)
    assert counters == {1: 2, 2: 1}


def _paid_purchases_with_their_grants(url: str) -> None:
    """An enrollment and a package purchase, each with the credit grant that names it."""
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        for statement in [
                "INSERT INTO student (id, created_at, updated_at) VALUES ('s', '2026-01-01', '2026-01-01')",
                "INSERT INTO course_program (id, code, title, timezone, price_amount, price_currency, status, created_at,"
                " updated_at) VALUES (1, 'C', 'C', 'UTC', 100, 'usd', 'published', '2026-01-01', '2026-01-01')",
                "INSERT INTO student_course_enrollment (id, student_id, program_id, status, stripe_checkout_session_id,"
                " amount_total, amount_refunded, fulfilment_metadata, created_at, updated_at) VALUES (1, 's', 1,"
                " 'active', 'cs_e', 100, 0, '{}', '2026-01-01', '2026-01-01')",
                "INSERT INTO credit_package (id, code, title, credit_type, quantity, price_amount, price_currency,"
                " created_at, updated_at) VALUES (1, 'P', 'P', 'group', 5, 100, 'usd', '2026-01-01', '2026-01-01')",
                "INSERT INTO package_purchase (id, student_id, package_id, status, stripe_checkout_session_id,"
                " amount_total, amount_refunded, created_at, updated_at, sold) VALUES (1, 's', 1, 'paid', 'cs_p', 100,"
                " 0, '2026-01-01', '2026-01-01', '{}')",
                "INSERT INTO credit_ledger_entry (id, idempotency_key, student_id, credit_type, entry_type, quantity,"
                " cause, enrollment_id, created_at) VALUES (1, 'grant:e', 's', 'group', 'grant', 2, 'c', 1, '2026-01-01')",
                "INSERT INTO credit_ledger_entry (id, idempotency_key, student_id, credit_type, entry_type, quantity,"
                " cause, package_purchase_id, created_at) VALUES (2, 'grant:p', 's', 'group', 'grant', 5, 'c', 1,"
                " '2026-01-01')"]:
            conn.execute(sa.text(statement))
    engine.dispose()


@pytest.mark.parametrize("revision", ["0015", "0003"])
def test_sqlite_downgrade_copies_tables_that_other_rows_name(tmp_path, revision):
    """Batch mode copies a table and drops the old one (0016's package_purchase, 0006's purchases, 0004's
    enrollments): rows of the ledger naming them do not stop the downgrade, and still name them after it."""
    url = f"sqlite:///{tmp_path / 'cp.db'}"
    upgrade(url)
    _paid_purchases_with_their_grants(url)
    downgrade(url, revision)
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        assert conn.scalar(sa.text("SELECT version_num FROM alembic_version")) == revision
        assert conn.scalars(sa.text("SELECT id FROM credit_ledger_entry ORDER BY id")).all() == [1, 2]
        assert conn.scalar(sa.text("SELECT count(*) FROM package_purchase")) == 1
        named = {row[2] for row in conn.exec_driver_sql("PRAGMA foreign_key_list(credit_ledger_entry)")}
        assert {"package_purchase", "student_course_enrollment"} <= named
        assert conn.exec_driver_sql("PRAGMA foreign_key_check").all() == []
    engine.dispose()
    upgrade(url)
    assert _tables(url) == set(Base.metadata.tables)


def test_sqlite_migration_that_leaves_a_row_naming_a_missing_row_is_rolled_back(tmp_path):
    """Foreign keys are off while a migration runs on SQLite: a step that leaves a broken reference is refused
    before it commits, and the database stays at the migration before it."""
    url = f"sqlite:///{tmp_path / 'cp.db'}"
    upgrade(url)
    _paid_purchases_with_their_grants(url)
    engine = sa.create_engine(url)  # foreign keys off, as a plain connection has them
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE credit_ledger_entry SET package_purchase_id = 99 WHERE id = 2"))
    with pytest.raises(Exception, match=f"undoing migration {head_revision()} left rows naming missing rows"):
        downgrade(url, "0024")
    with engine.connect() as conn:
        assert conn.scalar(sa.text("SELECT version_num FROM alembic_version")) == head_revision()
    engine.dispose()

@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_0026_marks_the_students_erased_before_0022_erased(backend, tmp_path):
    """A student erased before `student.erased_at` existed (no e-mail, the `student.erase` audit entry) takes the
    time of their newest erasure; one the platform updated after it (back, with or without an e-mail), or never
    erased, stays unerased."""
    with _database_for(backend, tmp_path, "erased") as url:
        upgrade(url, "0021")
        engine = sa.create_engine(url)
        # id: (e-mail, last profile update, erasures)
        students = {"erased": (None, "2026-02-01 10:00:00", ["2026-01-01 09:00:00", "2026-02-01 10:00:01"]),
                    "back": ("back@example.test", "2026-03-01 00:00:00", ["2026-02-01 10:00:01"]),
                    "back_without_email": (None, "2026-03-01 00:00:00", ["2026-02-01 10:00:01"]),
                    "never_erased": (None, "2026-02-01 10:00:00", [])}
        with engine.begin() as conn:
            for student_id, (email, updated, erasures) in students.items():
                conn.execute(sa.text("INSERT INTO student (id, email, created_at, updated_at, source_updated_at)"
                                     " VALUES (:id, :email, :at, :at, :at)"),
                             {"id": student_id, "email": email, "at": updated})
                for at in erasures:
                    conn.execute(sa.text("INSERT INTO audit_log (at, actor, role, action, target, reason, details)"
                                         " VALUES (:at, 'cli', 'owner', 'student.erase', :target, 'GDPR', '{}')"),
                                 {"at": at, "target": f"student:{student_id}"})
            conn.execute(sa.text("INSERT INTO audit_log (at, actor, role, action, target, reason, details) VALUES"
                                 " ('2026-04-01', 'cli', 'owner', 'student.show', 'student:never_erased', NULL, '{}')"))
        upgrade(url)
        with engine.connect() as conn:
            erased_at = dict(conn.execute(sa.text("SELECT id, erased_at FROM student")).all())
        engine.dispose()
        assert {student_id for student_id, at in erased_at.items() if at is not None} == {"erased"}
        assert str(erased_at["erased"]).startswith("2026-02-01 10:00:01")


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_0020_lets_a_mail_end_expired_and_sets_apart_the_ones_that_ended_dead_for_it(backend, tmp_path):
    """Before it, a mail held up past its expiry ended `dead` ("expired at …"): those become `expired`, the real
    failures stay `dead`; the status column accepts `expired` (and, downgraded, no longer does)."""
    with _database_for(backend, tmp_path, "expired") as url:
        upgrade(url, "0019")
        engine = sa.create_engine(url)
        rows = [(1, "dead", "expired at 2026-12-01T17:00:00+00:00: no longer worth sending"),
                (2, "dead", "SMTP 550: 'mailbox unavailable'"), (3, "sent", None)]
        with engine.begin() as conn:
            for row_id, status, error in rows:
                conn.execute(sa.text(
                    "INSERT INTO outbox_message (id, public_id, dedupe_key, channel, topic, payload, status, attempts, "
                    "last_error, created_at, next_attempt_at) VALUES (:id, :p, :k, 'mail', 'step_reminder', '{}', :s, "
                    "1, :e, '2026-01-01', '2026-01-01')"),
                    {"id": row_id, "p": f"p{row_id}", "k": f"k{row_id}", "s": status, "e": error})
        statuses = sa.text("SELECT status FROM outbox_message ORDER BY id")
        upgrade(url)
        with engine.begin() as conn:
            assert conn.scalars(statuses).all() == ["expired", "dead", "sent"]
        downgrade(url, "0019")
        with engine.connect() as conn:
            assert conn.scalars(statuses).all() == ["dead", "dead", "sent"]
            with pytest.raises(sa.exc.IntegrityError):
                conn.execute(sa.text("UPDATE outbox_message SET status = 'expired' WHERE id = 1"))
        engine.dispose()


def _runbook_index_statements() -> list[str]:
    text = (Path(__file__).resolve().parents[2] / "docs" / "runbook.md").read_text()
    section = text[text.index("### Migrations that build indexes"):]
    block = section[section.index("```sql") + len("```sql"):]
    block = block[:block.index("```")]
    return [" ".join(s.split()) for s in block.split(";") if s.strip()]


def _index_definitions(url: str, names: set[str]) -> dict[str, str]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return dict(conn.execute(sa.text("SELECT indexname, indexdef FROM pg_indexes WHERE indexname = ANY(:n)"),
                                     {"n": sorted(names)}).all())
    finally:
        engine.dispose()


def test_indexes_built_beforehand_as_the_runbook_shows_are_what_the_upgrade_would_build():
    """The runbook's CREATE INDEX CONCURRENTLY statements, run on a database at 0011, give the indexes the
    migrations build (same definitions), and the upgrade after them keeps them and succeeds."""
    need("postgres")
    statements = _runbook_index_statements()
    names = {s.split("IF NOT EXISTS ")[1].split(" ")[0] for s in statements}
    assert len(names) == len(statements) == 14
    admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    databases = {kind: f"coursepipe_mig_{kind}_{secrets.token_hex(4)}" for kind in ("early", "direct")}
    with admin.connect() as conn:
        for name in databases.values():
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    urls = {kind: sa.make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
            for kind, name in databases.items()}
    try:
        upgrade(urls["early"], "0011")
        early = sa.create_engine(urls["early"], isolation_level="AUTOCOMMIT")  # CONCURRENTLY: outside a transaction
        with early.connect() as conn:
            for statement in statements:
                conn.execute(sa.text(statement))
        early.dispose()
        built_early = _index_definitions(urls["early"], names)
        upgrade(urls["early"])
        upgrade(urls["direct"])
        assert set(built_early) == names
        assert _index_definitions(urls["early"], names) == built_early == _index_definitions(urls["direct"], names)
    finally:
        with admin.connect() as conn:
            for name in databases.values():
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextlib.contextmanager
def _database_for(backend: str, tmp_path, kind: str):
    """A new empty database's URL on `backend`, dropped afterwards (PostgreSQL)."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'old.db'}"
        return
    need("postgres")
    admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    created, url = _fresh_pg_database(admin, kind)
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{created}" WITH (FORCE)'))
        admin.dispose()


def _fresh_pg_database(admin, kind: str) -> tuple[str, str]:
    name = f"coursepipe_mig_{kind}_{secrets.token_hex(4)}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    return name, sa.make_url(PG_URL).set(database=name).render_as_string(hide_password=False)


def _all_index_definitions(url: str) -> dict[str, str]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return dict(conn.execute(sa.text(
                "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'"
                " AND tablename <> 'alembic_version'")).all())
    finally:
        engine.dispose()


def test_index_definitions_of_migrations_and_models_agree():
    """Every index the migrations build is the models' own, predicates and expressions included (what Alembic's
    comparison leaves out), on PostgreSQL."""
    need("postgres")
    admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    created = [_fresh_pg_database(admin, kind) for kind in ("migrated", "modelled")]
    (_, migrated), (_, modelled) = created
    try:
        upgrade(migrated)
        engine = sa.create_engine(modelled)
        Base.metadata.create_all(engine)
        engine.dispose()
        assert _all_index_definitions(migrated) == _all_index_definitions(modelled)
    finally:
        with admin.connect() as conn:
            for name, _url in created:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_an_invalid_index_left_by_a_failed_concurrent_build_is_built_again():
    """A CONCURRENTLY build that fails leaves an invalid index under the name: the upgrade replaces it."""
    need("postgres")
    admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    created = [_fresh_pg_database(admin, kind) for kind in ("invalid", "direct")]
    (_, broken), (_, direct) = created
    try:
        upgrade(broken, "0011")
        engine = sa.create_engine(broken, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            for n, email in enumerate(("Same@example.test", "same@EXAMPLE.test")):
                conn.execute(sa.text("INSERT INTO student (id, email, created_at, updated_at)"
                                     " VALUES (:id, :email, now(), now())"), {"id": f"stu_{n}", "email": email})
            with pytest.raises(sa.exc.IntegrityError):  # two addresses alike: the unique build fails half-way
                conn.execute(sa.text("CREATE UNIQUE INDEX CONCURRENTLY ix_student_email_lower ON student (lower(email))"))
            assert conn.scalar(sa.text(
                "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass('ix_student_email_lower')")) is False
        upgrade(broken)
        with engine.connect() as conn:
            assert conn.scalar(sa.text(
                "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass('ix_student_email_lower')")) is True
        engine.dispose()
        upgrade(direct)
        name = {"ix_student_email_lower"}
        assert _index_definitions(broken, name) == _index_definitions(direct, name) != {}
    finally:
        with admin.connect() as conn:
            for db_name, _url in created:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)'))
        admin.dispose()


# what the migrations from 0012 to 0024 change besides the indexes the runbook builds first (docs/runbook.md): a
# column of package_purchase (0016) and of student (0022), the status check of outbox_message (0020), a foreign key
# to the ledger (0017)
TABLES_THE_UPGRADE_STILL_LOCKS = {"package_purchase", "credit_ledger_entry", "outbox_message", "student"}


def _tables_locked_by(conn, pid: int) -> set[str]:
    """The tables a backend holds a lock on that holds off writes (anything above the readers' ACCESS SHARE)."""
    return set(conn.scalars(sa.text(
        "SELECT c.relname FROM pg_locks l JOIN pg_class c ON c.oid = l.relation WHERE l.pid = :pid AND l.granted"
        " AND l.mode <> 'AccessShareLock' AND c.relkind = 'r' AND c.relname <> 'alembic_version'"), {"pid": pid}))


def test_an_upgrade_after_the_runbook_s_index_builds_leaves_the_tables_they_index_alone():
    """With every index built beforehand as the runbook shows, the upgrade from 0011 keeps them without locking
    their tables (not even CREATE INDEX IF NOT EXISTS's lock, held until it commits), and builds none of those
    that a later migration replaces and drops: it holds locks only on the tables other changes alter."""
    need("postgres")
    admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    created, url = _fresh_pg_database(admin, "locks")
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        upgrade(url, "0011")
        with engine.connect() as conn:
            for statement in _runbook_index_statements():
                conn.execute(sa.text(statement))
        upgrading = threading.Thread(target=upgrade, args=(url, "0025"))
        with engine.connect() as holder, engine.connect() as probe:
            held = holder.execution_options(isolation_level="READ COMMITTED").begin()
            holder.execute(sa.text("LOCK TABLE group_class IN ACCESS SHARE MODE"))  # 0025 waits: 0012-0024 have run
            upgrading.start()
            waiting = sa.text("SELECT pid FROM pg_locks WHERE NOT granted AND relation = 'group_class'::regclass")
            try:
                assert wait_until(lambda: probe.scalar(waiting) is not None, timeout=60)
                assert _tables_locked_by(probe, probe.scalar(waiting)) == TABLES_THE_UPGRADE_STILL_LOCKS
            finally:
                held.rollback()
                upgrading.join(60)
        with engine.connect() as conn:
            assert conn.scalar(sa.text("SELECT version_num FROM alembic_version")) == "0025"
            assert conn.scalar(sa.text("SELECT to_regclass('ix_outbox_message_reminder_class')")) is None
            assert conn.scalar(sa.text("SELECT to_regclass('ix_inbox_event_to_prune')")) is None
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{created}" WITH (FORCE)'))
        admin.dispose()
