"""A real two-node run: ``duma train RUN.yaml --hostfile FILE`` through DeepSpeed's multi-node
launcher (pdsh over ssh) onto two host names that both reach this machine through an sshd the
test starts on a free port, one process a node over gloo; it must train on both ranks and end
where a one-process run with the same effective batch ends.

Setup, all undone afterwards: Debian's ``openssh-server`` and ``pdsh`` (apt-get, when missing
and we are root), a temporary host key, client key and authorized_keys, an sshd on 127.0.0.1
and an ``ssh`` wrapper first on the launcher's PATH that adds a private client config (host
names -> 127.0.0.1 and the port, the key, no known_hosts). Nothing in ~/.ssh or /etc/hosts
is read or changed; /run/sshd (sshd's privilege separation folder) is made when missing and
removed again.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from test_train_cli import DUMA, child_env, write_config

NODES = ("duma-node1", "duma-node2")
SSHD = "/usr/sbin/sshd"
PACKAGES = ("openssh-server", "pdsh")


def _missing() -> list[str]:
    return [name for name, path in (("openssh-server", SSHD), ("pdsh", shutil.which("pdsh")),
                                    ("openssh-client", shutil.which("ssh")),
                                    ("openssh-client", shutil.which("ssh-keygen")))
            if not path or not os.access(path, os.X_OK)]


def _install_packages() -> str | None:
    """None when sshd, ssh and pdsh are there (installed now if need be), else why not."""
    if not _missing():
        return None
    if os.geteuid() != 0:
        return f"not root: cannot apt-get install {' '.join(PACKAGES)} (missing: {', '.join(_missing())})"
    if not shutil.which("apt-get"):
        return f"no apt-get to install {' '.join(PACKAGES)} (missing: {', '.join(_missing())})"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES, "openssh-client"]
    for cmds in ([install], [["apt-get", "update", "-q"], install]):
        try:
            if all(subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  timeout=180).returncode == 0 for cmd in cmds) and not _missing():
                return None
        except subprocess.TimeoutExpired:
            return f"apt-get install {' '.join(PACKAGES)} took over 180 s"
    return f"apt-get could not install {' '.join(PACKAGES)} (missing: {', '.join(_missing())})"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _descendants(pid: int) -> list[int]:
    import psutil

    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _kill(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture(scope="module")
def ssh_nodes(tmp_path_factory):
    """Two ssh host names for this machine: yields (PATH with the ssh wrapper first, the
    sshd's pid); kills the sshd and all it started, and removes what it made, afterwards."""
    why = _install_packages()
    if why:
        pytest.skip(why)
    if os.geteuid() != 0:
        pytest.skip("not root: sshd needs root to start sessions for this user")
    d = tmp_path_factory.mktemp("ssh")
    for key in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "duma-test", "-f", str(d / key)],
                       check=True, timeout=30, stdout=subprocess.DEVNULL)
    (d / "authorized_keys").write_text((d / "client_key.pub").read_text())
    port = _free_port()
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host_key'}\nPidFile {d / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {d / 'authorized_keys'}\nPermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
        "PrintMotd no\nPrintLastLog no\nX11Forwarding no\nSubsystem sftp internal-sftp\n")
    (d / "ssh_config").write_text(
        f"Host {' '.join(NODES)}\n  HostName 127.0.0.1\n  Port {port}\n  User root\n"
        f"  IdentityFile {d / 'client_key'}\n  IdentitiesOnly yes\n  BatchMode yes\n"
        "  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  GlobalKnownHostsFile /dev/null\n"
        "  LogLevel ERROR\n  ConnectTimeout 10\n")
    bin_dir = d / "bin"
    bin_dir.mkdir()
    ssh_bin = shutil.which("ssh")
    (bin_dir / "ssh").write_text(f'#!/bin/sh\nexec {ssh_bin} -F {d / "ssh_config"} "$@"\n')
    (bin_dir / "ssh").chmod(0o755)
    path = f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}"

    privsep = Path("/run/sshd")
    made_privsep = not privsep.exists()
    if made_privsep:
        privsep.mkdir(mode=0o755, parents=True)
    log = open(d / "sshd.log", "w")
    sshd = subprocess.Popen([SSHD, "-D", "-e", "-f", str(d / "sshd_config")], stdout=log, stderr=log,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 30
        while True:
            probe = [subprocess.run(["ssh", node, "true"], env={**os.environ, "PATH": path}, timeout=20,
                                    capture_output=True, text=True) for node in NODES]
            if all(p.returncode == 0 for p in probe):
                break
            if sshd.poll() is not None or time.time() > deadline:
                pytest.skip(f"sshd on port {port} did not take ssh logins: "
                            f"{(d / 'sshd.log').read_text()[-500:]} {probe[-1].stderr[-300:]}")
            time.sleep(0.3)
        yield path, sshd.pid
    finally:
        _kill([*_descendants(sshd.pid), sshd.pid])
        sshd.wait(timeout=30)
        log.close()
        if made_privsep:
            shutil.rmtree(privsep, ignore_errors=True)


def run(cmd: list[str], env: dict[str, str], cwd: Path, timeout: float, watch: int | None = None):
    """Run a command in its own session; on a timeout kill it, its group and (``watch``) what
    the sshd started, then fail."""
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with_ssh = _descendants(watch) if watch else []
        os.killpg(proc.pid, signal.SIGKILL)
        _kill(with_ssh)
        out, err = proc.communicate(timeout=30)
        pytest.fail(f"{' '.join(cmd[:6])} ... ran over {timeout} s: {err[-3000:]}")
    return proc.returncode, out, err


def test_two_nodes_over_ssh_match_one_process(ssh_nodes, tiny_model, tmp_path):
    import torch
    from safetensors.torch import load_file

    from duma.trainers.base import read_log

    path, sshd_pid = ssh_nodes
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("".join(f"{node} slots=1\n" for node in NODES))
    two, one = tmp_path / "two", tmp_path / "one"
    # Same effective batch: 2 nodes x 1 process x batch 2 = 1 process x batch 2 x grad_accum 2
    # (step k takes micro-batches 2k and 2k+1 of the epoch's order either way).
    # Three steps, one thread a process (test_train_cli's config otherwise).
    short = {"max_steps": 3, "warmup_ratio": 0.0, "threads": 1}
    write_config(tmp_path / "two.yaml", tiny_model, two, batch_size=2, **short)
    write_config(tmp_path / "one.yaml", tiny_model, one, batch_size=2, grad_accum=2, **short)

    rc, out, err = run([*DUMA, "train", str(tmp_path / "two.yaml"), "--hostfile", str(hostfile), "--json"],
                       child_env(PATH=path), tmp_path, timeout=300, watch=sshd_pid)
    assert rc == 0, (out + err)[-4000:]
    deadline = time.time() + 15
    while _descendants(sshd_pid) and time.time() < deadline:  # the workers on both "nodes" end
        time.sleep(0.2)
    assert _descendants(sshd_pid) == []
    records = read_log(two / "train_log.jsonl")
    assert [r["world_size"] for r in records if r["event"] == "start"] == [2]
    two_steps = [r for r in records if r["event"] == "step"]
    assert [r["step"] for r in two_steps] == [1, 2, 3]
    for r in two_steps:  # both ranks ran a forward/backward on their own micro-batch
        assert len(r["rank_losses"]) == 2 and r["rank_losses"][0] != r["rank_losses"][1]
        assert len(r["samples"]) == len(set(r["samples"])) == 4
    summaries = [json.loads(ln.partition(": ")[2]) for ln in out.splitlines() if ln.startswith(f"{NODES[0]}: {{")]
    assert len(summaries) == 1 and summaries[0]["world_size"] == 2, out  # rank 0 (on node 1) reports
    assert (two / "model.safetensors").is_file()

    rc, out, err = run([*DUMA, "train", str(tmp_path / "one.yaml"), "--json"], child_env(), tmp_path, timeout=300)
    assert rc == 0, err[-4000:]
    one_steps = [r for r in read_log(one / "train_log.jsonl") if r["event"] == "step"]
    assert [r["samples"] for r in one_steps] == [r["samples"] for r in two_steps]
    for a, b in zip(one_steps, two_steps):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-5)
    one_w, two_w = load_file(str(one / "model.safetensors")), load_file(str(two / "model.safetensors"))
    assert one_w.keys() == two_w.keys()
    for key in one_w:
        assert torch.allclose(one_w[key], two_w[key], atol=1e-5), key


def test_node_env_file_carries_duma_and_torch_variables(tmp_path, monkeypatch):
    """What DeepSpeed's launcher exports on every node besides PYTHON*: duma's and torch's
    variables (not PATH, not values a shell would expand), after the user's .deepspeed_env."""
    from duma.trainers.runner import node_env_file

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.deepspeed_env
    monkeypatch.delenv("DS_ENV_FILE", raising=False)
    (tmp_path / ".deepspeed_env").write_text("NCCL_SOCKET_IFNAME=eth0\n")
    path = node_env_file({"DUMA_HOME": "/runs/home", "TORCH_EXTENSIONS_DIR": "/cache/ext", "OMP_NUM_THREADS": "2",
                          "PATH": "/usr/bin", "DUMA_ODD": "$(rm -rf x)", "HF_HOME": "/hf cache"})
    try:
        assert Path(path).read_text().splitlines() == [
            "NCCL_SOCKET_IFNAME=eth0", "DUMA_HOME=/runs/home", "HF_HOME=/hf cache", "OMP_NUM_THREADS=2",
            "TORCH_EXTENSIONS_DIR=/cache/ext"]
    finally:
        os.unlink(path)
