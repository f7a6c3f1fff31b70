"""Secrets out of text: what logs, errors, the control socket and the console may show of a proxy link.

Two nets, both applied by `redact(text)`:

- the secrets this process knows: the config's node links and subscription
  URLs (and the links subscriptions serve) are taken apart by `remember_link`
  and each secret part (password, UUID, userinfo, token, query value, a vmess
  link's whole body) is replaced wherever it shows up, however a message
  quotes it ("id 'c0ffee...' is not a UUID");
- the shapes secrets come in, for those it was never told: the userinfo,
  path and query of a proxy or subscription URL, a base64 link body (vmess://,
  SIP002's legacy ss://), a UUID, `password=...`, a PEM private key.

What is left: scheme, host and port (which node it is), and the link's
`#name`. `secret_spans` gives the places instead of the text, for a config
error that shows its source line with a caret under the culprit.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import threading
from urllib.parse import parse_qsl, unquote, urlsplit

MASK = "***"
MIN_SECRET = 6   # shorter "secrets" (a password "abc") would mask common words everywhere; the shapes catch those

# Proxy links and subscription URLs (dae's schemes); http(s) because subscriptions and HTTP proxies use them.
_SCHEMES = (r"ss|ssr|socks5h?|socks4a?|https?|http-file|https-file|trojan(?:-go)?|vless|vmess|tuic|hysteria2?|"
            r"hy2|juicity|anytls|wireguard|naive\+https")
_URL = re.compile(rf"(?i)\b(?:{_SCHEMES})://[^\s\"'<>`,]*")
# A UUID, or one a character or two off (a typo'd id is still the account's id).
_UUID = re.compile(r"(?i)\b[0-9a-f]{6,10}(?:-[0-9a-f]{3,5}){3}-[0-9a-f]{10,14}\b")
_KEYED = re.compile(r"(?i)\b(?:password|passwd|psk|secret|token|uuid|private[_-]?key|obfs[_-]password)"
                    r"(?:\s*=\s*|\"?\s*:\s*\"?)([^\s\"',&;}]+)")
# Every _KEYED match holds one of these, case-folded (as (?i) matches: a long s, U+017F, is an s there too).
_KEYED_WORDS = ("password", "passwd", "psk", "secret", "token", "uuid", "private")
# ... and the two letters (?i) takes for an i that case folding leaves apart: dotless i, dotted capital I.
_DOTTED_I = {0x130: "i", 0x131: "i"}
_PEM = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(?:-----END [A-Z ]*PRIVATE KEY-----|$)", re.DOTALL)
_HOSTPORT = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.\-_]+)(:\d{1,5})?$")

_SECRET_PARAMS = {"password", "pass", "passwd", "psk", "key", "token", "auth", "uuid", "id", "secret", "sid",
                  "obfs-password", "obfs_password", "auth_str", "private-key", "privatekey"}

MAX_KNOWN = 32768  # secrets remembered (a subscription of 5000 nodes has some 20000); the oldest go first

_lock = threading.Lock()
_known: dict[str, None] = {}                    # the secrets, oldest first
_by_prefix: dict[str, tuple[str, ...]] = {}      # their first MIN_SECRET characters -> them, longest first


def remember(*secrets: str) -> None:
    """Mask these strings wherever they show up, from now on (in this process)."""
    new = [s for s in secrets if isinstance(s, str) and len(s) >= MIN_SECRET and s not in _known]
    if not new:
        return
    with _lock:
        # Updated in place, one key at a time: a reader on another thread (a log record) looks keys up only,
        # and each key's tuple is replaced whole.
        for secret in new:
            if secret in _known:
                continue
            _known[secret] = None
            key = secret[:MIN_SECRET]
            _by_prefix[key] = tuple(sorted((*_by_prefix.get(key, ()), secret), key=len, reverse=True))
        while len(_known) > MAX_KNOWN:
            old = next(iter(_known))
            del _known[old]
            key = old[:MIN_SECRET]
            rest = tuple(x for x in _by_prefix.get(key, ()) if x != old)
            if rest:
                _by_prefix[key] = rest
            else:
                _by_prefix.pop(key, None)


def _known_spans(text: str) -> list[tuple[int, int]]:
    """Where the remembered secrets are in `text`: each position's next MIN_SECRET characters looked up (a
    line of 150 characters costs 150 dictionary lookups however many secrets there are)."""
    index = _by_prefix
    if not index or len(text) < MIN_SECRET:
        return []
    spans = []
    i, end = 0, len(text) - MIN_SECRET + 1
    while i < end:
        found = index.get(text[i:i + MIN_SECRET])
        if found:
            hit = next((sec for sec in found if text.startswith(sec, i)), None)
            if hit is not None:
                spans.append((i, i + len(hit)))
                i += len(hit)
                continue
        i += 1
    return spans


def remember_link(link: str) -> None:
    """The secret parts of a share link, a chain of them (`a -> b`) or a subscription URL."""
    for part in link.split(" -> "):
        remember(*link_secrets(part.strip()))


def link_secrets(link: str) -> list[str]:
    """The parts of one link that are secrets: the password or UUID of its userinfo (and the whole userinfo,
    raw and decoded), query values, the token-like path segments of an http(s) URL, a base64 body and what
    it decodes to."""
    scheme, sep, rest = link.partition("://")
    if not sep:
        return []
    scheme = scheme.lower()
    body = rest.split("#", 1)[0]
    out: list[str] = []
    try:
        parts = urlsplit(f"x://{body}")
    except ValueError:
        return [body]
    netloc = parts.netloc
    if "@" in netloc:
        userinfo = netloc.rsplit("@", 1)[0]
        out += [userinfo, unquote(userinfo)]
        out += _fields(unquote(userinfo))
        out += _decoded_secrets(userinfo)
    elif not _HOSTPORT.match(netloc) or scheme == "vmess":
        # A whole base64 body (vmess://, legacy ss://): the body, and what is inside.
        out.append(body)
        out += _decoded_secrets(body)
    web = scheme in ("http", "https", "http-file", "https-file")
    # A subscription URL's query is the account's (`?token=`, `?key=`, `?flag=...&sub=...`): all of it. A proxy
    # link's holds its transport (sni, host, path, type: names that show up in logs for other reasons) and
    # sometimes a secret: those by their keys.
    out += [v for k, v in parse_qsl(parts.query) if web or k.lower() in _SECRET_PARAMS]
    out += [unquote(v) for k, v in re.findall(r"([^&;=?]+)=([^&;]+)", parts.query)
            if web or unquote(k).lower() in _SECRET_PARAMS]
    if web and parts.path not in ("", "/"):
        path = parts.path.strip("/")
        if "/" in path or _token_like(path):   # one word alone (`/subscribe`) is no secret: it would mask the word
            out.append(path)
        out += [seg for seg in parts.path.split("/") if _token_like(seg)]
    return out


def _token_like(segment: str) -> bool:
    """A path segment that is an account's token rather than a word (`subscribe`, `api`, `v1`)."""
    has_digit = any(c.isdigit() for c in segment)
    has_alpha = any(c.isalpha() for c in segment)
    return len(segment) >= 16 or (len(segment) >= 8 and has_digit and has_alpha)


def _fields(cred: str) -> list[str]:
    """One field is the secret itself (trojan's password, vless's UUID); of two, the second is (the first is a
    user name, or shadowsocks' method: a name to show, as a node's address is)."""
    user, colon, password = cred.partition(":")
    return [password] if colon else [user]


def _decoded_secrets(text: str) -> list[str]:
    """What a base64 text decodes to (SIP002's method:password, a vmess JSON), taken apart."""
    raw = unquote(text).strip()
    try:
        decoded = base64.urlsafe_b64decode(raw.replace("+", "-").replace("/", "_") + "=" * (-len(raw) % 4))
        plain = decoded.decode("utf-8")
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return []
    if not plain.isprintable():
        return []  # not base64 after all (a password that happens to decode): nothing to take apart
    out = [plain]
    if plain.lstrip().startswith("{"):
        try:
            data = json.loads(plain)
        except ValueError:
            return out
        if isinstance(data, dict):
            out += [str(data[k]) for k in ("id", "uuid", "password", "psk") if data.get(k)]
        return out
    cred = plain.rsplit("@", 1)[0]
    return [*out, cred, *_fields(cred)]


# -- masking --------------------------------------------------------------------------------------

def _url_spans(m: re.Match[str]) -> list[tuple[int, int]]:
    """The secret parts of one URL found in a text: userinfo, a base64 body, path, query values."""
    url, base = m.group(0), m.start()
    sep = url.index("://") + 3
    scheme = url[: sep - 3].lower()
    frag = url.find("#", sep)
    end = frag if frag >= 0 else len(url)
    spans: list[tuple[int, int]] = []
    cut = min([i for i in (url.find("/", sep), url.find("?", sep)) if 0 <= i < end] or [end])
    authority = url[sep:cut]
    at = authority.rfind("@")
    if at >= 0:
        spans.append((sep, sep + at))
    elif authority and (scheme == "vmess" or not _HOSTPORT.match(authority)):
        spans.append((sep, cut))
    q = url.find("?", sep)
    path_end = q if 0 <= q < end else end
    if cut < path_end and url[cut:path_end] not in ("/",):
        spans.append((cut + 1, path_end))
    if 0 <= q < end:
        for pm in re.finditer(r"=([^&;#]*)", url[q:end]):
            if pm.group(1):
                spans.append((q + pm.start(1), q + pm.end(1)))
    return [(base + a, base + b) for a, b in spans if b > a]


def secret_spans(text: str) -> list[tuple[int, int]]:
    """Where the secrets in `text` are: sorted, merged (start, end) offsets."""
    spans = _known_spans(text)
    # Each shape is looked for only where its fixed part is (a substring test is far cheaper than a pattern
    # tried at every position: this runs for every log line, a relayed connection's included).
    if "://" in text:
        for m in _URL.finditer(text):
            spans += _url_spans(m)
    if text.count("-") >= 4:
        spans += [(m.start(), m.end()) for m in _UUID.finditer(text)]
    folded = text.translate(_DOTTED_I).casefold()
    if any(word in folded for word in _KEYED_WORDS):
        spans += [(m.start(1), m.end(1)) for m in _KEYED.finditer(text)]
    if "PRIVATE KEY-----" in text:
        spans += [(m.start(), m.end()) for m in _PEM.finditer(text)]
    return merge(spans)


def merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Overlapping or touching spans joined, in order."""
    out: list[tuple[int, int]] = []
    for a, b in sorted(spans):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def mask(text: str, spans: list[tuple[int, int]]) -> str:
    """`text` with each span replaced by MASK."""
    out, last = [], 0
    for a, b in spans:
        out += [text[last:a], MASK]
        last = b
    out.append(text[last:])
    return "".join(out)


def redact(text: object) -> str:
    """`text` with every secret it holds masked."""
    s = text if isinstance(text, str) else str(text)
    if not _by_prefix and "://" not in s and "-" not in s and "=" not in s and ":" not in s:
        return s  # nothing any rule could match: the usual short message costs nothing
    spans = secret_spans(s)
    return mask(s, spans) if spans else s
