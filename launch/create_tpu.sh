#!/usr/bin/env bash
# Create a Cloud TPU VM (single host or pod slice).
# Usage: create_tpu.sh NAME --zone ZONE --accelerator-type TYPE --version RUNTIME [--project P] [--spot] [--dry-run]
# Example: create_tpu.sh lasa-v5p --zone us-east5-a --accelerator-type v5p-8 --version v2-alpha-tpuv5 --spot
# --dry-run prints the command ("+ " then the shell-quoted argv) and runs nothing.
set -euo pipefail

# usage, print_help, need_value, run
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

name="" zone="" accelerator_type="" version="" project="" spot=0 dry_run=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --zone) need_value "$1" $#; zone="$2"; shift 2 ;;
    --accelerator-type) need_value "$1" $#; accelerator_type="$2"; shift 2 ;;
    --version) need_value "$1" $#; version="$2"; shift 2 ;;
    --project) need_value "$1" $#; project="$2"; shift 2 ;;
    --spot) spot=1; shift ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) print_help; exit 0 ;;
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
