"""What looks like a secret, so that hpc-mm never writes one to disk or echoes one: by a variable's
name (`*_TOKEN`, `*_PASSWORD`, `DB_PWD`, `PASSPHRASE`, `AUTH`, `COOKIE`, `CREDS`, `DATABASE_URL`, ...)
and by a value's look (a token's known prefix, a JWT, a long random string, a URL carrying a
password or a token-looking part). Job files name such values (`env:NAME`); the value is read from
the environment where it is used."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlsplit

_NAME = re.compile(
    r"(^|_)(TOKEN|SECRET|PASSWORD|PASSWD|PWD|PASS|PASSPHRASE|PASSCODE|API_?KEY|ACCESS_?KEY|PRIVATE_?KEY|KEY|"
    r"PAT|AUTH|AUTHORIZATION|BEARER|COOKIE|CREDENTIALS?|CREDS?|SIGNATURE|WEBHOOK|WEBHOOK_URL|DSN|"
    r"DATABASE_URL|DB_URL|CONNECTION_STRING|CONN_STR)(_|$)|_(PASS(?!ING)|SECRET|TOKEN(?!IZ))",
    re.I,
)
# Names that end like a secret but are not one (the shell's working folder).
_NOT = re.compile(r"^(PWD|OLDPWD)$", re.I)
_PREFIXES = re.compile(
    r"^(hf_|ghp_|gho_|ghs_|ghu_|github_pat_|glpat-|sk-|sk_live_|pk_live_|rk_live_|xox[abposr]-|AKIA|ASIA|AIza|"
    r"ya29\.|npm_|pypi-|dop_v1_|shpat_|SG\.)[A-Za-z0-9_\-.]{8,}"
)
_JWT = re.compile(r"^eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.")
_RANDOM = re.compile(r"^[A-Za-z0-9_\-+=]{32,}$")
_HEX = re.compile(r"^[0-9a-fA-F]{32,}$")
_TOKEN_KEYS = re.compile(r"token|key|secret|sig|signature|auth|pass|password|code|credential", re.I)


def is_secret_name(name: str) -> bool:
    return bool(_NAME.search(name)) and not _NOT.search(name)


def _random(text: str) -> bool:
    """A long string of upper- and lower-case letters and digits mixed, or of hex digits, as tokens are
    (a path, a word or a list of settings is not)."""
    if _HEX.fullmatch(text):
        return any(c.isdigit() for c in text) and any(c.isalpha() for c in text)
    mixed = any(c.isdigit() for c in text) and any(c.islower() for c in text) and any(c.isupper() for c in text)
    return bool(_RANDOM.fullmatch(text)) and mixed


def _mixed(segment: str) -> bool:
    """A path segment of 16 or more letters and digits mixed (a webhook's key, a topic's secret)."""
    return (
        len(segment) >= 16
        and bool(re.fullmatch(r"[A-Za-z0-9_\-]+", segment))
        and any(c.isdigit() for c in segment)
        and any(c.isalpha() for c in segment)
    )


def looks_secret(value: str) -> bool:
    """A value that looks like a credential, whatever its name."""
    text = value.strip()
    if _PREFIXES.match(text) or _JWT.match(text) or _random(text):
        return True
    if "://" in text:
        return url_has_secret(text)
    return False


def url_has_secret(url: str) -> bool:
    """A password, a token-looking path segment, or a token-like query value in a URL."""
    try:
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
    except ValueError:
        return True  # not a URL we can read: keep it out of files as if it were one
    if parts.password or (parts.username and not parts.password and "@" in parts.netloc and parts.scheme != "ssh"):
        return True
    segments = [s for s in parts.path.split("/") if s]
    if any(_random(s) or _PREFIXES.match(s) or _mixed(s) for s in segments):
        return True
    return any(_TOKEN_KEYS.search(k) or _random(v) for k, v in query) or bool(parts.fragment)


def redact_url(url: str) -> str:
    """A URL as it may be shown: its scheme and host only."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
    except ValueError:
        return "<a URL>"
    return f"{parts.scheme}://{host}/..." if parts.scheme else "<a URL>"
