"""The users file the tests authenticate against, one user per hash kind.

Hashes are made by the same tools an operator would use: mkpasswd for
yescrypt and bcrypt, openssl for SHA-512 crypt.
"""

import shutil
import subprocess

# name -> (password, scheme).  Every password is a distinct string that
# appears nowhere else, so a leak into a log is found without false hits.
USERS = {
    "alice": ("alice-secret", "yescrypt"),
    "bob": ("bob-secret", "sha512"),
    "carol": ("carol-secret", "bcrypt"),
    "dave": ("dave-secret", "plain"),
    "erin": ("erin-secret", "yescrypt-extra"),
}


def _run(args, stdin):
    exe = shutil.which(args[0]) or args[0]
    p = subprocess.run([exe] + args[1:], input=stdin.encode(),
                       capture_output=True, timeout=60)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: "
                           f"{p.stderr.decode(errors='replace')}")
    return p.stdout.decode().strip()


def make_hash(password, scheme):
    if scheme.startswith("yescrypt"):
        return _run(["mkpasswd", "-m", "yescrypt", "-s"], password)
    if scheme == "bcrypt":
        return _run(["mkpasswd", "-m", "bcrypt", "-s"], password)
    if scheme == "sha512":
        return _run(["openssl", "passwd", "-6", "-stdin"], password)
    if scheme == "plain":
        return "{PLAIN}" + password
    raise ValueError(scheme)


def users_file_text(hashes):
    """hashes: name -> hash.  The text exercises comments, blank lines and
    an empty third field (the route; empty: proxy_pass decides)."""
    out = ["# smtpgate test users", ""]
    for name, (password, scheme) in USERS.items():
        line = f"{name}:{hashes[name]}"
        if scheme.endswith("-extra"):
            line += ":"
        out.append(line)
        out.append("")
    out.append("# end")
    return "\n".join(out) + "\n"


def generate():
    hashes = {n: make_hash(p, s) for n, (p, s) in USERS.items()}
    return hashes, users_file_text(hashes)


def password(name):
    return USERS[name][0]
