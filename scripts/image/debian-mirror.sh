#!/usr/bin/env bash
# Prints the Debian mirror this machine's apt already uses, for debootstrap: the first `deb`
# source serving SUITE (default bookworm) from /etc/apt/sources.list and
# /etc/apt/sources.list.d/*.{list,sources}, else the first one whose path ends in /debian.
# BOTRIX_DEBIAN_MIRROR overrides. No host name is built in: an apt without a Debian source
# is an error.
set -euo pipefail
suite=${1:-bookworm}

if [ -n "${BOTRIX_DEBIAN_MIRROR:-}" ]; then
    echo "$BOTRIX_DEBIAN_MIRROR"
    exit 0
fi

shopt -s nullglob
one_line=(/etc/apt/sources.list /etc/apt/sources.list.d/*.list)
deb822=(/etc/apt/sources.list.d/*.sources)

# "URI SUITE..." for every `deb` source, in apt's order of files.
sources() {
    local f
    for f in "${one_line[@]}"; do
        [ -f "$f" ] || continue
        # deb [opts] URI SUITE COMPONENTS...
        sed -e 's/#.*//' -e 's/\[[^]]*\]//' "$f" | awk '$1 == "deb" { print $2, $3 }'
    done
    for f in "${deb822[@]}"; do
        awk '
            function flush() {
                if (types ~ /(^| )deb( |$)/ && enabled != "no" && uris != "") {
                    n = split(uris, u, " ")
                    for (i = 1; i <= n; i++) print u[i], suites
                }
                types = ""; uris = ""; suites = ""; enabled = ""
            }
            /^[ \t]*#/ { next }
            /^[ \t]*$/ { flush(); next }
            tolower($1) == "types:"   { $1 = ""; types = substr($0, 2) }
            tolower($1) == "uris:"    { $1 = ""; uris = substr($0, 2) }
            tolower($1) == "suites:"  { $1 = ""; suites = substr($0, 2) }
            tolower($1) == "enabled:" { enabled = tolower($2) }
            END { flush() }
        ' "$f"
    done
}

all=$(sources)
mirror=$(printf '%s\n' "$all" | awk -v s="$suite" '{ for (i = 2; i <= NF; i++) if ($i == s) { print $1; exit } }')
if [ -z "$mirror" ]; then
    mirror=$(printf '%s\n' "$all" | awk '$1 ~ /\/debian\/?$/ { print $1; exit }')
fi
if [ -z "$mirror" ]; then
    echo "debian-mirror.sh: no Debian source for $suite in apt's sources; set BOTRIX_DEBIAN_MIRROR" >&2
    exit 1
fi
echo "${mirror%/}"
