"""``streamdistill …`` — the command-line contract of the design card.

Every command exits non-zero with a one-line, actionable message on bad input, and writes its key
figures as JSON when ``--out`` is given.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

# OpenMP threads that spin while waiting stall each small op of a cached streaming update whenever
# another process holds a core (a shared 2-core machine); passive waiting costs the large matmuls
# nothing. Set before torch starts its thread pool; the Makefile exports the same default.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .artifacts import ArtifactError, atomic_write_json
from .data import MirrorError
from .profiles import ProfileError, get_profile, parse_sets, profile_names
from .tasks import TaskError

USER_ERRORS = (ProfileError, TaskError, MirrorError, ArtifactError, FileNotFoundError)


def _emit(result: dict, out: str | None) -> None:
    text = json.dumps(result, indent=2, sort_keys=True)
    print(text)
    if out:
        atomic_write_json(out, result)


def cmd_evaluate(args) -> dict:
    from .evaluate import evaluate_model
    from .registry import resolve_model, split_sets
    from .tasks import task_list

    inference, overrides = split_sets(parse_sets(args.set))
    # Profile overrides (e.g. seed=1, eval_experiments=3) apply to the model *and* the evaluation.
    profile = get_profile(args.profile, overrides)
    task_list(args.tasks)  # validate task names before loading a model
    model = resolve_model(args.model, profile, **inference)
    if args.teacher:  # LEAF: the student against its teacher, alone and in asymmetric mode
        from .leaf_experiments import asymmetric_scores

        teacher = resolve_model(args.teacher, profile)
        report = asymmetric_scores(model, teacher, args.tasks, profile)
        return {"model": model.name, "revision": model.revision, "teacher": teacher.name,
                "scores": report["scores"]["student"], "teacher_scores": report["scores"]["teacher"],
                "asymmetric_scores": report["scores"]["asymmetric"], "means": report["mean"],
                "retention": report["retention"]["student"], "asymmetric_retention": report["retention"]["asymmetric"]}
    return evaluate_model(model, args.tasks, profile, show_progress=not args.quiet)


def cmd_data(args) -> dict:
    from .data import check_mirror, data_dir
    from .mirror_export import export_mirror

    if args.action == "check":
        root = data_dir(required=True)
        results = check_mirror(root)
        bad = [r for r in results if not r.ok]
        for r in bad:
            print(f"FAIL {r.problem}", file=sys.stderr)
        summary = {"mirror": str(root), "files": len(results), "ok": len(results) - len(bad),
                   "problems": [r.problem for r in bad]}
        if bad:
            raise MirrorError(f"{len(bad)} of {len(results)} mirror files failed: {bad[0].problem}")
        return summary
    if not args.to:
        raise MirrorError("data export needs --to DIR")
    dest = export_mirror(args.to)
    return {"exported_to": str(dest)}


def cmd_train(args) -> dict:
    from .registry import STAGE_SETTINGS, run_stage

    sets = parse_sets(args.set)
    stage_settings = {k: sets.pop(k) for k in STAGE_SETTINGS if k in sets}  # e.g. variant=hard
    profile = get_profile(args.profile, sets)
    started = time.perf_counter()
    folder, summary = run_stage(args.stage, profile, **stage_settings)
    summary = {k: v for k, v in summary.items() if k != "loss_history"}  # the curve is in the artifact
    return {"stage": args.stage, "profile": profile.name, "artifact": str(folder),
            "summary": summary, "seconds": round(time.perf_counter() - started, 2)}


def cmd_gap_closure(args) -> dict:
    from .pipeline import gap_closure_experiment

    return gap_closure_experiment(get_profile(args.profile, parse_sets(args.set)))


def cmd_stream_bench(args) -> dict:
    from .registry import stream_encoders
    from .report import stream_bench_text
    from .streambench import stream_benchmark

    profile = get_profile(args.profile, parse_sets(args.set))
    # None means "the profile's value"; 0 or a negative number reaches stream_benchmark's check
    longest = (args.prefix or profile.stream_prefix) + (args.delta or profile.stream_delta)
    encoders, weights = stream_encoders(profile, max_positions=max(profile.max_positions, 2 * longest + 64))
    result = stream_benchmark(profile, prefix=args.prefix, delta=args.delta, updates=args.updates,
                              weights=weights, progress=True, **encoders)
    print(stream_bench_text(result), file=sys.stderr)  # for a reader; stdout stays the JSON
    return result


def cmd_export(args) -> dict:
    from .export import needs_encoder_module, to_sentence_transformer
    from .registry import resolve_encoder, split_sets

    inference, overrides = split_sets(parse_sets(args.set))
    encoder = resolve_encoder(args.model, get_profile(args.profile, overrides), **inference)
    folder = to_sentence_transformer(encoder, args.to)
    loads_with = ("SentenceTransformer(path, trust_remote_code=True)" if needs_encoder_module(encoder)
                  else "SentenceTransformer(path)")
    return {"model": args.model, "exported_to": str(folder), "attention": encoder.attention,
            "pooling": encoder.pooling, "max_seq_length": encoder.max_length, "loads_with": loads_with}


def cmd_book(args) -> dict:
    from .book import build_book

    names = [n.strip() for n in (args.only or "").split(",") if n.strip()] or None
    execute = "none" if args.no_execute else "all" if args.execute_all else "stale" if args.stale else "missing"
    return build_book(get_profile(args.profile), execute=execute, names=names, render=not args.no_render)


def build_parser() -> argparse.ArgumentParser:
    from .registry import STAGES, model_names, stage_help

    parser = argparse.ArgumentParser(prog="streamdistill", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    profiles = ", ".join(profile_names())

    def add_common(p, out=True):
        p.add_argument("--profile", default=None, help=f"scale profile ({profiles}); default $STREAMDISTILL_PROFILE or cpu")
        p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a profile setting (repeatable)")
        if out:
            p.add_argument("--out", help="also write the key figures to this JSON file")

    p = sub.add_parser("evaluate", help="evaluate a model on mteb tasks")
    p.add_argument("--model", required=True, help=f"a model folder, a Hub id, or one of: {', '.join(model_names())}")
    p.add_argument("--tasks", required=True, help="comma-separated task names")
    p.add_argument("--teacher", help="also score this teacher and the asymmetric pair (student queries, "
                                      "teacher documents), with the student's retention (LEAF)")
    p.add_argument("--quiet", action="store_true")
    add_common(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("data", help="check the data mirror, or export one from the Hub")
    p.add_argument("action", choices=["check", "export"])
    p.add_argument("--to", help="export: destination folder")
    p.add_argument("--out")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("train", help="train (or fetch from the cache) one pipeline stage")
    p.add_argument("stage", help=stage_help(), metavar="|".join(STAGES))
    add_common(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("gap-closure", help="train what is missing, evaluate A, A+Echo, B, C, report gap closure")
    add_common(p)
    p.set_defaults(func=cmd_gap_closure)

    p = sub.add_parser("stream-bench", help="streaming latency of the student (KV cache) against recomputation")
    p.add_argument("--prefix", type=int, help="prefix length L in tokens")
    p.add_argument("--delta", type=int, help="tokens appended per update")
    p.add_argument("--updates", type=int, help="number of updates")
    add_common(p)
    p.set_defaults(func=cmd_stream_bench)

    p = sub.add_parser("export", help="write a model as a SentenceTransformer folder")
    p.add_argument("model", help=f"a stage model ({', '.join(n for n in model_names() if '/' not in n)}) "
                                 "or a streamdistill encoder folder")
    p.add_argument("--to", required=True, help="destination folder")
    add_common(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("book", help="render the executed notebooks in book/notebooks (executing those missing "
                                     "at the profile), or re-execute them and say what reproduced")
    p.add_argument("--profile", default=None, help=f"scale profile ({profiles})")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--no-execute", action="store_true", help="render the executed copies as they are; execute nothing")
    which.add_argument("--stale", action="store_true", help="also re-execute copies made from other code than this checkout's")
    which.add_argument("--execute-all", action="store_true", help="re-execute every notebook (reproduce the book), "
                       "then compare each claim and glued figure with the committed record")
    which.add_argument("--only", help="comma-separated notebooks to execute, by stem or prefix such as 05 (their timings are merged into the JSON)")
    p.add_argument("--no-render", action="store_true", help="execute only; do not run jupyter-book")
    p.add_argument("--out")
    p.set_defaults(func=cmd_book)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = args.func(args)
    except USER_ERRORS as exc:
        print(f"streamdistill: error: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:  # bad values from deeper layers (empty text, unknown variant, ...)
        print(f"streamdistill: error: {exc}", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as exc:  # jupyter-book build: its own output says why
        print(f"streamdistill: error: {Path(exc.cmd[0]).name} failed (exit {exc.returncode}); see its output above",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("streamdistill: interrupted; completed artifacts are kept, partial ones discarded", file=sys.stderr)
        return 130
    _emit(result, getattr(args, "out", None))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
