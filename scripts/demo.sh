#!/usr/bin/env bash
# The inetd example rebuilt for a network: three nodes on 127.0.0.1 form a DHT, two of
# them offer espeak-ng at different prices, and a client that knows only the first node
# discovers the offers, calls the cheaper one, and the speech lands in triumph.wav.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${VENV:-.venv}  # the Makefile passes its VENV
[[ $venv == /* ]] || venv=$PWD/$venv
hubnode=$venv/bin/hubnode

# espeak-ng is the service; bubblewrap (bwrap) the sandbox every job runs in.
missing=()
command -v espeak-ng >/dev/null || missing+=(espeak-ng)
command -v bwrap >/dev/null || missing+=(bubblewrap)
if ((${#missing[@]})); then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
        echo "demo: installing ${missing[*]}"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        echo "demo: ${missing[*]} missing; install (e.g. sudo apt-get install ${missing[*]}) and run again" >&2
        exit 1
    fi
fi

work=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait "${pids[@]}" 2>/dev/null || true; rm -rf "$work"' EXIT

# start_node NAME SERVICES_TOML [serve args...]: start a node; sets $target to its PEER_ID@127.0.0.1:PORT.
start_node() {
    local name=$1 services=$2
    shift 2
    mkdir -p "$work/$name"
    printf '%s\n' "$services" >"$work/$name/services.toml"
    "$hubnode" --home "$work/$name" serve --no-lan "$@" >/dev/null 2>"$work/$name.log" &
    pids+=($!)
    target=""
    for _ in $(seq 100); do
        target=$(grep -oE '[a-z2-7]{52}@127\.0\.0\.1:[0-9]+' "$work/$name.log" || true)
        [[ -n $target ]] && break
        sleep 0.1
    done
    [[ -n $target ]] || { echo "demo: node $name did not start" >&2; cat "$work/$name.log" >&2; exit 1; }
}

espeak_service() {  # espeak_service PRICE_PER_CALL
    cat <<TOML
listen = "127.0.0.1:0"

[services.espeak]
command = ["espeak-ng", "--stdout"]
description = "Text to speech: text on stdin, WAV on stdout"
timeout = 30
price = { per_call = $1 }

[services.espeak.arguments]
options = { "-v" = "word", "-s" = "int", "-p" = "int", "-a" = "int" }
TOML
}

# A small network on loopback: a seed node, and two desktops that join through it and
# offer espeak at different prices. The Pi knows only the seed.
start_node seed 'listen = "127.0.0.1:0"'
seed=$target
start_node desk-a "$(espeak_service 1000)" --bootstrap "$seed"
desk_a=$target
start_node desk-b "$(espeak_service 3000)" --bootstrap "$seed"
desk_b=$target
echo "demo: seed node   $seed"
echo "demo: desktop A   $desk_a  (espeak at 1000 msat a call)"
echo "demo: desktop B   $desk_b  (espeak at 3000 msat a call)"

pi=$work/pi
mkdir -p "$pi"
printf 'bootstrap = ["%s"]\n' "$seed" >"$pi/client.toml"
echo "demo: the Pi's client.toml: $(cat "$pi/client.toml")"
# Calls cost money: each desktop's operator credits the Pi's account there (docs/money.md).
pi_id=$("$hubnode" --home "$pi" id)
for desk in desk-a desk-b; do
    "$hubnode" --home "$work/$desk" ledger credit "$pi_id" 100000 --note "paid in advance" >/dev/null
done
echo "demo: both desktops credited the Pi 100000 msat (hubnode ledger credit)"
for _ in $(seq 100); do  # offers appear once the desktops have joined and published
    [[ $("$hubnode" --home "$pi" services --json espeak 2>/dev/null | grep -c '"peer"') == 2 ]] && break
    sleep 0.2
done
echo "demo: \$ hubnode services espeak"
"$hubnode" --home "$pi" services espeak | sed 's/^/  /'
echo "demo: \$ echo \"This was a triumph\" | hubnode call espeak -v en-us > triumph.wav"
echo "This was a triumph" | "$hubnode" --home "$pi" call espeak -v en-us >triumph.wav
echo "demo: wrote triumph.wav ($(stat -c %s triumph.wav) bytes): $(file -b triumph.wav 2>/dev/null || head -c 4 triumph.wav)"
echo "demo: \$ hubnode receipts   (the signed receipt the Pi kept)"
"$hubnode" --home "$pi" receipts | sed 's/^/  /'
echo "demo: what desktop A saw (the cheaper one, so it got the call):"
sed 's/^/  /' "$work/desk-a.log"
echo "demo: stopping the network"
