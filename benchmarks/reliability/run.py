"""The reliability suites, one after the other, and docs/reliability.md from what they found.

    python benchmarks/reliability/run.py                 # every suite with its defaults, then the page
    python benchmarks/reliability/run.py kills tamper    # some suites, then the page (the others' JSON as it is)
    python benchmarks/reliability/run.py --page-only     # the page from the JSON in benchmarks/results/

Each suite is its own script in this folder, run in its own process, writing benchmarks/results/reliability_NAME.json;
this script only runs them and writes the page. Run it on an idle machine: the server-load suite measures latency.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
RESULTS = ROOT / "benchmarks" / "results"
PAGE = ROOT / "docs" / "reliability.md"

SUITES = {  # name → the command line that makes its figures (the defaults the page reports)
    "kills": ["--kills", "20"],
    "tamper": [],
    "corpus_fuzz": ["--examples", "2000"],
    "server_schema": ["--examples", "200"],
    "server_load": ["--clients", "64", "--seconds", "60"],
    "disk_full": [],
}
P99_BOUND_MS = 2000  # what normal requests' p99 must stay under while heavy requests come in (64 clients, 2 cores)


def command(name: str) -> str:
    return " ".join(["python", f"benchmarks/reliability/{name}.py", *SUITES[name]])


def load(name: str) -> dict | None:
    path = RESULTS / f"reliability_{name}.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def without_folders(message: str) -> str:
    """A message with the temporary folders of the machine it ran on cut from its paths: /tmp/x/disk/model/a → …/a."""
    return re.sub(r"/\S*/([^/\s]+)", r"…/\1", message)


def verdict(ok: bool) -> str:
    return "**passed**" if ok else "**FAILED**"


def kills_section(r: dict) -> list[str]:
    windows = ", ".join(f"{count} {window.replace('_', ' ')}" for window, count in r["windows"].items())
    ok = r["finished"] and r["bit_identical"] and r["unloadable"] == 0 and r["validations_logged_once"]
    return [f"{r['kills']} SIGKILLs of one training run ({windows}; \"timer\": from outside at a random instant), each "
            f"followed by `--resume`: finished {r['finished']}, bit-identical to an uninterrupted run "
            f"{r['bit_identical']}, unloadable states {r['unloadable']}, each validation logged once "
            f"{r['validations_logged_once']}, leftover temporaries {len(r['leftovers'])}. {verdict(ok)} "
            f"(CI runs 3 kills: tests/test_training_faults.py)."]


def tamper_section(r: dict) -> list[str]:
    totals = r["totals"]
    lines = ["| tampering | refused (named the file) | warned (no manifest) | silent | traceback |",
             "| --- | ---: | ---: | ---: | ---: |"]
    by_tampering: dict[str, dict[str, int]] = {}
    for row in r["rows"]:
        counts = by_tampering.setdefault(row["tampering"], {})
        counts[row["outcome"]] = counts.get(row["outcome"], 0) + 1
    for tampering, counts in by_tampering.items():
        lines.append(f"| {tampering.replace('_', ' ')} | {counts.get('refused', 0)} | {counts.get('warned', 0)} | "
                     f"{counts.get('silent', 0)} | {counts.get('traceback', 0) + counts.get('internal_error', 0)} |")
    ok = totals["silent"] == 0 and totals["traceback"] == 0 and totals["internal_error"] == 0 and totals["unnamed"] == 0
    return [f"{len(r['rows'])} attempts (each tampering × RNN and Transformer × with and without manifest.json × "
            f"`Translator.load`, `attnmt translate`, `attnmt evaluate`, `attnmt serve`): {totals['refused']} refused "
            f"naming the file, {totals['warned']} loaded with the warning that the directory has no manifest (a "
            f"flipped bit or a swapped tokenizer only a manifest can tell), {totals['silent']} silent, "
            f"{totals['traceback']} tracebacks, {totals['internal_error']} internal errors. {verdict(ok)}", "", *lines]


def corpus_fuzz_section(r: dict) -> list[str]:
    errors = ", ".join(f"{count} {name}" for name, count in r["attnmt_errors"].items())
    return [f"{r['examples']} corpora written by hypothesis (random bytes, other encodings, byte-order marks, CRLF and "
            f"lone CR, NUL, huge lines, blank and empty files): {r['read']} read, {errors}, {r['tracebacks']} "
            f"tracebacks. {verdict(r['tracebacks'] == 0)}"]


def server_schema_section(r: dict) -> list[str]:
    runs = "; ".join(f"{run['family']} {run['access']}: {run['cases']} cases, {len(run['failures'])} failures"
                     for run in r["runs"])
    return [f"schemathesis {r['schemathesis']}, every check, up to {r['examples']} fuzzed cases per operation and "
            f"mode: {runs}. {r['cases']} cases in all, {r['failures']} failures. {verdict(r['failures'] == 0)}"]


def server_load_section(r: dict) -> list[str]:
    normal = r["normal"]
    heavy = "; ".join(f"{kind}: {h['sent']} sent, statuses {h['statuses']}, p50 {h['p50_ms']} ms"
                      for kind, h in r["heavy"].items())
    ok = normal["errors"] == 0 and normal["p99_ms"] < P99_BOUND_MS
    return [f"{r['clients']} clients × {r['seconds']} s against `attnmt serve` (defaults, the tiny {r['family']}), one "
            f"heavy request a second: normal requests {normal['requests']} ({normal['requests_per_s']}/s), p50 "
            f"{normal['p50_ms']} ms, p99 {normal['p99_ms']} ms (bound: {P99_BOUND_MS} ms), max {normal['max_ms']} ms, "
            f"errors {normal['errors']}; heavy: {heavy}; server peak RSS {r['server_peak_rss_mib']} MiB. "
            f"{verdict(ok)}"]


def disk_full_section(r: dict) -> list[str]:
    if not r.get("passed") and "skipped" in json.dumps(r):
        return [f"skipped: {r.get('skipped', r)}"]
    previous = r["previous_checkpoint"]
    return [f"{r['filesystem']}: the save that did not fit exited {r['save_failure']['exit_status']} with one line "
            f"naming the file (\"{without_folders(r['save_failure']['stderr'].split(': ', 1)[-1].strip())}\"); the model "
            f"before it: "
            f"same bytes {previous['same_bytes']}, manifest verified {previous['manifest_verified']}, translates "
            f"{previous['translates']}, train_state at step {previous['train_state_step']}, temporaries left "
            f"{len(previous['temporary_files_left'])}; a new run into the full disk stops at the tokenizer's write "
            f"naming it; after space was freed `--resume` exited {r['resumed_after_freeing_space']['exit_status']}. "
            f"{verdict(r['passed'])}"]


SECTIONS = {"kills": ("(a) Kills during training", kills_section),
            "tamper": ("(b) Tampered model directories", tamper_section),
            "corpus_fuzz": ("(c) Fuzzed corpora", corpus_fuzz_section),
            "server_schema": ("(d) The served OpenAPI schema", server_schema_section),
            "server_load": ("(e) A server under load, with heavy requests", server_load_section),
            "disk_full": ("(f) A full disk", disk_full_section)}


def page() -> str:
    parts = ["# Reliability", "",
             "What attnmt does when things go wrong: a run killed at any instant, model directories damaged or "
             "swapped, corpora in any encoding, hostile requests, a full disk. Each suite is a script in "
             "`benchmarks/reliability/`; `python benchmarks/reliability/run.py` runs them all and writes this page "
             "(the figures below are from its last run; tests/ run smaller versions of each in CI).", ""]
    for name, (title, section) in SECTIONS.items():
        result = load(name)
        parts += [f"## {title}", "", f"`{command(name)}`" + (f" · {result['machine']}" if result else ""), ""]
        parts += section(result) if result else ["not run yet"]
        parts.append("")
    return "\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("suites", nargs="*", help=f"suites to run, of {', '.join(SUITES)} (default: all)")
    parser.add_argument("--page-only", action="store_true", help="only write docs/reliability.md")
    args = parser.parse_args()
    unknown = [name for name in args.suites if name not in SUITES]
    if unknown:
        parser.error(f"no suite {', '.join(unknown)}; the suites: {', '.join(SUITES)}")
    for name in [] if args.page_only else (args.suites or SUITES):
        print(f"$ {command(name)}", flush=True)
        subprocess.run([sys.executable, str(HERE / f"{name}.py"), *SUITES[name]], cwd=ROOT, check=True)
    PAGE.write_text(page(), encoding="utf-8")
    print(f"→ {PAGE.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
