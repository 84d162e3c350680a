#!/usr/bin/env bash
# shellcheck shell=bash
# Helpers for running stock BIND 9.20 + pkcs11-provider (Debian 13 "trixie") from a Debian 12 host.
#
# Source it from bash (`. ci/lib/trixie.sh`) or run it as a command (see the end of the file):
#
#   trixie_root                 the root to use: "/" on a Debian 13 host, else the cached chroot
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
# Stamp written by ci/debian13-root when the root is complete; its content is the package list.
SC4_TRIXIE_STAMP=.sc4dnssec-root-complete
SC4_TRIXIE_PACKAGES=(
    bind9 bind9-utils bind9-dnsutils pkcs11-provider softhsm2 opensc opensc-pkcs11 libpcsclite1
    python3 python3-venv python3-dev python3-cffi python3-cryptography python3-setuptools
    python3-pip gcc libc6-dev
)
SC4_TRIXIE_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

sc4_progress() {
    printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2
}

sc4_die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

# True on a Debian 13 (trixie) host: there BIND 9.20 + pkcs11-provider are installed directly.
trixie_host_is_trixie() {
    local codename=
    if [[ -r /etc/os-release ]]; then
        codename=$(. /etc/os-release && printf '%s' "${VERSION_CODENAME:-}")
    fi
    [[ $codename == trixie ]]
}

trixie_root() {
    if trixie_host_is_trixie; then
        printf '/\n'
    else
        printf '%s\n' "${SC4DNSSEC_TRIXIE_ROOT:-$SC4_TRIXIE_DEFAULT_ROOT}"
    fi
}

# A root is usable when its stamp lists every package we need (a half-built root has no stamp).
trixie_root_complete() {
    local root=$1
    if [[ $root == / ]]; then
        local status
        status=$(dpkg-query -W -f '${db:Status-Abbrev}\n' "${SC4_TRIXIE_PACKAGES[@]}" 2>/dev/null) || return 1
        ! grep -qv '^ii' <<<"$status"
        return
    fi
    [[ -f $root/$SC4_TRIXIE_STAMP ]] && [[ $(cat "$root/$SC4_TRIXIE_STAMP") == "${SC4_TRIXIE_PACKAGES[*]}" ]]
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
    trixie_root_complete "$root" \
        || sc4_die "the Debian 13 root $root is missing or incomplete: run ci/debian13-root"
    # A private mount namespace: the mounts disappear with the command, whatever happens to it.
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
