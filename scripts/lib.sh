# Sourced by the scripts in this directory (not run on its own).
#
# cargo on PATH: rustup installs it under ~/.cargo/bin, which a non-login shell (or sudo) may not
# have on PATH.
for d in "${CARGO_HOME:-${HOME:-/root}/.cargo}/bin" /root/.cargo/bin; do
  [ -x "$d/cargo" ] && case ":$PATH:" in *":$d:"*) ;; *) PATH="$d:$PATH" ;; esac
done
export PATH

# as_root SCRIPT ARGS...: returns when already root (a fresh Debian machine here is a root shell
# with no sudo installed); otherwise runs the script again through sudo, keeping PATH (cargo), or
# — with no sudo — fails saying so. `ROOT_OPTIONAL=1` makes it return instead of failing.
as_root() {
  [ "$(id -u)" -eq 0 ] && return 0
  if command -v sudo >/dev/null 2>&1; then
    exec sudo env "PATH=$PATH" "$@"
  fi
  [ "${ROOT_OPTIONAL:-0}" = 1 ] && return 0
  echo "$(basename "$1"): needs root: run it as root (this machine has no sudo)" >&2
  exit 1
}
