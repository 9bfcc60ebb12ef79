"""dpo-ray installed as a package, not as a checkout: the wheel ships the presets, and an install of it composes
every one of them, from a directory that holds no checkout."""

from __future__ import annotations

import json
import shutil
import site
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_a_wheel_install_ships_every_preset_and_composes_them(tmp_path):
    source, dist = (
        tmp_path / "source",
        tmp_path / "dist",
    )  # a copy: setuptools would reuse a stale build/ in the checkout
    shutil.copytree(ROOT / "dpo_ray", source / "dpo_ray", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist), str(source)],
        check=True,
        capture_output=True,
        cwd=tmp_path,
    )
    (wheel,) = dist.glob("dpo_ray-*.whl")
    # A fresh venv that sees the test venv's packages (torch, hydra, ...) through a path entry; the editable install
    # of the checkout does not come along (a path entry does not run the .pth files of its directory).
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    (purelib,) = (venv / "lib").glob("python3*/site-packages")
    (purelib / "test-venv.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(venv / "bin" / "python"),
            "install",
            "-q",
            "--no-deps",
            str(wheel),
        ],
        check=True,
        capture_output=True,
    )
    script = (
        "import json, dpo_ray\n"
        "from dpo_ray.compose import CONFIG_DIR, compose, presets\n"
        "composed = []\n"
        "for group, names in presets().items():\n"
        "    for name in names:\n"
        "        for command in ('train', 'online'):\n"
        "            override = ('+' if group == 'experiment' else '') + f'{group}={name}'\n"
        "            composed.append((command, override, compose([override], command).model.path))\n"
        "from dpo_ray.stages import read_campaign\n"
        "stages = [s.name for s in read_campaign(CONFIG_DIR / 'campaign' / 'embedded.yaml').stages]\n"
        "print(json.dumps({'package': dpo_ray.__file__, 'configs': str(CONFIG_DIR), 'presets': presets(),\n"
        "                  'composed': composed, 'campaign': stages}))\n"
    )
    done = subprocess.run(
        [str(venv / "bin" / "python"), "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    installed = json.loads(done.stdout.splitlines()[-1])
    assert installed["package"].startswith(str(purelib)) and installed["configs"].startswith(str(purelib))
    groups = [p for p in sorted((ROOT / "dpo_ray" / "configs").glob("*/*.yaml")) if p.parent.name != "campaign"]
    shipped = {p.parent.name: [] for p in groups}
    for p in groups:
        shipped[p.parent.name].append(p.stem)
    assert installed["presets"] == {group: sorted(names) for group, names in sorted(shipped.items())}
    assert len(installed["composed"]) == 2 * sum(len(names) for names in shipped.values())
    assert installed["campaign"] == ["offline_dpo", "online_dpo", "online_kto"]  # campaign files ship, not as presets
    help_text = subprocess.run(
        [str(venv / "bin" / "dpo-ray"), "--help"], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert help_text.returncode == 0 and "recipe: embedded, embedded_online" in help_text.stdout
