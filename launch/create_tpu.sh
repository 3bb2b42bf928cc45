#!/usr/bin/env bash
# Create a Cloud TPU VM (single host or pod slice).
# Usage: create_tpu.sh NAME --zone ZONE --accelerator-type TYPE --version RUNTIME [--project P] [--spot] [--dry-run]
# Example: create_tpu.sh lasa-v5p --zone us-east5-a --accelerator-type v5p-8 --version v2-alpha-tpuv5 --spot
# --dry-run prints the command ("+ " then the shell-quoted argv) and runs nothing.
set -euo pipefail

usage() {
  sed -n 's/^# Usage: /usage: /p' "$0" >&2
  if [[ -n "${1:-}" ]]; then echo "error: $1" >&2; fi
  exit 2
}

# run CMD...: execute, or with --dry-run print "+ " and the shell-quoted command.
run() {
  if [[ "$dry_run" == 1 ]]; then
    printf '+'; printf ' %q' "$@"; printf '\n'
  else
    "$@"
  fi
}

name="" zone="" accelerator_type="" version="" project="" spot=0 dry_run=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --zone) [[ $# -ge 2 ]] || usage "--zone needs a value"; zone="$2"; shift 2 ;;
    --accelerator-type) [[ $# -ge 2 ]] || usage "--accelerator-type needs a value"; accelerator_type="$2"; shift 2 ;;
    --version) [[ $# -ge 2 ]] || usage "--version needs a value"; version="$2"; shift 2 ;;
    --project) [[ $# -ge 2 ]] || usage "--project needs a value"; project="$2"; shift 2 ;;
    --spot) spot=1; shift ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) usage "unknown option $1" ;;
    *) [[ -z "$name" ]] || usage "unexpected argument $1"; name="$1"; shift ;;
  esac
done
[[ -n "$name" ]] || usage "missing NAME"
[[ -n "$zone" ]] || usage "missing --zone"
[[ -n "$accelerator_type" ]] || usage "missing --accelerator-type"
[[ -n "$version" ]] || usage "missing --version"

cmd=(gcloud compute tpus tpu-vm create "$name" "--zone=$zone" "--accelerator-type=$accelerator_type"
  "--version=$version")
if [[ -n "$project" ]]; then cmd+=("--project=$project"); fi
if [[ "$spot" == 1 ]]; then cmd+=(--spot); fi
run "${cmd[@]}"
