"""`make bench`: every benchmark on PostgreSQL + Redis, each figure next to its same-run reference,
then one table of the figures against the targets in docs/performance.md."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import (backlog, broker_floor, course_edit, e2e, fulfil, ingest, outbox, platform_events,  # noqa: E402
                   reminders, retention, scale)


def _row(name: str, figure: str, reference: str, target: str, met: bool | None) -> str:
    verdict = "" if met is None else "met" if met else "NOT MET"
    return f"{name:<22}{figure:<48}{reference:<38}{target:<28}{verdict}"


def summary(r: dict) -> list[str]:
    i, f, e, b, s, k = r["ingest"], r["fulfil"], r["e2e"], r["backlog"], r["scale"], r["broker_floor"]
    under_load = [v for k, v in e.items() if k != "idle"]
    rows = [
        _row("ingest", f"{i['ingest']['rate']:.0f}/s",
             f"minimal {i['minimal']['rate']:.0f}/s (x{i['ratio_minimal']:.2f}), bare x{i['ratio']:.2f}",
             ">= 0.95x minimal, >= 0.35x bare", i["ratio_minimal"] >= 0.95 and i["ratio"] >= 0.35),
        _row("ingest p99, paced", f"{i['paced']['p99_ms']:.1f} ms at {i['paced']['rate']:.0f}/s", "",
             "<= 20 ms at 800/s", i["paced"]["p99_ms"] <= 20),
        _row("fulfil", f"{f['pipeline']['rate']:.0f}/s",
             f"same rows {f['reference']['rate']:.0f}/s (x{f['ratio']:.2f})", ">= 1000/s and >= 0.8x",
             f["pipeline"]["rate"] >= 1000 and f["ratio"] >= 0.8),
        _row("fulfil, own SQL", f"{f['pipeline']['rate']:.0f}/s",
             f"fast path's SQL {f['own_sql']['rate']:.0f}/s (x{f['own_ratio']:.2f})", "(context)", None),
        _row("broker floor", f"no-op actor {k['rate']:.0f}/s, {k['cpu_ms']:.2f} ms CPU", "", "(context)", None),
        _row("e2e under load", " / ".join(f"{k} {v['p50']:.0f}/{v['p99']:.0f} ms" for k, v in e.items() if k != "idle"),
             "", "p50 <= 25, p99 <= 100 ms",
             all(v["p50"] <= 25 and v["p99"] <= 100 for v in under_load)),
        _row("e2e idle", f"p99 {e['idle']['p99']:.0f} ms", "", "p99 <= 250 ms", e["idle"]["p99"] <= 250),
        _row("backlog", f"{b['count']} in {b['seconds']:.0f} s", "", "60000 in <= 90 s", b["seconds"] <= 90),
        *(_row(f"scale: fulfil, {path} path", f"{s['loaded_rate'][path]:.0f}/s with 1M",
               f"empty {s['empty_rate'][path]:.0f}/s", "<= 1.2x slower",
               s["empty_rate"][path] / s["loaded_rate"][path] <= 1.2) for path in s["loaded_rate"]),
        _row("scale: reminder scan", f"{s['scan_s']:.1f} s", "", "<= 10 s over 100k", s["scan_s"] <= 10),
        *(_row(type_, f"{p['rate']:.0f} events/s, {p['cpu_us'] / 1000:.1f} ms worker CPU",
               f"{p['statements']:.0f} statements", "(context)", None) for type_, p in r["platform_events"].items()),
        *(_row(f"course edit: {c['edit']}", f"what-if {c['what_if_s']:.1f} s, save {c['save_s']:.1f} s",
               f"{c['affected']} enrollments affected", "(context; a request gets 30 s)", None)
          for c in r["course_edit"]),
        *(_row("retention: " + ("idle run" if t["retention_days"] == retention.IDLE_DAYS else "a batch"),
               f"{t['seconds']:.2f} s", "over 12M kept rows", "(context)", None) for t in r["retention"][-2:]),
        *(_row(f"reminders: {name}", f"{run['seconds']:.1f} s, {run['transactions']} transactions",
               f"{run['queued']} queued", "(context; the job gets 10 min)", None)
          for name, run in (("first run", r["reminders"]["first"]), ("next run", r["reminders"]["again"]))),
        _row("outbox delivery", f"{r['outbox']['rate']:.0f} messages/s, {r['outbox']['cpu_ms']:.1f} ms worker CPU",
             "", "(context)", None),
    ]
    return rows


def main() -> None:
    results = {}
    for name, module in (("ingest", ingest), ("fulfil", fulfil), ("broker_floor", broker_floor), ("e2e", e2e),
                         ("backlog", backlog), ("scale", scale),
                         ("platform_events", platform_events), ("outbox", outbox), ("retention", retention),
                         ("reminders", reminders)):
        print(f"\n== {name} ==", flush=True)
        results[name] = module.main([])
        if name == "scale":  # edits of the course holding the scale benchmark's million enrollments
            print("\n== course_edit ==", flush=True)
            results["course_edit"] = course_edit.main(["--database-url", results["scale"]["url"]])
    print("\n== against the targets ==")
    print(f"{'benchmark':<22}{'figure':<48}{'same-run reference':<38}{'target':<28}")
    for row in summary(results):
        print(row)


if __name__ == "__main__":
    main()
