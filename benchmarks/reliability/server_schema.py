"""Schemathesis against the server's OpenAPI schema: every operation and every check, on a tiny model of each family.
Failures must be 0: the schema says exactly what the server accepts, and the server answers what the schema says.

    python benchmarks/reliability/server_schema.py [--examples 200] [--work DIR]
                                                   → benchmarks/results/reliability_server_schema.json

The models are the tiny RNN and Transformer that benchmarks/reliability/tamper.py trains on a reversal task (reused
from --work when they are there). For each, the app `attnmt serve` runs (`create_app`) is tested in this process
through its ASGI interface by schemathesis's engine, as `schemathesis run` tests a server: the schema's examples, the
coverage phase (the edges of every keyword), fuzzing with up to `examples` cases per operation and mode (positive:
requests the schema admits, which must succeed; negative: requests it does not, which must get a 4xx), every built-in
check. Once with the default settings, once with an API key (schemathesis sends it; the `ignored_auth` check also
tries /translate without it). One setting differs from schemathesis's defaults: a request the schema admits may also
get 413, which the schema declares for the limits it cannot say (a text's source subwords, the decoding work, the
attention returned).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import schemathesis  # noqa: E402
import torch  # noqa: E402
from report import machine  # noqa: E402
from schemathesis import engine  # noqa: E402
from schemathesis.engine import events  # noqa: E402

from attnmt.serve import ServeSettings, create_app  # noqa: E402
from attnmt.translator import Translator  # noqa: E402

with warnings.catch_warnings():  # starlette ≥ 1.x prefers the httpx2 fork; plain httpx still works
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

ROOT = HERE.parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "reliability_server_schema.json"
DEFAULT_WORK = ROOT / "benchmarks" / "results" / "tmp" / "reliability_server"
API_KEY = "reliability-server-schema-key"
# schemathesis's expected statuses for schema-valid requests, and 413 (the limits a JSON schema cannot say)
ACCEPTED = ["2xx", "3xx", "401", "403", "404", "409", "429", "5xx", "413"]


def check_app(app, examples: int, api_key: str | None = None, seed: int = 1) -> dict[str, Any]:
    """Run schemathesis's engine against `app`'s /openapi.json: the cases it sent per phase, and each failed check
    (phase, operation, check, message, the request)."""
    config = schemathesis.Config.from_dict({
        "seed": seed,
        "continue-on-failure": True,  # count every failure, not only an operation's first
        "cache": {"enabled": False},  # each run on its own: nothing written to .schemathesis/
        "generation": {"max-examples": examples},
        "checks": {"positive_data_acceptance": {"expected-statuses": ACCEPTED}},
        **({"headers": {"Authorization": f"Bearer {api_key}"}} if api_key else {}),
    })
    cases: dict[str, int] = {}
    failures: list[dict[str, str]] = []
    began = time.perf_counter()
    with TestClient(app):  # the app's lifespan: batcher and start-up self-check, as under uvicorn
        schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=config)
        for event in engine.from_schema(schema).execute():
            if isinstance(event, (events.NonFatalError, events.FatalError)):
                failures.append({"phase": "engine", "operation": "", "check": type(event).__name__,
                                 "message": str(event.info if hasattr(event, "info") else event)[:500], "case": ""})
            if not isinstance(event, events.ScenarioFinished):
                continue
            phase = event.phase.name.lower()
            cases[phase] = cases.get(phase, 0) + len(event.recorder.cases)
            for case_id, checks in event.recorder.checks.items():
                for check in checks:
                    if check.failure_info is None:
                        continue
                    case = event.recorder.cases.get(case_id)
                    failures.append({"phase": phase, "operation": event.label or "", "check": check.name,
                                     "message": str(check.failure_info.failure)[:500],
                                     "case": repr(case.value.body if case else None)[:500]})
    return {"cases": sum(cases.values()), "cases_by_phase": cases, "failures": failures,
            "seconds": round(time.perf_counter() - began, 1)}


def run(examples: int, work: Path = DEFAULT_WORK) -> dict[str, Any]:
    """Every family × (default settings, an API key); writes RESULTS."""
    from tamper import trained_models

    torch.set_num_threads(1)
    runs = []
    for family, model_dir in trained_models(work).items():
        translator = Translator.load(model_dir, device="cpu")
        for access, api_key in (("open", None), ("api key", API_KEY)):
            result = check_app(create_app(translator, ServeSettings(api_key=api_key)), examples, api_key)
            runs.append({"family": family, "access": access, **result})
            print(f"{family}, {access}: {result['cases']} cases, {len(result['failures'])} failures "
                  f"({result['seconds']} s)", flush=True)
    results = {"command": "python " + " ".join(["benchmarks/reliability/server_schema.py"] + sys.argv[1:]),
               "machine": machine(), "schemathesis": schemathesis.__version__, "examples": examples,
               "accepted_for_valid_requests": ACCEPTED, "runs": runs,
               "cases": sum(r["cases"] for r in runs), "failures": sum(len(r["failures"]) for r in runs)}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=200, help="fuzzing cases per operation and mode")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK, help="where the tiny models are (trained if not)")
    args = parser.parse_args()
    results = run(args.examples, args.work)
    print(f"{results['cases']} cases, {results['failures']} failures → {RESULTS.relative_to(ROOT)}")
    sys.exit(1 if results["failures"] else 0)


if __name__ == "__main__":
    main()
