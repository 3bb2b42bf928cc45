#!/usr/bin/env bash
# Install lasa-jax on every worker of a TPU VM: copy this checkout (or clone --git-url), create a Python 3.11 venv
# in REPO_DIR/.venv and `pip install -e '.[tpu]'`. Python 3.11 comes from the deadsnakes PPA when the image lacks it.
# Usage: setup_tpu.sh NAME --zone ZONE [--repo-dir DIR] [--git-url URL [--git-ref REF]] [--project PROJECT] [--dry-run]
# REPO_DIR (default lasa-jax) is relative to the remote home directory unless absolute.
# --dry-run prints each command ("+ " then the shell-quoted argv) and runs nothing.
set -euo pipefail

# usage, print_help, need_value, run
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

name="" zone="" repo_dir="lasa-jax" git_url="" git_ref="" project="" dry_run=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --zone) need_value "$1" $#; zone="$2"; shift 2 ;;
    --repo-dir) need_value "$1" $#; repo_dir="$2"; shift 2 ;;
    --git-url) need_value "$1" $#; git_url="$2"; shift 2 ;;
    --git-ref) need_value "$1" $#; git_ref="$2"; shift 2 ;;
    --project) need_value "$1" $#; project="$2"; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) print_help; exit 0 ;;
    -*) usage "unknown option $1" ;;
    *) [[ -z "$name" ]] || usage "unexpected argument $1"; name="$1"; shift ;;
  esac
done
[[ -n "$name" ]] || usage "missing NAME"
[[ -n "$zone" ]] || usage "missing --zone"
[[ -n "$repo_dir" ]] || usage "--repo-dir is empty"
[[ -z "$git_ref" || -n "$git_url" ]] || usage "--git-ref needs --git-url"

target=(--zone="$zone" --worker=all)
if [[ -n "$project" ]]; then target+=("--project=$project"); fi
q_dir=$(printf '%q' "$repo_dir")

if [[ -n "$git_url" ]]; then
  fetch="rm -rf $q_dir && git clone $(printf '%q' "$git_url") $q_dir"
  if [[ -n "$git_ref" ]]; then fetch+=" && git -C $q_dir checkout $(printf '%q' "$git_ref")"; fi
else
  repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  tarball="/tmp/lasa-jax-src.tar.gz"
  filelist="/tmp/lasa-jax-files.txt"
  if git -C "$repo_root" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    # only the sources: tracked and new files, not what .gitignore excludes (.venv/, demo_run/, runs/, caches)
    run bash -c "git -C $(printf '%q' "$repo_root") ls-files -z --cached --others --exclude-standard > $filelist"
    run tar -C "$repo_root" --null -T "$filelist" -czf "$tarball"
  else
    run tar -C "$repo_root" --exclude=.venv --exclude='*.egg-info' --exclude=__pycache__ --exclude=.pytest_cache \
      --exclude=demo_run --exclude=runs -czf "$tarball" .
  fi
  run gcloud compute tpus tpu-vm scp "$tarball" "$name:$tarball" "${target[@]}"
  fetch="mkdir -p $q_dir && tar -xzf $tarball -C $q_dir"
fi

install="set -e; $fetch"
install+=" && { command -v python3.11 >/dev/null || { sudo add-apt-repository -y ppa:deadsnakes/ppa"
install+=" && sudo apt-get update -q && sudo apt-get install -y -q python3.11 python3.11-venv; }; }"
install+=" && cd $q_dir && python3.11 -m venv .venv && .venv/bin/pip install -q --upgrade pip"
install+=" && .venv/bin/pip install -q -e '.[tpu]'"
run gcloud compute tpus tpu-vm ssh "$name" "${target[@]}" --command="$install"
