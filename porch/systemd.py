"""`porchd unit`: a systemd unit for porchd with this installation's paths and the chosen user.

scripts/porchd.service is this module's output for a `sudo pip install .` (programs in
/usr/local/bin, run as root); the test suite checks that the two agree and that both pass
`systemd-analyze verify`.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import shutil
import stat
import sys
from collections.abc import Sequence
from pathlib import Path

DEFAULT_CONFIGS = ("/etc/porch/pipelines",)
CONTROL = "/run/porch/porchd.sock"
_PLAIN = re.compile(r"[A-Za-z0-9_@%+=:,./-]+")

HEADER = """\
# systemd unit for porchd, the Porch supervisor daemon (written by `porchd unit`).
#
# Install (`porchd unit --help` writes one for another user, configs or installation):
#   porchd unit > porchd.service          # ExecStart= is the porchd you ran it with
#   sudo mkdir -p /etc/porch/pipelines     # the pipeline configs (and their scripts)
#   sudo cp porchd.service /etc/systemd/system/ && sudo systemctl daemon-reload
#   sudo systemctl enable --now porchd
#
# The control socket {control} is mode 0600 in a 0700 folder: only {who} can
# use it, so run porchctl as {who_short}:
#   {porchctl_example}
# `systemctl reload porchd` after editing the configs, `journalctl -u porchd` for porchd's own
# log, `porchctl logs NAME` for a pipeline's output (kept under /var/lib/porch).
# Scripts run under the Python that runs porchd: install what they import into it, e.g.
#   {pip} install numpy
"""

BODY = """\

[Unit]
Description=Porch pipeline supervisor (porchd)
After=network-online.target
Wants=network-online.target

[Service]
# porchd stays in the foreground; there is no fork or pid file.
Type=simple
ExecStart={exec_start}
# Re-reads the configs: starts added pipelines, stops removed ones, restarts changed ones.
ExecReload={exec_reload}
# No ExecStop: systemd's SIGTERM goes to porchd alone (KillMode=mixed), which handles it as
# `porchctl stop` and stops its pipelines gracefully; whatever is still running in the cgroup
# after TimeoutStopSec (a stuck script and its children) then gets SIGKILL.
KillMode=mixed
TimeoutStopSec=30
Restart=on-failure
RestartSec=2
{user}
# /run/porch (control and worker sockets) and /var/lib/porch (pipeline logs), both 0700,
# created by systemd and owned by User= when it is set.
RuntimeDirectory=porch
RuntimeDirectoryMode=0700
StateDirectory=porch
StateDirectoryMode=0700
Environment=PORCH_RUNTIME_DIR=/run/porch PORCH_STATE_DIR=/var/lib/porch

# Hardening that pipelines rarely notice; relax ReadWritePaths if scripts write elsewhere
# (ProtectHome=read-only still lets porchd and scripts from a home folder run).
NoNewPrivileges=yes
PrivateTmp=yes
ProtectSystem=strict
ReadWritePaths=/var/lib/porch
ProtectHome=read-only
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectControlGroups=yes
RestrictSUIDSGID=yes
LockPersonality=yes

[Install]
WantedBy=multi-user.target
"""

ROOT_USER = """
# Runs as root. For a dedicated unprivileged user: `porchd unit --user porch` (create it with
# `sudo useradd --system --no-create-home --shell /usr/sbin/nologin porch`).
"""

NAMED_USER = """
# Runs as {user} (it must be able to read porchd, the configs and their scripts).
User={user}
"""


def program_dir() -> Path:
    """Where this installation's porchd and porchctl are: beside this Python, else on PATH."""
    here = Path(sys.executable).parent
    if (here / "porchd").exists():
        return here.absolute()
    found = shutil.which("porchd")
    return Path(found).parent if found else here.absolute()


def quote(arg: str) -> str:
    """One ExecStart= argument: specifiers (%) and variables ($) escaped, quoted if needed."""
    text = arg.replace("%", "%%").replace("$", "$$")
    if _PLAIN.fullmatch(text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def unit_text(
    bin_dir: Path,
    configs: Sequence[str] = DEFAULT_CONFIGS,
    user: str | None = None,
) -> str:
    """The unit file: porchd and porchctl from `bin_dir`, started on `configs`, as `user`."""
    porchd, porchctl = str(bin_dir / "porchd"), str(bin_dir / "porchctl")
    exec_start = " ".join(quote(a) for a in (porchd, "start", *configs))
    if user in (None, "root"):
        who, who_short, as_user, user_lines = "root", "root", "sudo ", ROOT_USER
    else:
        who, who_short = f"the service's user, {user},", user
        as_user, user_lines = f"sudo -u {user} ", NAMED_USER.format(user=user)
    header = HEADER.format(
        control=CONTROL,
        who=who,
        who_short=who_short,
        porchctl_example=f"{as_user}{porchctl} --control {CONTROL} status",
        pip=bin_dir / "pip",
    )
    return header + BODY.format(
        exec_start=exec_start, exec_reload=f"{quote(porchctl)} reload", user=user_lines
    )


def unreachable(user: str, paths: Sequence[Path]) -> list[str]:
    """Why `user` could not reach each of `paths` (a folder on the way it may not enter), e.g.
    a virtualenv under root's 0700 home for a `User=porch` unit; [] when it can reach them all.
    Judged by mode bits and owners (root could enter anything, so os.access cannot tell)."""
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        return []
    if entry.pw_uid == 0:
        return []
    groups = {entry.pw_gid} | {g.gr_gid for g in _groups_of(user)}
    problems = []
    for path in paths:
        for folder in _folders_to(path):
            try:
                info = folder.stat()
            except OSError:
                break  # missing: the unit's own business (configs made later)
            if not _may_enter(info, entry.pw_uid, groups):
                mode = stat.S_IMODE(info.st_mode)
                problems.append(f"{path}: user {user} cannot enter {folder} (mode {mode:o})")
                break
    return problems


def _folders_to(path: Path) -> list[Path]:
    real = Path(os.path.realpath(path))
    return [*reversed(real.parents), real] if real.is_dir() else [*reversed(real.parents)]


def _may_enter(info: os.stat_result, uid: int, groups: set[int]) -> bool:
    if info.st_uid == uid:
        return bool(info.st_mode & stat.S_IXUSR)
    if info.st_gid in groups:
        return bool(info.st_mode & stat.S_IXGRP)
    return bool(info.st_mode & stat.S_IXOTH)


def _groups_of(user: str) -> list[grp.struct_group]:
    return [g for g in grp.getgrall() if user in g.gr_mem]


def interpreter_of(program: Path) -> Path | None:
    """The interpreter a script's #! line names (a virtualenv's python), if any."""
    try:
        with program.open("rb") as file:
            first = file.readline(512)
    except OSError:
        return None
    if not first.startswith(b"#!"):
        return None
    parts = first[2:].decode("utf-8", "replace").split()
    return Path(parts[0]) if parts else None
