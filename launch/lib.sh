# Helpers shared by the launch scripts; sourced by them, not run. `run` reads the caller's `dry_run` (0 or 1).
# Usage and help text come from the calling script's header comment: its "# Usage: " line, and lines 2 up to
# `set -euo pipefail`.

# usage [MESSAGE]: print the script's usage line (and "error: MESSAGE") to stderr and exit 2.
usage() {
  sed -n 's/^# Usage: /usage: /p' "$0" >&2
  if [[ -n "${1:-}" ]]; then echo "error: $1" >&2; fi
  exit 2
}

# print_help: print the script's header comment without the leading "# ".
print_help() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
}

# need_value OPTION ARGS_LEFT: exit with the usage unless OPTION is followed by a value ("$#" at the option).
need_value() {
  [[ "$2" -ge 2 ]] || usage "$1 needs a value"
}

# run CMD...: execute, or with dry_run=1 print "+ " and the shell-quoted command.
run() {
  if [[ "$dry_run" == 1 ]]; then
    printf '+'; printf ' %q' "$@"; printf '\n'
  else
    "$@"
  fi
}
