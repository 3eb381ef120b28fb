#!/usr/bin/env bash
# The robot's story, on one machine: a desktop node serves the robot services, and a robot
# (another identity) meets a stranger, asks her name, learns her face, and greets her by
# name the next time. Run from the repository after `make venv`: bash scripts/robot-story.sh
set -euo pipefail
cd "$(dirname "$0")/.."
hubnode=$PWD/.venv/bin/hubnode
python=$PWD/.venv/bin/python
hello=${HELLO_WAV:-$PWD/hello.wav}  # where the robot's greeting is left
work=$(mktemp -d)
trap 'kill $desktop 2>/dev/null; wait $desktop 2>/dev/null || true; rm -rf "$work"' EXIT

# The desktop: no services of its own, only the example ones (speak, listen, face).
mkdir "$work/desktop"
echo 'listen = "127.0.0.1:0"' >"$work/desktop/services.toml"
"$hubnode" --home "$work/desktop" -v serve --no-lan --example-services >/dev/null 2>"$work/desktop.log" &
desktop=$!
target=""
for _ in $(seq 100); do
    target=$(grep -oE '[a-z2-7]{52}@127\.0\.0\.1:[0-9]+' "$work/desktop.log" || true)
    [[ -n $target ]] && break
    sleep 0.1
done
[[ -n $target ]] || { echo "story: the desktop did not start" >&2; cat "$work/desktop.log" >&2; exit 1; }
echo "story: desktop serving speak, listen and face as $target"

robot() { "$hubnode" --home "$work/robot" call --server "$target" "$@"; }

# The robot's camera: a real photo that ships with scikit-image (Eileen Collins), and a
# second still of her a moment later (mirrored and darker: the only photo there is of her).
"$python" - "$work" <<'PY'
import sys
from pathlib import Path
import skimage
from PIL import Image, ImageEnhance, ImageOps
photo = Image.open(Path(skimage.__file__).parent / "data" / "astronaut.png").convert("RGB")
photo.save(Path(sys.argv[1]) / "still-1.png")
later = ImageEnhance.Brightness(ImageOps.mirror(photo)).enhance(0.7)
later.save(Path(sys.argv[1]) / "still-2.jpg", quality=90)
PY

name=$(robot face identify <"$work/still-1.png" | cut -f1)
echo "story: the robot sees a face: $name"
if [[ $name == unknown ]]; then
    robot speak "I don't think I know you. What is your name?" >"$work/question.wav"
    echo "story: the robot says: I don't think I know you. What is your name? ($(stat -c %s "$work/question.wav") bytes of WAV)"
    espeak-ng --stdout "Jenny" >"$work/answer.wav"  # her answer, as the robot's microphone hears it
    name=$(robot listen --words "jenny alice bob carol dave" <"$work/answer.wav")
    echo "story: the robot hears: $name"
    robot face enroll --name "$name" <"$work/still-1.png" >/dev/null
    echo "story: the robot remembers her face as $name"
fi

name=$(robot face identify <"$work/still-2.jpg" | cut -f1)
robot speak "Hello $name!" >"$hello"
echo "story: later, the robot sees her again and says: Hello $name! ($hello, $(stat -c %s "$hello") bytes)"
