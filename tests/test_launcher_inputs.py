"""Bad launcher inputs give one line naming the file, line, key or device at fault (issue 20): cluster YAML
syntax errors and duplicate keys, rank-table numbers that are not ASCII digits, unusable addresses, hccn.conf
giving a device two addresses, and `ranktable generate` on a loopback hostname or without --devices."""
import json
import socket
import subprocess
import sys
from collections import namedtuple
from pathlib import Path

import pytest

from conftest import fake_tools_env
from launcher import devices, ranktable
from launcher.cli import main
from launcher.cluster import load_cluster
from launcher.errors import LaunchError

HERE = Path(__file__).parent
GOLDEN = HERE / "golden"
SCRIPT = str(HERE / "launch_scripts" / "print_env.py")


def one_line_error(capsys, argv, prog):
    """Run the CLI in-process: exit 2 and exactly one stderr line 'mindrun PROG: error: ...'; returns it."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.endswith("\n"), err
    assert err.startswith(f"mindrun {prog}: error: ") and "Traceback" not in err
    return err


def unreadable(*args, **kwargs):
    raise PermissionError(13, "Permission denied")


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# ---- cluster files ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text,where,message", [
    ("nodes:\n  - host: 10.0.0.1\n   devices: 8\n", ":3:4: not valid YAML: expected <block end>", "block collection"),
    ("backend: ascend\nnodes: [{host: a, devices: 2}\n", ":3:1: not valid YAML: expected ',' or ']'",
     "flow sequence on line 2"),
    ("name: a\nnodes: x: y\n", ":2:9: not valid YAML: mapping values are not allowed here", ""),
    ("name: a\x07\nnodes: []\n", ":1:8: not valid YAML: character U+0007 is not allowed", ""),
])
def test_cluster_yaml_syntax_error_is_one_line_with_file_line_and_column(tmp_path, capsys, text, where, message):
    path = write(tmp_path, "c.yaml", text)
    with pytest.raises(LaunchError) as err:
        load_cluster(path)
    assert str(err.value).startswith(path + where) and message in str(err.value) and "\n" not in str(err.value)
    assert path + where in one_line_error(capsys, ["--cluster", path, "--dry_run", SCRIPT], "launch")
    assert path + where in one_line_error(capsys, ["doctor", "--cluster", path], "doctor")
    assert path + where in one_line_error(capsys, ["ranktable", "generate", "--cluster", path, "-o",
                                                   str(tmp_path / "rt.json")], "ranktable")


@pytest.mark.parametrize("text,key,lines", [
    ("name: a\nbackend: cpu\nname: b\nnodes:\n  - host: 10.0.0.1\n", "name", (1, 3)),
    ("nodes:\n  - host: 10.0.0.1\n    devices: 8\n    host: 10.0.0.2\n", "host", (2, 4)),
    ("nodes:\n  - {host: 10.0.0.1, devices: 2, devices: 4}\n", "devices", (2, 2)),
])
def test_duplicate_cluster_keys_name_the_key_and_both_lines(tmp_path, capsys, text, key, lines):
    path = write(tmp_path, "c.yaml", text)
    with pytest.raises(LaunchError) as err:
        load_cluster(path)
    expected = f"duplicate key '{key}' on lines {lines[0]} and {lines[1]}"
    assert str(err.value).startswith(f"{path}:{lines[1]}:") and expected in str(err.value)
    assert expected in one_line_error(capsys, ["--cluster", path, "--dry_run", SCRIPT], "launch")
    assert expected in one_line_error(capsys, ["doctor", "--cluster", path], "doctor")


def test_yaml_merge_keys_are_not_duplicates(tmp_path):
    path = write(tmp_path, "c.yaml", "nodes:\n  - &n {host: 10.0.0.1, devices: 2}\n"
                                     "  - <<: *n\n    host: 10.0.0.2\n")
    assert [n.host for n in load_cluster(path).nodes] == ["10.0.0.1", "10.0.0.2"]


@pytest.mark.parametrize("text", ["nodes:\n  - host: 10.0.0.1\n    devices: 8\n  host: x\n",
                                  "nodes:\n  - host: 10.0.0.1\nnodes:\n  - host: 10.0.0.2\n"])
def test_bad_cluster_file_on_the_launch_path_exits_2_with_one_stderr_line(tmp_path, text):
    path = write(tmp_path, "c.yaml", text)
    for args in (["--cluster", path, "--dry_run", SCRIPT], ["doctor", "--cluster", path]):
        proc = subprocess.run([sys.executable, "-m", "launcher", *args], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr
        assert f"error: {path}:" in proc.stderr and "not valid YAML" in proc.stderr


def test_cluster_path_that_is_a_directory_or_unreadable(tmp_path, monkeypatch):
    with pytest.raises(LaunchError, match=f"cluster file {tmp_path} is a directory"):
        load_cluster(tmp_path)
    path = write(tmp_path, "c.yaml", "nodes:\n  - host: 10.0.0.1\n")
    monkeypatch.setattr(Path, "read_text", unreadable)
    with pytest.raises(LaunchError, match=r"cluster file .*c.yaml cannot be read \(Permission denied\); check its"):
        load_cluster(path)


def test_cluster_device_ip_that_no_npu_can_have_is_refused(tmp_path):
    path = write(tmp_path, "c.yaml", "nodes:\n  - host: 10.0.0.1\n    devices: 2\n    device_ips: [1.2.3.4, 0.0.0.0]\n")
    with pytest.raises(LaunchError, match=r"'nodes\[0\].device_ips\[1\]' = '0.0.0.0' is the unspecified address"):
        load_cluster(path)


# ---- rank tables --------------------------------------------------------------------------------------------

def golden(name="ranktable_2x8.json"):
    return json.loads((GOLDEN / name).read_text())


def _set(table, server, device, key, value):
    table["server_list"][server]["device"][device][key] = value
    return table


def _server(table, server, key, value):
    table["server_list"][server][key] = value
    return table


@pytest.mark.parametrize("name,mutate,message", [
    ("superscript rank_id", lambda t: _set(t, 0, 2, "rank_id", "\u00b2"),
     "server 10.0.0.10 device 2: rank_id must be a number in a string (ASCII digits 0-9"),
    ("arabic-indic rank_id", lambda t: _set(t, 0, 3, "rank_id", "\u0663"),
     "server 10.0.0.10 device 3: rank_id must be a number in a string"),
    ("arabic-indic device_id", lambda t: _set(t, 1, 3, "device_id", "\u0663"),
     "server 10.0.0.2 device[3]: device_id must be a number in a string"),
    ("fullwidth device_port", lambda t: _set(t, 1, 0, "device_port", "\uff11"),
     "server 10.0.0.2 device 0: device_port must be a number in a string"),
    ("arabic-indic server_count", lambda t: dict(t, server_count="\u0662"),
     "server_count must be a number in a string"),
    ("empty server_id", lambda t: _server(t, 1, "server_id", ""), "server_list[1]: server_id is empty"),
    ("blank server_id", lambda t: _server(t, 0, "server_id", "  "), "server_list[0]: server_id is empty"),
    ("unspecified device_ip", lambda t: _set(t, 1, 4, "device_ip", "0.0.0.0"),
     "server 10.0.0.2 device 4: device_ip '0.0.0.0' is the unspecified address"),
    ("unspecified IPv6 device_ip", lambda t: _set(t, 0, 0, "device_ip", "::"),
     "server 10.0.0.10 device 0: device_ip '::' is the unspecified address"),
    ("loopback device_ip", lambda t: _set(t, 0, 5, "device_ip", "127.0.0.1"),
     "server 10.0.0.10 device 5: device_ip '127.0.0.1' is a loopback address"),
    ("multicast device_ip", lambda t: _set(t, 0, 6, "device_ip", "224.0.0.1"),
     "server 10.0.0.10 device 6: device_ip '224.0.0.1' is a multicast address"),
])
def test_rank_table_inputs_name_the_server_and_device(tmp_path, capsys, name, mutate, message):
    path = write(tmp_path, "bad.json", json.dumps(mutate(golden())))
    with pytest.raises(LaunchError) as err:
        ranktable.load(path)
    assert str(err.value).startswith(path) and message in str(err.value)
    assert message in one_line_error(capsys, ["ranktable", "validate", path], "ranktable")


def test_rank_table_super_device_id_must_be_ascii_digits(tmp_path, capsys):
    table = _set(golden("ranktable_v1.2_2x4.json"), 1, 2, "super_device_id", "\u00b2")
    path = write(tmp_path, "bad.json", json.dumps(table))
    err = one_line_error(capsys, ["ranktable", "validate", path], "ranktable")
    assert "server node_1 device 2: super_device_id must be a number in a string" in err


def test_rank_table_path_that_is_a_directory_or_unreadable(tmp_path, capsys, monkeypatch):
    err = one_line_error(capsys, ["ranktable", "validate", str(tmp_path)], "ranktable")
    assert f"rank table {tmp_path} is a directory, not a rank table file" in err
    err = one_line_error(capsys, ["--launch_mode", "ranktable", "--rank_table_file", str(tmp_path), "--worker_num",
                                  "8", "--local_worker_num", "8", "--dry_run", SCRIPT], "launch")
    assert "is a directory, not a rank table file" in err
    path = write(tmp_path, "rt.json", (GOLDEN / "ranktable_1x8.json").read_text())
    monkeypatch.setattr(Path, "read_text", unreadable)
    err = one_line_error(capsys, ["ranktable", "validate", path], "ranktable")
    assert f"rank table {path} cannot be read (Permission denied); check its permissions" in err


# ---- hccn.conf ------------------------------------------------------------------------------------------------

def hccn_conf(tmp_path, count=8, extra=""):
    return write(tmp_path, "hccn.conf", "".join(f"address_{i}=192.168.100.{101 + i}\nnetmask_{i}=255.255.255.0\n"
                                                for i in range(count)) + extra)


def test_hccn_conf_giving_a_device_two_addresses_names_both_lines(tmp_path, capsys):
    conf = hccn_conf(tmp_path, 4, "address_2 = 192.168.100.199\n")
    expected = (f"{conf}: device 2 has two addresses, line 5 'address_2=192.168.100.103' and line 9 "
                f"'address_2 = 192.168.100.199'")
    with pytest.raises(LaunchError) as err:
        devices.ips_from_hccn_conf(conf)
    assert str(err.value).startswith(expected)
    argv = ["ranktable", "generate", "--devices", "0-3", "--server_id", "10.0.0.1", "--device_ip_source",
            "hccn_conf", "--hccn_conf", conf, "-o", str(tmp_path / "rt.json")]
    assert expected in one_line_error(capsys, argv, "ranktable")
    assert expected in one_line_error(capsys, argv[:2] + argv[4:], "ranktable")  # also when it lists the devices
    assert not (tmp_path / "rt.json").exists()


def test_hccn_conf_repeating_the_same_address_is_accepted(tmp_path):
    conf = hccn_conf(tmp_path, 2, "address_1=192.168.100.102\n")
    assert devices.ips_from_hccn_conf(conf) == {0: "192.168.100.101", 1: "192.168.100.102"}


# ---- ranktable generate: server_id and default devices ------------------------------------------------------

Addr = namedtuple("Addr", "family address")


@pytest.fixture
def host_named(monkeypatch):
    """Make this host 'npu-host', resolving to the given address, with eth0 10.1.2.3 and ib0 fd00::7."""
    def setup(address):
        monkeypatch.setattr(socket, "gethostname", lambda: "npu-host")
        monkeypatch.setattr(socket, "getaddrinfo", lambda host, *a, **k: [
            (socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, 0))])
        import psutil

        monkeypatch.setattr(psutil, "net_if_addrs", lambda: {
            "lo": [Addr(socket.AF_INET, "127.0.0.1"), Addr(socket.AF_INET6, "::1")],
            "ib0": [Addr(socket.AF_INET6, "fd00::7"), Addr(socket.AF_INET6, "fe80::1%ib0")],
            "eth0": [Addr(socket.AF_INET, "10.1.2.3"), Addr(socket.AF_PACKET, "02:00:00:00:00:01")]})
    return setup


@pytest.mark.parametrize("address", ["127.0.1.1", "::1"])
def test_generate_refuses_a_hostname_that_resolves_to_loopback(tmp_path, capsys, host_named, address):
    host_named(address)
    out = tmp_path / "rt.json"
    err = one_line_error(capsys, ["ranktable", "generate", "--devices", "0-1", "--device_ip_source", "hccn_conf",
                                  "--hccn_conf", hccn_conf(tmp_path), "-o", str(out)], "ranktable")
    assert f"this host's name 'npu-host' resolves to {address}, a loopback address" in err
    assert "pass --server_id with this server's address, e.g. --server_id 10.1.2.3 (this host has 10.1.2.3, " \
           "fd00::7)" in err
    assert not out.exists()


def test_generate_uses_a_routable_hostname_address_or_the_given_server_id(tmp_path, capsys, host_named):
    host_named("10.1.2.3")
    out = tmp_path / "rt.json"
    base = ["ranktable", "generate", "--devices", "0-1", "--device_ip_source", "hccn_conf", "--hccn_conf",
            hccn_conf(tmp_path), "-o", str(out)]
    assert main(base) == 0
    assert ranktable.server_ids(json.loads(out.read_text())) == ["10.1.2.3"]
    host_named("127.0.0.1")
    assert main(base + ["--server_id", "10.9.9.9"]) == 0
    assert ranktable.server_ids(json.loads(out.read_text())) == ["10.9.9.9"]


def generate_without_devices(tmp_path, conf):
    return ["ranktable", "generate", "--server_id", "10.0.0.1", "--device_ip_source", "hccn_conf", "--hccn_conf",
            conf, "-o", str(tmp_path / "rt.json")]


def test_generate_defaults_to_the_npus_npu_smi_lists(tmp_path, capsys, monkeypatch):
    env = fake_tools_env(tmp_path / "bin", **{"npu-smi": "fake_npu_smi"})
    monkeypatch.setenv("PATH", env["PATH"])
    monkeypatch.setenv("FAKE_NPU_COUNT", "16")
    assert main(generate_without_devices(tmp_path, hccn_conf(tmp_path, 16))) == 0
    assert capsys.readouterr().err == "[mindrun] devices 0-15 from 'npu-smi info'; pass --devices to choose\n"
    table = json.loads((tmp_path / "rt.json").read_text())
    assert [d["device_id"] for d in table["server_list"][0]["device"]] == [str(i) for i in range(16)]


def test_generate_defaults_to_the_devices_of_hccn_conf_without_npu_smi(tmp_path, capsys, monkeypatch):
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    conf = hccn_conf(tmp_path, 16)
    assert main(generate_without_devices(tmp_path, conf)) == 0
    assert capsys.readouterr().err == f"[mindrun] devices 0-15 from {conf}; pass --devices to choose\n"
    assert ranktable.world_size(json.loads((tmp_path / "rt.json").read_text())) == 16
    assert main(generate_without_devices(tmp_path, conf) + ["--devices", "0-7"]) == 0
    assert capsys.readouterr().err == "" and ranktable.world_size(json.loads((tmp_path / "rt.json").read_text())) == 8


def test_generate_without_any_device_source_asks_for_devices(tmp_path, capsys, monkeypatch):
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    missing = str(tmp_path / "no-hccn.conf")
    err = one_line_error(capsys, generate_without_devices(tmp_path, missing), "ranktable")
    assert f"no --devices given and none found (npu-smi is not on PATH and {missing} does not exist); " \
           f"pass --devices" in err


def test_device_list_round_trips():
    assert devices.format_device_list([6, 0, 1, 2, 3, 9, 8]) == "0-3,6,8-9"
    assert devices.parse_device_list(devices.format_device_list(range(16))) == list(range(16))
