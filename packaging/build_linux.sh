#!/usr/bin/env bash
# Build the Linux one-folder app: dist/qlora-studio/qlora-studio (+ the desktop entry and icon).
#
#   packaging/build_linux.sh            build, then check the frozen CLI
#   packaging/build_linux.sh --install  ...and install it for this user (~/.local)
#
# Needs the app's dependencies installed in the current Python (pip install -e ".[demo]")
# and PyInstaller (pip install -e ".[build]"). Takes 5-15 minutes; the folder is 1-2 GB with
# CPU torch, several GB with CUDA torch.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
APP="$ROOT/dist/qlora-studio"
cd "$ROOT"

"$PYTHON" -m PyInstaller --version >/dev/null 2>&1 || {
    echo "PyInstaller is missing: $PYTHON -m pip install -e '.[build]'" >&2
    exit 1
}

start=$(date +%s)
"$PYTHON" -m PyInstaller --noconfirm \
    --distpath "$ROOT/dist" --workpath "$ROOT/build/pyinstaller" \
    "$ROOT/packaging/qlora_studio.spec"

# what a user's desktop needs next to the binary
cp "$ROOT/packaging/qlora-studio.desktop" "$APP/"
cp "$ROOT/resources/icons/qlora-studio.png" "$ROOT/resources/icons/qlora-studio.svg" "$APP/"

# the frozen binary must be the CLI too (the GUI starts training as `qlora-studio train ...`)
"$APP/qlora-studio" --help >/dev/null
"$APP/qlora-studio" inspect-data "$ROOT/resources/datasets/dates-train.jsonl" >/dev/null
echo "built $APP ($(du -sh "$APP" | cut -f1)) in $(( $(date +%s) - start )) s"

if [[ "${1:-}" == "--install" ]]; then
    share="${XDG_DATA_HOME:-$HOME/.local/share}"
    dest="$share/qlora-studio/app"
    rm -rf "$dest" && mkdir -p "$dest" "$HOME/.local/bin" \
        "$share/applications" "$share/icons/hicolor/256x256/apps" \
        "$share/icons/hicolor/scalable/apps"
    cp -a "$APP/." "$dest/"
    ln -sf "$dest/qlora-studio" "$HOME/.local/bin/qlora-studio"
    cp "$ROOT/resources/icons/qlora-studio.png" "$share/icons/hicolor/256x256/apps/"
    cp "$ROOT/resources/icons/qlora-studio.svg" "$share/icons/hicolor/scalable/apps/"
    # Exec with the absolute path: ~/.local/bin is not on every desktop session's PATH
    sed -e "s|^Exec=.*|Exec=$dest/qlora-studio|" -e "s|^TryExec=.*|TryExec=$dest/qlora-studio|" \
        "$ROOT/packaging/qlora-studio.desktop" > "$share/applications/qlora-studio.desktop"
    command -v update-desktop-database >/dev/null && update-desktop-database "$share/applications" || true
    echo "installed to $dest; menu entry $share/applications/qlora-studio.desktop"
fi
