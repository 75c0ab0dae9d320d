"""A syslog server for the syslog tests: rsyslogd (Debian's rsyslog),
the real thing, run in the foreground with a configuration of its own.

It listens on UDP (127.0.0.1, and ::1 when the machine has IPv6) on a
free port and on a UNIX datagram socket of its own (as /dev/log would
be), and writes each message it parses as one JSON object a line: the
facility, severity, host name, tag and message as rsyslog understood
them, and the raw datagram.
"""

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time

from . import net
from .backends import stop_process

RSYSLOGD = "/usr/sbin/rsyslogd"

TEMPLATE = (
    '{"from":"%fromhost-ip:::json%",'
    '"facility":"%syslogfacility-text:::json%",'
    '"severity":"%syslogseverity-text:::json%",'
    '"host":"%hostname:::json%",'
    '"tag":"%syslogtag:::json%",'
    '"program":"%programname:::json%",'
    '"msg":"%msg:::json%",'
    '"raw":"%rawmsg:::json%"}\\n')


def skip_reason():
    if not os.path.exists(RSYSLOGD):
        return "rsyslog is not installed (auto/deps test installs it)"
    return None


def free_udp_port(host=net.IPV4):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class Rsyslog:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="smtpgate-syslog-")
        os.chmod(self.dir, 0o755)
        self.port = free_udp_port()
        self.ipv6 = net.ipv6_available()
        self.port6 = free_udp_port(net.IPV6) if self.ipv6 else None
        self.socket_path = os.path.join(self.dir, "log.sock")
        self.out = os.path.join(self.dir, "messages.json")
        self.conf = os.path.join(self.dir, "rsyslog.conf")
        self.proc = None

    @property
    def udp(self):
        return f"127.0.0.1:{self.port}"

    @property
    def udp6(self):
        return f"[::1]:{self.port6}"

    @property
    def unix(self):
        return f"unix:{self.socket_path}"

    def _write_conf(self):
        inputs = [f'input(type="imudp" address="127.0.0.1" '
                  f'port="{self.port}")']
        if self.ipv6:
            inputs.append(f'input(type="imudp" address="::1" '
                          f'port="{self.port6}")')
        text = "\n".join([
            f'global(workDirectory="{self.dir}" maxMessageSize="16k")',
            'module(load="imudp")',
            'module(load="imuxsock" SysSock.Use="off")',
            *inputs,
            f'input(type="imuxsock" Socket="{self.socket_path}" '
            'UseSpecialParser="off" IgnoreTimestamp="off" '
            'UseSysTimeStamp="off")',
            'template(name="j" type="string" string="'
            + TEMPLATE.replace('"', '\\"') + '")',
            f'action(type="omfile" file="{self.out}" template="j" '
            'flushInterval="0" asyncWriting="off" ioBufferSize="64k")',
            ""])
        with open(self.conf, "w") as f:
            f.write(text)

    def start(self):
        self._write_conf()
        self.proc = subprocess.Popen(
            [RSYSLOGD, "-n", "-f", self.conf, "-i",
             os.path.join(self.dir, "pid")],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        # Ready once a probe through each input has come out.
        deadline = time.monotonic() + 15
        probes = 0
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("rsyslogd exited: "
                                   + self.proc.stderr.read().decode())
            probes += 1
            self.send_probe(probes)
            time.sleep(0.1)
            got = {m["msg"].strip() for m in self.messages()
                   if m["program"] == "probe"}
            want = {f"udp {probes}", f"unix {probes}"}
            if self.ipv6:
                want.add(f"udp6 {probes}")
            if want <= got:
                return self
        raise RuntimeError("rsyslogd did not take messages")

    def send_probe(self, n):
        def send(family, addr, text):
            try:
                with socket.socket(family, socket.SOCK_DGRAM) as s:
                    s.sendto(f"<13>probe: {text} {n}".encode(), addr)
            except OSError:
                pass
        send(socket.AF_INET, ("127.0.0.1", self.port), "udp")
        if self.ipv6:
            send(socket.AF_INET6, ("::1", self.port6), "udp6")
        send(socket.AF_UNIX, self.socket_path, "unix")

    def messages(self):
        """Every message so far, as dicts (probes too)."""
        try:
            with open(self.out, encoding="utf-8", errors="replace") as f:
                text = f.read()
        except FileNotFoundError:
            return []
        # rsyslog may be in the middle of writing the last line: take
        # only the lines it has ended
        lines = text.split("\n")[:-1]
        return [json.loads(l) for l in lines if l.strip()]

    def of(self, program):
        return [m for m in self.messages() if m["program"] == program]

    def wait(self, predicate, timeout=30, what="syslog messages"):
        """Wait until predicate(messages other than probes) is true;
        returns those messages."""
        def check():
            got = [m for m in self.messages() if m["program"] != "probe"]
            return got if predicate(got) else None
        return net.wait_until(check, timeout, what=what)

    def stop(self):
        stop_process(self.proc)
        if self.proc:
            self.proc.stderr.close()
        self.proc = None

    def remove(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
