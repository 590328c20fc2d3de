#!/usr/bin/env bash
# Produce throughput over TLS against plaintext, kastellan and librdkafka
# side by side (issue: secure connections, benchmark).
#
#   ./tls.sh                 # 3 rounds of 200,000 x 1 KiB records per listener
#   ./tls.sh --rounds 5      # any option of the peers binary
#
# Starts one broker with a plaintext and a TLS listener (the repository
# fixture's secure broker, test certificates generated on the spot), runs the
# produce phase through each listener with the same options, and prints both
# reports and a summary: records/s per client and listener, the TLS/plaintext
# ratio per client, and kastellan/rdkafka per listener.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"
cargo build --release
peers="${CARGO_TARGET_DIR:-$PWD/target}/release/peers"
work="$(mktemp -d "${TMPDIR:-/tmp}/peers-tls.XXXXXX")"
ca="$work/ca.pem"

# The broker lives as long as this shell holds its standard input open.
coproc BROKER { "$peers" secure-broker "$ca"; }
cleanup() {
    exec {BROKER[1]}>&- 2>/dev/null || true
    wait "$BROKER_PID" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
plaintext="" ssl=""
while IFS= read -r line <&"${BROKER[0]}"; do
    case "$line" in
        PLAINTEXT=*) plaintext="${line#PLAINTEXT=}" ;;
        SSL=*) ssl="${line#SSL=}" ;;
    esac
    [ -n "$plaintext" ] && [ -n "$ssl" ] && break
done
[ -n "$ssl" ] || { echo "tls.sh: the secure broker did not start" >&2; exit 1; }

common=(--phases produce --clients kastellan,rdkafka --layouts 1,6 "$@")
echo "== plaintext listener $plaintext"
"$peers" --bootstrap "$plaintext" "${common[@]}" >"$work/plaintext.md"
echo "== TLS listener $ssl"
# The plaintext run warmed the broker up already; its warm-up reads with
# rdkafka settings that know nothing of TLS.
PEERS_TLS_CA="$ca" "$peers" --bootstrap "$ssl" "${common[@]}" --warmup 0 >"$work/tls.md"

rates() { # client layout rec/s from a report's results table
    awk -F'|' '/^## Results/{on=1;next} /^## /{on=0} on && $2 ~ /kastellan|rdkafka/ {
        gsub(/ /,"",$2); gsub(/ /,"",$3); gsub(/[ ,]/,"",$4); print $2, $3, $4 }' "$1"
}
echo
echo "## Produce over TLS vs plaintext"
echo
echo "| client | layout | plaintext rec/s | TLS rec/s | TLS / plaintext |"
echo "|---|---|---:|---:|---:|"
join <(rates "$work/plaintext.md" | awk '{print $1"/"$2, $3}' | sort) \
     <(rates "$work/tls.md" | awk '{print $1"/"$2, $3}' | sort) |
    awk '{split($1,k,"/"); sub(/partition/, " partition", k[2]); printf "| %s | %s | %d | %d | %.2f |\n", k[1], k[2], $2, $3, $3/$2}'
echo
echo "| listener | layout | kastellan / rdkafka |"
echo "|---|---|---:|"
for kind in plaintext tls; do
    rates "$work/$kind.md" | awk -v kind="$kind" '
        {r[$1"/"$2]=$3; l[$2]=1}
        END {for (x in l) if (r["kastellan/"x] && r["rdkafka/"x])
            { y = x; sub(/partition/, " partition", y)
              printf "| %s | %s | %.2f |\n", kind, y, r["kastellan/"x]/r["rdkafka/"x] }}'
done
echo
echo "<details><summary>full reports</summary>"
echo
cat "$work/plaintext.md" "$work/tls.md"
echo "</details>"
