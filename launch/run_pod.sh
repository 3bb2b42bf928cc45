#!/usr/bin/env bash
# Run one Python module on every worker of a TPU VM (JAX multi-host: the same command on all hosts), detached from
# the ssh session, so a dropped connection or a closed laptop does not stop the run.
# Usage: run_pod.sh NAME --zone ZONE [OPTIONS] (-- MODULE [ARGS...] | --status | --attach [--worker N] | --stop)
# Options: --repo-dir DIR (default lasa-jax), --project PROJECT, --log-dir DIR, --foreground, --dry-run.
# Example: run_pod.sh lasa-v5p --zone us-east5-a -- lasa_jax.scripts.pipeline --config=configs/pipeline.py:llama31_8b,v5p-64 --workdir=/mnt/shared/run1
#
# Start (default): on every worker, `cd DIR && .venv/bin/python -m MODULE ARGS` runs under `setsid nohup` (a new
# session: no SIGHUP when ssh ends), stdout and stderr to LOGDIR/worker-<hostname>.log. LOGDIR: --log-dir, else
# <workdir>/logs for the module's --workdir (relative to DIR unless absolute), else ~/lasa-jax-pod/logs when the
# workdir is a URL (gs://...) or absent. Each worker keeps ~/lasa-jax-pod/job.pid, job.log_path and, when the job
# ends, job.rc (its exit status); a start is refused on a worker whose job is still running.
# --status: on every worker, running / exited with its status, the log path and the log's last lines.
# --attach: follow the log of worker N (default 0) with `tail -F`; Ctrl-C stops following, not the job.
# --stop: SIGTERM to every worker's job (the training scripts checkpoint and exit; rerun to resume).
# --foreground: the old behaviour: run in the foreground of `gcloud ... ssh --worker=all` (dies with the session).
# Every argument is shell-quoted (printf %q). --dry-run prints the command ("+ " then the shell-quoted argv) and runs
# nothing.
set -euo pipefail

# usage, print_help, need_value, run
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

name="" zone="" repo_dir="lasa-jax" project="" log_dir="" dry_run=0 have_module=0 action="start" worker=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --zone) need_value "$1" $#; zone="$2"; shift 2 ;;
    --repo-dir) need_value "$1" $#; repo_dir="$2"; shift 2 ;;
    --project) need_value "$1" $#; project="$2"; shift 2 ;;
    --log-dir) need_value "$1" $#; log_dir="$2"; shift 2 ;;
    --worker) need_value "$1" $#; worker="$2"; shift 2 ;;
    --foreground) action="foreground"; shift ;;
    --status) action="status"; shift ;;
    --attach) action="attach"; shift ;;
    --stop) action="stop"; shift ;;
    --dry-run) dry_run=1; shift ;;
    --) shift; have_module=1; break ;;
    -h|--help) print_help; exit 0 ;;
    -*) usage "unknown option $1" ;;
    *) [[ -z "$name" ]] || usage "unexpected argument $1 (put the module after --)"; name="$1"; shift ;;
  esac
done
[[ -n "$name" ]] || usage "missing NAME"
[[ -n "$zone" ]] || usage "missing --zone"
[[ -n "$repo_dir" ]] || usage "--repo-dir is empty"
[[ "$worker" =~ ^[0-9]+$ ]] || usage "--worker must be a worker index (0, 1, ...), got '$worker'"

state='"$HOME"/lasa-jax-pod'  # expanded by the remote shell
target=(--zone="$zone" --worker=all)
if [[ -n "$project" ]]; then target+=("--project=$project"); fi

case "$action" in
  status)
    [[ "$have_module" == 0 ]] || usage "--status takes no module"
    remote="h=\$(hostname); s=$state; if [ ! -f \"\$s/job.pid\" ]; then echo \"\$h: no job started\"; exit 0; fi;"
    remote+=" pid=\$(cat \"\$s/job.pid\"); log=\$(cat \"\$s/job.log_path\");"
    remote+=" if [ -f \"\$s/job.rc\" ]; then st=\"exited with status \$(cat \"\$s/job.rc\")\";"
    remote+=" elif kill -0 \"\$pid\" 2>/dev/null; then st=\"running (pid \$pid)\";"
    remote+=" else st=\"not running (pid \$pid gone, no exit status: killed)\"; fi;"
    remote+=" echo \"\$h: \$st; log \$log\"; tail -n 3 \"\$log\" 2>/dev/null | sed \"s|^|\$h:   |\"; true"
    run gcloud compute tpus tpu-vm ssh "$name" "${target[@]}" --command="$remote"
    exit 0 ;;
  attach)
    [[ "$have_module" == 0 ]] || usage "--attach takes no module"
    target=(--zone="$zone" --worker="$worker")
    if [[ -n "$project" ]]; then target+=("--project=$project"); fi
    remote="s=$state; [ -f \"\$s/job.log_path\" ] || { echo \"\$(hostname): no job started\" >&2; exit 1; };"
    remote+=" tail -n 100 -F \"\$(cat \"\$s/job.log_path\")\""
    run gcloud compute tpus tpu-vm ssh "$name" "${target[@]}" --command="$remote"
    exit 0 ;;
  stop)
    [[ "$have_module" == 0 ]] || usage "--stop takes no module"
    remote="s=$state; if [ -f \"\$s/job.pid\" ] && kill -0 \"\$(cat \"\$s/job.pid\")\" 2>/dev/null; then"
    remote+=" kill -TERM -- -\"\$(cat \"\$s/job.pid\")\" &&"
    remote+=" echo \"\$(hostname): sent SIGTERM to job \$(cat \"\$s/job.pid\")\";"
    remote+=" else echo \"\$(hostname): no running job\"; fi"
    run gcloud compute tpus tpu-vm ssh "$name" "${target[@]}" --command="$remote"
    exit 0 ;;
esac

[[ "$have_module" == 1 && $# -ge 1 && -n "$1" ]] || usage "missing -- MODULE [ARGS...]"
[[ "$1" =~ ^[A-Za-z_][A-Za-z0-9_.]*$ ]] || usage "MODULE must be a dotted Python module name, got '$1'"

job=".venv/bin/python -m"
for arg in "$@"; do
  job+=" $(printf '%q' "$arg")"
done
if [[ "$action" == "foreground" ]]; then
  run gcloud compute tpus tpu-vm ssh "$name" "${target[@]}" --command="cd $(printf '%q' "$repo_dir") && $job"
  exit 0
fi

# the log directory: --log-dir, else <workdir>/logs (a local or mounted workdir), else ~/lasa-jax-pod/logs
workdir="" previous=""
for arg in "$@"; do
  if [[ "$previous" == "--workdir" ]]; then workdir="$arg"; fi
  if [[ "$arg" == --workdir=* ]]; then workdir="${arg#--workdir=}"; fi
  previous="$arg"
done
if [[ -n "$log_dir" ]]; then
  logdir_expr="$(printf '%q' "$log_dir")"
elif [[ -n "$workdir" && ! "$workdir" =~ ^[A-Za-z][A-Za-z0-9+.-]*:// ]]; then
  logdir_expr="$(printf '%q' "${workdir%/}/logs")"
else
  logdir_expr="$state/logs"
fi
# the wrapper shell traps TERM (its children get the default action) so that after --stop it still records the
# job's exit status
inner="trap true TERM; $job; echo \$? > $state/job.rc"
remote="cd $(printf '%q' "$repo_dir") && s=$state && mkdir -p \"\$s\" $logdir_expr && h=\$(hostname) &&"
remote+=" if [ -f \"\$s/job.pid\" ] && kill -0 \"\$(cat \"\$s/job.pid\")\" 2>/dev/null; then"
remote+=" echo \"\$h: a job is already running (pid \$(cat \"\$s/job.pid\")); see --status, --attach, --stop\" >&2;"
remote+=" exit 1; fi && log=\"\$(cd $logdir_expr && pwd)/worker-\$h.log\" && rm -f \"\$s/job.rc\" &&"
remote+=" echo \"\$log\" > \"\$s/job.log_path\" &&"
remote+=" { setsid nohup bash -c $(printf '%q' "$inner") > \"\$log\" 2>&1 < /dev/null & } &&"
remote+=" echo \$! > \"\$s/job.pid\" && echo \"\$h: started pid \$(cat \"\$s/job.pid\"), log \$log\""
run gcloud compute tpus tpu-vm ssh "$name" "${target[@]}" --command="$remote"
