#!/usr/bin/env bash
# shellcheck shell=bash
# Helpers for running stock BIND 9.20 + pkcs11-provider (Debian 13 "trixie") from a Debian 12 host.
#
# Source it from bash (`. ci/lib/trixie.sh`) or run it as a command (see the end of the file):
#
#   trixie_root                 the root to use: $SC4DNSSEC_TRIXIE_CHROOT when set (a root the caller
#                               made, e.g. an overlay), else "/" on a Debian 13 host, else the cached chroot
#   trixie_mirror               the Debian mirror URI read from this machine's apt sources
#   trixie_mount ROOT [DIR...]  mount proc, dev, dev/pts and bind DIRs (same path inside) into ROOT
#   trixie_umount ROOT          unmount everything below ROOT (deepest first)
#   in_root [-b DIR]... [-C DIR] [VAR=VALUE]... [--] CMD [ARG...]
#                               run CMD in the root with exactly the given environment (plus PATH,
#                               HOME, LANG); the dirs given with -b (and the directory of
#                               PCSCLITE_CSOCK_NAME, if set) are bind-mounted at the same path
#
# Mount leaks: in_root does its mounts inside a private mount namespace (unshare -m) that exists
# only as long as the command, so even a SIGKILLed run leaves no mount behind on the host.
# trixie_mount/trixie_umount are for callers that need the mounts in the host namespace; pair them
# with `trap 'trixie_umount "$root"' EXIT`.

SC4_TRIXIE_LIB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SC4_TRIXIE_DEFAULT_ROOT=/var/cache/sc4dnssec/trixie-root
# Stamps written by ci/debian13-root when the root is complete: each holds the words of the
# packages installed from one list (SC4_TRIXIE_PACKAGES, SC4_TRIXIE_ROOT_ONLY_PACKAGES). A root is
# complete when each stamp names every package of its list, so a checkout that needs fewer
# packages than the last builder installed uses the root as it is, and rewrites nothing.
SC4_TRIXIE_STAMP=.sc4dnssec-root-complete
SC4_TRIXIE_STAMP_ROOT_ONLY=.sc4dnssec-root-complete-debian13-stack
# Stock BIND 9.20 + pkcs11-provider and what the BIND flows and the demo need, in the root or,
# on a Debian 13 host, on the host itself.
SC4_TRIXIE_PACKAGES=(
    bind9 bind9-utils bind9-dnsutils pkcs11-provider softhsm2 opensc opensc-pkcs11 libpcsclite1
    ykcs11
    python3 python3-venv python3-dev python3-cffi python3-cryptography python3-setuptools
    python3-pip gcc libc6-dev
)
# Only in a root on another release: Debian 13's own pcscd, vpcd and test tools, so that the
# virtual-card suite also runs on Debian 13's pcscd 2.x and OpenSC (ci/virtualcard-debian13).
# A Debian 13 host runs that suite in ci/test's own steps instead.
SC4_TRIXIE_ROOT_ONLY_PACKAGES=(pcscd vsmartcard-vpcd yubico-piv-tool python3-pytest python3-pykcs11)
SC4_TRIXIE_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

sc4_progress() {
    printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2
}

sc4_die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

# apt-get install PACKAGE... on the host, leaving no service started or enabled that the
# packages brought (bind9 enables named.service, which starts a named on port 53; pcscd enables
# pcscd.socket). Our tests and the demo start their own named and pcscd, by PID.
# - While installing, /usr/sbin/policy-rc.d (exit 101) stops maintainer scripts from starting
#   services, unless the host already has a policy-rc.d of its own (then that one decides).
# - Afterwards every unit or init script that the install enabled is disabled again (and stopped,
#   should it run); each is named on stderr with the command that re-enables it.
# Packages already installed are not touched. Prints the installed packages' names on stdout.
# Recommended packages are left out unless the first argument is --with-recommends.
sc4_host_apt_install() {
    local missing=() p recommends=--no-install-recommends
    if [[ ${1:-} == --with-recommends ]]; then
        recommends=--install-recommends
        shift
    fi
    for p in "$@"; do
        dpkg-query -W -f '${db:Status-Abbrev}' "$p" 2>/dev/null | grep -q '^ii' || missing+=("$p")
    done
    ((${#missing[@]})) || return 0
    sc4_progress "installing on this host: ${missing[*]}"
    local before after
    before=$(_sc4_enabled_services)
    (
        export DEBIAN_FRONTEND=noninteractive
        policy=/usr/sbin/policy-rc.d marker='# sc4dnssec: no service starts while it installs packages'
        if [[ ! -e $policy ]]; then
            trap '[[ $(sed -n 2p "$policy" 2>/dev/null) == "$marker" ]] && rm -f "$policy"' EXIT
            trap 'exit 130' INT TERM
            printf '#!/bin/sh\n%s\nexit 101\n' "$marker" >"$policy"
            chmod 755 "$policy"
        fi
        apt-get update -q >&2
        apt-get install -y -q "$recommends" "${missing[@]}" >&2
    ) || return
    after=$(_sc4_enabled_services)
    local new kind name
    new=$(comm -13 <(printf '%s\n' "$before") <(printf '%s\n' "$after") | grep -v '^$' || true)
    while read -r kind name; do
        [[ -n $name ]] || continue
        if [[ $kind == unit ]]; then
            if [[ -d /run/systemd/system ]]; then
                systemctl disable --now "$name" >/dev/null 2>&1 || true
            else
                systemctl disable "$name" >/dev/null 2>&1 || true
            fi
        else
            if [[ ! -d /run/systemd/system ]] && "/etc/init.d/$name" status >/dev/null 2>&1; then
                "/etc/init.d/$name" stop >/dev/null 2>&1 || true
            fi
            update-rc.d "$name" disable >/dev/null 2>&1 || true
        fi
    done <<<"$new"
    local still
    still=$(_sc4_enabled_services)
    while read -r kind name; do
        [[ -n $name ]] || continue
        local undo="systemctl enable $name"
        [[ $kind == unit ]] || undo="update-rc.d $name enable"
        if grep -qxF "$kind $name" <<<"$still"; then
            sc4_progress "warning: the install enabled $name and it could not be disabled"
        else
            sc4_progress "disabled $name again (the install enabled it; not needed here; undo: $undo)"
        fi
    done <<<"$new"
    printf '%s\n' "${missing[@]}"
}

# What starts at boot: "unit NAME" for systemd units wanted by a target, "sysv NAME" for init
# scripts started in a runlevel. One per line, sorted.
_sc4_enabled_services() {
    {
        find /etc/systemd/system -mindepth 2 -maxdepth 2 \( -path '*.wants/*' -o -path '*.requires/*' \) \
            -printf 'unit %f\n' 2>/dev/null
        find /etc/rcS.d /etc/rc2.d /etc/rc3.d /etc/rc4.d /etc/rc5.d -name 'S*' -printf '%f\n' 2>/dev/null \
            | sed -E 's/^S[0-9]+/sysv /'
    } | sort -u
}

# True on a Debian 13 (trixie) host: there BIND 9.20 + pkcs11-provider are installed directly.
trixie_host_is_trixie() {
    local codename=
    if [[ -r /etc/os-release ]]; then
        codename=$(. /etc/os-release && printf '%s' "${VERSION_CODENAME:-}")
    fi
    [[ $codename == trixie ]]
}

# The packages a root needs: the BIND set, plus the Debian 13 test stack in a chroot.
trixie_packages() {
    local root=${1:?root}
    printf '%s\n' "${SC4_TRIXIE_PACKAGES[@]}"
    [[ $root == / ]] || printf '%s\n' "${SC4_TRIXIE_ROOT_ONLY_PACKAGES[@]}"
}

trixie_root() {
    if [[ -n ${SC4DNSSEC_TRIXIE_CHROOT:-} ]]; then
        # A root the caller made from a complete one (tests/package's throwaway overlays), on any host
        printf '%s\n' "$SC4DNSSEC_TRIXIE_CHROOT"
    elif trixie_host_is_trixie; then
        printf '/\n'
    else
        printf '%s\n' "${SC4DNSSEC_TRIXIE_ROOT:-$SC4_TRIXIE_DEFAULT_ROOT}"
    fi
}

# A root is usable when its stamps list every package we need (a half-built root has none).
trixie_root_complete() {
    local root=$1
    if [[ $root == / ]]; then
        local status
        status=$(dpkg-query -W -f '${db:Status-Abbrev}\n' "${SC4_TRIXIE_PACKAGES[@]}" 2>/dev/null) || return 1
        ! grep -qv '^ii' <<<"$status"
        return
    fi
    _trixie_stamp_has "$root/$SC4_TRIXIE_STAMP" "${SC4_TRIXIE_PACKAGES[@]}" \
        && _trixie_stamp_has "$root/$SC4_TRIXIE_STAMP_ROOT_ONLY" "${SC4_TRIXIE_ROOT_ONLY_PACKAGES[@]}"
}

_trixie_stamp_has() {
    local stamp=$1 have p
    shift
    [[ -f $stamp ]] || return 1
    have=" $(tr -s ' \n' '  ' <"$stamp") "
    for p in "$@"; do
        [[ $have == *" $p "* ]] || return 1
    done
}

# Writes STAMP naming what it named before and PACKAGES (in that order, each once).
trixie_write_stamp() {
    local stamp=$1 words=() w
    shift
    if [[ -f $stamp ]]; then
        read -r -a words <"$stamp" || true   # no newline at the end: read says EOF, words are read
    fi
    for w in "$@"; do
        [[ " ${words[*]} " == *" $w "* ]] || words+=("$w")
    done
    printf '%s' "${words[*]}" >"$stamp.tmp" && mv -f "$stamp.tmp" "$stamp"
}

# The Debian archive mirror this machine already uses, from its apt sources (deb822 *.sources and
# one-line *.list files). Prefers an entry whose suite is the host's codename; ignores security and
# third-party repositories. Falls back to deb.debian.org.
trixie_mirror() {
    local codename files=()
    codename=$(. /etc/os-release 2>/dev/null && printf '%s' "${VERSION_CODENAME:-}")
    [[ -f /etc/apt/sources.list ]] && files+=(/etc/apt/sources.list)
    local f
    for f in /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
        [[ -f $f ]] && files+=("$f")
    done
    local found=
    if ((${#files[@]})); then
        found=$(awk -v want="$codename" '
            function consider(uri, suites,   n, i, s, a) {
                if (uri ~ /security/) return
                n = split(suites, a, /[ \t]+/)
                for (i = 1; i <= n; i++) {
                    s = a[i]
                    if (s == "" || s ~ /-security$/) continue
                    if (s == want && best == "") best = uri
                    if (s ~ /^(bullseye|bookworm|trixie|forky|sid|stable|testing|unstable|oldstable)(-updates)?$/ && any == "") any = uri
                }
            }
            function flush() {
                if (types ~ /(^|[ \t])deb([ \t]|$)/ && enabled != "no") {
                    n = split(uris, u, /[ \t]+/)
                    for (j = 1; j <= n; j++) if (u[j] != "") consider(u[j], suites)
                }
                types = uris = suites = enabled = ""
            }
            FNR == 1 { flush() }
            FILENAME ~ /\.sources$/ {
                if ($0 ~ /^[ \t]*$/) { flush(); next }
                if ($0 ~ /^#/) next
                key = tolower($1); sub(/:$/, "", key)
                val = $0; sub(/^[^:]*:[ \t]*/, "", val)
                if (key == "types") types = val
                else if (key == "uris") uris = val
                else if (key == "suites") suites = val
                else if (key == "enabled") enabled = tolower(val)
                next
            }
            FILENAME !~ /\.sources$/ && $1 == "deb" {
                i = 2
                if ($i ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
                consider($i, $(i + 1))
            }
            END { flush(); print (best != "" ? best : any) }
        ' "${files[@]}")
    fi
    printf '%s\n' "${found:-http://deb.debian.org/debian}"
}

# Mount points below ROOT, deepest first (from this namespace's mount table).
trixie_mounts_below() {
    local root=${1%/}
    [[ -n $root ]] || return 0
    awk -v root="$root" '{
        mp = $5
        gsub(/\\040/, " ", mp)
        if (mp == root || index(mp, root "/") == 1) print length(mp) "\t" mp
    }' /proc/self/mountinfo | sort -rn | cut -f2-
}

trixie_umount() {
    local root=${1:?root}
    [[ $root == / ]] && return 0
    local mp
    while IFS= read -r mp; do
        [[ -n $mp && $mp != "${root%/}" ]] || continue
        umount "$mp" 2>/dev/null || umount -l "$mp" 2>/dev/null || true
    done < <(trixie_mounts_below "$root")
    if [[ -n $(trixie_mounts_below "$root" | grep -vxF "${root%/}") ]]; then
        printf 'warning: mounts left below %s:\n%s\n' "$root" "$(trixie_mounts_below "$root")" >&2
        return 1
    fi
}

# Bind-mount DIR at the same path inside ROOT (creating the mount point).
trixie_bind() {
    local root=$1 dir=$2
    dir=$(realpath -e "$dir") || sc4_die "cannot bind $2 into the root: it does not exist"
    mkdir -p "$root$dir"
    mountpoint -q "$root$dir" || mount --bind "$dir" "$root$dir"
}

trixie_mount() {
    local root=${1:?root}
    shift
    [[ $root == / ]] && return 0
    mountpoint -q "$root/proc" || mount -t proc proc "$root/proc"
    mountpoint -q "$root/dev" || mount --bind /dev "$root/dev"
    mountpoint -q "$root/dev/pts" || mount --bind /dev/pts "$root/dev/pts"
    local d
    for d in "$@"; do
        trixie_bind "$root" "$d"
    done
}

# Fills the array SC4_IN_ROOT_ARGV with the command that in_root runs.
_in_root_argv() {
    local root binds=() cwd=/ envs=()
    root=$(trixie_root)
    while (($#)); do
        case $1 in
            -b) binds+=("$2"); shift 2 ;;
            -C) cwd=$2; shift 2 ;;
            --) shift; break ;;
            *=*) envs+=("$1"); shift ;;
            *) break ;;
        esac
    done
    (($#)) || sc4_die "in_root: no command given"
    local e pcsc=
    for e in "${envs[@]}"; do
        if [[ $e == PCSCLITE_CSOCK_NAME=* ]]; then
            binds+=("$(dirname "${e#PCSCLITE_CSOCK_NAME=}")")
            pcsc=1
        fi
    done
    local base=(/usr/bin/env -i "PATH=$SC4_TRIXIE_PATH" HOME=/root LANG=C.UTF-8 "${envs[@]}"
                /bin/sh -c 'cd "$0" && exec "$@"' "$cwd" "$@")
    if [[ $root == / ]]; then
        SC4_IN_ROOT_ARGV=("${base[@]}")
        return
    fi
    [[ -n ${SC4DNSSEC_TRIXIE_CHROOT:-} ]] || trixie_root_complete "$root" \
        || sc4_die "the Debian 13 root $root is missing or incomplete: run ci/debian13-root"
    # A private mount namespace: the mounts disappear with the command, whatever happens to it.
    # The root is bind-mounted onto itself first, so that "/" in the chroot is a mount point and
    # CMD can make mount namespaces of its own (unshare --propagation private, as the virtual
    # card's pcscd does, fails with EINVAL on a "/" that is no mount point).
    # The inner bash execs chroot, so the PID of this command is the PID of CMD.
    # The pcscd serving the socket runs on the host; pcsc-lite refuses clients newer than the
    # daemon (Debian 13's libpcsclite speaks protocol 4:5, Debian 12's pcscd 4:4), so inside the
    # namespace the host's own client library is bind-mounted over the root's.
    local pcsclib=
    if [[ -n $pcsc && ${SC4_TRIXIE_HOST_PCSCLITE:-yes} == yes ]]; then
        pcsclib=$(trixie_host_pcsclite) || sc4_die "no libpcsclite.so.1 on the host to talk to its pcscd"
    fi
    SC4_IN_ROOT_ARGV=(unshare --mount --propagation private -- bash -c '
            . "$0"; root=$1; pcsclib=$2; nb=$3; shift 3
            mountpoint -q "$root" || mount --bind "$root" "$root" || exit 125
            trixie_mount "$root" "${@:1:$nb}" || exit 125
            shift "$nb"
            if [[ -n $pcsclib ]]; then
                mount --bind "$pcsclib" "$root$(trixie_root_pcsclite "$root")" || exit 125
            fi
            exec chroot "$root" "$@"' "$SC4_TRIXIE_LIB_DIR/trixie.sh" "$root" "$pcsclib"
            "${#binds[@]}" "${binds[@]}" "${base[@]}")
}

# The host's PC/SC client library (resolved file) and the root's (path inside the root).
trixie_host_pcsclite() {
    local f
    for f in /usr/lib/"$(uname -m)"-linux-gnu/libpcsclite.so.1 /usr/lib/libpcsclite.so.1 /usr/lib64/libpcsclite.so.1; do
        [[ -e $f ]] && { realpath -e "$f"; return 0; }
    done
    return 1
}

trixie_root_pcsclite() {
    local root=$1 f
    for f in /usr/lib/"$(uname -m)"-linux-gnu/libpcsclite.so.1 /usr/lib/libpcsclite.so.1; do
        [[ -e $root$f ]] && { printf '%s\n' "$f"; return 0; }
    done
    return 1
}

in_root() {
    local SC4_IN_ROOT_ARGV=()
    _in_root_argv "$@" || return
    "${SC4_IN_ROOT_ARGV[@]}"
}

# The provider module of the given (or the root's) multiarch triplet.
trixie_provider_path() {
    printf '/usr/lib/%s-linux-gnu/ossl-modules/pkcs11.so\n' "$(uname -m)"
}

# Command mode: ci/lib/trixie.sh root|mirror|complete|run [in_root args...]
if ! (return 0 2>/dev/null); then
    set -euo pipefail
    case ${1:-} in
        root) trixie_root ;;
        mirror) trixie_mirror ;;
        complete) trixie_root_complete "$(trixie_root)" ;;
        run) shift; SC4_IN_ROOT_ARGV=(); _in_root_argv "$@"; exec "${SC4_IN_ROOT_ARGV[@]}" ;;
        *) printf 'usage: %s root|mirror|complete|run [-b DIR]... [-C DIR] [VAR=VAL]... CMD...\n' "$0" >&2
           exit 2 ;;
    esac
fi
