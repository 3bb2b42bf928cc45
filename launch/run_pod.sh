#!/usr/bin/env bash
# Run one Python module on every worker of a TPU VM (JAX multi-host: the same command on all hosts).
# Usage: run_pod.sh NAME --zone ZONE [--repo-dir DIR] [--project PROJECT] [--dry-run] -- MODULE [ARGS...]
# Example: run_pod.sh lasa-v5p --zone us-east5-a -- lasa_jax.scripts.pipeline --config=configs/llama31_8b.py:v5p-64 --workdir=/mnt/shared/run1
# Runs `cd DIR && .venv/bin/python -m MODULE ARGS` remotely; every argument is shell-quoted (printf %q).
# --dry-run prints the command ("+ " then the shell-quoted argv) and runs nothing.
set -euo pipefail

# usage, print_help, need_value, run
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

name="" zone="" repo_dir="lasa-jax" project="" dry_run=0 have_module=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --zone) need_value "$1" $#; zone="$2"; shift 2 ;;
    --repo-dir) need_value "$1" $#; repo_dir="$2"; shift 2 ;;
    --project) need_value "$1" $#; project="$2"; shift 2 ;;
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
[[ "$have_module" == 1 && $# -ge 1 && -n "$1" ]] || usage "missing -- MODULE [ARGS...]"
[[ "$1" =~ ^[A-Za-z_][A-Za-z0-9_.]*$ ]] || usage "MODULE must be a dotted Python module name, got '$1'"

remote="cd $(printf '%q' "$repo_dir") && .venv/bin/python -m"
for arg in "$@"; do
  remote+=" $(printf '%q' "$arg")"
done
target=(--zone="$zone" --worker=all)
if [[ -n "$project" ]]; then target+=("--project=$project"); fi
run gcloud compute tpus tpu-vm ssh "$name" "${target[@]}" --command="$remote"
