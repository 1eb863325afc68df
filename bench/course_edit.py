"""Editing a course that holds many enrollments: the what-if (`PUT /admin/courses/{code}?dry_run=true`) and the
save (`PUT /admin/courses/{code}`), each edit timed in a process of its own, with that process's peak memory.

    .venv/bin/python bench/course_edit.py [--enrollments 1000000] [--database-url URL] [--edits texts,step_added]

The course is `bench/scale.py`'s: 5 steps with a class each, a bundle of 2 private credits, and the enrollments
seeded in bulk (step 2 booked for 90 % of them). `--database-url` reuses a database seeded before (by this
script or by `bench/scale.py`): every edit is rolled back, so the database is left as it was.

Each edit runs the routes' own domain calls, without HTTP: the what-if (`tasks.catalog.changes.course_change`,
the dry run's answer), then, in a transaction of its own, the save as `PUT` runs it (the summary it records,
then `tasks.catalog.services.save_course`). The time is the database's and the process's, the part a gunicorn
worker's timeout (30 s) applies to.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import fresh_database, seed_course  # noqa: E402

CODE = "BENCH"


def course(edit: str) -> dict:
    """The BENCH course as `bench.common.seed_course` wrote it, with one edit."""
    steps = [{"label": f"{CODE}-{n}", "options": [f"gc_{CODE}_{n}"]} for n in range(1, 6)]
    body = {"title": f"{CODE} course", "timezone": "UTC", "price": {"amount": 12000, "currency": "usd"},
            "steps": steps, "bundle": [{"kind": "private_credit", "quantity": 2}]}
    if edit == "texts":
        body["title"] = "BENCH course, renamed"
    elif edit == "step_added":
        steps.append({"label": f"{CODE}-6", "title": "A sixth step"})
    elif edit == "step_moved":
        steps[0], steps[1] = steps[1], steps[0]
    elif edit == "option_attached":
        steps[0]["options"].append("gc_BENCH_extra")
    elif edit == "bundle_changed":
        body["bundle"] = [{"kind": "private_credit", "quantity": 3}]
    elif edit != "nothing":
        raise SystemExit(f"unknown edit {edit!r}")
    return body


EDITS = ("nothing", "texts", "step_added", "step_moved", "option_attached", "bundle_changed")


def run_edit(url: str, edit: str) -> dict:
    """One edit, what-if then save, in one transaction rolled back at the end."""
    from db.database import Database
    from tasks.catalog import changes
    from tasks.catalog import services as catalog

    database = Database(url)
    data = course(edit)
    out: dict = {"edit": edit}
    session = database.sessions()
    try:
        started = time.perf_counter()
        impact = changes.course_change(session=session, course=catalog.parse_course(data, code=CODE))
        body = json.dumps(impact.as_dict(), default=str)
        out["what_if_s"] = time.perf_counter() - started
        out["what_if_bytes"] = len(body)
        out["affected"] = impact.summary()["enrollments_affected"]
        session.rollback()
        # the save as the route runs it: the summary it records, then the save itself
        started = time.perf_counter()
        course_in = catalog.parse_course(data, code=CODE)
        summary = changes.course_change(session=session, course=course_in, detail=False).summary()
        assert summary["enrollments_affected"] == out["affected"], summary
        saved = catalog.save_course(session=session, course=course_in)
        session.flush()
        out["save_s"] = time.perf_counter() - started
        out["change"] = saved.change
    finally:
        session.rollback()
        session.close()
        database.dispose()
    out["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser()
    parser.add_argument("--enrollments", type=int, default=1_000_000)
    parser.add_argument("--database-url", help="a database seeded before; edits are rolled back")
    parser.add_argument("--edits", default=",".join(EDITS), help=f"comma-separated, of {', '.join(EDITS)}")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # the child process: one edit, JSON on stdout
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(run_edit(args.database_url, args.one)))
        return []

    url = args.database_url
    if url is None:
        from bench.scale import STEPS, seed_enrollments, settle

        url = fresh_database("coursepipe_bench_course_edit")
        seed_course(url, steps=STEPS)
        seeded = seed_enrollments(url, args.enrollments)
        settle(url)
        print(f"seeded {args.enrollments} enrollments in {seeded:.0f} s")
    results = []
    for edit in args.edits.split(","):
        done = subprocess.run([sys.executable, __file__, "--database-url", url, "--one", edit],
                              capture_output=True, text=True)
        if done.returncode != 0:
            print(f"{edit}: failed\n{done.stderr[-2000:]}")
            continue
        r = json.loads(done.stdout.strip().splitlines()[-1])
        results.append(r)
        print(f"{edit:16s} what-if {r['what_if_s']:6.2f} s ({r['what_if_bytes']:,} bytes, {r['affected']:,} "
              f"enrollments affected)   save {r['save_s']:6.2f} s ({r['change']})   peak {r['peak_mb']:,.0f} MB")
    return results


if __name__ == "__main__":
    main()
