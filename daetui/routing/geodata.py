"""v2fly/Xray's geoip.dat and geosite.dat: a reader that needs no protobuf library, and small writers.

The files are protobuf messages of v2ray-core's app/router/config.proto:

    GeoIPList   { repeated GeoIP entry = 1; }
    GeoIP       { string country_code = 1; repeated CIDR cidr = 2; bool reverse_match = 3; }
    CIDR        { bytes ip = 1; uint32 prefix = 2; }
    GeoSiteList { repeated GeoSite entry = 1; }
    GeoSite     { string country_code = 1; repeated Domain domain = 2; }
    Domain      { Type type = 1; string value = 2; repeated Attribute attribute = 3; }
    Attribute   { string key = 1; oneof typed_value { bool bool_value = 2; int64 int_value = 3; } }

They use only varints and length-delimited fields, so the decoder is a few
functions here rather than a dependency. Every way a file can be malformed
ends as GeoDataError naming the byte offset and the message being decoded;
no struct, index or Unicode error escapes.

Rules name the data as dae does: `geoip:private`, `geosite:cn`,
`geosite:google@cn` (only the entries carrying attribute `cn`) and
`ext:"file.dat:tag"` (a tag of another file in the search path). Tags are
case-insensitive, as in v2ray.
"""

from __future__ import annotations

import difflib
import ipaddress
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar, overload

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
DomainKind = Literal["keyword", "regex", "suffix", "full"]
GeoKind = Literal["ip", "site"]
_T = TypeVar("_T")

GEOIP_FILE = "geoip.dat"
GEOSITE_FILE = "geosite.dat"

# Where v2ray, Xray and their packages install the files, after the config's own directory.
SYSTEM_DIRS: tuple[Path, ...] = (
    Path("/usr/share/v2ray"),
    Path("/usr/local/share/v2ray"),
    Path("/usr/share/xray"),
    Path("/usr/local/share/xray"),
    Path("/usr/share/daetui"),
)

# Domain.Type by number, named by dae's rule keys for the same match (Plain is a keyword match,
# Domain a suffix match: the domain itself and its subdomains).
_DOMAIN_KINDS: tuple[DomainKind, ...] = ("keyword", "regex", "suffix", "full")
_KIND_NUMBER: dict[str, int] = {k: i for i, k in enumerate(_DOMAIN_KINDS)}

_WIRE_VARINT, _WIRE_I64, _WIRE_LEN, _WIRE_I32 = 0, 1, 2, 5
_WIRE_NAMES = {0: "varint", 1: "64-bit", 2: "length-delimited", 3: "start-group", 4: "end-group", 5: "32-bit"}

_DOWNLOAD_HINT = {
    GEOIP_FILE: "https://github.com/v2fly/geoip/releases",
    GEOSITE_FILE: "https://github.com/v2fly/domain-list-community/releases (dlc.dat, saved as geosite.dat)",
}


class GeoDataError(ValueError):
    """A geo data file that is missing or malformed, or a tag or attribute it does not hold."""


@dataclass(frozen=True)
class DomainEntry:
    """One Domain of a geosite tag.

    `kind` is how `value` matches: "keyword" (a substring), "regex", "suffix"
    (the domain and its subdomains) or "full" (exactly). `attributes` are the
    entry's attribute keys in lower case (`@cn`, `@ads`, ...).
    """

    kind: DomainKind
    value: str
    attributes: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if self.kind not in _KIND_NUMBER:
            raise ValueError(f"domain kind {self.kind!r} is not one of {', '.join(_DOMAIN_KINDS)}")
        if not isinstance(self.attributes, frozenset):
            # Accept any iterable of keys, so that callers can pass a set or a list.
            object.__setattr__(self, "attributes", frozenset(self.attributes))


# ---------------------------------------------------------------------------------------------------------------------
# The wire format


class _Corrupt(Exception):
    """A decoding failure at a byte offset; `context` grows outwards as it propagates (innermost first)."""

    def __init__(self, offset: int, reason: str) -> None:
        super().__init__(reason)
        self.offset = offset
        self.reason = reason
        self.context: list[str] = []


def _varint(data: bytes, pos: int, end: int) -> tuple[int, int]:
    """The varint at data[pos:] (not reading past `end`) and the position after it."""
    if pos < end and data[pos] < 0x80:
        return data[pos], pos + 1  # the common case: tags, lengths and prefixes under 128
    start = pos
    result = 0
    shift = 0
    while pos < end:
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            if result >> 64:
                raise _Corrupt(start, "varint does not fit in 64 bits")
            return result, pos
        shift += 7
        if shift == 70:
            raise _Corrupt(start, "varint longer than 10 bytes")
    raise _Corrupt(start, "truncated varint")


def _fields(data: bytes, pos: int, end: int) -> Iterator[tuple[int, int, int, int, int]]:
    """The fields of the message in data[pos:end] as (number, wire type, a, b, offset of the field).

    For a varint `a` is its value; for the other wire types data[a:b] is the payload.
    """
    while pos < end:
        at = pos
        key, pos = _varint(data, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise _Corrupt(at, "field number 0")
        if wire == _WIRE_VARINT:
            value, pos = _varint(data, pos, end)
            yield number, wire, value, 0, at
            continue
        if wire == _WIRE_LEN:
            size, pos = _varint(data, pos, end)
        elif wire == _WIRE_I64:
            size = 8
        elif wire == _WIRE_I32:
            size = 4
        else:
            # Groups (3, 4) are long deprecated and config.proto has none; 6 and 7 do not exist.
            raise _Corrupt(at, f"wire type {wire} ({_WIRE_NAMES.get(wire, 'invalid')}) is not supported")
        if size > end - pos:
            raise _Corrupt(at, f"field of {size} bytes runs past the end of its message ({end - pos} bytes left)")
        yield number, wire, pos, pos + size, at
        pos += size


def _expect(wire: int, want: int, at: int, name: str) -> None:
    if wire != want:
        raise _Corrupt(at, f"{name} has wire type {wire} ({_WIRE_NAMES.get(wire, 'invalid')}), "
                           f"expected {want} ({_WIRE_NAMES[want]})")


def _text(data: bytes, a: int, b: int, at: int, name: str) -> str:
    try:
        return data[a:b].decode("utf-8")
    except UnicodeDecodeError:
        raise _Corrupt(at, f"{name} is not valid UTF-8") from None


def _entry_code(data: bytes, start: int, end: int) -> str:
    """The country_code (field 1) of a GeoIP or GeoSite message; both put it in the same field.

    The first occurrence wins, not the last as protobuf has it: stopping there
    spares indexing a walk over every CIDR, and no tool writes the field twice.
    """
    for number, wire, a, b, at in _fields(data, start, end):
        if number == 1:
            _expect(wire, _WIRE_LEN, at, "country_code")
            return _text(data, a, b, at, "country_code")
    return ""


def _decode_cidr(data: bytes, start: int, end: int) -> IPNetwork:
    ip = b""
    prefix = 0
    for number, wire, a, b, at in _fields(data, start, end):
        if number == 1:
            _expect(wire, _WIRE_LEN, at, "CIDR.ip")
            ip = data[a:b]
        elif number == 2:
            _expect(wire, _WIRE_VARINT, at, "CIDR.prefix")
            prefix = a
    if len(ip) == 4:
        if prefix > 32:
            raise _Corrupt(start, f"IPv4 prefix length {prefix} is over 32")
        # strict=False: v2ray masks host bits rather than rejecting them.
        return ipaddress.IPv4Network((int.from_bytes(ip, "big"), prefix), strict=False)
    if len(ip) == 16:
        if prefix > 128:
            raise _Corrupt(start, f"IPv6 prefix length {prefix} is over 128")
        return ipaddress.IPv6Network((int.from_bytes(ip, "big"), prefix), strict=False)
    raise _Corrupt(start, f"CIDR address of {len(ip)} bytes; expected 4 (IPv4) or 16 (IPv6)")


def _decode_geoip(data: bytes, start: int, end: int) -> tuple[list[IPNetwork], bool]:
    """A GeoIP message's networks and its reverse_match flag."""
    nets: list[IPNetwork] = []
    reverse = False
    for number, wire, a, b, at in _fields(data, start, end):
        if number == 2:
            _expect(wire, _WIRE_LEN, at, "GeoIP.cidr")
            # The layout every writer produces (ip first, then a one-byte prefix), decoded without the general
            # path's generator: a full geoip.dat has a million of these. Anything else takes the general path.
            if b - a == 8 and data[a] == 0x0A and data[a + 1] == 4 and data[a + 6] == 0x10 and data[a + 7] <= 32:
                nets.append(ipaddress.IPv4Network((int.from_bytes(data[a + 2:a + 6], "big"), data[a + 7]),
                                                  strict=False))
                continue
            if b - a == 20 and data[a] == 0x0A and data[a + 1] == 16 and data[a + 18] == 0x10 and data[a + 19] < 128:
                nets.append(ipaddress.IPv6Network((int.from_bytes(data[a + 2:a + 18], "big"), data[a + 19]),
                                                  strict=False))
                continue
            try:
                nets.append(_decode_cidr(data, a, b))
            except _Corrupt as e:
                e.context.append(f"CIDR #{len(nets) + 1}")
                raise
        elif number == 3:
            _expect(wire, _WIRE_VARINT, at, "GeoIP.reverse_match")
            reverse = a != 0
        elif number == 1:
            _expect(wire, _WIRE_LEN, at, "GeoIP.country_code")
    return nets, reverse


def _decode_attribute(data: bytes, start: int, end: int) -> str:
    key = ""
    for number, wire, a, b, at in _fields(data, start, end):
        if number == 1:
            _expect(wire, _WIRE_LEN, at, "Attribute.key")
            key = _text(data, a, b, at, "Attribute.key")
        elif number in (2, 3):
            # Only the key matters to `@attr` (as in v2ray); the value is checked for its wire type only.
            _expect(wire, _WIRE_VARINT, at, "Attribute.bool_value" if number == 2 else "Attribute.int_value")
    return key.lower()


def _decode_domain(data: bytes, start: int, end: int) -> DomainEntry:
    kind = 0
    value = ""
    attributes: list[str] = []
    for number, wire, a, b, at in _fields(data, start, end):
        if number == 1:
            _expect(wire, _WIRE_VARINT, at, "Domain.type")
            kind = a
        elif number == 2:
            _expect(wire, _WIRE_LEN, at, "Domain.value")
            value = _text(data, a, b, at, "Domain.value")
        elif number == 3:
            _expect(wire, _WIRE_LEN, at, "Domain.attribute")
            try:
                attributes.append(_decode_attribute(data, a, b))
            except _Corrupt as e:
                e.context.append(f"attribute #{len(attributes) + 1}")
                raise
    if kind >= len(_DOMAIN_KINDS):
        raise _Corrupt(start, f"unknown Domain.type {kind} (known: 0-3)")
    return DomainEntry(_DOMAIN_KINDS[kind], value, frozenset(attributes))


def _decode_geosite(data: bytes, start: int, end: int) -> list[DomainEntry]:
    out: list[DomainEntry] = []
    for number, wire, a, b, at in _fields(data, start, end):
        if number == 2:
            _expect(wire, _WIRE_LEN, at, "GeoSite.domain")
            try:
                out.append(_decode_domain(data, a, b))
            except _Corrupt as e:
                e.context.append(f"domain #{len(out) + 1}")
                raise
        elif number == 1:
            _expect(wire, _WIRE_LEN, at, "GeoSite.country_code")
    return out


# ---------------------------------------------------------------------------------------------------------------------
# One file


class _GeoFile:
    """One .dat file: its bytes and where each tag's entries lie. A tag's entries decode on first use.

    Indexing reads only the list and each entry's country_code, so a rule set
    naming three tags of a 20 MB geoip.dat decodes three tags, not the whole
    file (a router's CPU notices the difference).
    """

    def __init__(self, data: bytes, what: Literal["geoip", "geosite"], source: str) -> None:
        self.data = data
        self.what = what
        self.source = source
        self.spans: dict[str, list[tuple[int, int]]] = {}
        self._ips: dict[str, tuple[IPNetwork, ...]] = {}
        self._sites: dict[str, tuple[DomainEntry, ...]] = {}
        self._attempt(self._index)

    def _attempt(self, fn: Callable[[], _T]) -> _T:
        try:
            return fn()
        except _Corrupt as e:
            where = f" ({' of '.join(e.context)})" if e.context else ""
            raise GeoDataError(
                f"{self.source}: not a valid {self.what} file: decoding failed at byte {e.offset}{where}: {e.reason}."
                f" Is it really a {self.what} file? If so, download it again") from None
        except (IndexError, ValueError, UnicodeError, OverflowError) as e:
            # Not reached by any input the tests know of: the decoder checks bounds itself. Kept so that a bug
            # in it still reports the file rather than a traceback from deep inside.
            if isinstance(e, GeoDataError):
                raise
            raise GeoDataError(f"{self.source}: not a valid {self.what} file ({type(e).__name__}: {e})") from None

    def _index(self) -> None:
        data = self.data
        count = 0
        for number, wire, a, b, at in _fields(data, 0, len(data)):
            if number != 1:
                continue  # an unknown field of the list: skipped, as protobuf does
            count += 1
            _expect(wire, _WIRE_LEN, at, "entry")
            try:
                code = _entry_code(data, a, b)
            except _Corrupt as e:
                e.context.append(f"entry #{count}")
                raise
            self.spans.setdefault(code.lower(), []).append((a, b))

    def _spans(self, tag: str) -> list[tuple[int, int]]:
        spans = self.spans.get(tag.lower())
        if spans is not None:
            return spans
        if not tag:
            raise GeoDataError(f"empty {self.what} tag; name one of {self.source}'s tags, e.g. {self._examples()}")
        msg = f"{self.source} has no tag {tag!r}"
        close = difflib.get_close_matches(tag.lower(), list(self.spans), n=3, cutoff=0.6)
        if tag.startswith("!"):
            func = "dip" if self.what == "geoip" else "domain"
            msg += f"; to match what is outside a tag, negate the function instead, e.g. !{func}({self.what}:{tag[1:]})"
        elif close:
            msg += f"; did you mean {' or '.join(repr(c) for c in close)}?"
        elif self.spans:
            msg += f"; it has {len(self.spans)} tags, e.g. {self._examples()}"
        else:
            msg += " (the file holds no tags at all: is it empty or a partial download?)"
        raise GeoDataError(msg)

    def _examples(self) -> str:
        return ", ".join(sorted(self.spans)[:5]) or "(none)"

    def networks(self, tag: str) -> tuple[IPNetwork, ...]:
        """The networks of a geoip tag."""
        key = tag.lower()
        cached = self._ips.get(key)
        if cached is not None:
            return cached
        nets: list[IPNetwork] = []
        for start, end in self._spans(tag):
            def decode(start: int = start, end: int = end) -> tuple[list[IPNetwork], bool]:
                try:
                    return _decode_geoip(self.data, start, end)
                except _Corrupt as e:
                    e.context.append(f"entry {key!r}" if key else "the entry without a country_code")
                    raise
            part, reverse = self._attempt(decode)
            if reverse:
                raise GeoDataError(
                    f"{self.source}: tag {key!r} sets reverse_match (it means every address outside its list),"
                    f" which daetui does not support; use the tag it inverts and negate the function instead,"
                    f" e.g. !dip(geoip:cn) rather than a tag holding every address but cn's")
            # A tag that appears twice (hand-merged files) contributes both lists; v2ray would take the first.
            nets.extend(part)
        out = self._ips[key] = tuple(nets)
        return out

    def domains(self, tag: str) -> tuple[DomainEntry, ...]:
        """The domain entries of a geosite tag (no attribute filtering)."""
        key = tag.lower()
        cached = self._sites.get(key)
        if cached is not None:
            return cached
        entries: list[DomainEntry] = []
        for start, end in self._spans(tag):
            def decode(start: int = start, end: int = end) -> list[DomainEntry]:
                try:
                    return _decode_geosite(self.data, start, end)
                except _Corrupt as e:
                    e.context.append(f"entry {key!r}" if key else "the entry without a country_code")
                    raise
            entries.extend(self._attempt(decode))
        out = self._sites[key] = tuple(entries)
        return out


def _read(path: str | Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise GeoDataError(f"cannot read {path}: {e.strerror or e}") from None


def _is_file(p: Path) -> bool:
    try:
        return p.is_file()
    except OSError:
        return False  # a directory we may not look into (EACCES) holds nothing for us; search on


def parse_geoip(data: bytes, source: str = "<geoip data>") -> dict[str, tuple[IPNetwork, ...]]:
    """Every tag of a geoip.dat held in memory, keyed by lower-case tag.

    Raises GeoDataError if the data is malformed or a tag sets reverse_match
    (unsupported: its list means the addresses *outside* it).
    """
    f = _GeoFile(bytes(data), "geoip", source)
    return {tag: f.networks(tag) for tag in f.spans}


def parse_geosite(data: bytes, source: str = "<geosite data>") -> dict[str, tuple[DomainEntry, ...]]:
    """Every tag of a geosite.dat held in memory, keyed by lower-case tag. Raises GeoDataError if malformed."""
    f = _GeoFile(bytes(data), "geosite", source)
    return {tag: f.domains(tag) for tag in f.spans}


def load_geoip(path: str | Path) -> dict[str, tuple[IPNetwork, ...]]:
    """Every tag of a geoip.dat file (e.g. "cn", "private") and its networks.

    Raises GeoDataError if the file cannot be read, is malformed, or has a
    tag that sets reverse_match. To read a few tags of a large file, GeoData
    is faster: it decodes only the tags asked for.
    """
    return parse_geoip(_read(path), str(path))


def load_geosite(path: str | Path) -> dict[str, tuple[DomainEntry, ...]]:
    """Every tag of a geosite.dat file (e.g. "cn", "google") and its domain entries.

    Raises GeoDataError if the file cannot be read or is malformed.
    """
    return parse_geosite(_read(path), str(path))


# ---------------------------------------------------------------------------------------------------------------------
# Tags as rules write them


def split_attributes(tag: str) -> tuple[str, tuple[str, ...]]:
    """`google@cn@ads` -> ("google", ("cn", "ads")): a geosite tag and its attribute filters, in lower case."""
    name, *attrs = tag.strip().lower().split("@")
    for a in attrs:
        if not a:
            raise GeoDataError(f"empty attribute in {tag!r}; write it as name@attribute, e.g. google@cn")
    return name, tuple(attrs)


def split_ext(value: str) -> tuple[str, str]:
    """dae's `ext:"file.dat:tag"` value -> ("file.dat", "tag")."""
    file, sep, tag = value.rpartition(":")
    if not sep or not file or not tag:
        raise GeoDataError(f"ext:{value!r} should name a file and a tag, e.g. ext:\"myips.dat:office\"")
    return file, tag


def filter_attributes(entries: Iterable[DomainEntry], attributes: Iterable[str]) -> tuple[DomainEntry, ...]:
    """The entries that carry every one of `attributes` (as v2ray's `tag@a@b`)."""
    want = frozenset(a.lower() for a in attributes)
    return tuple(e for e in entries if want <= e.attributes)


def default_search_path(config_dir: str | Path | None = None) -> tuple[Path, ...]:
    """Where .dat files are looked for: the config file's directory (if known), then SYSTEM_DIRS."""
    head = (Path(config_dir),) if config_dir is not None else ()
    return head + SYSTEM_DIRS


class GeoData:
    """geoip/geosite data for rules, read from the first directory of a search path that holds each file.

    Files are read on first use and kept, with every tag decoded so far, for
    the life of the object: make one while compiling a rule set and drop it
    afterwards rather than holding tens of megabytes in a router's memory.
    Not thread-safe; a race costs only a duplicate read.
    """

    def __init__(self, search_path: Iterable[str | Path] | None = None, *,
                 config_dir: str | Path | None = None) -> None:
        """`search_path` replaces the default one; otherwise it is `default_search_path(config_dir)`."""
        self.search_path: tuple[Path, ...] = (tuple(Path(p) for p in search_path) if search_path is not None
                                              else default_search_path(config_dir))
        self._files: dict[tuple[str, str], _GeoFile] = {}

    def find(self, file: str | Path) -> Path:
        """The path of `file`: itself if absolute, else under the first directory of the search path holding it."""
        p = Path(file)
        if p.is_absolute():
            if _is_file(p):
                return p
            raise GeoDataError(f"{p} not found")
        for d in self.search_path:
            candidate = d / p
            if _is_file(candidate):
                return candidate
        searched = ", ".join(str(d) for d in self.search_path) or "(an empty search path)"
        hint = _DOWNLOAD_HINT.get(p.name)
        msg = f"{file} not found; searched {searched}"
        if hint:
            msg += f". Download it from {hint} into one of them"
        raise GeoDataError(msg)

    def _file(self, file: str | Path, what: Literal["geoip", "geosite"]) -> _GeoFile:
        # Keyed by the name asked for, not the path found: once read, a file is not looked for again.
        key = (str(file), what)
        f = self._files.get(key)
        if f is None:
            path = self.find(file)
            f = self._files[key] = _GeoFile(_read(path), what, str(path))
        return f

    def ip_set(self, tag: str) -> tuple[IPNetwork, ...]:
        """The networks of `geoip:<tag>` from geoip.dat, e.g. ip_set("private")."""
        return self._file(GEOIP_FILE, "geoip").networks(tag.strip())

    def domains(self, tag: str, attribute: str | None = None) -> tuple[DomainEntry, ...]:
        """The entries of `geosite:<tag>` from geosite.dat.

        `tag` may carry dae's filters itself (`google@cn`); `attribute` adds
        one more. Only entries carrying every filter attribute are returned;
        a filter that keeps nothing is an error (most likely a typo) naming
        the attributes the tag has.
        """
        return self._domains(GEOSITE_FILE, tag, attribute)

    def _domains(self, file: str | Path, tag: str, attribute: str | None) -> tuple[DomainEntry, ...]:
        name, attrs = split_attributes(tag)
        if attribute is not None:
            attrs += split_attributes("@" + attribute)[1]
        f = self._file(file, "geosite")
        entries = f.domains(name)
        if not attrs:
            return entries
        kept = filter_attributes(entries, attrs)
        if not kept:
            have = sorted(set().union(*(e.attributes for e in entries)))
            wanted = "@" + "@".join(attrs)
            if have:
                # A lower cutoff than for tags: attributes are two or three letters, where one typo is half the word.
                close = [c for a in attrs for c in difflib.get_close_matches(a, have, n=2, cutoff=0.5)]
                hint = f"; did you mean @{' or @'.join(close)}?" if close else ""
                raise GeoDataError(f"{f.source}: no entry of {name!r} carries {wanted}{hint}"
                                   f" (its attributes: {', '.join('@' + a for a in have)})")
            raise GeoDataError(f"{f.source}: no entry of {name!r} carries {wanted}; the tag has no attributes")
        return kept

    @overload
    def ext(self, file: str, tag: str, kind: Literal["ip"]) -> tuple[IPNetwork, ...]: ...
    @overload
    def ext(self, file: str, tag: str, kind: Literal["site"]) -> tuple[DomainEntry, ...]: ...

    def ext(self, file: str, tag: str, kind: GeoKind) -> tuple[IPNetwork, ...] | tuple[DomainEntry, ...]:
        """dae's `ext:"file:tag"`: a tag of another .dat file found on the search path.

        `kind` is "ip" for a geoip-format file (in dip/sip) or "site" for a
        geosite-format one (in domain, where the tag may carry `@attr`).
        """
        if kind == "ip":
            return self._file(file, "geoip").networks(tag.strip())
        if kind == "site":
            return self._domains(file, tag, None)
        raise GeoDataError(f"ext kind {kind!r} is neither 'ip' nor 'site'")

    def resolve(self, key: str, value: str, kind: GeoKind) -> tuple[IPNetwork, ...] | tuple[DomainEntry, ...]:
        """A rule parameter `key:value` with key geoip, geosite or ext, in a function that wants `kind`."""
        key = key.lower()
        if key == "geoip":
            if kind != "ip":
                raise GeoDataError(f"geoip:{value} holds addresses; use it in dip() or sip()")
            return self.ip_set(value)
        if key == "geosite":
            if kind != "site":
                raise GeoDataError(f"geosite:{value} holds domains; use it in domain()")
            return self.domains(value)
        if key == "ext":
            file, tag = split_ext(value)
            return self.ext(file, tag, kind)
        raise GeoDataError(f"{key!r} is not a geo data key; expected geoip, geosite or ext")


# ---------------------------------------------------------------------------------------------------------------------
# Writers (for tests, and for building small files by hand)


def _put_varint(out: bytearray, value: int) -> None:
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def _put_len(out: bytearray, number: int, payload: bytes) -> None:
    _put_varint(out, number << 3 | _WIRE_LEN)
    _put_varint(out, len(payload))
    out += payload


def _put_uint(out: bytearray, number: int, value: int) -> None:
    if value:  # proto3 leaves zero scalars out
        _put_varint(out, number << 3 | _WIRE_VARINT)
        _put_varint(out, value)


def _code(tag: str) -> bytes:
    # v2fly's files carry upper-case codes; only ASCII is changed, so that every tag reads back as written.
    return (tag.upper() if tag.isascii() else tag).encode()


def encode_geoip(tags: Mapping[str, Iterable[IPNetwork | str]]) -> bytes:
    """A GeoIPList of `tags`; networks may be given as text ("10.0.0.0/8").

    ASCII tags are written upper-case, as in v2fly's files (readers ignore case).
    """
    out = bytearray()
    for tag, nets in tags.items():
        entry = bytearray()
        _put_len(entry, 1, _code(tag))
        for n in nets:
            net = ipaddress.ip_network(n, strict=False) if isinstance(n, str) else n
            cidr = bytearray()
            _put_len(cidr, 1, net.network_address.packed)
            _put_uint(cidr, 2, net.prefixlen)
            _put_len(entry, 2, bytes(cidr))
        _put_len(out, 1, bytes(entry))
    return bytes(out)


def encode_geosite(tags: Mapping[str, Iterable[DomainEntry]]) -> bytes:
    """A GeoSiteList of `tags`, attributes written as bool_value true (as domain-list-community does)."""
    out = bytearray()
    for tag, entries in tags.items():
        entry = bytearray()
        _put_len(entry, 1, _code(tag))
        for e in entries:
            dom = bytearray()
            _put_uint(dom, 1, _KIND_NUMBER[e.kind])
            _put_len(dom, 2, e.value.encode())
            for a in sorted(e.attributes):
                attr = bytearray()
                _put_len(attr, 1, a.encode())
                _put_uint(attr, 2, 1)
                _put_len(dom, 3, bytes(attr))
            _put_len(entry, 2, bytes(dom))
        _put_len(out, 1, bytes(entry))
    return bytes(out)


def write_geoip(path: str | Path, tags: Mapping[str, Iterable[IPNetwork | str]]) -> None:
    """Write a geoip.dat holding `tags` ({"cn": [networks]}) that this module and v2ray read."""
    Path(path).write_bytes(encode_geoip(tags))


def write_geosite(path: str | Path, tags: Mapping[str, Iterable[DomainEntry]]) -> None:
    """Write a geosite.dat holding `tags` ({"google": [DomainEntry, ...]}) that this module and v2ray read."""
    Path(path).write_bytes(encode_geosite(tags))


__all__ = [
    "GEOIP_FILE",
    "GEOSITE_FILE",
    "SYSTEM_DIRS",
    "DomainEntry",
    "DomainKind",
    "GeoData",
    "GeoDataError",
    "GeoKind",
    "IPNetwork",
    "default_search_path",
    "encode_geoip",
    "encode_geosite",
    "filter_attributes",
    "load_geoip",
    "load_geosite",
    "parse_geoip",
    "parse_geosite",
    "split_attributes",
    "split_ext",
    "write_geoip",
    "write_geosite",
]
