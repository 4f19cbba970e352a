"""attnmt side by side with JoeyNMT, OpenNMT-py, fairseq and Sockeye: the same data, subwords, architectures and
training settings, measured the same way.

    python benchmarks/peers/run.py setup                   # a virtual environment per peer, under the cache folder
    python benchmarks/peers/run.py speed                   # train target tokens/s and peak memory, 3 repetitions
    python benchmarks/peers/run.py bleu --minutes 30       # train each for 30 minutes; test2016 BLEU, sentences/s
    python benchmarks/peers/run.py bleu --minutes 30 --seed 2   # another training seed; seed 1's rows are kept
    python benchmarks/peers/run.py decode                  # decode again with the models of the last bleu runs
    python benchmarks/peers/run.py fastdecode --train-steps 800   # every decoding path (int8, CTranslate2), 3 reps
    python benchmarks/peers/run.py report                  # the docs table again, from the results JSON
    python benchmarks/peers/run.py smoke                   # all of it in a few minutes, into the cache folder only

--systems (attnmt attnmt-bf16 joeynmt opennmt fairseq sockeye) and --arch (rnn transformer) choose what runs. The
cache folder is $ATTNMT_PEERS_CACHE, default ~/.cache/attnmt-peers: environments, the prepared data and every run's
configs, logs and models go there, never into the repository. Results go to benchmarks/results/peers.json and to the peers section of
docs/benchmarks.md; a system measured again replaces its earlier numbers (in bleu and decode, those of the same
--seed), the others are kept. The BLEU table shows BLEU and steps as the mean over the seeds, with each seed's value.

Every measured command runs alone (nothing else should load the machine), through hooks.py inside the system's own
environment, with OMP/MKL threads and torch threads set to 2. Systems are run in alternating order (ABCD, then
DCBA, ...) so that drift of the machine hits all alike, and each number is the median over repetitions.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from attnmt_ import Attnmt, AttnmtBF16  # noqa: E402
from common import (ARCHS, MATCHED, ROOT, Arch, Data, DecodeJob, TrainJob, bleu, cache_dir, pip_version,  # noqa: E402
                    prepare_data, prepared_data, read_jsonl, read_lines, run_monitored, tail, utc_now)
from fairseq_ import Fairseq  # noqa: E402
from joeynmt import JoeyNMT  # noqa: E402
from opennmt import OpenNMT  # noqa: E402
from report import machine, replace_section  # noqa: E402
from sockeye_ import Sockeye  # noqa: E402
from system import System  # noqa: E402

SYSTEMS: dict[str, System] = {s.name: s for s in (Attnmt(), AttnmtBF16(), JoeyNMT(), OpenNMT(), Fairseq(),
                                                   Sockeye())}
PEERS = ["joeynmt", "opennmt", "fairseq", "sockeye"]
BASELINE = "joeynmt"
JSON_PATH = ROOT / "benchmarks" / "results" / "peers.json"
MARKDOWN_PATH = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- peers:begin -->", "<!-- peers:end -->"
INVOCATION = ""  # this run's command line, recorded with every measurement
DEFAULTS = {"steps": 100, "warmup": 20, "repeats": 3, "minutes": 30.0, "decode_repeats": 3, "train_steps": 800}
FAST_BEGIN, FAST_END = "<!-- peers-fastdecode:begin -->", "<!-- peers-fastdecode:end -->"
SEEDED_MODES = ("bleu", "decode")  # the modes that train (or decode the models trained) with --seed
REFERENCE_PATH = ("opennmt", "float32")  # the fastdecode table's ratios: OpenNMT-py's own PyTorch decoding


# ---- small helpers -----------------------------------------------------------------------------------------------

def shown(command: list[str]) -> str:
    """A command as it can be read and rerun: the cache folder as $ATTNMT_PEERS_CACHE, the repository as ."""
    text = shlex.join(str(part) for part in command)
    return text.replace(str(cache_dir()), "$ATTNMT_PEERS_CACHE").replace(str(ROOT) + "/", "")


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def alternating(items: list, repetition: int) -> list:
    """ABCD on even repetitions, DCBA on odd ones."""
    return list(items) if repetition % 2 == 0 else list(reversed(items))


def plan(systems: list[str], archs: list[str]) -> tuple[list[tuple[System, Arch]], list[dict]]:
    """(system, arch) pairs to run, and n/a rows for the pairs a system cannot build."""
    runs, not_available = [], []
    for arch_name in archs:
        arch = ARCHS[arch_name]
        for name in systems:
            system = SYSTEMS[name]
            if system.supports(arch):
                runs.append((system, arch))
            else:
                not_available.append({"system": name, "arch": arch_name, "n/a": system.unsupported[arch_name]})
    return runs, not_available


def seed_of(run: dict) -> int:
    """The training seed of a recorded run; runs recorded before seeds were recorded were all trained with 1."""
    return run.get("seed", MATCHED.seed)


def same_run(run: dict, system: System, arch: Arch, seed: int) -> bool:
    """Whether a recorded run is of this system, architecture and seed."""
    return (run["system"], run["arch"], seed_of(run)) == (system.name, arch.name, seed)


def forget(section: dict, system: System, arch: Arch, seed: int) -> None:
    """Drop the earlier runs of this system, architecture and seed from a results section."""
    section["runs"] = [r for r in section["runs"] if not same_run(r, system, arch, seed)]


def seed_suffix(seed: int) -> str:
    """What a work folder's name gets for a seed other than the default, so that runs of two seeds never share one."""
    return "" if seed == MATCHED.seed else f"-s{seed}"


def step_records(job: TrainJob) -> tuple[list[dict], int | None]:
    """The hook's step log: records of timed steps (in order) and the parameter count."""
    records, parameters = [], None
    for record in read_jsonl(job.step_log):
        if "parameters" in record:
            parameters = record["parameters"]
        elif "step" in record:
            records.append(record)
    return records, parameters


# ---- one training run --------------------------------------------------------------------------------------------

def train(system: System, arch: Arch, data: Data, work: Path, seed: int, stop_after_steps: int | None = None,
          budget_seconds: float | None = None, save_at_step: int | None = None) -> tuple[TrainJob, dict]:
    """Run one training of `system` with `seed` in a fresh `work` folder; returns the job and what was measured."""
    work.mkdir(parents=True, exist_ok=False)
    job = TrainJob(system.name, arch, data, work, system.python(), seed, stop_after_steps, budget_seconds,
                   save_at_step)
    command = system.train_command(job)
    timeout = budget_seconds + 1800 if budget_seconds is not None else 4 * 3600 if save_at_step else 1800
    finished = run_monitored(command, cwd=work, log=work / "train.log", timeout=timeout)
    records, parameters = step_records(job)
    result = {"system": system.name, "arch": arch.name, "seed": seed, "invocation": INVOCATION,
              "command": shown(command),
              "work": shown([str(work)]),
              "returncode": finished.returncode, "wall_s": round(finished.wall_seconds, 1),
              "peak_rss_mib": round(finished.peak_rss_mib), "parameters": parameters, "date": utc_now(),
              "version": system.version()}
    if finished.returncode != 0:
        result["error"] = tail(finished.log, 15)
    return job, {**result, "_records": records}


def speed_numbers(records: list[dict], warmup: int, steps: int) -> dict:
    """Target tokens/s over steps warmup+1 .. warmup+steps: their tokens over the time from the start of the first
    to the start of the step after the last."""
    starts = {r["step"]: r["start"] for r in records}
    tokens = {r["step"]: r["tokens"] for r in records if r.get("tokens") is not None}
    first, last = warmup + 1, warmup + steps
    if last + 1 not in starts or any(s not in tokens for s in range(first, last + 1)):
        return {"error": f"the step log stops at step {max(starts, default=0)}; needed {last + 1}"}
    seconds = starts[last + 1] - starts[first]
    timed = sum(tokens[s] for s in range(first, last + 1))
    return {"train_tgt_tokens_per_s": round(timed / seconds, 1), "seconds_timed": round(seconds, 2),
            "tokens_timed": timed, "tokens_per_step": round(timed / steps, 1)}


# ---- decoding ----------------------------------------------------------------------------------------------------

def decode(system: System, job: TrainJob, beam: int, split: str, repetition: int, score: bool,
           folder: str = "decode", variant: str = "float32") -> dict:
    folder = job.work / folder
    folder.mkdir(exist_ok=True)
    stem = f"{split}.beam{beam}.r{repetition}" + ("" if variant == "float32" else f".{variant}")
    decode_job = DecodeJob(job, beam, split, folder / f"{stem}.out", folder / f"{stem}.time.json", variant)
    try:
        command = system.decode_command(decode_job)
    except FileNotFoundError as error:
        return {"error": str(error)}
    finished = run_monitored(command, cwd=folder, log=folder / f"{stem}.log", timeout=3600)
    result = {"beam": beam, "repetition": repetition, "command": shown(command), "returncode": finished.returncode,
              "wall_s": round(finished.wall_seconds, 1), "peak_rss_mib": round(finished.peak_rss_mib)}
    timing = json.loads(decode_job.time_log.read_text()) if decode_job.time_log.exists() else {}
    if finished.returncode != 0 or not timing.get("calls"):
        return {**result, "error": tail(finished.log, 15) or "no batch was translated"}
    references = read_lines(decode_job.references)
    seconds = timing["last_end"] - timing["first_start"]
    result.update({"sentences": len(references), "batches": timing["calls"], "search_seconds": round(seconds, 2),
                   "sentences_per_s": round(len(references) / seconds, 1)})
    if score:
        hypotheses = system.hypotheses(decode_job)
        if len(hypotheses) != len(references):
            return {**result, "error": f"{len(hypotheses)} translations for {len(references)} sentences"}
        result["bleu"], result["bleu_signature"] = bleu(hypotheses, references)
        result["bleu"] = round(result["bleu"], 2)
        result["example"] = hypotheses[0]
    return result


# ---- the modes ---------------------------------------------------------------------------------------------------

def open_section(results: dict, mode: str, settings: dict, not_available: list[dict]) -> dict:
    """The results section of a mode, with this run's settings; says which systems cannot run an architecture."""
    section = results.setdefault(mode, {})
    section.setdefault("runs", [])
    section.update(settings)
    for row in not_available:
        say(f"{row['system']} {row['arch']}: n/a ({row['n/a']})")
    return section


def run_speed(args, systems: list[str], data: Data, results: dict, out_root: Path) -> None:
    runs, not_available = plan(systems, args.arch)
    section = open_section(results, "speed", {"steps": args.steps, "warmup": args.warmup, "repeats": args.repeats},
                           not_available)
    for repetition in range(args.repeats):
        for system, arch in alternating(runs, repetition):
            say(f"speed r{repetition}: {system.name} {arch.name} ({args.warmup} + {args.steps} steps)")
            work = out_root / f"speed-{arch.name}-{system.name}-r{repetition}"
            job, result = train(system, arch, data, work, args.seed,
                                stop_after_steps=args.warmup + args.steps + 1)
            records = result.pop("_records")
            result.update({"repetition": repetition, **speed_numbers(records, args.warmup, args.steps)})
            if repetition == 0:  # numbers of an earlier run of this pair are replaced, once it has new ones
                forget(section, system, arch, args.seed)
            section["runs"].append(result)
            say(f"  -> {result.get('train_tgt_tokens_per_s', 'failed')} tok/s, peak {result['peak_rss_mib']} MiB"
                + (f"\n{result['error']}" if "error" in result else ""))
            save(results, args)


def run_bleu(args, systems: list[str], data: Data, results: dict, out_root: Path) -> None:
    runs, not_available = plan(systems, args.arch)
    section = open_section(results, "bleu", {"minutes": args.minutes, "test": args.split,
                                             "decode_repeats": args.decode_repeats}, not_available)
    trained = []
    for system, arch in runs:  # one training each, in the order given
        say(f"bleu: training {system.name} {arch.name} for {args.minutes} minutes, seed {args.seed}")
        work = out_root / f"bleu-{arch.name}-{system.name}{seed_suffix(args.seed)}"
        job, result = train(system, arch, data, work, args.seed, budget_seconds=args.minutes * 60)
        records = result.pop("_records")
        timed = [r for r in records if r.get("tokens") is not None]
        if timed:
            seconds = timed[-1]["start"] - timed[0]["start"]
            result.update({"steps": len(timed), "train_seconds": round(seconds, 1),
                           "train_tgt_tokens_per_s": round(sum(r["tokens"] for r in timed[:-1]) / seconds, 1)
                           if seconds > 0 else None})
        result["train_peak_rss_mib"] = result.pop("peak_rss_mib")
        result["decodes"] = []
        forget(section, system, arch, args.seed)
        section["runs"].append(result)
        trained.append((system, job, result))
        say(f"  -> {result.get('steps')} steps" + (f"\n{result['error']}" if "error" in result else ""))
        save(results, args)
    decode_all(args, trained, results)


def run_decode(args, systems: list[str], data: Data, results: dict, out_root: Path) -> None:
    """Decode test2016 again with the models the last `bleu` run of each system and architecture with --seed left
    in the cache folder (after a change to a system's decoding, without training again): its decode columns
    (sentences/s, BLEU) are replaced, its training numbers kept, and the run records when and with which version it
    was decoded."""
    runs, _ = plan(systems, args.arch)
    trained = []
    for system, arch in runs:
        result = next((r for r in results.get("bleu", {}).get("runs", []) if same_run(r, system, arch, args.seed)),
                      None)
        work = Path(shlex.split(result["work"])[0].replace("$ATTNMT_PEERS_CACHE", str(cache_dir()))) if result else None
        if result is None or "error" in result or not (work / "train.log").exists():
            say(f"decode: {system.name} {arch.name} has no trained model of a bleu run with seed {args.seed}; run "
                "`bleu` for it first")
            continue
        job = TrainJob(system.name, arch, data, work, system.python(), args.seed)
        result.update({"decodes": [], "decoded": {"invocation": INVOCATION, "date": utc_now(),
                                                   "version": system.version()}})
        trained.append((system, job, result))
    decode_all(args, trained, results, folder="decode-" + out_root.name)


def decode_all(args, trained: list[tuple[System, TrainJob, dict]], results: dict, folder: str = "decode") -> None:
    """Greedy and beam-k decoding of test2016 by each trained system, repeated in alternating order."""
    for repetition in range(args.decode_repeats):
        for system, job, result in alternating(trained, repetition):
            if "error" in result:
                continue
            for beam in (1, MATCHED.beam_size):
                say(f"bleu: decoding {args.split} with {system.name} {job.arch.name}, beam {beam}, r{repetition}")
                decoded = decode(system, job, beam, args.split, repetition, score=repetition == 0, folder=folder)
                result["decodes"].append(decoded)
                say(f"  -> {decoded.get('sentences_per_s', 'failed')} sent/s, BLEU {decoded.get('bleu', '-')}"
                    + (f"\n{decoded['error']}" if "error" in decoded else ""))
                save(results, args)


def run_fastdecode(args, systems: list[str], data: Data, results: dict, out_root: Path) -> None:
    """Every decoding path of each system (`System.decode_variants`: PyTorch float32, attnmt's int8 and
    CTranslate2 export, OpenNMT-py through CTranslate2's own converter) on models trained for --train-steps steps
    (a step budget: the same models whatever else loads the machine; kept in the cache folder and reused by later
    runs with the same budget, --retrain to train again). Greedy and beam 5, --decode-repeats repetitions with the
    paths in alternating order; BLEU from the first."""
    runs, not_available = plan(systems, args.arch)
    section = results.setdefault("fastdecode", {})
    if section.get("train_steps") != args.train_steps:
        section.clear()
    section.update({"train_steps": args.train_steps, "decode_repeats": args.decode_repeats, "test": args.split})
    models, rows = section.setdefault("models", []), section.setdefault("runs", [])
    paths = []
    for system, arch in runs:
        model = next((m for m in models if (m["system"], m["arch"]) == (system.name, arch.name)), None)
        work = Path(model["work"].replace("$ATTNMT_PEERS_CACHE", str(cache_dir()))) if model else None
        if args.retrain or model is None or "error" in model or not (work / "train.log").exists():
            say(f"fastdecode: training {system.name} {arch.name} for {args.train_steps} steps")
            job, model = train(system, arch, data, out_root / f"fastdecode-{arch.name}-{system.name}", args.seed,
                               save_at_step=args.train_steps)
            model.pop("_records")
            models[:] = [m for m in models if (m["system"], m["arch"]) != (system.name, arch.name)] + [model]
            save(results, args)
            if "error" in model:
                say(f"  -> failed\n{model['error']}")
                continue
        job = TrainJob(system.name, arch, data, work or out_root / f"fastdecode-{arch.name}-{system.name}",
                       system.python(), args.seed)
        for variant, label in system.decode_variants(arch).items():
            try:
                system.prepare_variant(job, variant)
            except Exception as error:  # one path failing to convert must not stop the others
                say(f"fastdecode: {system.name} {arch.name} {variant}: preparation failed: {error}")
                continue
            paths.append((system, job, variant))
    rows[:] = [r for r in rows if (r["system"], r["arch"]) not in {(s.name, j.arch.name) for s, j, _ in paths}]
    for repetition in range(args.decode_repeats):
        for system, job, variant in alternating(paths, repetition):
            for beam in (1, MATCHED.beam_size):
                say(f"fastdecode: {system.name} {job.arch.name} {variant}, beam {beam}, r{repetition}")
                decoded = decode(system, job, beam, args.split, repetition, score=repetition == 0,
                                 folder="decode-" + out_root.name, variant=variant)
                decoded.update({"system": system.name, "arch": job.arch.name, "variant": variant,
                                "invocation": INVOCATION, "date": utc_now(), "version": system.version()})
                rows.append(decoded)
                say(f"  -> {decoded.get('sentences_per_s', 'failed')} sent/s, BLEU {decoded.get('bleu', '-')}"
                    + (f"\n{decoded['error']}" if "error" in decoded else ""))
                save(results, args)


def fastdecode_rows(results: dict) -> list[dict]:
    """One row per (arch, system, path): medians over repetitions of sentences/s and peak RSS, per search."""
    section = results.get("fastdecode", {})
    rows = []
    for arch_name in ARCHS:
        for name, system in SYSTEMS.items():
            if arch_name in system.unsupported:
                continue
            for variant, label in system.decode_variants(ARCHS[arch_name]).items():
                runs = [r for r in section.get("runs", []) if (r["system"], r["arch"], r["variant"])
                        == (name, arch_name, variant)]
                if not runs:
                    continue
                row = {"arch": arch_name, "system": name, "variant": variant, "label": label}
                for beam, key in ((1, "greedy"), (MATCHED.beam_size, f"beam{MATCHED.beam_size}")):
                    ok = [r for r in runs if r["beam"] == beam and "error" not in r]
                    failed = [r for r in runs if r["beam"] == beam and "error" in r]
                    if failed and not ok:
                        row[f"{key}_error"] = (failed[-1]["error"].splitlines() or ["failed"])[-1]
                    row[f"{key}_sentences_per_s"] = median([r["sentences_per_s"] for r in ok])
                    row[f"{key}_peak_rss_mib"] = median([r["peak_rss_mib"] for r in ok])
                    row[f"{key}_repetitions"] = len(ok)
                    row[f"bleu_{key}"] = next((r["bleu"] for r in ok if "bleu" in r), None)
                rows.append(row)
    return rows


def fastdecode_lines(results: dict) -> list[str]:
    """The fastdecode section of docs/benchmarks.md: a table per architecture, ratios to OpenNMT-py's PyTorch
    decoding and to the system's own float32, and the issue's targets checked against the medians."""
    section = results.get("fastdecode", {})
    rows = fastdecode_rows(results)
    beam_key = f"beam{MATCHED.beam_size}"
    commands = sorted({(r["invocation"], r["date"][:10]) for r in section.get("runs", [])})
    lines = [FAST_BEGIN, "## Decoding paths side by side (Multi30k de→en)", "",
             f"Machine: {results.get('machine', '?')}.  ",
             f"Models: each system trained for {section.get('train_steps', '?')} steps with the matched settings "
             "above (a step budget, not the 30 minutes of the table above: these rows compare decoding paths of "
             "the same model, and BLEU is lower than after 30 minutes). test2016 (1,000 sentences) in batches of "
             f"{MATCHED.decode_batch_sentences}, 2 threads everywhere. Sentences/s: from the start of the first "
             "batch to the end of the last, timed by wrapping each path's batch call (hooks.py), median of "
             f"{section.get('decode_repeats', '?')} repetitions in alternating order; peak RSS: the decoding "
             "process, model loading included. Ratios: ÷ OpenNMT-py's PyTorch decoding of its own model, and ÷ the "
             "same model's PyTorch float32 path.  ",
             "CTranslate2 runs with its own choice of matrix library for attnmt and OpenNMT-py alike (oneDNN on "
             "an AMD CPU), and with attnmt's thread layout for both: one call for all the sentences, sorted by "
             "length into batches of the same size, one batch per thread decoded at once "
             "(`attnmt.backends.ctranslate2_threads`). Its beam search ranks by log p / length where attnmt and "
             "OpenNMT-py use ((5 + length) / 6): beam-5 BLEU of a CTranslate2 path can differ from its PyTorch path for that "
             "reason too.", "", "Runs:", "", *[f"- `{c}` ({d})" for c, d in commands], ""]
    for arch_name in ARCHS:
        arch_rows = [r for r in rows if r["arch"] == arch_name]
        if not arch_rows:
            continue
        reference = next((r for r in arch_rows if (r["system"], r["variant"]) == REFERENCE_PATH), None)
        lines += [f"**{ARCH_TITLES[arch_name]}**", "",
                  "| decoding path | greedy sent/s (× OpenNMT-py / × own float32) | beam-5 sent/s (× / ×) "
                  "| peak RSS MiB greedy / beam 5 | BLEU greedy | BLEU beam 5 |",
                  "| --- | ---: | ---: | ---: | ---: | ---: |"]
        for row in arch_rows:
            own = next((r for r in arch_rows if (r["system"], r["variant"]) == (row["system"], "float32")), None)
            cells = [row["label"]]
            for key in ("greedy", beam_key):
                value = row.get(f"{key}_sentences_per_s")
                if value is None:
                    cells.append(f"failed: {row[f'{key}_error']}" if f"{key}_error" in row else "—")
                    continue
                base = reference and reference.get(f"{key}_sentences_per_s")
                mine = own and own.get(f"{key}_sentences_per_s")
                cells.append(f"{value:,.1f} ({value / base:.2f}× / {value / mine:.2f}×)" if base and mine
                             else f"{value:,.1f}")
            cells.append(" / ".join(_fmt(row.get(f"{k}_peak_rss_mib")) for k in ("greedy", beam_key)))
            cells += [_fmt(row.get("bleu_greedy"), 2), _fmt(row.get(f"bleu_{beam_key}"), 2)]
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", *fastdecode_verdicts(arch_rows, reference, beam_key), ""]
    return lines + [FAST_END]


def fastdecode_verdicts(rows: list[dict], reference: dict | None, beam_key: str) -> list[str]:
    """The issue's targets: attnmt's fastest path ≥ 2× OpenNMT-py's PyTorch sentences/s with BLEU within 0.3 of
    attnmt's float32 (Transformer); attnmt int8 ≥ 1.5× its float32 with BLEU within 0.5 (RNN)."""
    mine = [r for r in rows if r["system"] == "attnmt"]
    own = next((r for r in mine if r["variant"] == "float32"), None)
    if own is None:
        return []
    verdicts = []
    for key in ("greedy", beam_key):
        if reference and reference.get(f"{key}_sentences_per_s"):
            fast = [r for r in mine if r.get(f"{key}_sentences_per_s") and r.get(f"bleu_{key}") is not None
                    and own.get(f"bleu_{key}") is not None and abs(r[f"bleu_{key}"] - own[f"bleu_{key}"]) <= 0.3]
            if fast:
                best = max(fast, key=lambda r: r[f"{key}_sentences_per_s"])
                ratio = best[f"{key}_sentences_per_s"] / reference[f"{key}_sentences_per_s"]
                verdicts.append(f"- {key}: attnmt's fastest path with BLEU within 0.3 of its float32 is "
                                f"{best['label']}, {ratio:.2f}× OpenNMT-py's PyTorch decoding: target 2× "
                                + ("met." if ratio >= 2 else f"missed by {2 - ratio:.2f}×."))
        int8 = next((r for r in mine if r["variant"] == "int8"), None)
        if int8 and int8.get(f"{key}_sentences_per_s") and own.get(f"{key}_sentences_per_s"):
            ratio = int8[f"{key}_sentences_per_s"] / own[f"{key}_sentences_per_s"]
            drop = (own.get(f"bleu_{key}") or 0) - (int8.get(f"bleu_{key}") or 0)
            verdicts.append(f"- {key}: attnmt int8 {ratio:.2f}× its float32, BLEU {-drop:+.2f}"
                            + (" (RNN target ≥ 1.5×, within 0.5: " + ("met)." if ratio >= 1.5 and drop <= 0.5
                                                                       else "missed).")
                               if rows[0]["arch"] == "rnn" else "."))
    return verdicts


# ---- results -----------------------------------------------------------------------------------------------------

def load_results(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def save(results: dict, args) -> None:
    results["machine"] = machine()
    results["settings"] = {"matched": asdict(MATCHED), "archs": {n: asdict(a) for n, a in ARCHS.items()},
                           "threads": "OMP_NUM_THREADS=MKL_NUM_THREADS=2 and torch.set_num_threads(2) in every "
                                      "process (hooks.py); attnmt also training.threads: 2"}
    results["summary"] = summarize(results)
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    write_markdown(results, Path(args.markdown))
    if results.get("fastdecode"):
        replace_section(Path(args.markdown), FAST_BEGIN, FAST_END, "\n".join(fastdecode_lines(results)))


def median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 1) if values else None


def summarize(results: dict) -> list[dict]:
    """One row per system and architecture: medians over repetitions; 'n/a: reason' where it cannot run."""
    rows = []
    for arch_name in ARCHS:
        for name, system in SYSTEMS.items():
            row = {"system": name, "label": system.label, "arch": arch_name,
                   "version": results.get("versions", {}).get(name)}
            if arch_name in system.unsupported:
                rows.append({**row, "n/a": system.unsupported[arch_name]})
                continue
            row["builds"] = system.arch_notes.get(arch_name, "")
            speed = [r for r in results.get("speed", {}).get("runs", [])
                     if r["system"] == name and r["arch"] == arch_name]
            ok = [r for r in speed if "error" not in r]
            if speed and not ok:
                row["speed_error"] = speed[-1]["error"].splitlines()[-1] if speed[-1]["error"] else "failed"
            row["train_tgt_tokens_per_s"] = median([r["train_tgt_tokens_per_s"] for r in ok])
            row["train_peak_rss_mib"] = median([r["peak_rss_mib"] for r in ok])
            row["speed_repetitions"] = len(ok)
            bleu_runs = [r for r in results.get("bleu", {}).get("runs", [])
                         if r["system"] == name and r["arch"] == arch_name]
            row["parameters"] = next((r["parameters"] for r in ok + bleu_runs if r.get("parameters")), None)
            if bleu_runs:
                row.update(bleu_columns(bleu_runs, results["bleu"].get("minutes")))
            rows.append(row)
    return rows


def last_run_per_seed(runs: list[dict]) -> dict[int, dict]:
    """The last of the runs of each seed, by seed."""
    return dict(sorted({seed_of(run): run for run in runs}.items()))


def mean(values: list[float | None], digits: int) -> float | None:
    """The mean of the values there are, rounded to `digits`; None if there are none."""
    values = [v for v in values if v is not None]
    return round(statistics.mean(values), digits) if values else None


def per_seed(row: dict, key: str, values: dict[int, float | None], digits: int) -> None:
    """`row[key]`: the mean over the seeds that have a value; `row[key + "_seeds"]`: each seed's ("s2": value)."""
    row[key] = mean(list(values.values()), digits)
    row[f"{key}_seeds"] = {f"s{seed}": value for seed, value in values.items()}


def bleu_columns(runs: list[dict], minutes: float | None) -> dict:
    """The bleu columns of one system and architecture, from its last run of each seed: steps and BLEU are the mean
    over the seeds (each seed's value beside), sentences/s the median over all their decodes; an error where no seed
    has a number."""
    by_seed = last_run_per_seed(runs)
    row = {"budget_minutes": minutes, "seeds": list(by_seed)}
    failed = [run for run in by_seed.values() if "error" in run]
    if len(failed) == len(by_seed):
        row["bleu_error"] = failed[-1]["error"].splitlines()[-1] if failed[-1]["error"] else "failed"
    per_seed(row, "budget_steps", {seed: run.get("steps") for seed, run in by_seed.items()}, 1)
    for beam, key in ((1, "greedy"), (MATCHED.beam_size, f"beam{MATCHED.beam_size}")):
        decodes = {seed: [d for d in run.get("decodes", []) if d.get("beam") == beam] for seed, run in by_seed.items()}
        ok = {seed: [d for d in found if "error" not in d] for seed, found in decodes.items()}
        row[f"{key}_sentences_per_s"] = median([d["sentences_per_s"] for found in ok.values() for d in found])
        per_seed(row, f"bleu_{key}", {seed: next((d["bleu"] for d in found if "bleu" in d), None)
                                      for seed, found in ok.items()}, 2)
        errors = [d for found in decodes.values() for d in found if "error" in d]
        if errors and not any(ok.values()):
            row[f"{key}_error"] = errors[-1]["error"].splitlines()[-1]
    return row


def _fmt(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "—"
    return f"{value:,.{digits}f}"


def _seeds_cell(row: dict, key: str, digits: int) -> str:
    """The mean over the seeds, then each seed's value when there is more than one: 38.41 (s1 38.87, s2 37.95)."""
    seeds = row.get(f"{key}_seeds", {})
    each = f" ({', '.join(f'{seed} {_fmt(value, digits)}' for seed, value in seeds.items())})" if len(seeds) > 1 else ""
    return _fmt(row.get(key), digits) + each


def _ratio_cell(rows: list[dict], row: dict, key: str, higher_is_better: bool = True, digits: int = 0) -> str:
    """value (× JoeyNMT, × best peer): how the value compares with JoeyNMT's and with the best peer's."""
    value = row.get(key)
    if value is None:
        return "—"
    baseline = next((r.get(key) for r in rows if r["system"] == BASELINE), None)
    peers = [r.get(key) for r in rows if r["system"] in PEERS and r.get(key) is not None]
    best = (max if higher_is_better else min)(peers) if peers else None
    ratios = [f"{value / baseline:.2f}×" if baseline else "—", f"{value / best:.2f}×" if best else "—"]
    return f"{_fmt(value, digits)} ({' / '.join(ratios)})"


ARCH_TITLES = {"rnn": "RNN: bidirectional GRU encoder 256 per direction, GRU decoder 512, embeddings 256, additive "
                      "attention",
               "transformer": "Transformer: 3 + 3 layers, d_model 256, 4 heads, feed-forward 1024"}


def arch_table(rows: list[dict], arch_name: str, minutes: float | None, repeats: int) -> list[str]:
    """The results of one architecture, then what each system builds for it; a speed measured in fewer than
    `repeats` repetitions says how many."""
    rows = [r for r in rows if r["arch"] == arch_name]
    budget = f"steps in {minutes:g} min"
    lines = ["| system | params | train tgt tok/s | train peak RSS MiB | greedy sent/s "
             f"| beam-5 sent/s | BLEU greedy | BLEU beam 5 | {budget} |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    notes = []
    for row in rows:
        system = SYSTEMS[row["system"]]
        if system.hook_name and row.get("parameters") is None:  # a variant (attnmt-bf16) that was not measured
            continue
        if "n/a" in row:
            lines.append(f"| {row['label']} | " + " | ".join([f"n/a: {row['n/a']}"] + ["n/a"] * 7) + " |")
            continue
        notes.append(f"- {row['label']}: {row.get('builds', '')}")
        label = row["label"] + (f" ({system.arch_differs[arch_name]})" if arch_name in system.arch_differs else "")
        speed_na = f"failed: {row['speed_error']}" if "speed_error" in row else None
        bleu_na = f"failed: {row['bleu_error']}" if "bleu_error" in row else None
        fewer = row.get("speed_repetitions") and row["speed_repetitions"] < repeats
        reps = f" [{row['speed_repetitions']} of {repeats} repetitions]" if fewer else ""
        cells = [label, _fmt(row.get("parameters")),
                 speed_na or _ratio_cell(rows, row, "train_tgt_tokens_per_s") + reps,
                 speed_na or _ratio_cell(rows, row, "train_peak_rss_mib", higher_is_better=False),
                 bleu_na or row.get("greedy_error") or _ratio_cell(rows, row, "greedy_sentences_per_s", digits=1),
                 bleu_na or row.get(f"beam{MATCHED.beam_size}_error")
                 or _ratio_cell(rows, row, f"beam{MATCHED.beam_size}_sentences_per_s", digits=1),
                 bleu_na or _seeds_cell(row, "bleu_greedy", 2),
                 bleu_na or _seeds_cell(row, f"bleu_beam{MATCHED.beam_size}", 2),
                 bleu_na or _seeds_cell(row, "budget_steps", 0)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + ["", "What each builds:", "", *notes]


def mapping_table() -> list[str]:
    systems = [s for s in SYSTEMS.values() if not s.hook_name]  # variants map the settings as their toolkit does
    keys = []
    for system in systems:
        keys += [k for k in system.mapping if k not in keys]
    lines = ["| setting | " + " | ".join(s.label for s in systems) + " |",
             "| --- | " + " | ".join("---" for _ in systems) + " |"]
    for key in keys:
        lines.append(f"| {key} | " + " | ".join(s.mapping.get(key, "") for s in systems) + " |")
    return lines


def used_versions(measured: list[dict], name: str) -> str:
    """The versions of a toolkit its numbers in the table (its variants' included) were measured with (runs record
    them since 2026-11-21)."""
    runs = [run for run in measured if (SYSTEMS[run["system"]].hook_name or run["system"]) == name]
    used = {run.get("version") for run in runs} | {run["decoded"]["version"] for run in runs if "decoded" in run}
    return " and ".join(sorted(v for v in used if v))


def write_markdown(results: dict, path: Path) -> None:
    rows = results.get("summary", [])
    speed, bleu_section = results.get("speed", {}), results.get("bleu", {})
    versions = results.get("versions", {})
    measured = speed.get("runs", []) + bleu_section.get("runs", [])
    first_date: dict[str, str] = {}
    stamps = [(run.get("invocation", "?"), run["date"]) for run in measured]
    stamps += [(run["decoded"]["invocation"], run["decoded"]["date"]) for run in measured if "decoded" in run]
    for invocation, date in stamps:  # each invocation that still has numbers in the table, with its first date
        first_date[invocation] = min(first_date.get(invocation, date), date)
    commands = sorted(first_date.items(), key=lambda c: c[1])
    minutes = bleu_section.get("minutes", DEFAULTS["minutes"])
    steps, warmup = speed.get("steps", DEFAULTS["steps"]), speed.get("warmup", DEFAULTS["warmup"])
    repeats = speed.get("repeats", DEFAULTS["repeats"])
    decode_repeats = bleu_section.get("decode_repeats", DEFAULTS["decode_repeats"])
    lines = [
        BEGIN,
        "## Side by side: attnmt, JoeyNMT, OpenNMT-py, fairseq, Sockeye (Multi30k de→en)",
        "",
        f"Machine: {results.get('machine', '?')}.  ",
        "Versions: " + ", ".join(f"{SYSTEMS[n].label} {used_versions(measured, n) or v}"
                                 for n, v in versions.items() if v and not SYSTEMS[n].hook_name)
        + "; torch " + ", ".join(sorted(set(results.get("torch_versions", {}).values())) or ["?"])
        + " in every environment.  ",
        f"Data: Multi30k train ({results.get('data', {}).get('train_pairs', '?')} pairs of at most "
        f"{MATCHED.max_length} subwords a side), one joint sentencepiece unigram model of {MATCHED.vocab_size} pieces "
        "for every system; peers read pre-segmented pieces, attnmt loads the same model "
        "(`tokenizer.src_model`); every output is joined back with that model and scored against the raw "
        "references with the same sacreBLEU call.  ",
        f"Matched: batches of {MATCHED.batch_tokens} tokens in each toolkit's own token batching, Adam, label "
        f"smoothing {MATCHED.label_smoothing}, gradient norm clipped at {MATCHED.clip_grad_norm}; RNN: dropout "
        f"{ARCHS['rnn'].dropout}, constant learning rate {ARCHS['rnn'].learning_rate}; Transformer: dropout "
        f"{ARCHS['transformer'].dropout} (attention {ARCHS['transformer'].attention_dropout}), "
        f"{ARCHS['transformer'].warmup_steps} warmup steps to {ARCHS['transformer'].learning_rate}, then inverse "
        "square root, betas (0.9, 0.98); 2 threads for everyone. Decoding test2016 (1,000 sentences) in batches "
        f"of {MATCHED.decode_batch_sentences} sentences.  ",
        f"Train tokens/s: the real (non-padding) target tokens of {steps} steps after "
        f"{warmup} warm-up steps, over the wall clock from the start of the first of them to the "
        "start of the step after the last, timed by wrapping each toolkit's own training-step function "
        f"(benchmarks/peers/hooks.py); median of {repeats} repetitions in alternating order. Peak "
        "RSS: the largest summed resident memory of the training process tree (polled every 0.2 s). Sentences/s: "
        "test2016 sentences over the time from the start of the first decoded batch to the end of the last "
        "(without start-up and model loading), median of "
        f"{decode_repeats} repetitions, with the model trained for the budget. BLEU: "
        f"after {minutes:g} minutes of training each (the clock starts at the first step), the "
        "last weights, no checkpoint selection; training seed "
        f"{MATCHED.seed} (`python benchmarks/peers/run.py bleu --minutes {minutes:g}`) or another one "
        f"(`... bleu --minutes {minutes:g} --seed 2`): where a row has more than one seed, BLEU and steps are "
        "the mean over the seeds, each seed's value in parentheses, and sentences/s the median over all their "
        "decodes.  ",
        "Each cell with ratios reads: value (value ÷ JoeyNMT's / value ÷ the best peer's); for memory the best is "
        "the lowest.",
        "",
        "Runs:",
        "",
        *([f"- `{command}` ({date})" for command, date in commands] or [
            "- none yet: the table fills in from `python benchmarks/peers/run.py setup`, then `... speed` and "
            "`... bleu --minutes 30 [--seed 2]` (per architecture or system if one session cannot hold them all), "
            "on an otherwise idle machine"]),
        "",
    ]
    for arch_name in ARCHS:
        lines += [f"**{ARCH_TITLES[arch_name]}**", "", *arch_table(rows, arch_name, minutes, repeats), ""]
    lines += ["How each system maps the matched settings (its exact configs and command lines are in "
              "benchmarks/results/peers.json, per run):", "", *mapping_table(), END]
    replace_section(path, BEGIN, END, "\n".join(lines))


# ---- entry point -------------------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["setup", "speed", "bleu", "decode", "fastdecode", "report", "smoke"])
    parser.add_argument("--systems", nargs="+", choices=list(SYSTEMS), default=list(SYSTEMS))
    parser.add_argument("--arch", nargs="+", choices=list(ARCHS), default=list(ARCHS))
    parser.add_argument("--steps", type=int, default=DEFAULTS["steps"], help="speed: timed steps")
    parser.add_argument("--warmup", type=int, default=DEFAULTS["warmup"], help="speed: steps before the timed ones")
    parser.add_argument("--repeats", type=int, default=DEFAULTS["repeats"],
                        help="speed: repetitions, alternating the order")
    parser.add_argument("--minutes", type=float, default=DEFAULTS["minutes"],
                        help="bleu: training budget per system and arch")
    parser.add_argument("--seed", type=int, default=MATCHED.seed,
                        help="bleu, decode: the training seed; runs of each seed are kept side by side and the table "
                             "shows the mean over seeds (the other modes train with the default)")
    parser.add_argument("--decode-repeats", type=int, default=DEFAULTS["decode_repeats"],
                        help="bleu: decoding repetitions")
    parser.add_argument("--train-steps", type=int, default=DEFAULTS["train_steps"],
                        help="fastdecode: training steps of the models whose decoding paths are compared")
    parser.add_argument("--retrain", action="store_true", help="fastdecode: train the models again")
    parser.add_argument("--split", default="test2016", help=argparse.SUPPRESS)
    parser.add_argument("--json", default=str(JSON_PATH))
    parser.add_argument("--markdown", default=str(MARKDOWN_PATH))
    args = parser.parse_args()
    if args.seed != MATCHED.seed and args.mode not in SEEDED_MODES:
        parser.error(f"--seed is for {' and '.join(SEEDED_MODES)}; {args.mode} trains with seed {MATCHED.seed}")

    global INVOCATION
    INVOCATION = "python " + shlex.join(["benchmarks/peers/run.py", *sys.argv[1:]])
    if args.mode == "smoke":  # tiny versions of speed and bleu; results stay in the cache folder
        smoke = cache_dir() / "smoke"
        args.json, args.markdown = str(smoke / "peers.json"), str(smoke / "benchmarks.md")
        args.steps, args.warmup, args.repeats = 4, 2, 1
        args.minutes, args.decode_repeats, args.split = 0.25, 1, "test2016.head20"
        args.train_steps = 6

    systems = list(args.systems)
    if args.mode == "setup" or args.mode == "smoke":
        for name in list(systems):
            say(f"setup: {name}")
            try:
                SYSTEMS[name].setup()
            except Exception as error:  # one peer failing to install must not stop the others
                say(f"setup of {name} failed: {error}")
                if args.mode == "smoke":
                    systems.remove(name)
        if args.mode == "setup":
            return

    results = load_results(Path(args.json))
    if args.mode == "report":  # versions of what is installed, the settings, and the table of what was measured
        if (prepared_data().root / "done.json").exists():
            results["data"] = json.loads((prepared_data().root / "done.json").read_text())
        versions = results.setdefault("versions", {})
        torch_versions = results.setdefault("torch_versions", {})
        for name, system in SYSTEMS.items():
            if system.python().exists():
                versions[name] = versions.get(name) or system.version()
                torch_versions[name] = torch_versions.get(name) or pip_version(system.python(), "torch")
        save(results, args)
        return

    missing = [name for name in systems if not SYSTEMS[name].python().exists()]
    if missing:
        sys.exit(f"not set up: {' '.join(missing)}; run `python benchmarks/peers/run.py setup` first")
    data = prepare_data()
    results["data"] = json.loads((data.root / "done.json").read_text())
    results.setdefault("versions", {})
    results.setdefault("torch_versions", {})
    for name in systems:
        results["versions"][name] = SYSTEMS[name].version()
        results["torch_versions"][name] = pip_version(SYSTEMS[name].python(), "torch")
        SYSTEMS[name].prepare(data)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    modes = ["speed", "bleu", "fastdecode"] if args.mode == "smoke" else [args.mode]
    for mode in modes:
        out_root = cache_dir() / "runs" / f"{stamp}-{args.mode}"
        {"speed": run_speed, "bleu": run_bleu, "decode": run_decode,
         "fastdecode": run_fastdecode}[mode](args, systems, data, results, out_root)
    save(results, args)
    say(f"results: {args.json}; table: {args.markdown}")


if __name__ == "__main__":
    main()
