"""The ``recsys`` command line. Heavy libraries (torch, mlflow, faiss, polars) are imported inside the
commands that need them, so ``recsys --help`` answers at once."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import sys
from pathlib import Path

from recsys.cli_serve import (
    SIMILARITY_METRICS,
    cmd_recommend,
    cmd_serve,
)


def _parse_ks(text: str) -> list[int]:
    try:
        ks = sorted({int(x) for x in text.split(",")})  # an empty part ("5,,10") is an error too
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--k expects comma-separated integers like 5,10,20, got {text!r}"
        ) from None
    if not ks or ks[0] < 1:
        raise argparse.ArgumentTypeError(f"--k expects positive integers, got {text!r}")
    return ks


def _finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _int_at_least(minimum: int, what: str):
    """An argparse type: an integer >= ``minimum``, else an error saying ``what`` was expected."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return parse


_non_negative_int = _int_at_least(0, "a non-negative integer")
_positive_int = _int_at_least(1, "a positive integer")


def _cross_check_folds(text: str) -> int:
    value = _non_negative_int(text)
    if value == 1:
        raise argparse.ArgumentTypeError(f"expected 0 (no cross-check) or at least 2 folds, got {text!r}")
    return value


def _port(text: str) -> int:
    value = _int_at_least(0, "a TCP port, 0 to 65535")(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"expected a TCP port, 0 to 65535, got {text!r}")
    return value


def _load_cfg(args):
    from recsys.config import load_config

    return load_config(args.config, args.overrides)


def format_metrics_table(rows: dict[str, dict[str, float]], ks: list[int]) -> str:
    """A plain-text table: one row per system, columns metric@k."""
    metrics = ["recall", "ndcg", "hit", "precision", "mrr", "map"]
    cols = [f"{m}@{k}" for k in ks for m in metrics]
    width = max(12, *(len(n) for n in rows)) if rows else 12
    lines = [" ".join([f"{'':<{width}}", *(f"{c:>12}" for c in cols)])]
    for name, vals in rows.items():
        lines.append(" ".join([f"{name:<{width}}", *(f"{vals.get(c, float('nan')):>12.4f}" for c in cols)]))
    return "\n".join(lines)


# ---- commands ---------------------------------------------------------------------------------------------
def cmd_data_prepare(args) -> int:
    from features import prepare
    from recsys.config import load_data_config

    ds = prepare(load_data_config(args.config, args.overrides), force=args.force)
    print(
        json.dumps(
            {
                "path": str(ds.root),
                "n_users": ds.n_users,
                "n_items": ds.n_items,
                "counts": ds.manifest["counts"],
                "dropped": ds.manifest.get("dropped"),  # e.g. test rows of users or items unseen in training
                "split": ds.manifest.get("split"),
            },
            indent=2,
            default=str,
        )
    )
    return 0


def cmd_train(args) -> int:
    from recsys.pipeline import train_experiment

    cfg = _load_cfg(args)
    res = train_experiment(cfg, resume=args.resume)
    if res is None:  # a data-parallel process other than 0: process 0 reports
        return 0
    tested = f"; {res.selection}" if res.selection else ""
    print(f"\ntest metrics ({cfg.name}, {cfg.model['name']}, {res.train_seconds:.1f} s{tested}):")
    print(format_metrics_table({cfg.model["name"]: res.test_metrics}, cfg.eval.ks))
    if res.run_id:
        print(f"\nMLflow run: {res.run_id}")
    return 0


def cmd_evaluate(args) -> int:
    if args.run:
        if args.n_items is not None:
            print("error: --n-items applies to --recs only (a run knows its catalogue)", file=sys.stderr)
            return 2
        if args.recs or args.truth:
            print("error: give either --run RUN_ID or --recs and --truth, not both", file=sys.stderr)
            return 2
        from eval import evaluate_model
        from recsys.pipeline import load_run

        run = load_run(args.run, uri=args.tracking_uri)
        ks = args.k or run.config.eval.ks
        metrics = evaluate_model(
            run.model,
            run.dataset,
            split=args.split or "test",
            ks=ks,
            block_size=run.config.eval.block_size,
            excluded_score=args.excluded_score,
            zero_score_items=args.zero_score_items,
        )
    else:
        if not (args.recs and args.truth):
            print("error: give either --run RUN_ID or both --recs and --truth", file=sys.stderr)
            return 2
        if (
            args.excluded_score is not None
            or args.zero_score_items
            or args.split is not None
            or args.tracking_uri is not None
        ):
            print(
                "error: --split, --excluded-score, --zero-score-items and --tracking-uri apply to --run only",
                file=sys.stderr,
            )
            return 2
        from eval import evaluate_recs_file

        ks = args.k or [10, 20]
        metrics = evaluate_recs_file(args.recs, args.truth, ks, n_items=args.n_items)
    if args.json:
        print(json.dumps(metrics, sort_keys=True))
    else:
        print(format_metrics_table({args.run or Path(args.recs).name: metrics}, ks))
        cov = {k: v for k, v in metrics.items() if k.startswith("coverage")}
        if cov:
            print("  " + "  ".join(f"{k}={v:.4f}" for k, v in cov.items()))
    return 0


def cmd_runs(args) -> int:
    from datetime import datetime, timezone

    from eval.metrics import METRICS, parse_metric
    from recsys.tracking import list_runs

    parsed = parse_metric(args.metric)
    if parsed is None:
        names = ", ".join((*METRICS, "coverage"))
        print(f"error: --metric {args.metric}: expected NAME@K with NAME one of {names}", file=sys.stderr)
        return 2
    try:
        runs = list_runs(args.tracking_uri, args.experiment, args.limit)
    except LookupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(runs, sort_keys=True))
        return 0
    if not runs:
        where = f" in experiment {args.experiment!r}" if args.experiment else ""
        print(f"no runs{where} (recsys train makes one)")
        return 0
    metric, k = args.metric, parsed[1]
    values = [r["test"].get(metric, r["test"].get(f"reranked/{metric}")) for r in runs]
    table = [("run id", "started (UTC)", "status", "experiment", "name", "model", f"test {metric}")]
    for r, value in zip(runs, values, strict=True):
        started = datetime.fromtimestamp(r["start"] / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M")
        model = r["model"] or ("re-ranker" if r["parent"] else "-")
        shown = f"{value:.4f}" if value is not None else "-"
        table.append((r["run_id"], started, r["status"], str(r["experiment"]), str(r["name"]), model, shown))
    # columns as wide as their longest cell: names used to be cut (to 12 and 24 characters), so two runs
    # of experiments named alike showed the same text
    widths = [max(len(row[c]) for row in table) for c in range(len(table[0]) - 1)]  # the metric: unpadded
    for n, row in enumerate(table):
        line = "  ".join(cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True)) + "  " + row[-1]
        print(line + (" (a re-ranker's: re-ranked)" if n == 0 else ""))
    if all(value is None for value in values):
        print(f"(no run listed logged test {metric}: its eval.ks may not hold {k})")
    return 0


def cmd_sweep(args) -> int:
    from recsys.sweep import describe, grid_configs, parse_grid, run_sweep

    points = grid_configs(args.config, parse_grid(args.grid), args.overrides)
    echo = _to_stderr if args.json else print
    result = run_sweep(points, metric=args.metric, resume=args.resume, echo=echo)
    if args.json:
        print(json.dumps(result.to_dict(), sort_keys=True))
        return 0
    keys = list(result.runs[0].values)
    shown = [[json.dumps(r.values[k]) for k in keys] for r in result.runs]
    widths = [max(len(k), *(len(row[i]) for row in shown)) for i, k in enumerate(keys)]
    head = f"valid {result.metric}"
    tracked = all(r.run_id for r in result.runs)
    print(
        f"\nsweep of {args.config}: {len(result.runs)} runs, chosen on the validation split by {result.metric}"
    )
    columns = "  ".join(f"{k:<{w}}" for k, w in zip(keys, widths, strict=True))
    print(f"  {columns}  {head}  {'run' if tracked else 'run folder'}")
    for n, (run, row) in enumerate(zip(result.runs, shown, strict=True)):
        cells = "  ".join(f"{v:<{w}}" for v, w in zip(row, widths, strict=True))
        mark = "  <- chosen" if n == result.chosen else ""
        print(f"  {cells}  {run.valid[result.metric]:<{len(head)}.4f}  {run.run_id or run.run_dir}{mark}")
    chosen = result.runs[result.chosen]
    others = "the others' are in MLflow" if tracked else "the others' are not reported: tracking is off"
    print(f"\ntest metrics of the chosen run only ({describe(chosen.values)}; {others}):")
    ks = points[result.chosen][1].eval.ks
    print(format_metrics_table({chosen.run_id or "chosen": result.test}, ks))
    return 0


def _to_stderr(*parts, **kwargs) -> None:
    print(*parts, **kwargs, file=sys.stderr)


def cmd_compare(args) -> int:
    from recsys.compare import compare_runs

    try:
        report = compare_runs(
            args.run, split=args.split, ks=args.k, metrics=args.metric, uri=args.tracking_uri
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        rows = [{"run": r.run_id, "metrics": [d.to_dict() for d in r.differences]} for r in report]
        print(json.dumps({"split": args.split, "baseline": args.run[0], "comparisons": rows}, sort_keys=True))
        return 0
    n_users = report[0].differences[0].n_users
    print(f"{args.split} split, {n_users} users with a {args.split} item; A = {args.run[0]}")
    print(
        "each run B against A, paired over users: B - A, its 95% confidence interval, the paired t-test's p"
    )
    width = max(12, *(len(d.metric) for d in report[0].differences))  # precision@100 is 13 characters
    for r in report:
        print(f"\nB = {r.run_id}")
        header = (
            f"{'metric':<{width}} {'A':>8} {'B':>8} {'B - A':>8}  {'95% CI':<20} {'p':>8}  "
            "B better / worse / tied"
        )
        print("  " + header)
        for d in r.differences:
            ci = f"[{d.ci_low:+.4f}, {d.ci_high:+.4f}]"
            print(
                f"  {d.metric:<{width}} {d.mean_a:>8.4f} {d.mean_b:>8.4f} {d.difference:>+8.4f}  {ci:<20} "
                f"{d.p_value:>8.2g}  {d.better} / {d.worse} / {d.tied}"
            )
    print("\np is per metric and run, unadjusted: with many of them, some pass any threshold by chance.")
    return 0


def cmd_index(args) -> int:
    from recsys.pipeline import build_run_index, load_run, require_indexable

    if args.out is not None and not args.out.strip():
        print("error: --out needs a folder (omit it for $RECSYS_HOME/indexes/RUN_ID)", file=sys.stderr)
        return 2
    if args.nprobe is not None and args.nlist is None:
        print("error: --nprobe is for an inverted-file index: give --nlist too", file=sys.stderr)
        return 2
    if args.out:  # a folder the build would refuse is refused before the run is loaded
        from serving.index import check_out_folder

        check_out_folder(Path(args.out))
    run = load_run(args.run, uri=args.tracking_uri, require=require_indexable)
    path = build_run_index(run, Path(args.out) if args.out else None, nlist=args.nlist, nprobe=args.nprobe)
    kind = f" (inverted file: {args.nlist} lists)" if args.nlist else ""
    print(f"index written to {path}{kind}")
    return 0


def _rerank_doubt(held: dict, cross: dict | None, folds: int) -> str | None:
    """Why serving a fitted re-ranker is not advised, or None when the cross-check shows a clear gain."""
    if cross is not None:
        if cross["difference"] <= 0:
            return (
                "the re-ranker does not beat the retrieval order on validation users it never saw (cross-check); "
                "serving it is not advised"
            )
        if cross["difference"] < 2 * cross["difference_se"]:
            return (
                "the re-ranker's gain on validation users it never saw is within two standard errors of zero: "
                "no clear reason to serve it"
            )
        return None
    if held["reranked"] <= held["retrieval"]:
        return (
            "the re-ranker does not beat the retrieval order even on the held-out users that chose it; "
            "serving it is not advised"
        )
    why = "skipped (--folds 0)" if folds == 0 else "not possible with so few validation users"
    return f"the cross-check was {why}, and the held-out users' comparison flatters the re-ranker"


def cmd_rerank(args) -> int:
    from recsys.pipeline import load_run
    from recsys.rerank import default_reranker_dir, fit_reranker, require_embeddings, track_reranker

    if args.out is not None and not args.out.strip():
        print("error: --out needs a folder (omit it for $RECSYS_HOME/rerankers/RUN_ID)", file=sys.stderr)
        return 2
    from serving.rerank import check_save_folder

    # a folder the save would refuse is refused now, not after the run is loaded and the re-ranker fitted
    out = check_save_folder(Path(args.out) if args.out else default_reranker_dir(args.run))
    run = load_run(args.run, uri=args.tracking_uri, require=require_embeddings)
    ks = args.k or run.config.eval.ks
    result = fit_reranker(run, n_candidates=args.candidates, ks=tuple(ks), seed=args.seed, folds=args.folds)
    path = result.reranker.save(out)
    tracked = track_reranker(result, args.run, path, uri=args.tracking_uri)
    k = max(ks)
    held, cross = result.holdout, result.cross_check
    if args.json:
        print(json.dumps({"test": result.test, "holdout": held, "cross_check": cross,
                          "candidate_recall": result.candidate_recall, "fit_users": result.fit_users,
                          "holdout_users": result.holdout_users, "path": str(path),
                          "mlflow_run_id": tracked}, sort_keys=True))  # fmt: skip
        return 0
    print(
        f"re-ranker fitted on {result.fit_users} validation users, stopped and its tree shape chosen on "
        f"{result.holdout_users} more (there, ndcg@{k}: re-ranked {held['reranked']:.4f}, retrieval "
        f"{held['retrieval']:.4f}; flattering, as they chose it)"
    )
    if cross is not None:
        print(
            f"cross-check, {cross['users']} validation users each ranked by the procedure fitted without them "
            f"({cross['folds']} folds): ndcg@{k} re-ranked {cross[f'reranked_ndcg@{k}']:.4f}, retrieval "
            f"{cross[f'retrieval_ndcg@{k}']:.4f}, difference {cross['difference']:+.4f} "
            f"± {cross['difference_se']:.4f} (standard error); over all {cross['split_users']} validation "
            f"users, as a test report counts them: {cross['difference_per_split_user']:+.4f}"
        )
    share = f"{result.candidate_recall:.1%}"
    print(f"\ntest metrics ({args.candidates} candidates per user, holding {share} of the test items):")
    print(format_metrics_table(result.test, ks))
    useful = result.fit_users + result.holdout_users
    if useful < 1000:  # MovieLens-100K: 899 users, and the test effect varied by +-0.006 NDCG@20 over seeds
        print(
            f"warning: only {useful} validation users have a relevant item among the candidates; with so few "
            "the re-ranker and the validation comparisons are noisy (docs/reranking.md)",
            file=sys.stderr,
        )
    doubt = _rerank_doubt(held, cross, args.folds)
    if doubt:
        print(f"warning: {doubt}", file=sys.stderr)
    print(
        f"\nre-ranker written to {path} (serve it with "
        f"`recsys recommend --run {args.run} --reranker {path} --user USER`)"
    )
    print(f"MLflow run: {tracked} (a child of {args.run})")
    return 0


def cmd_explain_sequence(args, run) -> int:
    """``recsys explain`` for sequence models with k-means intents (ICSRec, ICLRec): a user's full history or
    the item ids given with ``--sequence``."""
    from recsys.explain_sequence import explain_sequence, format_sequence_explanation

    ds, model = run.dataset, run.model
    items = ds.item_vocab.sort("item_idx")
    item_ids = [str(i) for i in items["item_id"].to_list()]
    titles = items["title"].to_list() if "title" in items.columns else None
    user_ids = [str(u) for u in ds.user_vocab.sort("user_idx")["user_id"].to_list()]
    if args.sequence:
        position = {x: i for i, x in enumerate(item_ids)}
        unknown = [x for x in args.sequence if x not in position]
        if unknown:
            print(
                f"error: items {unknown[:5]} are not items of run {args.run} ({len(item_ids)} items)",
                file=sys.stderr,
            )
            return 2
        seq = [position[x] for x in args.sequence]
    else:
        try:
            user_idx = user_ids.index(str(args.user))
        except ValueError:
            print(
                f"error: user {args.user!r} is not a user of run {args.run} ({len(user_ids)} users)",
                file=sys.stderr,
            )
            return 2
        seq = model.histories["all"][user_idx].tolist()  # every known item: what the served index answers
    exclude = None
    if not args.sequence:  # as the served index: every known item, those rated below a threshold too
        known = ds.known_matrix()
        exclude = sorted(
            set(seq) | set(known.indices[known.indptr[user_idx] : known.indptr[user_idx + 1]].tolist())
        )
    exp = explain_sequence(
        model,
        seq,
        item_ids=item_ids,
        titles=titles,
        user_ids=user_ids,
        exclude=exclude,
        top_intents=args.intents,
        items_per_intent=args.items,
        k=args.k,
    )
    print(json.dumps(exp.to_dict()) if args.json else format_sequence_explanation(exp))
    return 0


def cmd_explain(args) -> int:
    from recsys.explain import explain_user, format_explanation, require_intents
    from recsys.explain_sequence import require_sequence_intents
    from recsys.pipeline import load_run

    if bool(args.user) == bool(args.sequence):
        print("error: give either --user USER or --sequence ITEM [ITEM ...]", file=sys.stderr)
        return 2

    def explainable(model) -> None:  # refused before the run's model is prepared and loaded
        if getattr(model, "intent_centroids", None) is not None:
            require_sequence_intents(model, fitted=False)
        elif args.sequence:
            raise ValueError(
                f"--sequence needs a sequence model with intents (ICSRec, ICLRec), run {args.run} is "
                f"{getattr(getattr(model, 'config', None), 'name', type(model).__name__)!r}"
            )
        else:
            require_intents(model)

    run = load_run(args.run, uri=args.tracking_uri, require=explainable)
    if getattr(run.model, "intent_centroids", None) is not None:
        return cmd_explain_sequence(args, run)
    ds = run.dataset
    users = ds.user_vocab.sort("user_idx")
    user_ids = [str(u) for u in users["user_id"].to_list()]
    try:
        user_idx = user_ids.index(str(args.user))
    except ValueError:
        print(
            f"error: user {args.user!r} is not a user of run {args.run} ({len(user_ids)} users)",
            file=sys.stderr,
        )
        return 2
    items = ds.item_vocab.sort("item_idx")
    titles = items["title"].to_list() if "title" in items.columns else None
    # exclude every known interaction, as the served index does (recsys recommend)
    seen = ds.known_matrix()
    exp = explain_user(
        run.model, user_idx, seen, user_ids=user_ids,
        item_ids=[str(i) for i in items["item_id"].to_list()], titles=titles,
        top_intents=args.intents, items_per_intent=args.items, k=args.k,
    )  # fmt: skip
    print(json.dumps(exp.to_dict()) if args.json else format_explanation(exp))
    return 0


def cmd_config_show(args) -> int:
    import shlex

    from recsys.config import dump_config
    from recsys.pipeline import run_dir_for

    cfg = _load_cfg(args)
    given = shlex.join([args.config, *args.overrides]).replace("\n", "\\n")  # one comment line
    print(f"# {given}: every default filled in")
    print(f"# run folder (checkpoints; --resume continues it): {run_dir_for(cfg)}")
    print(dump_config(cfg), end="")
    return 0


def cmd_config_keys(args) -> int:
    from recsys.config_reference import render

    try:
        print(render(args.model), end="")
    except (KeyError, ImportError) as exc:  # an unknown model; a package's model that does not load
        print(f"error: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 2
    return 0


def cmd_quickstart(args) -> int:
    from recsys.quickstart import run_quickstart

    return run_quickstart(epochs=args.epochs, user=args.user)


# ---- parser -----------------------------------------------------------------------------------------------
def _tracking_uri_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tracking-uri",
        metavar="URI",
        help="the MLflow store that holds the run (default: MLFLOW_TRACKING_URI, else the embedded store under "
        "$RECSYS_HOME); a run trained with tracking.uri is found there",
    )


def _run_limit(text: str) -> int:
    n = _positive_int(text)
    if n > 50_000:  # MLflow's own cap on one search
        raise argparse.ArgumentTypeError(f"expected at most 50000 runs, got {n}")
    return n


def _installed_version() -> str:
    """The installed distribution's version (pyproject.toml), read from its metadata: no heavy import."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("recsys")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "(not installed)"


class _Parser(argparse.ArgumentParser):
    """An argument parser that takes options only as spelled in full: with argparse's default, ``--resum``
    is ``--resume``, and a script that relies on such a prefix breaks, or silently changes meaning, when a
    later release adds an option that shares it. Subcommands' parsers are of this class too."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="recsys",
        description="Recommender systems with disentangled latent factors: prepare data, train, evaluate, "
        "index and recommend.",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {_installed_version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add_config_args(sp):
        sp.add_argument("--config", "-c", required=True, help="YAML experiment config (see configs/)")
        sp.add_argument(
            "overrides",
            nargs="*",
            metavar="KEY=VALUE",
            help="override any config key, e.g. train.lr=5e-4 model.dim=32",
        )

    data = sub.add_parser("data", help="data commands")
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")
    prep = dsub.add_parser("prepare", help="read, validate, split and cache a dataset")
    add_config_args(prep)
    prep.add_argument("--force", action="store_true", help="rebuild even if a cached copy exists")
    prep.set_defaults(func=cmd_data_prepare)

    tr = sub.add_parser("train", help="train and test a model, tracked in MLflow")
    add_config_args(tr)
    tr.add_argument("--resume", action="store_true", help="continue from the last checkpoint of this config")
    tr.set_defaults(func=cmd_train)

    ev = sub.add_parser("evaluate", help="top-k metrics of saved recommendations or of a trained run")
    ev.add_argument("--recs", help="CSV or Parquet with columns user,item,score (higher is better)")
    ev.add_argument("--truth", help="CSV or Parquet with columns user,item")
    ev.add_argument("--run", help="an MLflow run id of `recsys train`")
    _tracking_uri_option(ev)
    ev.add_argument("--split", choices=["valid", "test"], help="split to evaluate with --run (default: test)")
    ev.add_argument(
        "--k",
        type=_parse_ks,
        default=None,
        help="cut-offs, e.g. 5,10,20 (default: 10,20; a run's eval.ks with --run)",
    )
    ev.add_argument("--json", action="store_true", help="print one JSON object")
    ev.add_argument(
        "--n-items",
        type=_positive_int,
        default=None,
        metavar="N",
        help="with --recs: the catalogue size, coverage's denominator (default: the items the two files name)",
    )
    ev.add_argument(
        "--excluded-score",
        type=_finite_float,
        default=None,
        metavar="S",
        help="with --run: keep the user's known items in the ranking with score S instead of removing them "
        "(the ICLRec/ICSRec reference evaluation uses 0); default: removed",
    )
    ev.add_argument(
        "--zero-score-items",
        type=_non_negative_int,
        default=0,
        metavar="N",
        help="with --run: rank N extra never-relevant entries of score 0 with the items, a stand-in for the "
        "reference's padding and mask rows (2); default 0",
    )
    ev.set_defaults(func=cmd_evaluate)

    rn = sub.add_parser(
        "runs", help="the newest tracked runs: id, start, status, experiment, name, model, a test metric"
    )
    _tracking_uri_option(rn)
    rn.add_argument("--experiment", metavar="NAME", help="this MLflow experiment's runs only (default: all)")
    rn.add_argument(
        "--limit", type=_run_limit, default=20, metavar="N", help="the N newest runs (20; at most 50000)"
    )
    rn.add_argument("--metric", default="ndcg@20", metavar="NAME@K", help="the test metric shown (ndcg@20)")
    rn.add_argument("--json", action="store_true", help="print one JSON list, with every test metric")
    rn.set_defaults(func=cmd_runs)

    sw = sub.add_parser(
        "sweep", help="train a grid of configs, choose on the validation split, test only the chosen run"
    )
    add_config_args(sw)
    sw.add_argument(
        "--grid",
        action="append",
        required=True,
        metavar="KEY=[V1, V2, ...]",
        help="a key and its values, as a YAML list, e.g. 'model.dim=[32, 64]'; several --grid: every combination",
    )
    sw.add_argument(
        "--metric",
        metavar="NAME@K",
        help="the validation metric that chooses (default: train.early_stopping.metric, else ndcg@max(eval.ks))",
    )
    sw.add_argument("--resume", action="store_true", help="continue each run's checkpoint (a stopped sweep)")
    sw.add_argument("--json", action="store_true", help="print one JSON object (progress goes to stderr)")
    sw.set_defaults(func=cmd_sweep)

    cp = sub.add_parser(
        "compare",
        help="runs against the first, paired over users: differences, confidence intervals, p-values",
    )
    cp.add_argument(
        "--run",
        action="append",
        required=True,
        metavar="RUN_ID",
        help="a run id; give two or more (the first is A)",
    )
    _tracking_uri_option(cp)
    cp.add_argument(
        "--split", choices=["valid", "test"], default="test", help="the split to compare on (test)"
    )
    cp.add_argument(
        "--k", type=_parse_ks, default=None, help="cut-offs, e.g. 10,20 (default: the first run's eval.ks)"
    )
    cp.add_argument(
        "--metric",
        nargs="+",
        action="extend",  # given twice, the lists add up (argparse keeps only the last)
        metavar="NAME@K",
        help="metrics to compare, e.g. ndcg@20 hit@10 (default: recall and ndcg at every cut-off)",
    )
    cp.add_argument("--json", action="store_true", help="print one JSON object")
    cp.set_defaults(func=cmd_compare)

    ix = sub.add_parser("index", help="build a FAISS index folder from a trained run")
    ix.add_argument("--run", required=True)
    _tracking_uri_option(ix)
    ix.add_argument("--out", help="output folder (default: $RECSYS_HOME/indexes/RUN_ID)")
    ix.add_argument(
        "--nlist",
        type=_positive_int,
        metavar="N",
        help="an approximate inverted-file index of N lists (FAISS IVF; default: exact). For catalogues "
        "whose exact search is too slow: docs/benchmarks.md measures recall against speed",
    )
    ix.add_argument(
        "--nprobe",
        type=_positive_int,
        metavar="N",
        help="with --nlist: lists searched per query (default 16, or N when N < 16)",
    )
    ix.set_defaults(func=cmd_index)

    rr = sub.add_parser(
        "rerank", help="fit a LightGBM re-ranker on a run's validation split, and test it against retrieval"
    )
    rr.add_argument("--run", required=True)
    _tracking_uri_option(rr)
    rr.add_argument(
        "--candidates", type=_positive_int, default=100, help="candidates per user from retrieval (100)"
    )
    rr.add_argument("--k", type=_parse_ks, help="cut-offs, e.g. 10,20 (default: the run's eval.ks)")
    rr.add_argument("--seed", type=int, default=0, help="the validation users' split and LightGBM's seed")
    rr.add_argument(
        "--folds",
        type=_cross_check_folds,
        default=5,
        help="parts of the cross-check on validation users the ranker never saw (5; 0 skips it)",
    )
    rr.add_argument("--out", help="output folder (default: $RECSYS_HOME/rerankers/RUN_ID)")
    rr.add_argument("--json", action="store_true", help="print one JSON object")
    rr.set_defaults(func=cmd_rerank)

    rc = sub.add_parser(
        "recommend",
        help="top-k items for a user, next items for an item sequence, or many users' lists to a file",
    )
    rc.add_argument("--run", required=True)
    _tracking_uri_option(rc)
    rc.add_argument("--user", help="original user id")
    rc.add_argument(
        "--all-users", action="store_true", help="every user of the run, written to --out (a batch job)"
    )
    rc.add_argument("--users", metavar="FILE", help="a text file of user ids, one per line, written to --out")
    rc.add_argument(
        "--out",
        metavar="FILE",
        help="with --all-users / --users: the .csv, .parquet or .pq file to write (columns user, item, score, "
        "rank; replaced atomically)",
    )
    rc.add_argument(
        "--skip-unknown",
        action="store_true",
        help="with --users: leave out ids the run does not know (counted) instead of stopping",
    )
    rc.add_argument(
        "--batch-size",
        type=_positive_int,
        default=None,
        help="with --out: users per batch (memory grows with it; default 1024)",
    )
    rc.add_argument(
        "--sequence",
        nargs="+",
        action="extend",  # given twice, the lists add up (argparse keeps only the last)
        metavar="ITEM",
        help="item ids, oldest first: next items for this sequence (sequence models)",
    )
    rc.add_argument(
        "--similar",
        metavar="ITEM",
        help="an item id: the items most similar to it (by --metric), instead of a user's recommendations",
    )
    rc.add_argument(
        "--metric",
        choices=SIMILARITY_METRICS,
        default=None,
        help="with --similar: cosine of the item vectors (default) or their inner product",
    )
    rc.add_argument("--k", type=_positive_int, default=10)
    rc.add_argument(
        "--index", help="index folder (default: built on first use; runs without an index refuse it)"
    )
    rc.add_argument(
        "--json",
        action="store_true",
        help="a JSON list of {item_id, score, title} (not with --all-users / --users: they write --out)",
    )
    rc.add_argument(
        "--reranker",
        help="re-rank --user's list with this folder of `recsys rerank` (scores: the re-ranker's)",
    )
    rc.set_defaults(func=cmd_recommend)

    sv = sub.add_parser(
        "serve",
        help="serve an index over HTTP (JSON): recommend, similar, recommend_for_vector, recommend_for_sequence",
    )
    sv.add_argument(
        "--index", metavar="DIR", help="index folder (default with --run: $RECSYS_HOME/indexes/RUN_ID)"
    )
    sv.add_argument(
        "--run",
        metavar="RUN_ID",
        help="serve this run's index, built on first use like `recommend` does; a sequence model's run "
        "(SASRec, GRU4Rec, DuoRec, ICSRec, ICLRec, BERT4Rec) also answers /recommend_for_sequence with its "
        "encoder; an item-item run (EASE, RP3beta) has no index: its model, fitted again at start, scores "
        "each request",
    )
    _tracking_uri_option(sv)
    sv.add_argument(
        "--reranker", metavar="DIR", help="a folder of `recsys rerank`: requests with rerank=true use it"
    )
    sv.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only; the app has no authentication)",
    )
    sv.add_argument("--port", type=_port, default=8000, help="TCP port (default 8000)")
    sv.add_argument(
        "--nprobe",
        type=_positive_int,
        metavar="N",
        help="lists searched per query of an inverted-file index (default: the index's own)",
    )
    sv.add_argument(
        "--limit-concurrency",
        type=_positive_int,
        default=None,
        metavar="N",
        help="answer 503 beyond N connections or requests at once, rather than queue them (uvicorn's "
        "limit; default: none)",
    )
    sv.add_argument(
        "--threads",
        type=_positive_int,
        default=None,
        metavar="N",
        help="FAISS threads per search, and torch threads per sequence encoding with --run of a sequence "
        "model (default: FAISS's own; torch 1); an item-item run's scores are scipy's, on one thread",
    )
    sv.add_argument(
        "--log-level", choices=["critical", "error", "warning", "info", "debug"], default="info",
        help="uvicorn's log level (default info: one line per request)",
    )  # fmt: skip
    sv.set_defaults(func=cmd_serve)

    xp = sub.add_parser(
        "explain", help="latent intents of a user (DCCF) or of an item sequence (ICSRec, ICLRec)"
    )
    xp.add_argument("--run", required=True)
    _tracking_uri_option(xp)
    xp.add_argument("--user", help="original user id")
    xp.add_argument(
        "--sequence",
        nargs="+",
        action="extend",  # given twice, the lists add up (argparse keeps only the last)
        metavar="ITEM",
        help="sequence models (ICSRec, ICLRec): explain these original item ids, oldest first",
    )
    xp.add_argument("--intents", type=_positive_int, default=3, help="top intents to show")
    xp.add_argument(
        "--items",
        type=_positive_int,
        default=5,
        help="items per intent: its most aligned items (a sequence model: its top-scored and most frequent "
        "next items)",
    )
    xp.add_argument("--k", type=_positive_int, default=10, help="recommendations to attribute to intents")
    xp.add_argument("--json", action="store_true", help="machine-readable output")
    xp.set_defaults(func=cmd_explain)

    cf = sub.add_parser("config", help="the config a command would run, and every config key")
    csub = cf.add_subparsers(dest="config_command", required=True, metavar="SUBCOMMAND")
    show = csub.add_parser(
        "show",
        help="validate an experiment config (with its model) and overrides; print it with every default",
    )
    add_config_args(show)
    show.set_defaults(func=cmd_config_show)
    keys = csub.add_parser("keys", help="every config key: type, default, bounds, meaning (docs/config.md)")
    keys.add_argument(
        "--model",
        nargs="+",
        action="extend",  # given twice, the lists add up (argparse keeps only the last)
        metavar="NAME",
        help="the model section's keys for these models only, built-in or offered by a package "
        "(default: every built-in and registered model)",
    )
    keys.set_defaults(func=cmd_config_keys)

    qs = sub.add_parser("quickstart", help="MovieLens-100K end to end: data, training, metrics, index, recs")
    qs.add_argument(
        "--epochs",
        type=_non_negative_int,  # refused here, not after the baseline was trained and tracked
        default=None,
        help="training epochs (default: the quickstart's)",
    )
    qs.add_argument("--user", default="1", help="user id to show recommendations for")
    qs.set_defaults(func=cmd_quickstart)
    return p


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, so that it stops like on Ctrl-C: the tracked run ends as KILLED
    (it stayed RUNNING), temporary files are removed, written files stay whole."""


@contextlib.contextmanager
def _command_line_process():
    """Process-wide settings for a command run from the main thread (nothing off it, where a library calls
    :func:`main`): SIGTERM stops it like Ctrl-C (:class:`Terminated`), unless the parent set SIGTERM to be
    ignored; warnings print as one ``warning:`` line, not a Python source line. Both are put back after."""
    import threading
    import warnings

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise Terminated

    previous = signal.getsignal(signal.SIGTERM)
    if previous is not signal.SIG_IGN:
        signal.signal(signal.SIGTERM, stop)
    try:
        with warnings.catch_warnings():  # restores showwarning on the way out
            warnings.showwarning = lambda message, *_, **__: print(f"warning: {message}", file=sys.stderr)
            yield
    finally:
        if previous is not signal.SIG_IGN:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def _resume_hint(args) -> str:
    """For an interrupted ``train``: the command that continues it (overrides included: they are part of the
    config, and so of its checkpoint folder), when that folder holds a checkpoint. For a ``sweep``: the sweep
    command with ``--resume`` (the runs trained so far are kept, the interrupted one continues)."""
    import shlex

    if args.command == "sweep":
        grid = [part for g in args.grid for part in ("--grid", g)]
        metric = ["--metric", args.metric] if args.metric else []
        flags = ["--json"] if args.json else []
        sweep = [
            "recsys",
            "sweep",
            "--config",
            args.config,
            *grid,
            *metric,
            *flags,
            *args.overrides,
            "--resume",
        ]
        return f"; {shlex.join(sweep)} continues the sweep"
    try:
        from recsys.pipeline import run_dir_for
        from recsys.trainer import CHECKPOINT

        if not (run_dir_for(_load_cfg(args)) / CHECKPOINT).exists():
            return "; no checkpoint was written yet"
    except Exception:  # noqa: BLE001 - a hint only: the config was read once already
        return ""
    command = shlex.join(["recsys", "train", "--config", args.config, *args.overrides, "--resume"])
    return f"; the checkpoint is kept: {command} continues"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with _command_line_process():
        return _run(args)


def _run(args) -> int:
    """Run the command; every error the user can act on becomes one ``error:`` line and exit code 2."""
    from features.errors import DataSourceError
    from recsys.config import ConfigError
    from recsys.tracking import RunNotFoundError

    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a pipe is block-buffered: a closed one fails here, inside the handlers below
        return code
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (timeout, docker stop): one line, not a traceback
        if os.environ.get("RECSYS_DEBUG"):
            raise
        hint = _resume_hint(args) if args.command in ("train", "sweep") else ""
        print(
            f"interrupted ({'SIGTERM' if isinstance(exc, Terminated) else 'SIGINT'}){hint}", file=sys.stderr
        )
        return 143 if isinstance(exc, Terminated) else 130
    except BrokenPipeError:  # the reader of stdout went away (| head): nothing more to say, nowhere to say it
        with contextlib.suppress(OSError, ValueError):  # io.UnsupportedOperation is both
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())  # so that the interpreter's own flush at exit stays quiet
            os.close(devnull)
        return 141
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, RunNotFoundError, OSError, DataSourceError) as exc:
        # Data validation and integrity errors carry the file/line/key in their message, as do file errors
        # (a missing file, an --out folder that is not ours to replace); set RECSYS_DEBUG=1 for the traceback.
        if os.environ.get("RECSYS_DEBUG"):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        # The tracking store's own errors (a store MLflow refuses, a deleted experiment, a server that does
        # not answer): one line naming MLflow, not a traceback. mlflow is not imported here to test the type.
        if os.environ.get("RECSYS_DEBUG") or not type(exc).__module__.startswith("mlflow"):
            raise
        from recsys.tracking import first_line

        print(f"error: MLflow: {first_line(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
