#!/usr/bin/env bash
# Produce and read over TLS against plaintext: kastellan with graviola (its
# default TLS crypto provider), kastellan with ring (`kastellan-ring`) and
# librdkafka with OpenSSL (`rdkafka`), side by side.
#
#   ./tls.sh                          # 3 rounds of 200,000 x 1 KiB records, 1 and 6 partitions
#   ./tls.sh --records 20000 --rounds 1   # a quick check; any option of the peers binary
#
# Starts one broker with a plaintext and a TLS listener (the repository
# fixture's secure broker, test certificates generated on the spot) and runs
# the produce and read phases through the plaintext listener (kastellan,
# rdkafka) and then through the TLS listener (kastellan, kastellan-ring,
# rdkafka), with the same options. Prints a summary (records/s, MiB/s and
# CPU s per million records per client, listener and phase; TLS/plaintext
# per client; graviola/ring and kastellan/rdkafka over TLS), then both full
# reports. Without TLS kastellan-ring is the same client as kastellan, so
# its plaintext baseline is kastellan's run.
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

# Options after these (the script's arguments) override them, for both runs.
common=(--phases produce,read --sizes 1024 --partitions 1,6 --rounds 3 "$@")
echo "== plaintext listener $plaintext" >&2
"$peers" --bootstrap "$plaintext" --clients kastellan,rdkafka "${common[@]}" >"$work/plaintext.md"
echo "== TLS listener $ssl" >&2
PEERS_TLS_CA="$ca" "$peers" --bootstrap "$ssl" --clients kastellan,kastellan-ring,rdkafka \
    "${common[@]}" >"$work/tls.md"

# One line per client, size, layout and phase of a report's "Produce and
# read" table: listener, client, size, layout, phase, rec/s, MiB/s, CPU s/M
# rec (tab-separated; a cell that is not a number becomes "n/a").
figures() { # listener report.md
    awk -F'|' -v listener="$1" '
        function trim(s) { gsub(/^ +| +$/, "", s); return s }
        function num(s) { s = trim(s); gsub(/,/, "", s); return (s ~ /^[0-9.]+\*?$/) ? s : "n/a" }
        /^## Produce and read$/ { on = 1; next }
        /^#/ { on = 0 }
        on && NF >= 11 && trim($2) != "client" && $2 !~ /^-+$/ {
            c = trim($2); s = trim($3); l = trim($4)
            printf "%s\t%s\t%s\t%s\tproduce\t%s\t%s\t%s\n", listener, c, s, l, num($5), num($6), num($7)
            printf "%s\t%s\t%s\t%s\tread\t%s\t%s\t%s\n", listener, c, s, l, num($8), num($9), num($10)
        }' "$2"
}
{ figures plaintext "$work/plaintext.md"; figures tls "$work/tls.md"; } >"$work/figures.tsv"

echo "# kastellan over TLS: graviola, ring and librdkafka"
echo
grep -m1 '^- workload' "$work/tls.md" || true
grep -m1 '^- topic layouts' "$work/tls.md" || true
grep -m1 '^- TLS' "$work/tls.md" || true
grep -m1 '^- [0-9]* round' "$work/tls.md" || true
echo "- CPU: $(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ *//') ($(nproc) cores)"
command -v openssl >/dev/null && echo "- OpenSSL (rdkafka's TLS): $(openssl version)"
echo
awk -F'\t' '
    function known(v) { return v != "" && v != "n/a" }
    function ratio(a, b) { return (known(a) && known(b) && b + 0 > 0) ? sprintf("%.2f", a / b) : "n/a" }
    function cell(v) { if (!known(v)) return "n/a"; return (v ~ /\./) ? v : commas(v) }
    function commas(v,   out) { out = ""; while (length(v) > 3) { out = "," substr(v, length(v) - 2) out; v = substr(v, 1, length(v) - 3) } return v out }
    {
        k = $2 SUBSEP $3 SUBSEP $4 SUBSEP $5
        rec[$1, k] = $6; mib[$1, k] = $7; cpu[$1, k] = $8
        if (!(($3, $4) in seenkey)) { seenkey[$3, $4] = 1; keys[++nk] = $3 SUBSEP $4 }
        if ($1 == "tls" && !($2 in seenclient)) { seenclient[$2] = 1; clients[++nc] = $2 }
    }
    END {
        print "## Throughput by listener"
        print ""
        print "Medians over rounds. CPU s/M rec: CPU seconds (user + system, all threads) of the client process per million records. kastellan-ring\047s plaintext figures are kastellan\047s: without TLS they are the same client."
        print ""
        print "| client | size | layout | phase | plaintext rec/s | plaintext MiB/s | plaintext CPU s/M rec | TLS rec/s | TLS MiB/s | TLS CPU s/M rec | TLS / plaintext rec/s | TLS / plaintext CPU |"
        print "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
        for (i = 1; i <= nk; i++) for (p = 1; p <= 2; p++) for (j = 1; j <= nc; j++) {
            split(keys[i], sk, SUBSEP); phase = (p == 1) ? "produce" : "read"
            c = clients[j]; base = (c == "kastellan-ring") ? "kastellan" : c
            t = c SUBSEP sk[1] SUBSEP sk[2] SUBSEP phase
            b = base SUBSEP sk[1] SUBSEP sk[2] SUBSEP phase
            if (!(("tls", t) in rec)) continue
            pr = (("plaintext", b) in rec) ? rec["plaintext", b] : "n/a"
            pm = (("plaintext", b) in mib) ? mib["plaintext", b] : "n/a"
            pc = (("plaintext", b) in cpu) ? cpu["plaintext", b] : "n/a"
            printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", c, sk[1], sk[2], phase,
                cell(pr), pm, pc, cell(rec["tls", t]), mib["tls", t], cpu["tls", t],
                ratio(rec["tls", t], pr), ratio(cpu["tls", t], pc)
        }
        print ""
        print "## Ratios over TLS"
        print ""
        print "For rec/s above 1 means the first client is faster; for CPU above 1 means it uses more. The last column is the same kastellan/rdkafka rec/s ratio over plaintext."
        print ""
        print "| size | layout | phase | graviola / ring rec/s | graviola / ring CPU | kastellan / rdkafka rec/s | kastellan / rdkafka CPU | kastellan-ring / rdkafka rec/s | kastellan-ring / rdkafka CPU | plaintext kastellan / rdkafka rec/s |"
        print "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"
        for (i = 1; i <= nk; i++) for (p = 1; p <= 2; p++) {
            split(keys[i], sk, SUBSEP); phase = (p == 1) ? "produce" : "read"
            s = SUBSEP sk[1] SUBSEP sk[2] SUBSEP phase
            g = "kastellan" s; r = "kastellan-ring" s; d = "rdkafka" s
            printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", sk[1], sk[2], phase,
                ratio(rec["tls", g], rec["tls", r]), ratio(cpu["tls", g], cpu["tls", r]),
                ratio(rec["tls", g], rec["tls", d]), ratio(cpu["tls", g], cpu["tls", d]),
                ratio(rec["tls", r], rec["tls", d]), ratio(cpu["tls", r], cpu["tls", d]),
                ratio(rec["plaintext", g], rec["plaintext", d])
        }
    }' "$work/figures.tsv"
echo
echo "<details><summary>full reports (plaintext, then TLS)</summary>"
echo
cat "$work/plaintext.md" "$work/tls.md"
echo "</details>"
