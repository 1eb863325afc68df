"""`coursepipe courses import FILE` / `coursepipe courses publish CODE` / `coursepipe courses list`."""
from __future__ import annotations

import json
from pathlib import Path

import click

from coursepipe.cli_support import one_line


def load_file(path: Path):
    """JSON (`.json`) or YAML (anything else: YAML also reads JSON)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise click.ClickException(one_line(f"{path}: cannot be read as UTF-8 text: {exc}")) from None
    try:
        if path.suffix.lower() == ".json":
            return json.loads(text)
        import yaml

        return yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        raise click.ClickException(one_line(f"{path}: not valid JSON: {exc}")) from None
    except Exception as exc:  # yaml.YAMLError and friends
        raise click.ClickException(one_line(f"{path}: not valid YAML: {exc}")) from None


def register(main: click.Group) -> None:
    from coursepipe.cli_support import checked_reason, reason_option, record_cli_action
    from coursepipe.cli_support import runtime_for as _runtime
    from coursepipe.cli_support import settings_for as _settings

    @main.group()
    def courses() -> None:
        """Course authoring: import from a file, publish to Stripe."""

    @courses.command("import")
    @click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
    @reason_option
    def import_(file: Path, reason: str | None) -> None:
        """Create or replace the courses (and packages) of FILE: all of them, or none.

        FILE holds one course, a list of courses, or {"courses": [...], "packages": [...]}.
        Importing the same file again changes nothing."""
        from sqlalchemy.exc import IntegrityError

        from db.database import is_unique_violation
        from tasks.catalog import services as catalog
        from tasks.errors import TaskError

        reason = checked_reason(reason)
        data = load_file(file)
        try:
            parsed = catalog.parse_catalog(data)  # every entry is checked before anything is written
        except TaskError as exc:
            raise click.ClickException(one_line(f"{file}: {exc}")) from None
        runtime = _runtime(_settings())
        try:
            with runtime.db.session_scope() as session:
                results = catalog.save_catalog(session=session, catalog=parsed)
                for row in results:  # as the admin API records each save
                    record_cli_action(session, f"{row['kind']}.save", f"{row['kind']}:{row['code']}", reason,
                                      change=row["change"], file=file.name)
        except TaskError as exc:
            raise click.ClickException(one_line(f"{file}: {exc} (nothing was imported)")) from None
        except IntegrityError as exc:  # another import or admin edit created the same code meanwhile
            if not is_unique_violation(exc):
                raise
            raise click.ClickException(f"{file}: a concurrent change to the same course or package "
                                       "(nothing was imported); run the import again") from None
        for row in results:
            click.echo(f"{row['kind']} {row['code']}: {row['change']}")

    @courses.command()
    @click.argument("code")
    @click.option("--package", "is_package", is_flag=True, help="CODE names a credit package")
    @reason_option
    def publish(code: str, is_package: bool, reason: str | None) -> None:
        """Create or update the Stripe product and price of CODE, then mark it published.

        With REDIS_URL the publish is queued for the workers; without it (embedded) it runs here."""
        from tasks.catalog import publishing
        from tasks.errors import TaskError
        from workers import inbox_runs
        from workers import publishing as publish_calls

        kind = publishing.PACKAGE if is_package else publishing.COURSE
        reason = checked_reason(reason)
        settings = _settings()
        runtime = _runtime(settings)

        def audited(**details) -> None:  # publishing is intent → Stripe call → outcome: recorded once it is done
            with runtime.db.session_scope() as session:
                record_cli_action(session, f"{kind}.publish", f"{kind}:{code}", reason, **details)
        try:
            if settings.redis_url:
                from workers.actors import send

                if not publish_calls.request_publish(unit_of_work=runtime.db.session_scope, settings=settings,
                                                     kind=kind, code=code, send=send):
                    raise click.ClickException("could not queue the publish (is Redis up?)")
                audited(queued=True)
                click.echo(json.dumps({"kind": kind, "code": code, "queued": True}))
                return
            publishing.require_api_key(settings, kind, code)
            result = publish_calls.publish(kind, code, unit_of_work=runtime.db.session_scope, settings=settings)
        except TaskError as exc:
            raise click.ClickException(one_line(str(exc))) from None
        audited(queued=False)
        for inbox_id in result.woken:  # embedded: drift checks that waited for these objects run now
            inbox_runs.run_event(unit_of_work=runtime.db.session_scope, inbox_id=inbox_id,
                                 handlers=runtime.handlers, settings=settings)
        click.echo(json.dumps(result.as_dict()))

    @courses.command("list")
    def list_() -> None:
        """The live courses: code, status, Stripe ids, whether Stripe is in line."""
        from tasks.catalog import services as catalog
        from tasks.catalog import publishing
        from tasks.stripe_api import key_mode

        runtime = _runtime(_settings())
        with runtime.db.session_scope() as session:
            for program in catalog.live_programs(session):
                state = publishing.stripe_state(session, publishing.COURSE, program,
                                                key_mode(runtime.settings.stripe_api_key))
                click.echo(f"{program.code}\t{program.status.value}\t{state['product_id'] or '-'}\t"
                           f"{state['price_id'] or '-'}\t{'in sync' if state['in_sync'] else 'needs publish'}")
