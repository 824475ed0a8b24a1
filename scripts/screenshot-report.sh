#!/bin/bash
# Screenshots of a report's HTML page as a reader sees it, at a desktop and a laptop width.
#
#     scripts/screenshot-report.sh OUT_PREFIX SWEEP_DIR... [REPORT_OPTION...]
#
# Renders `python -m analysis report SWEEP_DIR... [REPORT_OPTION...]` (e.g. --price-per-gpu-hour 3.5) into a
# temporary directory (nothing is written into the sweep directories), opens it in headless Chromium at 1440
# and 1024 px wide and writes OUT_PREFIX-1440.png and OUT_PREFIX-1024.png: the whole page, its blank bottom
# cut off, at most MAX_HEIGHT px tall (environment, default 12000), compressed with pngquant where it is
# installed. Needs chromium (Debian: apt-get install chromium) and Pillow; CHROMIUM names another binary.
set -euo pipefail

if [ $# -lt 2 ]; then
    echo "usage: $0 OUT_PREFIX SWEEP_DIR... [REPORT_OPTION...]" >&2
    exit 2
fi
prefix=$(realpath -m "$1")
shift
report_args=()
for arg in "$@"; do  # sweep directories as absolute paths: the report runs from the repository root
    if [ -d "$arg" ]; then report_args+=("$(realpath "$arg")"); else report_args+=("$arg"); fi
done
max_height=${MAX_HEIGHT:-12000}
chromium=${CHROMIUM:-chromium}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

cd "$(dirname "$0")/.."
python3 -m analysis report "${report_args[@]}" --out "$work/report" > /dev/null

for width in 1440 1024; do
    png="$prefix-$width.png"
    # --no-sandbox: Chromium refuses to start as root without it; the page is a local file with no scripts
    "$chromium" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
        --disable-component-update --disable-sync --hide-scrollbars --user-data-dir="$work/profile-$width" \
        --window-size="$width,$max_height" --screenshot="$png" "file://$work/report/report.html" 2>/dev/null
    python3 - "$png" <<'EOF'
import sys

from PIL import Image, ImageChops

path = sys.argv[1]
image = Image.open(path).convert("RGB")
content = ImageChops.difference(image, Image.new("RGB", image.size, "white")).getbbox()
image.crop((0, 0, image.width, min(image.height, content[3] + 40))).save(path, optimize=True)
EOF
    if command -v pngquant > /dev/null; then
        pngquant --force --skip-if-larger --quality 60-90 --output "$png" -- "$png" || true
    fi
    echo "$png: $(python3 -c "from PIL import Image; print(*Image.open('$png').size, sep='x')") px, $(du -h "$png" | cut -f1)"
done
