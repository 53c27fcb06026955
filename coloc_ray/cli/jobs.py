"""``coloc submit|status|logs``: run a study on a Ray cluster through the Ray Jobs API (docs/CLUSTER.md)."""

from __future__ import annotations

import os
import sys

DEFAULT_ADDRESS = "http://127.0.0.1:8265"


def _default_address() -> str:
    env = os.environ.get("RAY_ADDRESS", "")
    return env if env.startswith("http") else DEFAULT_ADDRESS


def _cluster_args(p) -> None:
    p.add_argument("--address", default=_default_address(),
                   help=f"Ray dashboard URL (default $RAY_ADDRESS if http, else {DEFAULT_ADDRESS})")
    p.add_argument("--token-file", default=None,
                   help="the cluster's auth token file (default $RAY_AUTH_TOKEN / $RAY_AUTH_TOKEN_PATH)")


def register(sub) -> None:
    s = sub.add_parser("submit", help="validate a study here, then run it on a Ray cluster as a Ray job")
    s.add_argument("study", help="study YAML")
    _cluster_args(s)
    s.add_argument("--tracking-uri", default=None, help="MLflow URI for the job (default: the cluster's own MLFLOW_TRACKING_URI)")
    s.add_argument("--out", default=None, help="study directory on the cluster (default output_dir or runs/<name>)")
    s.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="extra env var for the job (not credentials: the dashboard shows them; docs/SECURITY.md)")
    s.add_argument("--dry-run", action="store_true",
                   help="send nothing: print the entrypoint, env var names and every file that would be uploaded")
    s.add_argument("--wait", action="store_true", help="wait for the job to end; exit 0 only if it SUCCEEDED")
    s.add_argument("--timeout", type=float, default=None, help="with --wait: give up after this many seconds")
    s.set_defaults(func=_submit)
    st = sub.add_parser("status", help="a job's status and live trial table (no JOB_ID: list the jobs)")
    st.add_argument("job_id", nargs="?", help="job id printed by coloc submit")
    _cluster_args(st)
    st.set_defaults(func=_status)
    lg = sub.add_parser("logs", help="print a job's log")
    lg.add_argument("job_id", help="job id printed by coloc submit")
    _cluster_args(lg)
    lg.add_argument("--follow", "-f", action="store_true", help="stream the log until the job ends")
    lg.set_defaults(func=_logs)


def _parse_env(pairs: list[str]) -> dict[str, str]:
    from coloc_ray.errors import UserError

    out = {}
    for kv in pairs:
        key, sep, value = kv.partition("=")
        if not sep or not key:
            raise UserError(f"--env {kv!r}: expected KEY=VALUE")
        out[key] = value
    return out


def _submit(args) -> int:
    from coloc_ray.ablation import submit as sb
    from coloc_ray.cli.study import check_text_file

    check_text_file(args.study, "study file")
    job_id = sb.submit_study(args.study, args.address, token_file=args.token_file, tracking_uri=args.tracking_uri,
                             out=args.out, env=_parse_env(args.env), dry_run=args.dry_run)
    print(job_id, flush=True)
    if args.dry_run:
        return 0
    if not args.wait:
        print(f"follow it: coloc logs {job_id} --follow --address {args.address}", file=sys.stderr)
        return 0
    try:
        status = sb.wait_for_job(args.address, job_id, args.token_file, timeout_s=args.timeout,
                                 on_change=lambda s: print(f"{job_id}: {s}", file=sys.stderr, flush=True))
    except TimeoutError as e:  # the job keeps running on the cluster
        print(f"coloc: {e}; it keeps running: coloc status {job_id} --address {args.address}", file=sys.stderr)
        return 1
    if status != "SUCCEEDED":
        tail = sb.job_logs(args.address, job_id, args.token_file).splitlines()[-40:]
        print("\n".join(tail), file=sys.stderr)
        return 1
    return 0


def _status(args) -> int:
    from coloc_ray.ablation import submit as sb

    if not args.job_id:
        rows = sb.list_jobs(args.address, args.token_file)
        if not rows:
            print(f"no jobs on the cluster at {args.address}")
        for r in rows:
            print(f"{r['job_id']}  {r['status']:<9}  {r['study']:<20}  {r['entrypoint']}")
        return 0
    info = sb.job_info(args.address, args.job_id, args.token_file)
    print(f"{info['job_id']}: {info['status']}" + (f" ({info['message']})" if info["message"] else ""))
    meta = info["metadata"]
    if meta.get("coloc.study"):
        uri = meta.get("coloc.tracking_uri") or "the cluster's MLFLOW_TRACKING_URI"
        print(f"study {meta['coloc.study']} ({meta.get('coloc.study_file')}); "
              f"study dir {meta.get('coloc.study_dir')}; MLflow {uri}")
    print(sb.trial_table(info))
    if info["status"] == "FAILED":  # the log is for errors; the table comes from progress.json
        print("\n".join(sb.job_logs(args.address, args.job_id, args.token_file).splitlines()[-40:]), file=sys.stderr)
    return 0


def _logs(args) -> int:
    from coloc_ray.ablation import submit as sb

    if args.follow:
        sb.follow_logs(args.address, args.job_id, args.token_file)
    else:
        sys.stdout.write(sb.job_logs(args.address, args.job_id, args.token_file))
    return 0
