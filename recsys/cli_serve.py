"""The ``recsys recommend`` and ``recsys serve`` commands, and the printing of recommendation lists they share
with ``quickstart`` and ``explain``. Imported by :mod:`recsys.cli` (the parser lives there); like it, this
module imports heavy libraries inside the commands."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

# serving.retriever.SIMILARITY_METRICS, written out: importing serving here would slow every command's start
SIMILARITY_METRICS = ("cosine", "inner_product")


def show_recommendations(header: str, recs: list, as_json: bool = False) -> None:
    """Print recommendations (``Recommendation`` tuples: item_id, score, title), best first: a header and one
    line each, or (``as_json``) a JSON list of ``{"item_id", "score", "title"}`` for programs."""
    if as_json:
        print(json.dumps([{"item_id": r.item_id, "score": r.score, "title": r.title} for r in recs]))
        return
    print(f"\n{header}")
    for rank, rec in enumerate(recs, 1):
        print(f"  {rank:>2}. {rec.title or rec.item_id}  (item {rec.item_id}, score {rec.score:.3f})")


def print_recommendations(
    retriever,
    user: str,
    k: int,
    history_titles: list[str] | None = None,
    as_json: bool = False,
    n_seen: int | None = None,
) -> None:
    """``history_titles``: the user's positive items, shown first; ``n_seen``: every item the list excludes as
    seen (also those rated below the threshold), when more than the positives."""
    recs = retriever.recommend([user], k=k, exclude_seen=True)[0]
    if history_titles and not as_json:
        n_liked = len(history_titles)
        if n_seen is None or n_seen == n_liked:
            print(f"\nuser {user} has seen {n_liked} items, e.g.:")
        else:
            print(f"\nuser {user} has seen {n_seen} items ({n_liked} of them liked), e.g.:")
        for t in history_titles[:10]:
            print(f"  - {t}")
    # fewer than k when the catalogue runs out
    show_recommendations(f"top-{len(recs)} for user {user}:", recs, as_json)


# what _refuse_for_a_model_without_index says about an option ({run}: the run and its model's name)
_NEEDS_INDEX = "is for an index; run {run} has none: its model scores each request"
_METRIC_NEEDS_VECTORS = (
    "compares item vectors; run {run} is an item-item model, whose neighbours are its fitted item-item "
    "weights (drop --metric)"
)


def _recommend_from_model(run, args) -> int:
    """``recsys recommend --user | --sequence | --similar`` for a run without an index (EASE, RP3beta): the
    model scores the catalogue (:class:`recsys.scorer_recommender.ScorerRecommender`), with the served
    index's rules, printed as its answers are."""
    from recsys.scorer_recommender import ScorerRecommender
    from serving.errors import UnknownItemError, UnknownUserError

    # --metric and --reranker were refused before the model was fitted (load_run's require)
    recommender = ScorerRecommender(run)
    scored = "scored by the model: it has no index"
    try:
        if args.similar is not None:
            recs = recommender.similar_items([args.similar], k=args.k)[0]
            title = recommender.item_titles[recommender.item_ids.index(args.similar)]
            about = f"{title} (item {args.similar})" if title else f"item {args.similar}"
            header = f"top-{len(recs)} most similar to {about}, by the model's item-item weights ({scored}):"
        elif args.sequence is not None:
            recs = recommender.recommend_for_sequences([args.sequence], k=args.k)[0]
            header = (
                f"top-{len(recs)} after {len(args.sequence)} items ({scored}; their order does not matter):"
            )
        else:
            recs = recommender.recommend([args.user], k=args.k)[0]
            header = f"top-{len(recs)} for user {args.user} ({scored}):"
    except UnknownUserError as exc:
        hint = "this model recommends only for the users it was trained on"
        if recommender.scores_item_sets:
            hint += "; for another user, give their items with --sequence ITEM [ITEM ...]"
        print(f"error: {UnknownUserError(exc.ids, exc.n_known, hint)}", file=sys.stderr)
        return 2
    except UnknownItemError as exc:
        print(f"error: {exc} (run {run.run_id})", file=sys.stderr)
        return 2
    except TypeError as exc:  # a model that neither scores item sets nor has item-item weights
        print(f"error: {exc}", file=sys.stderr)
        return 2
    show_recommendations(header, recs, args.json)
    return 0


def _refuse_for_a_model_without_index(args, options: dict[str, str]):
    """The ``require`` of :func:`recsys.pipeline.load_run` for a command some of whose options need an index:
    given one of ``options`` (flag -> what is wrong), a run without an index (EASE, RP3beta) is refused as
    soon as its model is built, before it is fitted on the training data (EASE on Gowalla: about 7 minutes)."""

    def require(model) -> None:
        if getattr(type(model), "indexable", True):
            return
        name = getattr(getattr(model, "config", None), "name", type(model).__name__)
        for option, why in options.items():
            if getattr(args, option.removeprefix("--").replace("-", "_"), None) is not None:
                raise ValueError(f"{option} {why.format(run=f'{args.run} ({name})')}")

    return require


def _recommend_to_file(args) -> int:
    """``recsys recommend --all-users | --users FILE --out FILE``: many users' lists in one file."""
    from recsys.pipeline import (
        NotIndexableError,
        ScorerRecommender,
        build_run_index,
        default_index_dir,
        load_run,
    )
    from serving import Retriever
    from serving.errors import UnknownUserError
    from serving.export import export_recommendations, output_format, read_user_ids

    output_format(args.out)  # a wrong extension is refused before any model is loaded
    users = read_user_ids(args.users) if args.users is not None else None
    index_dir = Path(args.index) if args.index else default_index_dir(args.run)
    recommender: Retriever | ScorerRecommender | RerankingRetriever
    if (index_dir / "manifest.json").exists():
        recommender = Retriever.load(index_dir)
        if _another_runs_index(index_dir, recommender.index.run_id, args.run):
            return 2
    else:
        run = load_run(
            args.run,
            uri=args.tracking_uri,
            require=_refuse_for_a_model_without_index(
                args, {"--reranker": _NEEDS_INDEX, "--index": _NEEDS_INDEX}
            ),
        )
        try:
            build_run_index(run, index_dir)
            recommender = Retriever.load(index_dir)
        except NotIndexableError:
            if args.reranker is not None:
                raise
            recommender = ScorerRecommender(run)
    if args.reranker is not None:
        from serving.rerank import Reranker, RerankingRetriever

        recommender = RerankingRetriever(recommender, Reranker.load(args.reranker))
    try:
        summary = export_recommendations(
            recommender,
            args.out,
            users,
            k=args.k,
            batch_size=args.batch_size or 1024,
            skip_unknown=args.skip_unknown,
        )
    except UnknownUserError as exc:
        hint = (
            f"no user of the file is a user of run {args.run}; nothing was written"
            if args.skip_unknown
            else "give --skip-unknown to leave them out; nothing was written"
        )
        print(f"error: {args.users}: {UnknownUserError(exc.ids, exc.n_known, hint)}", file=sys.stderr)
        return 2
    skipped = f"; {len(summary.skipped)} unknown user(s) left out" if summary.skipped else ""
    print(
        f"wrote {summary.n_rows} recommendations (top-{args.k}) for {summary.n_users} users to {summary.path}"
        f"{skipped}"
    )
    return 0


def _same_file(a: str, b: str) -> bool:
    """Whether paths ``a`` and ``b`` name one file (through links too, when both exist)."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return Path(a).resolve() == Path(b).resolve()


def cmd_recommend(args) -> int:
    from recsys.pipeline import NotIndexableError, build_run_index, default_index_dir, load_run
    from serving import Retriever
    from serving.errors import UnknownUserError

    batch = args.all_users or args.users is not None
    chosen = [
        args.user is not None,
        args.sequence is not None,
        args.similar is not None,
        args.all_users,
        args.users is not None,
    ]
    if sum(chosen) != 1:
        print(
            "error: give exactly one of --user USER, --sequence ITEM [ITEM ...], --similar ITEM, --all-users or "
            "--users FILE",
            file=sys.stderr,
        )
        return 2
    if args.metric is not None and args.similar is None:
        print("error: --metric goes with --similar ITEM", file=sys.stderr)
        return 2
    if batch != (args.out is not None):
        print(
            "error: --out FILE goes with --all-users or --users FILE (and they need it)"
            if batch
            else "error: --out FILE writes the lists of --all-users or --users FILE; for one --user, drop it",
            file=sys.stderr,
        )
        return 2
    if args.skip_unknown and args.users is None:
        print("error: --skip-unknown goes with --users FILE", file=sys.stderr)
        return 2
    if args.batch_size is not None and not batch:
        print("error: --batch-size goes with --all-users or --users FILE", file=sys.stderr)
        return 2
    if args.json and batch:  # the lists go to --out; the summary line is for people
        print(
            "error: --json prints the list of --user, --sequence or --similar; --all-users and --users FILE "
            "write theirs to --out (drop --json)",
            file=sys.stderr,
        )
        return 2
    if args.users is not None and _same_file(args.users, args.out):
        print(f"error: --out {args.out} is the --users file; writing there would replace it", file=sys.stderr)
        return 2
    if args.reranker is not None and (args.sequence is not None or args.similar is not None):
        what = "a sequence's" if args.sequence is not None else "similar items"
        print(f"error: --reranker re-ranks a known user's list, not {what}", file=sys.stderr)
        return 2
    if batch:
        return _recommend_to_file(args)
    index_dir = Path(args.index) if args.index else default_index_dir(args.run)
    run = None
    if not (index_dir / "manifest.json").exists():
        # --index names where the index is (or goes): a run without one would ignore it
        refused = {"--reranker": _NEEDS_INDEX, "--metric": _METRIC_NEEDS_VECTORS, "--index": _NEEDS_INDEX}
        run = load_run(
            args.run, uri=args.tracking_uri, require=_refuse_for_a_model_without_index(args, refused)
        )
        if args.sequence is not None and getattr(type(run.model), "indexable", True):
            from recsys.pipeline import sequence_query_encoder

            sequence_query_encoder(run.model)  # a model that cannot answer sequences: say so before indexing
        try:
            build_run_index(run, index_dir)
        except NotIndexableError:
            if args.reranker is not None:
                raise
            return _recommend_from_model(run, args)
    retriever = Retriever.load(index_dir)
    if _another_runs_index(index_dir, retriever.index.run_id, args.run):
        return 2
    try:
        if args.sequence is not None:
            from recsys.pipeline import sequence_query_encoder

            encoder = sequence_query_encoder((run or load_run(args.run, uri=args.tracking_uri)).model)
            recs = retriever.recommend_for_sequences([args.sequence], encoder, k=args.k)[0]
            show_recommendations(
                f"top-{len(recs)} next items after {len(args.sequence)} items:", recs, args.json
            )
        elif args.similar is not None:
            _warn_if_bias_unrecorded(retriever.index.manifest)
            metric = args.metric or SIMILARITY_METRICS[0]
            recs = retriever.similar_items([args.similar], k=args.k, metric=metric)[0]
            title = retriever.index.item_titles[retriever.index.item_positions([args.similar])[0]]
            about = f"{title} (item {args.similar})" if title else f"item {args.similar}"
            show_recommendations(f"top-{len(recs)} most similar to {about}, by {metric}:", recs, args.json)
        elif args.reranker is not None:
            from serving.rerank import Reranker, RerankingRetriever

            reranking = RerankingRetriever(retriever, Reranker.load(args.reranker))
            recs = reranking.recommend([args.user], k=args.k)[0]
            show_recommendations(f"top-{len(recs)} for user {args.user}, re-ranked:", recs, args.json)
        else:
            print_recommendations(retriever, args.user, args.k, as_json=args.json)
    except UnknownUserError as exc:
        # The library's hint names a Python API; on the command line the way in is --sequence, if any.
        sequences = retriever.index.manifest.get("metadata", {}).get("sequence_queries", False)
        hint = (
            "for a user the run does not know, give their items with --sequence ITEM [ITEM ...]"
            if sequences
            else "this model recommends only for the users it was trained on"
        )
        print(f"error: {UnknownUserError(exc.ids, exc.n_known, hint)}", file=sys.stderr)
        return 2
    except KeyError as exc:
        print(f"error: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 2
    except ValueError as exc:  # --similar on an index of biases alone (the most-popular baseline)
        if args.similar is None:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _warn_if_bias_unrecorded(manifest: dict) -> None:
    """A warning line for an index folder written before indexes recorded their bias columns (2026-12-05)
    from a model whose item vectors end in a per-item bias (BERT4Rec): read as 0, so its similar items and
    re-ranker features count that bias as a direction."""
    name = manifest.get("metadata", {}).get("model")
    if "bias_columns" in manifest or not isinstance(name, str):
        return
    from recsys.models import model_class

    try:
        columns = model_class(name).bias_columns
    except (KeyError, ImportError):  # a model this installation does not know
        return
    if columns:
        print(
            f"warning: this index of a {name} run was built before indexes recorded the model's per-item bias "
            f"column, so item-to-item comparisons count it; rebuild it with `recsys index --run "
            f"{manifest.get('run_id', 'RUN')}`",
            file=sys.stderr,
        )


def _another_runs_index(index_dir: Path, built_by: str | None, run_id: str) -> bool:
    """Whether the index at ``index_dir`` was built from another run than ``run_id`` (then an error line):
    run A's encoder or re-ranker against run B's item index would rank without any error, and wrongly."""
    if built_by is None or built_by == run_id:
        return False
    print(f"error: index {index_dir} was built from run {built_by}, not from run {run_id}", file=sys.stderr)
    return True


def _index_manifest(index_dir: Path) -> dict:
    """An index folder's manifest, read without loading the index ({} if unreadable: the app's own load then
    names the problem)."""
    try:
        manifest = json.loads((index_dir / "manifest.json").read_text())
    except (OSError, ValueError):
        return {}
    return manifest if isinstance(manifest, dict) else {}


def _check_listen(host: str, port: int) -> None:
    """Bind ``host:port`` once, as uvicorn will, so that a taken port or an unknown host is one error line
    naming them (uvicorn logs ``[Errno 98]`` without the address and exits with 3) before anything loads."""
    import socket

    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
            probe.bind(address)
    except OSError as exc:
        raise OSError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def cmd_serve(args) -> int:
    """``recsys serve``: the HTTP app of :mod:`serving.http` over an index folder, run by uvicorn."""
    if args.index is None and args.run is None:
        print("error: give --index DIR or --run RUN_ID (or both)", file=sys.stderr)
        return 2
    if args.tracking_uri is not None and args.run is None:  # an index folder is served without its run
        print("error: --tracking-uri goes with --run (the store that holds the run)", file=sys.stderr)
        return 2
    try:  # here, not at the top: `recsys --help` imports no web framework
        import uvicorn

        from serving.http import create_app
    except ModuleNotFoundError as exc:
        if exc.name not in ("fastapi", "uvicorn", "starlette"):
            raise
        print(f"error: recsys serve needs fastapi and uvicorn, dependencies of recsys ({exc.name} is not "
              "installed)", file=sys.stderr)  # fmt: skip
        return 2
    _check_listen(args.host, args.port)
    index_dir = Path(args.index) if args.index is not None else None
    encoder = None
    if args.run is not None:
        from recsys.pipeline import (
            build_run_index,
            default_index_dir,
            load_run,
            sequence_query_encoder,
        )

        index_dir = index_dir or default_index_dir(args.run)
        # checked before anything is loaded, and again on the loaded index below
        if _another_runs_index(index_dir, _index_manifest(index_dir).get("run_id"), args.run):
            return 2
        run = None
        if not (index_dir / "manifest.json").exists():  # as `recommend` does: built on first use
            refused = dict.fromkeys(("--reranker", "--nprobe", "--index"), _NEEDS_INDEX)
            run = load_run(
                args.run, uri=args.tracking_uri, require=_refuse_for_a_model_without_index(args, refused)
            )
            if not getattr(type(run.model), "indexable", True):  # EASE, RP3beta: the model scores requests
                return _serve_model(args, run, uvicorn)
            build_run_index(run, index_dir)
        if _index_manifest(index_dir).get("metadata", {}).get("sequence_queries"):  # the sequence models
            run = run or load_run(args.run, uri=args.tracking_uri)
            encoder = sequence_query_encoder(run.model)
            import torch

            # One forward pass of one session is too small to share among threads; requests run side by
            # side in the app's thread pool instead. Torch's idle threads spin after each pass, and on the
            # 2-core machine that doubled an unrelated /recommend (3.2 -> 5.9 ms, bench/bench_http.py).
            torch.set_num_threads(args.threads or 1)
    assert index_dir is not None  # --index, or --run's default (neither is refused above)
    app = create_app(
        index_dir,
        reranker_dir=args.reranker,
        num_threads=args.threads,
        sequence_encoder=encoder,
        nprobe=args.nprobe,
    )
    if args.run is not None and _another_runs_index(index_dir, app.state.retriever.index.run_id, args.run):
        return 2  # swapped in meanwhile
    _warn_if_bias_unrecorded(app.state.retriever.index.manifest)
    sequences = " and item sequences (the run's encoder)" if encoder is not None else ""
    print(f"serving index {index_dir}{sequences} on {_where(args)} (API docs at /docs)", file=sys.stderr)
    return _run_uvicorn(uvicorn, app, args)


def _where(args) -> str:
    return f"http://{args.host}:{args.port}" if args.port else f"a free port of {args.host} (uvicorn logs it)"


def _serve_model(args, run, uvicorn) -> int:
    """``recsys serve --run RUN`` of a run without an index (EASE, RP3beta): the app of
    :func:`serving.http.create_model_app`, its model scoring every request's rows against the catalogue."""
    from recsys.scorer_recommender import ScorerRecommender
    from serving.http import create_model_app

    # --reranker, --nprobe and --index were refused before the model was fitted (load_run's require)
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    app = create_model_app(ScorerRecommender(run))
    print(
        f"serving run {args.run} ({run.config.model['name']}, scored by the model: it has no index) on "
        f"{_where(args)} (API docs at /docs)",
        file=sys.stderr,
    )
    return _run_uvicorn(uvicorn, app, args)


def _run_uvicorn(uvicorn, app, args) -> int:
    """Serve ``app`` until stopped; uvicorn's failure to start is exit code 2."""
    try:
        uvicorn.run(
            app,
            host=args.host,
            port=args.port,
            log_level=args.log_level,
            limit_concurrency=args.limit_concurrency,
        )
    except KeyboardInterrupt:
        # Ctrl-C or SIGTERM: uvicorn has shut down gracefully, then raised the signal again (uvicorn 0.30 lets
        # it reach here, 0.55 swallows it). A server stopped so has done its job: exit 0 with either.
        pass
    except SystemExit as exc:  # uvicorn could not start (its log says why): the command line's code for it
        if exc.code in (0, None):
            return 0
        print(f"error: the server on {args.host}:{args.port} could not start (uvicorn's log above)",
              file=sys.stderr)  # fmt: skip
        return 2
    return 0
