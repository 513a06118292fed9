# shellcheck shell=bash
# Shared by scripts/serve-dev, scripts/test and .ci/run (sourced, never run).
#
# Makes a fresh Debian machine ready: a Python >= 3.11 with a working venv module
# (Debian's packages only when none is on PATH), a .venv in the repository root, and
# `pip install -e '.[test]'` only when pyproject.toml changed since the last install.

RV_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# The virtualenv; tests point RV_VENV at the one running them.
RV_VENV="${RV_VENV:-$RV_ROOT/.venv}"
# Holds the sha256 of the pyproject.toml that was last installed into the venv.
RV_STAMP="$RV_VENV/.rendezvous-installed"
RV_MIN_PYTHON="3.11"
# Debian packages that give a Python with venv and pip.
RV_PYTHON_PACKAGES=(python3 python3-venv python3-pip)

rv_log() {
    printf '==> %s\n' "$*" >&2
}

rv_die() {
    printf '%s: error: %s\n' "$(basename "$0")" "$*" >&2
    exit 1
}

# Run a command as root: directly when we are root, else through sudo.
rv_as_root() {
    if [[ "$(id -u)" -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        if [[ -t 0 ]]; then
            sudo "$@"
        else
            sudo -n "$@" || rv_die "sudo needs a password and there is no terminal to ask on; run: sudo $*"
        fi
    else
        rv_die "installing needs root: run this as root or install sudo (wanted: $*)"
    fi
}

# Install Debian packages (after one `apt-get update`), or fail saying what to install.
rv_apt_install() {
    if [[ "$(id -u)" -ne 0 ]] && ! command -v sudo >/dev/null 2>&1; then
        rv_die "need Debian packages $*, and installing them needs root or sudo:" \
            "run as root: apt-get update && apt-get install $*"
    fi
    rv_apt_update
    rv_apt_get install --no-install-recommends "$@" >&2
}

rv_apt_get() {
    command -v apt-get >/dev/null 2>&1 ||
        rv_die "apt-get not found: this needs a Debian-based machine, or install by hand: $*"
    # The lock timeout lets two installs on one machine wait for each other.
    rv_as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get -y -q -o DPkg::Lock::Timeout=300 -o Acquire::Retries=3 "$@"
}

# `apt-get update`, at most once per run (.ci/run does it and exports the flag).
rv_apt_update() {
    if [[ "${RENDEZVOUS_APT_UPDATED:-}" == 1 ]]; then
        return 0
    fi
    rv_log "apt-get update"
    rv_apt_get update >&2
    export RENDEZVOUS_APT_UPDATED=1
}

rv_deb_installed() {
    [[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" == "install ok installed" ]]
}

# Install those of the given Debian packages that are not installed yet.
rv_ensure_debs() {
    local missing=() package
    for package in "$@"; do
        rv_deb_installed "$package" || missing+=("$package")
    done
    if ((${#missing[@]} == 0)); then
        return 0
    fi
    rv_log "installing Debian packages: ${missing[*]}"
    rv_apt_install "${missing[@]}"
    for package in "${missing[@]}"; do
        rv_deb_installed "$package" || rv_die "Debian package $package did not install"
    done
}

# Whether $1 runs and is a Python >= RV_MIN_PYTHON.
rv_python_new_enough() {
    "$1" -c 'import sys; sys.exit(sys.version_info < tuple(map(int, sys.argv[1].split("."))))' \
        "$RV_MIN_PYTHON" >/dev/null 2>&1
}

# Whether $1 is a Python >= RV_MIN_PYTHON that can create a venv with pip in it
# (Debian's python3 lacks ensurepip until python3-venv is installed).
rv_python_usable() {
    rv_python_new_enough "$1" && "$1" -c 'import ensurepip, venv' >/dev/null 2>&1
}

# Print the path of the first usable Python on PATH; fail if there is none.
rv_find_python() {
    local name path
    for name in python3 python3.14 python3.13 python3.12 python3.11; do
        path="$(command -v "$name" 2>/dev/null)" || continue
        if rv_python_usable "$path"; then
            printf '%s\n' "$path"
            return 0
        fi
    done
    return 1
}

# Set RV_PYTHON to a usable Python, installing Debian's python3 and python3-venv if needed.
rv_ensure_python() {
    if RV_PYTHON="$(rv_find_python)"; then
        return 0
    fi
    rv_log "no Python >= $RV_MIN_PYTHON with a working venv module on PATH"
    # All three even when python3 is present: apt-get then adds only what is missing.
    rv_apt_install "${RV_PYTHON_PACKAGES[@]}"
    hash -r
    RV_PYTHON="$(rv_find_python)" ||
        rv_die "still no Python >= $RV_MIN_PYTHON with a working venv module on PATH after" \
            "installing ${RV_PYTHON_PACKAGES[*]}: this Debian's python3 may be too old;" \
            "install Python >= $RV_MIN_PYTHON (with venv) and put it on PATH"
}

rv_pyproject_hash() {
    sha256sum "$RV_ROOT/pyproject.toml" | cut -d ' ' -f 1
}

# Create .venv if absent (or broken) and install the project when pyproject.toml changed.
rv_ensure_venv() {
    local wanted
    if ! rv_python_new_enough "$RV_VENV/bin/python"; then
        rv_ensure_python
        if [[ -e "$RV_VENV" ]]; then
            rv_log "replacing $RV_VENV: its Python is missing or too old"
            rm -rf -- "$RV_VENV"
        fi
        rv_log "creating $RV_VENV with $RV_PYTHON ($("$RV_PYTHON" --version 2>&1))"
        "$RV_PYTHON" -m venv "$RV_VENV" >&2
    fi
    wanted="$(rv_pyproject_hash)"
    if [[ -f "$RV_STAMP" && "$(<"$RV_STAMP")" == "$wanted" && -x "$RV_VENV/bin/rendezvous" ]]; then
        return 0
    fi
    rv_log "installing the project and its test tools into $RV_VENV (pyproject.toml changed)"
    # To stderr, like every message here: stdout is the service's (serve-dev prints its token).
    (cd "$RV_ROOT" && "$RV_VENV/bin/python" -m pip install --disable-pip-version-check -e '.[test]') >&2
    printf '%s\n' "$wanted" >"$RV_STAMP"
}

# Tests talk only to loopback (../shared/TESTING.md's network rule). rv_run_pytest runs
# pytest, and so every server, browser and peer a test starts, in a network namespace whose
# one interface is `lo`: whatever would reach past the machine fails at once instead. As
# root (CI) that is `unshare -n`. Another user gets `unshare -rn` (a user namespace, where
# the kernel allows it) to bring `lo` up as its root, then a nested user namespace maps
# the user back to itself, so the tests run as who they are (nginx, for one, cannot run
# its workers as "root" in a user namespace). `ip` (Debian's iproute2) brings `lo` up.

# The network interfaces this process sees. /proc/self/net/dev is its own namespace's
# list; /sys/class/net is the one of whoever mounted /sys, so it cannot tell.
rv_network_interfaces() {
    awk -F: 'NR > 2 { gsub(/[[:space:]]/, "", $1); print $1 }' /proc/self/net/dev
}

# Whether this process is already in a loopback-only namespace (a nested run).
rv_loopback_only() {
    [[ "$(rv_network_interfaces 2>/dev/null)" == lo ]]
}

# Set RV_ISOLATE to the command prefix that runs a command in a new loopback-only network
# namespace (empty when already in one); fail, saying why on stderr, when none can be made.
rv_loopback_namespace() {
    local ip flags=-n bring_up
    RV_ISOLATE=()
    if rv_loopback_only; then
        return 0
    fi
    # /usr/sbin is not on a Debian user's PATH.
    ip="$(PATH="$PATH:/usr/sbin:/sbin" command -v ip)" || ip=""
    if ! command -v unshare >/dev/null 2>&1 || [[ -z "$ip" ]]; then
        printf 'unshare (util-linux) or ip (iproute2) is missing\n' >&2
        return 1
    fi
    bring_up="$ip link set lo up && exec \"\$@\""
    if [[ "$(id -u)" -ne 0 ]]; then
        flags=-rn
        bring_up="$ip link set lo up && exec unshare --map-user=$(id -u) --map-group=$(id -g) \"\$@\""
    fi
    if ! unshare "$flags" sh -c "$bring_up" sh true >&2; then
        printf 'unshare %s could not make a network namespace here\n' "$flags" >&2
        return 1
    fi
    RV_ISOLATE=(unshare "$flags" sh -c "$bring_up" sh)
}

# Run pytest from the venv, in a loopback-only network namespace (above): under CI=true a
# failure to make one fails the run; elsewhere the run goes on without, after one loud
# line (the browser tests then skip themselves). Exit status 5 (nothing collected) is a
# failure; under CI=true, so is any skipped test, since a missing component must never
# pass as a skip.
rv_run_pytest() {
    local - status=0 output
    set -o pipefail
    if ! rv_loopback_namespace; then
        if [[ "${CI:-}" == true ]]; then
            printf 'pytest: cannot run the tests in a loopback-only network namespace (see above); under CI that is a failure: run as root with util-linux and iproute2 installed\n' >&2
            return 1
        fi
        printf '==> WARNING: no loopback-only network namespace (see above): the tests run on the machine'"'"'s network and the browser tests skip\n' >&2
    fi
    if [[ "${CI:-}" == true ]]; then
        output="$(mktemp)"
        "${RV_ISOLATE[@]}" "$RV_VENV/bin/python" -m pytest "$@" 2>&1 | tee "$output" || status="${PIPESTATUS[0]}"
        # Only pytest's closing line: a test's own name or output may say "skipped".
        if ((status == 0)) && tail -n 1 "$output" | grep -Eq '[0-9]+ skipped'; then
            printf 'pytest: tests were skipped; under CI a missing component is a failure, never a skip (see the SKIPPED lines above)\n' >&2
            status=1
        fi
        rm -f -- "$output"
    else
        "${RV_ISOLATE[@]}" "$RV_VENV/bin/python" -m pytest "$@" || status=$?
    fi
    if ((status == 5)); then
        printf 'pytest: no tests were collected (exit 5); that is a failure, not a pass: check the paths and -k/-m expressions given\n' >&2
    fi
    return "$status"
}
