# Sourced by the deps-*.sh scripts. `apt_ensure WHO PACKAGE...` installs the
# Debian packages that are missing, updating the package lists only when an
# install fails (a fresh machine may have none yet).
apt_ensure() {
  local who=$1
  shift
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if ((${#missing[@]} == 0)); then
    echo "$who: apt packages already installed: $*"
    return
  fi
  echo "$who: apt-get install ${missing[*]}"
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  local install=($sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}")
  "${install[@]}" || { echo "$who: apt-get update"; $sudo apt-get update && "${install[@]}"; }
}
