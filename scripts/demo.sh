#!/usr/bin/env bash
# The inetd example rebuilt: a node serves espeak-ng on 127.0.0.1, a client with its
# own identity calls it, and the speech lands in triumph.wav.
set -euo pipefail
cd "$(dirname "$0")/.."
hubnode=$PWD/.venv/bin/hubnode

if ! command -v espeak-ng >/dev/null; then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
        echo "demo: installing espeak-ng"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng >/dev/null
    else
        echo "demo: espeak-ng is missing; install it (e.g. sudo apt-get install espeak-ng) and run again" >&2
        exit 1
    fi
fi

work=$(mktemp -d)
server_home=$work/desktop
client_home=$work/pi
mkdir -p "$server_home" "$client_home"
cat >"$server_home/services.toml" <<'TOML'
listen = "127.0.0.1:0"

[services.espeak]
command = ["espeak-ng", "--stdout"]
description = "Text to speech: text on stdin, WAV on stdout"
timeout = 30

[services.espeak.arguments]
options = { "-v" = "word", "-s" = "int", "-p" = "int", "-a" = "int" }
TOML

"$hubnode" --home "$server_home" -v serve 2>"$work/serve.log" &
server_pid=$!
trap 'kill $server_pid 2>/dev/null; wait $server_pid 2>/dev/null || true; rm -rf "$work"' EXIT

target=""
for _ in $(seq 100); do
    target=$(grep -oE '[a-z2-7]{52}@127\.0\.0\.1:[0-9]+' "$work/serve.log" || true)
    [[ -n $target ]] && break
    kill -0 $server_pid 2>/dev/null || { cat "$work/serve.log" >&2; exit 1; }
    sleep 0.1
done
[[ -n $target ]] || { echo "demo: the server did not start" >&2; cat "$work/serve.log" >&2; exit 1; }

echo "demo: desktop node serving espeak as $target"
echo "demo: \$ echo \"This was a triumph\" | hubnode call --server $target espeak -v en-us > triumph.wav"
echo "This was a triumph" | "$hubnode" --home "$client_home" call --server "$target" espeak -v en-us >triumph.wav
echo "demo: wrote triumph.wav ($(stat -c %s triumph.wav) bytes): $(file -b triumph.wav 2>/dev/null || head -c 4 triumph.wav)"
echo "demo: what the server saw:"
sed 's/^/  /' "$work/serve.log"
echo "demo: stopping the server"
