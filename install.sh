#!/usr/bin/env bash
# Install lipsyncd as a systemd service on a Debian/Ubuntu GPU (or CPU) server. Run as root from the
# source folder. Safe to run again: it changes only what differs (an upgrade is the same command).
#
#   sudo ./install.sh                        install (or upgrade), then enable --now lipsyncd + janitor timer
#   sudo ./install.sh --torch 'torch==2.13.0' --torch-index URL   pick the torch build (CUDA wheel index)
#   sudo ./install.sh --add-user alice       let alice drop files (drop group + inbox/alice)
#   sudo ./install.sh --uninstall            remove program, units and logrotate file; keep config and data
#   sudo ./install.sh --purge [--yes]        also remove config, data, logs and the users (asks first)
#
# Options:
#   --root DIR        install into a staging folder instead of / (no apt, no users, no systemctl start:
#                     each of those is printed as "would: ..."); for packaging and tests
#   --no-venv         do not build /opt/lipsyncd/venv (tests; or a venv managed by other means)
#   --no-apt          do not install Debian packages (you manage them)
#   --no-start        install and enable, but do not start or restart anything
#   --torch SPEC      the torch requirement for the venv (default $LIPSYNCD_TORCH or torch==2.13.0)
#   --torch-index URL pip index for torch (default $LIPSYNCD_TORCH_INDEX, else pip's own configuration)
#   --add-user NAME   add NAME to the drop group and create inbox/NAME (repeatable)
#   --yes             do not ask before --purge
# Environment: LIPSYNCD_PYTHON (default /usr/bin/python3, Debian's: not a pyenv/conda shim under /root,
# which the lipsyncd user could not run), LIPSYNCD_TORCH, LIPSYNCD_TORCH_INDEX.
set -euo pipefail
umask 022   # what goes into /opt and /etc/systemd must be readable by the lipsyncd user

SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
NAME=lipsyncd
SERVICE_USER=lipsyncd
DROP_GROUP=lipsyncd-drop
ADMIN_GROUP=lipsyncd-admin  # access.admin_group's default: reads everyone's folders in private mode
PREFIX_OPT=/opt/lipsyncd
VENV=$PREFIX_OPT/venv
ETC=/etc/lipsyncd
DATA=/var/lib/lipsyncd
LOGS=/var/log/lipsyncd
UNIT_DIR=/etc/systemd/system
UNITS=(lipsyncd.service lipsyncd-janitor.service lipsyncd-janitor.timer lipsyncd-worker@.service lipsyncd-web.service)
ENABLE=(lipsyncd.service lipsyncd-janitor.timer)
DEB_PACKAGES=(ffmpeg python3 python3-venv python3-dev libsystemd-dev pkg-config gcc logrotate acl)
# folder  mode  group: the drop group writes inbox/avatars and reads outputs/failed; state is private.
# spool is setgid to the drop group too: results are rendered there and renamed into outputs/, and a
# rename keeps the group a file was created with, so that is where it must get the drop group.
DATA_DIRS=(
    "inbox 2770 $DROP_GROUP"
    "avatars 2770 $DROP_GROUP"
    "outputs 2750 $DROP_GROUP"
    "failed 2750 $DROP_GROUP"
    "spool 2750 $DROP_GROUP"
    "state 0700 $SERVICE_USER"
)

ROOT=""
ACTION=install
WITH_VENV=1
WITH_APT=1
START=1
ASSUME_YES=0
PYTHON=${LIPSYNCD_PYTHON:-/usr/bin/python3}
TORCH_SPEC=${LIPSYNCD_TORCH:-torch==2.13.0}
TORCH_INDEX=${LIPSYNCD_TORCH_INDEX:-}
ADD_USERS=()

say() { printf '%s\n' "install.sh: $*"; }
die() { printf '%s\n' "install.sh: error: $*" >&2; exit 1; }
usage() { sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
    case "$1" in
        --root) [ $# -ge 2 ] || die "--root needs a folder"; ROOT=$2; shift ;;
        --root=*) ROOT=${1#--root=} ;;
        --no-venv) WITH_VENV=0 ;;
        --no-apt) WITH_APT=0 ;;
        --no-start) START=0 ;;
        --torch) [ $# -ge 2 ] || die "--torch needs a requirement such as torch==2.13.0"; TORCH_SPEC=$2; shift ;;
        --torch=*) TORCH_SPEC=${1#--torch=} ;;
        --torch-index) [ $# -ge 2 ] || die "--torch-index needs a URL"; TORCH_INDEX=$2; shift ;;
        --torch-index=*) TORCH_INDEX=${1#--torch-index=} ;;
        --add-user) [ $# -ge 2 ] || die "--add-user needs a user name"; ADD_USERS+=("$2"); shift ;;
        --add-user=*) ADD_USERS+=("${1#--add-user=}") ;;
        --uninstall) ACTION=uninstall ;;
        --purge) ACTION=purge ;;
        --yes|-y) ASSUME_YES=1 ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown option '$1' (see --help)" ;;
    esac
    shift
done

if [ -n "$ROOT" ]; then
    mkdir -p "$ROOT" || die "cannot create the staging folder $ROOT"
    ROOT=$(cd "$ROOT" && pwd)
    [ "$ROOT" != / ] || ROOT=""
fi
STAGING=0
[ -n "$ROOT" ] && STAGING=1
if [ "$STAGING" = 0 ] && [ "$(id -u)" != 0 ]; then
    die "run as root (sudo $0 $*), or use --root DIR to stage an install into a folder"
fi

# --- helpers ------------------------------------------------------------------------------------

# would CMD...: run CMD on the real system, or only print it when staging into --root.
would() {
    if [ "$STAGING" = 1 ]; then
        say "would: $*"
    else
        "$@"
    fi
}

systemd_running() { [ "$STAGING" = 0 ] && [ -d /run/systemd/system ]; }

# Copy SRC to DEST with MODE, only when the content or mode differs (keeps mtimes on a re-run).
put_file() {
    local src=$1 dest=$2 mode=$3
    mkdir -p "$(dirname "$dest")"
    if [ -f "$dest" ] && cmp -s "$src" "$dest"; then
        chmod "$mode" "$dest"
        return 1
    fi
    install -m "$mode" "$src" "$dest"
    say "wrote ${dest#"$ROOT"}"
    return 0
}

# A folder with mode and owner; chown only on the real system (the users do not exist in a staging root).
make_dir() {
    local dir=$1 mode=$2 owner=$3 group=$4
    mkdir -p "$ROOT$dir"
    if [ "$STAGING" = 1 ]; then
        say "would: chown $owner:$group $dir"
    else
        chown "$owner:$group" "$dir"
    fi
    chmod "$mode" "$ROOT$dir"   # after chown, so the setgid bit is certainly kept
}

# Default ACLs so that folders people create inside inbox/ (mkdir with umask 022) stay writable by
# the drop group and by the daemon, which moves the files out of them.
set_inbox_acl() {
    local dir=$1
    local acl="u:$SERVICE_USER:rwx,g:$DROP_GROUP:rwx,d:u::rwx,d:u:$SERVICE_USER:rwx,d:g::rwx,d:g:$DROP_GROUP:rwx,d:m::rwx,d:o::---"
    if [ "$STAGING" = 1 ]; then
        say "would: setfacl -m $acl $dir"
    elif command -v setfacl >/dev/null; then
        setfacl -m "$acl" "$dir" || say "warning: could not set ACLs on $dir (filesystem without ACLs?); folders people create in it must be group-writable (umask 002)"
    else
        say "warning: setfacl not found (Debian package acl): folders people create in $dir must be group-writable (umask 002)"
    fi
}

apt_install() {
    local missing=() pkg
    for pkg in "${DEB_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    if [ ${#missing[@]} -eq 0 ]; then
        return 0
    fi
    if [ "$STAGING" = 1 ]; then
        say "would: apt-get install -y --no-install-recommends ${missing[*]}"
        return 0
    fi
    say "installing Debian packages: ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

ensure_users() {
    if [ "$STAGING" = 1 ]; then
        say "would: groupadd --system $DROP_GROUP"
        say "would: groupadd --system $ADMIN_GROUP"
        say "would: useradd --system --user-group --home-dir $DATA --no-create-home --shell /usr/sbin/nologin $SERVICE_USER"
        say "would: usermod -a -G $DROP_GROUP $SERVICE_USER"
        local person
        for person in "${ADD_USERS[@]}"; do say "would: usermod -a -G $DROP_GROUP $person"; done
        return 0
    fi
    getent group "$DROP_GROUP" >/dev/null || { groupadd --system "$DROP_GROUP"; say "created group $DROP_GROUP"; }
    getent group "$ADMIN_GROUP" >/dev/null || { groupadd --system "$ADMIN_GROUP"; say "created group $ADMIN_GROUP"; }
    if ! getent passwd "$SERVICE_USER" >/dev/null; then
        useradd --system --user-group --home-dir "$DATA" --no-create-home --shell /usr/sbin/nologin \
            --comment "lipsyncd service" "$SERVICE_USER"
        say "created system user $SERVICE_USER"
    fi
    id -nG "$SERVICE_USER" | tr ' ' '\n' | grep -qx "$DROP_GROUP" || usermod -a -G "$DROP_GROUP" "$SERVICE_USER"
    local person
    for person in "${ADD_USERS[@]}"; do
        getent passwd "$person" >/dev/null || die "--add-user $person: no such user on this machine"
        if ! id -nG "$person" | tr ' ' '\n' | grep -qx "$DROP_GROUP"; then
            usermod -a -G "$DROP_GROUP" "$person"
            say "added $person to $DROP_GROUP (takes effect at their next login)"
        fi
    done
}

# The venv is rebuilt only when the source or the torch choice changed (a stamp records both).
build_venv() {
    if [ "$WITH_VENV" = 0 ]; then
        say "skipping $VENV (--no-venv)"
        return 0
    fi
    local venv=$ROOT$VENV stamp want
    want="$(cd "$SRC" && cat pyproject.toml $(find daemon pipeline -name '*.py' | LC_ALL=C sort) | sha256sum | cut -d' ' -f1) $TORCH_SPEC $TORCH_INDEX"
    stamp=$venv/.lipsyncd-install
    if [ -x "$venv/bin/lipsyncd" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
        return 0
    fi
    say "building $VENV with $TORCH_SPEC (takes a few minutes)"
    [ -x "$PYTHON" ] || die "$PYTHON not found (Debian package python3; or set LIPSYNCD_PYTHON)"
    [ -x "$venv/bin/python" ] || "$PYTHON" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --upgrade pip
    if [ -n "$TORCH_INDEX" ]; then
        "$venv/bin/python" -m pip install -q --index-url "$TORCH_INDEX" "$TORCH_SPEC"
    else
        "$venv/bin/python" -m pip install -q "$TORCH_SPEC"
    fi
    "$venv/bin/python" -m pip install -q "$SRC[systemd,redis,progress,web,s3]"
    printf '%s\n' "$want" >"$stamp"
}

# /etc/lipsyncd/lipsyncd.yaml: installed when missing, upgraded when it is still the pristine default
# of the last install, and never overwritten once edited: the new default then lands beside it as .new.
install_config() {
    local conf=$ROOT$ETC/lipsyncd.yaml shipped=$SRC/config/lipsyncd.yaml pristine=$ROOT$PREFIX_OPT/share/lipsyncd.yaml
    mkdir -p "$ROOT$ETC"
    chmod 0755 "$ROOT$ETC"
    if [ ! -e "$conf" ] || { [ -f "$pristine" ] && cmp -s "$conf" "$pristine" && ! cmp -s "$conf" "$shipped"; }; then
        install -m 0640 "$shipped" "$conf"
        say "wrote $ETC/lipsyncd.yaml"
    elif ! cmp -s "$conf" "$shipped"; then
        if [ ! -f "$conf.new" ] || ! cmp -s "$shipped" "$conf.new"; then
            install -m 0640 "$shipped" "$conf.new"
            say "kept your edited $ETC/lipsyncd.yaml; the new default is $ETC/lipsyncd.yaml.new (compare: diff -u $ETC/lipsyncd.yaml $ETC/lipsyncd.yaml.new)"
        fi
    fi
    chmod 0640 "$conf"
    [ -f "$conf.new" ] && chmod 0640 "$conf.new"
    # Root owns the configuration; the service reads it through its group (it may hold alert secrets).
    if [ "$STAGING" = 1 ]; then
        say "would: chown root:$SERVICE_USER $ETC/lipsyncd.yaml"
    else
        chown "root:$SERVICE_USER" "$conf"
        [ -f "$conf.new" ] && chown "root:$SERVICE_USER" "$conf.new"
    fi
    put_file "$shipped" "$pristine" 0644 >/dev/null || true
}

install_data_dirs() {
    make_dir "$DATA" 0755 "$SERVICE_USER" "$SERVICE_USER"
    local entry dir mode group
    for entry in "${DATA_DIRS[@]}"; do
        read -r dir mode group <<<"$entry"
        make_dir "$DATA/$dir" "$mode" "$SERVICE_USER" "$group"
    done
    set_inbox_acl "$DATA/inbox"
    set_inbox_acl "$DATA/avatars"
    local person
    for person in "${ADD_USERS[@]}"; do
        # lipsyncd users add makes inbox/ and avatars/ folders with access.mode's permissions (private: the
        # person's own, through ACLs); without the venv (--no-venv) the shared layout is made here.
        if [ "$STAGING" = 0 ] && [ -x "$VENV/bin/lipsyncd" ]; then
            "$VENV/bin/lipsyncd" --config "$ETC/lipsyncd.yaml" users add "$person" >/dev/null \
                || die "lipsyncd users add $person failed (see above)"
        else
            make_dir "$DATA/inbox/$person" 2770 "$SERVICE_USER" "$DROP_GROUP"
            if [ "$STAGING" = 1 ]; then say "would: lipsyncd users add $person"; fi
        fi
    done
    make_dir "$LOGS" 0750 "$SERVICE_USER" "$SERVICE_USER"
}

UNITS_CHANGED=0
install_units() {
    local unit
    for unit in "${UNITS[@]}"; do
        if put_file "$SRC/systemd/$unit" "$ROOT$UNIT_DIR/$unit" 0644; then
            UNITS_CHANGED=1
        fi
    done
    put_file "$SRC/logrotate/lipsyncd" "$ROOT/etc/logrotate.d/lipsyncd" 0644 || true
}

enable_units() {
    if [ "$STAGING" = 1 ]; then
        # systemctl --root only creates the [Install] symlinks: it needs no running systemd.
        if command -v systemctl >/dev/null; then
            systemctl --root="$ROOT" --quiet enable "${ENABLE[@]}"
        fi
        say "would: systemctl daemon-reload && systemctl enable --now ${ENABLE[*]}"
        return 0
    fi
    if ! systemd_running; then
        systemctl --quiet enable "${ENABLE[@]}" 2>/dev/null || true
        say "systemd is not running here (PID 1 is $(ps -o comm= -p 1 2>/dev/null || echo unknown)): nothing was started."
        say "on a systemd machine this step runs: systemctl daemon-reload && systemctl enable --now ${ENABLE[*]}"
        return 0
    fi
    systemctl daemon-reload
    if [ "$START" = 0 ]; then
        systemctl enable "${ENABLE[@]}"
        say "enabled ${ENABLE[*]} (not started: --no-start)"
        return 0
    fi
    systemctl enable --now "${ENABLE[@]}"
    # An upgrade: restart so that the new code and units are used (a running job is re-queued).
    if [ "$UNITS_CHANGED" = 1 ] || [ "$VENV_CHANGED" = 1 ]; then
        systemctl try-restart lipsyncd.service
    fi
    say "running: systemctl status lipsyncd; follow the log with journalctl -u lipsyncd -f"
}

gpu_advice() {
    [ "$STAGING" = 0 ] || return 0
    if [ -e /dev/nvidiactl ] && ! grep -q '^nvidia_uvm ' /proc/modules 2>/dev/null; then
        say "note: the nvidia_uvm module is not loaded. CUDA needs it and cannot load it from inside the service:"
        say "      echo nvidia-uvm > /etc/modules-load.d/nvidia-uvm.conf && modprobe nvidia-uvm"
    fi
}

remove_path() {
    local path=$1
    if [ -e "$ROOT$path" ] || [ -L "$ROOT$path" ]; then
        case "$path" in /?*) ;; *) die "refusing to remove '$path'" ;; esac
        rm -rf -- "$ROOT$path"
        say "removed $path"
    fi
}

# --- actions ------------------------------------------------------------------------------------

do_install() {
    [ -f "$SRC/config/lipsyncd.yaml" ] && [ -d "$SRC/systemd" ] && [ -f "$SRC/logrotate/lipsyncd" ] \
        || die "run install.sh from the lipsyncd source folder (config/, systemd/ and logrotate/ are missing in $SRC)"
    [ "$WITH_APT" = 1 ] && apt_install
    ensure_users
    VENV_BEFORE=$(cat "$ROOT$VENV/.lipsyncd-install" 2>/dev/null || true)
    build_venv
    VENV_CHANGED=0
    [ "$(cat "$ROOT$VENV/.lipsyncd-install" 2>/dev/null || true)" = "$VENV_BEFORE" ] || VENV_CHANGED=1
    install_config
    install_data_dirs
    install_units
    enable_units
    gpu_advice
    say "done. Drop <name>.wav + <name>.mp4 into $DATA/inbox/<user>/; results appear in $DATA/outputs/<date>/<user>/"
}

stop_and_disable() {
    local units=(lipsyncd.service lipsyncd-janitor.timer lipsyncd-janitor.service)
    if [ "$STAGING" = 1 ]; then
        command -v systemctl >/dev/null && systemctl --root="$ROOT" --quiet disable "${ENABLE[@]}" 2>/dev/null || true
        say "would: systemctl disable --now ${units[*]} 'lipsyncd-worker@*.service'"
        return 0
    fi
    if systemd_running; then
        systemctl disable --now "${units[@]}" 2>/dev/null || true
        systemctl stop 'lipsyncd-worker@*.service' 2>/dev/null || true
    else
        systemctl --quiet disable "${ENABLE[@]}" 2>/dev/null || true
    fi
}

do_uninstall() {
    stop_and_disable
    local unit
    for unit in "${UNITS[@]}"; do remove_path "$UNIT_DIR/$unit"; done
    # Worker instances enabled by hand (lipsyncd-worker@cuda:0.service links).
    local link
    for link in "$ROOT$UNIT_DIR"/*.wants/lipsyncd-worker@*.service; do
        [ -L "$link" ] && remove_path "${link#"$ROOT"}"
    done
    remove_path /etc/logrotate.d/lipsyncd
    remove_path "$PREFIX_OPT"
    if systemd_running; then systemctl daemon-reload; fi
}

do_purge() {
    if [ "$ASSUME_YES" = 0 ]; then
        if [ ! -t 0 ]; then
            die "--purge deletes $ETC, $DATA (all inputs and outputs) and $LOGS; add --yes to confirm without a terminal"
        fi
        printf 'This deletes %s, %s (every input, output and failed job) and %s, and the users %s and %s.\nType "purge" to go on: ' \
            "$ROOT$ETC" "$ROOT$DATA" "$ROOT$LOGS" "$SERVICE_USER" "$DROP_GROUP"
        local answer
        read -r answer || true
        [ "$answer" = purge ] || die "not purged"
    fi
    do_uninstall
    remove_path "$ETC"
    remove_path "$DATA"
    remove_path "$LOGS"
    if [ "$STAGING" = 1 ]; then
        say "would: userdel $SERVICE_USER && groupdel $DROP_GROUP $ADMIN_GROUP"
    else
        getent passwd "$SERVICE_USER" >/dev/null && userdel "$SERVICE_USER" && say "removed user $SERVICE_USER"
        getent group "$SERVICE_USER" >/dev/null && groupdel "$SERVICE_USER" 2>/dev/null || true
        getent group "$DROP_GROUP" >/dev/null && groupdel "$DROP_GROUP" && say "removed group $DROP_GROUP"
        getent group "$ADMIN_GROUP" >/dev/null && groupdel "$ADMIN_GROUP" && say "removed group $ADMIN_GROUP"
    fi
    return 0
}

case "$ACTION" in
    install) do_install ;;
    uninstall)
        do_uninstall
        say "uninstalled; kept $ETC, $DATA, $LOGS and the user $SERVICE_USER (--purge removes them)"
        ;;
    purge) do_purge; say "purged" ;;
esac
