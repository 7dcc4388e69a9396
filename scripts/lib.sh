# Sourced by the scripts: the helpers they share.

# step TEXT...: a heading for the next step, with the seconds since the script started.
step() { printf '\n==> [%ss] %s\n' "$SECONDS" "$*"; }
