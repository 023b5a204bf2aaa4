#!/usr/bin/env bash
# Install ursa-daemon as a systemd service on a rig, or remove it. Idempotent.
#
#   sudo deploy/install.sh                 install or upgrade (run from a checkout)
#   sudo deploy/install.sh --uninstall     remove the service and the venv; keep config, state, user
#   sudo deploy/install.sh --uninstall --purge   ... and the config, the state and the user
#   deploy/install.sh --root /tmp/stage    stage the whole tree under /tmp/stage (no root needed)
#
# What it puts in place (paths under --root DIR when given):
#   PREFIX/venv/                             a virtual environment holding ursa-daemon (PREFIX=/opt/ursa-daemon)
#   /etc/systemd/system/ursa-daemon.service  the unit (systemd/ursa-daemon.service, PREFIX substituted)
#   /etc/systemd/system/ursa-daemon-maintain.{service,timer}  catalog maintenance; the timer
#                                            is enabled only with --maintenance (one machine per lab)
#   /etc/ursa-daemon/config.yaml             from deploy/config.template.yaml, only when absent
#   /etc/ursa-daemon/credentials.env         an empty-keys template (mode 0600), only when absent
#   /etc/sysusers.d/ursa-daemon.conf         the system user ursa-daemon, also created now
#   /var/lib/ursa-daemon/                    the state directory (the unit's StateDirectory=)
#
# Under --root nothing outside DIR is touched: no user is created, nothing is
# chowned, systemctl is not called; each skipped step is printed as "skip:".
# The venv's scripts then point into DIR, so a staged tree is for inspection
# and tests, not for copying onto a rig.
#
# Offline installs: --pip-args "--no-index --find-links /media/usb/wheels", or
# --from a built wheel. The tests use --from WHEEL --venv-args --without-pip
# --pip-args "--no-deps --no-index" (without pip in the venv, the --python
# interpreter's pip installs into it with `pip --python`).
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: install.sh [--root DIR] [--prefix DIR] [--python PATH] [--from PATH]
                  [--venv-args ARGS] [--pip-args ARGS] [--no-enable] [--maintenance]
       install.sh --uninstall [--purge] [--root DIR] [--prefix DIR]

  --root DIR        stage everything under DIR instead of / (no useradd, chown or systemctl)
  --prefix DIR      where the venv lives: DIR/venv (default /opt/ursa-daemon)
  --python PATH     interpreter for the venv, Python >= 3.11 (default python3)
  --from PATH       a source tree (default: this checkout) or a built .whl to install
  --venv-args ARGS  extra arguments for `python -m venv` (split on spaces), e.g. --system-site-packages
  --pip-args ARGS   extra arguments for `pip install` (split on spaces), e.g. "--no-deps --no-index"
  --no-enable       do not `systemctl enable` the unit
  --maintenance     also enable ursa-daemon-maintain.timer (hourly catalog maintenance):
                    on ONE machine of the lab only; the daemons never compact the catalog
  --uninstall       stop and disable the service, remove the unit and the venv
  --purge           with --uninstall: also remove /etc/ursa-daemon, /var/lib/ursa-daemon and the user
USAGE
}

SERVICE=ursa-daemon
UNIT_NAME=ursa-daemon.service
MAINT_SERVICE=ursa-daemon-maintain.service
MAINT_TIMER=ursa-daemon-maintain.timer
DEFAULT_PREFIX=/opt/ursa-daemon
SRC_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

ROOT=""
PREFIX="$DEFAULT_PREFIX"
PYTHON=python3
FROM="$SRC_DIR"
VENV_ARGS=""
PIP_ARGS=""
ENABLE=1
MAINTENANCE=0
UNINSTALL=0
PURGE=0
BUILD_TMP=""

die() { echo "install.sh: $*" >&2; exit 2; }
say() { echo "install.sh: $*"; }

need_value() { [ "$#" -ge 2 ] || die "$1 needs a value"; }

while [ "$#" -gt 0 ]; do
  case "$1" in
    --root) need_value "$@"; ROOT="$2"; shift 2 ;;
    --prefix) need_value "$@"; PREFIX="$2"; shift 2 ;;
    --python) need_value "$@"; PYTHON="$2"; shift 2 ;;
    --from) need_value "$@"; FROM="$2"; shift 2 ;;
    --venv-args) need_value "$@"; VENV_ARGS="$2"; shift 2 ;;
    --pip-args) need_value "$@"; PIP_ARGS="$2"; shift 2 ;;
    --no-enable) ENABLE=0; shift ;;
    --maintenance) MAINTENANCE=1; shift ;;
    --uninstall) UNINSTALL=1; shift ;;
    --purge) PURGE=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done

case "$PREFIX" in
  /?*) PREFIX="${PREFIX%/}" ;;
  *) die "--prefix must be an absolute path other than /: $PREFIX" ;;
esac
[ "$PURGE" -eq 0 ] || [ "$UNINSTALL" -eq 1 ] || die "--purge goes with --uninstall"

if [ -n "$ROOT" ]; then
  mkdir -p "$ROOT"
  R="$(cd "$ROOT" && pwd)"
  [ "$R" != "/" ] || R=""
else
  R=""
fi
STAGED=0
[ -z "$ROOT" ] || STAGED=1

VENV="$R$PREFIX/venv"
UNIT_DIR="$R/etc/systemd/system"
UNIT_DST="$UNIT_DIR/$UNIT_NAME"
CONF_DIR="$R/etc/ursa-daemon"
CONF="$CONF_DIR/config.yaml"
ENV_FILE="$CONF_DIR/credentials.env"
SYSUSERS="$R/etc/sysusers.d/$SERVICE.conf"
STATE_DIR="$R/var/lib/$SERVICE"

# systemd is running here (not merely installed), and we are not staging.
have_systemd() {
  [ "$STAGED" -eq 0 ] && command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]
}

skip() { say "skip: $* (--root)"; }

uninstall() {
  if have_systemd; then
    systemctl disable --now "$UNIT_NAME" "$MAINT_TIMER" >/dev/null 2>&1 || true
  elif [ "$STAGED" -eq 1 ]; then
    skip "systemctl disable --now $UNIT_NAME $MAINT_TIMER"
  fi
  local unit
  for unit in "$UNIT_NAME" "$MAINT_SERVICE" "$MAINT_TIMER"; do
    if [ -e "$UNIT_DIR/$unit" ]; then
      rm -f "$UNIT_DIR/$unit"
      say "removed $UNIT_DIR/$unit"
    fi
  done
  if [ -d "$VENV" ]; then
    rm -rf "$VENV"
    say "removed $VENV"
  fi
  rm -f "$R$PREFIX/README.md"
  rmdir "$R$PREFIX" 2>/dev/null || true
  if [ "$PURGE" -eq 1 ]; then
    rm -rf "$CONF_DIR" "$STATE_DIR"
    rm -f "$SYSUSERS"
    say "purged $CONF_DIR and $STATE_DIR"
    if [ "$STAGED" -eq 1 ]; then
      skip "userdel $SERVICE"
    elif getent passwd "$SERVICE" >/dev/null 2>&1; then
      userdel "$SERVICE" || say "warning: userdel $SERVICE failed"
    fi
  else
    say "kept $CONF_DIR, $STATE_DIR and the user $SERVICE (--purge removes them)"
  fi
  if have_systemd; then
    systemctl daemon-reload
  fi
  say "uninstalled"
}

create_user() {
  install -d -m 0755 "$(dirname "$SYSUSERS")"
  printf 'u %s - "ursa-daemon uploader" /var/lib/%s /usr/sbin/nologin\n' "$SERVICE" "$SERVICE" >"$SYSUSERS.tmp"
  mv -f "$SYSUSERS.tmp" "$SYSUSERS"
  if [ "$STAGED" -eq 1 ]; then
    skip "create system user $SERVICE (systemd-sysusers creates it from $SYSUSERS at boot)"
    return
  fi
  if getent passwd "$SERVICE" >/dev/null 2>&1; then
    return
  fi
  if command -v systemd-sysusers >/dev/null 2>&1; then
    systemd-sysusers "$SYSUSERS"
  else
    useradd --system --user-group --home-dir "/var/lib/$SERVICE" --no-create-home \
      --shell /usr/sbin/nologin --comment "ursa-daemon uploader" "$SERVICE"
  fi
  say "created system user $SERVICE"
}

pip_install() {
  # shellcheck disable=SC2086  # PIP_ARGS is a list of words on purpose
  if "$VENV/bin/python" -m pip --version >/dev/null 2>&1; then
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check $PIP_ARGS "$@"
  else
    "$PYTHON" -m pip --python "$VENV/bin/python" install --quiet --disable-pip-version-check $PIP_ARGS "$@"
  fi
}

install_package() {
  "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
    || die "$PYTHON is older than Python 3.11"
  install -d -m 0755 "$R$PREFIX"
  if [ ! -x "$VENV/bin/python" ]; then
    # shellcheck disable=SC2086  # VENV_ARGS is a list of words on purpose
    "$PYTHON" -m venv $VENV_ARGS "$VENV"
    say "created $VENV"
  fi
  if [ -d "$FROM" ]; then
    # Build from a copy, so the checkout gets no build/ or egg-info litter.
    BUILD_TMP="$(mktemp -d)"
    trap 'rm -rf "$BUILD_TMP"' EXIT
    mkdir "$BUILD_TMP/src"
    tar -C "$FROM" --exclude=./.git --exclude=./.venv --exclude=./.ursa --exclude=./build \
      --exclude=./dist --exclude=./recordings --exclude='*.egg-info' --exclude=__pycache__ -cf - . \
      | tar -C "$BUILD_TMP/src" -xf -
    pip_install --upgrade "$BUILD_TMP/src"  # a local tree is always rebuilt and reinstalled
  elif [ -f "$FROM" ]; then
    # A wheel of the same version is reinstalled on purpose (a rebuilt fix must land).
    pip_install --upgrade --force-reinstall --no-deps "$FROM"
    case " $PIP_ARGS " in
      *" --no-deps "*) ;;
      *) pip_install "$FROM" ;;  # now its dependencies
    esac
  else
    die "--from $FROM: no such file or directory"
  fi
  [ -x "$VENV/bin/ursa-daemon" ] || die "$VENV/bin/ursa-daemon is missing after pip install"
  install -m 0644 "$SRC_DIR/README.md" "$R$PREFIX/README.md"
  say "installed ursa-daemon into $VENV"
}

install_unit() {
  local tmp unit
  install -d -m 0755 "$UNIT_DIR"
  for unit in "$UNIT_NAME" "$MAINT_SERVICE" "$MAINT_TIMER"; do
    tmp="$UNIT_DIR/$unit.tmp"
    sed "s#$DEFAULT_PREFIX#$PREFIX#g" "$SRC_DIR/systemd/$unit" >"$tmp"
    chmod 0644 "$tmp"
    mv -f "$tmp" "$UNIT_DIR/$unit"
    say "installed $UNIT_DIR/$unit"
  done
}

install_config() {
  install -d -m 0750 "$CONF_DIR"
  if [ -e "$CONF" ]; then
    say "kept $CONF (never overwritten; the template is $SRC_DIR/deploy/config.template.yaml)"
  else
    install -m 0640 "$SRC_DIR/deploy/config.template.yaml" "$CONF"
    say "wrote $CONF from the template: set the endpoint, buckets and recordings_root"
  fi
  if [ ! -e "$ENV_FILE" ]; then
    (
      umask 077
      cat >"$ENV_FILE" <<'ENV'
# ursa-daemon credentials, read by systemd (EnvironmentFile=) as root before it
# drops privileges. Keep this file root:root 0600. One key pair per role.
URSA_ASSETS_RO_KEY_ID=
URSA_ASSETS_RO_SECRET=
URSA_ASSETS_RW_KEY_ID=
URSA_ASSETS_RW_SECRET=
URSA_RAW_RW_KEY_ID=
URSA_RAW_RW_SECRET=
ENV
    )
    say "wrote $ENV_FILE (mode 0600): fill in the keys"
  fi
  # The state directory: systemd (StateDirectory=) would create it at first
  # start; made now so that check-config passes as the service user before that.
  install -d -m 0750 "$STATE_DIR"
  if [ "$STAGED" -eq 1 ]; then
    skip "chown root:$SERVICE $CONF_DIR $CONF; chown $SERVICE:$SERVICE $STATE_DIR"
  else
    chown "root:$SERVICE" "$CONF_DIR" "$CONF"
    chown root:root "$ENV_FILE"
    chmod 0600 "$ENV_FILE"
    chown "$SERVICE:$SERVICE" "$STATE_DIR"
  fi
}

activate() {
  if [ "$STAGED" -eq 1 ]; then
    skip "systemctl daemon-reload; systemctl enable $UNIT_NAME"
    [ "$MAINTENANCE" -eq 0 ] || skip "systemctl enable --now $MAINT_TIMER"
    return
  fi
  if ! have_systemd; then
    say "systemd is not running here: start the unit by hand once it is"
    return
  fi
  systemctl daemon-reload
  if [ "$ENABLE" -eq 1 ]; then
    systemctl enable "$UNIT_NAME" >/dev/null
  fi
  if [ "$MAINTENANCE" -eq 1 ]; then
    systemctl enable --now "$MAINT_TIMER" >/dev/null
    say "enabled $MAINT_TIMER: this machine maintains the catalog (keep it the only one)"
  fi
  # An upgrade: a running daemon picks up the new code (it resumes where it stopped).
  systemctl try-restart "$UNIT_NAME"
}

if [ "$UNINSTALL" -eq 1 ]; then
  uninstall
  exit 0
fi

create_user
install_package
install_unit
install_config
activate
cat <<NEXT
install.sh: done. Next:
  1. edit $CONF (endpoint, buckets, recordings_root) and $ENV_FILE (keys)
  2. check it as the service user:
       sudo systemd-run --pipe --wait --uid=$SERVICE -p EnvironmentFile=/etc/ursa-daemon/credentials.env \\
         $PREFIX/venv/bin/ursa-daemon --config /etc/ursa-daemon/config.yaml check-config
  3. sudo systemctl start $UNIT_NAME && journalctl -u $SERVICE -f
NEXT
