# Shared set-up for scripts/rescue and scripts/test (sourced, not run).
# Installs the Debian packages the tool calls and a Python venv in .venv.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${RESCUE_VENV:-$ROOT/.venv}

# Programs the tool itself runs on a technician's machine.
RUNTIME_PACKAGES=(
  python3 python3-venv udev util-linux fdisk gdisk parted e2fsprogs ntfs-3g
  dosfstools exfatprogs xfsprogs btrfs-progs zstd fuse3 libfuse3-3 smartmontools partclone
  efibootmgr mtools
  fusefat exfat-fuse cryptsetup-bin
)
# What the tests add: reference tools to compare against and to fill disks.
TEST_PACKAGES=(xxhash kmod gzip acl lvm2 dislocker
  openssh-server openssh-client sshfs samba smbclient cifs-utils)

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

missing_packages() {
  local p
  for p in "$@"; do
    dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q 'install ok installed' || echo "$p"
  done
}

install_packages() {
  local missing
  missing=$(missing_packages "$@")
  [ -z "$missing" ] && return 0
  if [ "$(id -u)" != 0 ]; then
    say "Missing Debian packages (run as root to install them): $missing"
    return 0
  fi
  say "Installing Debian packages: $missing"
  export DEBIAN_FRONTEND=noninteractive
  # servers the tests start themselves (sshd, smbd) must not be started as services by
  # their packages: a policy-rc.d that says no, for the length of the install
  local policy=/usr/sbin/policy-rc.d made_policy=
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod 755 "$policy" && made_policy=1
  fi
  local status=0
  apt-get update -q || status=$?
  # shellcheck disable=SC2086
  [ "$status" != 0 ] || apt-get install -y -q --no-install-recommends $missing || status=$?
  if [ -n "$made_policy" ]; then rm -f "$policy"; fi
  return "$status"
}

# Python for the venv: Debian's own when present (the live system uses it too).
pick_python() {
  if [ -n "${PYTHON:-}" ]; then echo "$PYTHON"; return; fi
  if [ -x /usr/bin/python3 ]; then echo /usr/bin/python3; return; fi
  command -v python3
}

# Create or refresh .venv; reinstall when pyproject.toml changed since the last install.
ensure_venv() {
  local extras=$1 stamp want
  stamp=$VENV/.rescue-installed
  want="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1) $extras"
  if [ ! -x "$VENV/bin/python" ]; then
    say "Creating the Python environment in $VENV"
    "$(pick_python)" -m venv "$VENV"
  fi
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    say "Installing rescue and its Python dependencies"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q -e "$ROOT$extras"
    echo "$want" > "$stamp"
  fi
}
