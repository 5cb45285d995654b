"""Before Qt opens a window: can its platform plugin load? If not, say what to install.

Qt's own failure is an abort with "Could not load the Qt platform plugin "xcb"" and one library
named at best. On Linux, ``ldd`` on the plugin PySide6 ships lists every missing library at
once; this module maps them to the packages of the user's distribution. No Qt import here: the
check runs before anything loads Qt's libraries.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

EXIT_NO_PLATFORM = 3  # the exit code when the window cannot open (not Qt's abort: 134)

# library soname -> (Debian/Ubuntu, Fedora, Arch) package; the libraries Qt's xcb and wayland
# plugins need beyond a minimal system (PySide6 6.x wheels, `ldd libqxcb.so`)
PACKAGES: dict[str, tuple[str, str, str]] = {
    "libxcb-cursor.so.0": ("libxcb-cursor0", "xcb-util-cursor", "xcb-util-cursor"),
    "libxcb-icccm.so.4": ("libxcb-icccm4", "xcb-util-wm", "xcb-util-wm"),
    "libxcb-keysyms.so.1": ("libxcb-keysyms1", "xcb-util-keysyms", "xcb-util-keysyms"),
    "libxcb-image.so.0": ("libxcb-image0", "xcb-util-image", "xcb-util-image"),
    "libxcb-render-util.so.0": (
        "libxcb-render-util0",
        "xcb-util-renderutil",
        "xcb-util-renderutil",
    ),
    "libxcb-util.so.1": ("libxcb-util1", "xcb-util", "xcb-util"),
    "libxcb-randr.so.0": ("libxcb-randr0", "libxcb", "libxcb"),
    "libxcb-shm.so.0": ("libxcb-shm0", "libxcb", "libxcb"),
    "libxcb-sync.so.1": ("libxcb-sync1", "libxcb", "libxcb"),
    "libxcb-xfixes.so.0": ("libxcb-xfixes0", "libxcb", "libxcb"),
    "libxcb-render.so.0": ("libxcb-render0", "libxcb", "libxcb"),
    "libxcb-shape.so.0": ("libxcb-shape0", "libxcb", "libxcb"),
    "libxcb-xkb.so.1": ("libxcb-xkb1", "libxcb", "libxcb"),
    "libxcb-xinerama.so.0": ("libxcb-xinerama0", "libxcb", "libxcb"),
    "libxcb-xinput.so.0": ("libxcb-xinput0", "libxcb", "libxcb"),
    "libxcb-glx.so.0": ("libxcb-glx0", "libxcb", "libxcb"),
    "libxcb.so.1": ("libxcb1", "libxcb", "libxcb"),
    "libX11-xcb.so.1": ("libx11-xcb1", "libX11-xcb", "libx11"),
    "libX11.so.6": ("libx11-6", "libX11", "libx11"),
    "libXau.so.6": ("libxau6", "libXau", "libxau"),
    "libXdmcp.so.6": ("libxdmcp6", "libXdmcp", "libxdmcp"),
    "libSM.so.6": ("libsm6", "libSM", "libsm"),
    "libICE.so.6": ("libice6", "libICE", "libice"),
    "libxkbcommon.so.0": ("libxkbcommon0", "libxkbcommon", "libxkbcommon"),
    "libxkbcommon-x11.so.0": ("libxkbcommon-x11-0", "libxkbcommon-x11", "libxkbcommon-x11"),
    "libGL.so.1": ("libgl1", "libglvnd-glx", "libglvnd"),
    "libEGL.so.1": ("libegl1", "libglvnd-egl", "libglvnd"),
    "libOpenGL.so.0": ("libopengl0", "libglvnd-opengl", "libglvnd"),
    "libGLX.so.0": ("libglx0", "libglvnd-glx", "libglvnd"),
    "libfontconfig.so.1": ("libfontconfig1", "fontconfig", "fontconfig"),
    "libfreetype.so.6": ("libfreetype6", "freetype", "freetype2"),
    "libglib-2.0.so.0": ("libglib2.0-0", "glib2", "glib2"),
    "libgthread-2.0.so.0": ("libglib2.0-0", "glib2", "glib2"),
    "libdbus-1.so.3": ("libdbus-1-3", "dbus-libs", "dbus"),
    "libwayland-client.so.0": ("libwayland-client0", "libwayland-client", "wayland"),
    "libwayland-cursor.so.0": ("libwayland-cursor0", "libwayland-cursor", "wayland"),
    "libwayland-egl.so.1": ("libwayland-egl1", "libwayland-egl", "wayland"),
}
DISTRIBUTIONS = (  # (name, install command) in the order of PACKAGES' tuples
    ("Debian/Ubuntu", "sudo apt install"),
    ("Fedora", "sudo dnf install"),
    ("Arch", "sudo pacman -S"),
)
PLUGIN_FILES = {"xcb": "libqxcb.so", "wayland": "libqwayland.so"}  # the plugins we can check
_NOT_FOUND = re.compile(r"^\s*(\S+)\s*=>\s*not found", re.MULTILINE)
_DLOPEN_MISSING = re.compile(r"^(\S+\.so[.\d]*): cannot open shared object file")


@dataclass(frozen=True)
class PlatformProblem:
    """Why the window cannot open, and what to do: printed instead of Qt's abort."""

    platform: str
    missing: tuple[str, ...]  # library sonames; empty when the display itself is missing
    text: str


def missing_libraries(ldd_output: str) -> list[str]:
    """The sonames ``ldd`` reports as "not found", each once, in its order."""
    return list(dict.fromkeys(_NOT_FOUND.findall(ldd_output)))


def packages_for(missing: list[str]) -> list[tuple[str, list[str]]]:
    """``[(distribution, packages)]`` that provide ``missing`` (unknown libraries as named)."""
    out = []
    for index, (name, _) in enumerate(DISTRIBUTIONS):
        packages = [PACKAGES[lib][index] if lib in PACKAGES else lib for lib in missing]
        out.append((name, list(dict.fromkeys(packages))))
    return out


def install_advice(missing: list[str]) -> str:
    """The install command per distribution, one a line."""
    lines = []
    for (name, packages), (_, command) in zip(packages_for(missing), DISTRIBUTIONS, strict=True):
        lines.append(f"  {name + ':':15} {command} {' '.join(packages)}")
    return "\n".join(lines)


def platform_candidates(env: Mapping[str, str]) -> list[str]:
    """The platform plugins Qt will try, in order: ``QT_QPA_PLATFORM`` ("wayland;xcb", options
    after ":" dropped), else wayland then xcb in a Wayland session, else xcb."""
    chosen = env.get("QT_QPA_PLATFORM", "").strip()
    if chosen:
        return [part.split(":", 1)[0].strip() for part in chosen.split(";") if part.strip()]
    if env.get("WAYLAND_DISPLAY") and env.get("XDG_SESSION_TYPE") == "wayland":
        return ["wayland", "xcb"]
    return ["xcb"]


def plugin_path(platform: str) -> Path | None:
    """PySide6's plugin file for ``platform`` (found without importing PySide6)."""
    spec = importlib.util.find_spec("PySide6")
    if spec is None or not spec.submodule_search_locations or platform not in PLUGIN_FILES:
        return None
    root = Path(next(iter(spec.submodule_search_locations)))
    path = root / "Qt" / "plugins" / "platforms" / PLUGIN_FILES[platform]
    return path if path.is_file() else None


def unloadable(plugin: Path) -> list[str]:
    """The libraries ``plugin`` needs that the system lacks: all of them through ``ldd``, or,
    without ``ldd``, the first one the dynamic loader names."""
    ldd = shutil.which("ldd")
    if ldd:
        try:
            result = subprocess.run(
                [ldd, str(plugin)], capture_output=True, text=True, timeout=20, check=False
            )
            return missing_libraries(result.stdout)
        except (OSError, subprocess.SubprocessError):
            pass
    try:
        ctypes.CDLL(str(plugin), mode=os.RTLD_LAZY if hasattr(os, "RTLD_LAZY") else 0)
    except OSError as exc:
        found = _DLOPEN_MISSING.match(str(exc))
        return [found.group(1)] if found else []
    return []


def check_platform(
    env: Mapping[str, str] | None = None, system: str = sys.platform
) -> PlatformProblem | None:
    """None when Qt's platform plugin can load (or the check does not apply: not Linux, a
    platform we do not check such as offscreen); else what is missing and what to install."""
    env = os.environ if env is None else env
    if not system.startswith("linux"):
        return None
    failures: list[tuple[str, list[str]]] = []
    for platform in platform_candidates(env):
        plugin = plugin_path(platform)
        if plugin is None:  # offscreen, minimal, eglfs...: nothing we know to check
            return None
        missing = unloadable(plugin)
        if not missing:
            if platform == "xcb" and not env.get("DISPLAY"):
                return _no_display()
            return None
        failures.append((platform, missing))
    platform, missing = failures[0]
    text = (
        f'QLoRA Studio cannot open its window: Qt\'s "{platform}" platform plugin needs '
        f"libraries this system lacks ({', '.join(missing)}). Install them with:\n"
        f"{install_advice(missing)}\n"
        "then run qlora-studio again. Every step also works from the command line "
        "(qlora-studio --help)."
    )
    return PlatformProblem(platform, tuple(missing), text)


def _no_display() -> PlatformProblem:
    text = (
        "QLoRA Studio cannot open its window: there is no display (DISPLAY is not set). Run it "
        "in a desktop session, or under a virtual display (xvfb-run qlora-studio); every step "
        "also works from the command line (qlora-studio --help)."
    )
    return PlatformProblem("xcb", (), text)
