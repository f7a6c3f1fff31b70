"""geoip.dat / geosite.dat: reading, writing, tags as rules write them, and every way a file can be bad."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daetui.routing.geodata import (
    GEOIP_FILE,
    GEOSITE_FILE,
    SYSTEM_DIRS,
    DomainEntry,
    GeoData,
    GeoDataError,
    default_search_path,
    encode_geoip,
    encode_geosite,
    load_geoip,
    load_geosite,
    parse_geoip,
    parse_geosite,
    split_attributes,
    split_ext,
    write_geoip,
    write_geosite,
)

net = ipaddress.ip_network

GOOGLE = (
    DomainEntry("suffix", "google.com"),
    DomainEntry("suffix", "google.cn", frozenset({"cn"})),
    DomainEntry("full", "www.google.com.hk", frozenset({"cn", "ads"})),
    DomainEntry("keyword", "googleapis"),
    DomainEntry("regex", r"^gstatic\d*\.com$", frozenset({"ads"})),
)
SITES = {"google": GOOGLE, "cn": (DomainEntry("suffix", "cn"), DomainEntry("full", "baidu.com"))}
IPS = {
    "cn": [net("1.0.1.0/24"), net("2400:3200::/32")],
    "private": [net("10.0.0.0/8"), net("192.168.0.0/16"), net("fc00::/7"), net("0.0.0.0/0"), net("::/0")],
}


@pytest.fixture
def datadir(tmp_path: Path) -> Path:
    write_geoip(tmp_path / GEOIP_FILE, IPS)
    write_geosite(tmp_path / GEOSITE_FILE, SITES)
    return tmp_path


# ---------------------------------------------------------------------------------------------------------------------
# Hand-built bytes: the wire format written out field by field, so that the reader is not only checked against the
# module's own writer (a bug shared by both would cancel out).


def ld(field: int, payload: bytes) -> bytes:
    """A length-delimited field, spelt out by hand: key byte, one length byte, payload."""
    assert field < 16 and len(payload) < 128
    return bytes([field << 3 | 2, len(payload)]) + payload


def vi(field: int, raw_varint: bytes) -> bytes:
    """A varint field whose varint bytes are given literally."""
    assert field < 16
    return bytes([field << 3 | 0]) + raw_varint


def test_minimal_geoip_spelt_in_hex():
    # GeoIPList{entry: GeoIP{country_code: "CN", cidr: CIDR{ip: 1.2.3.0, prefix: 24}}}
    data = bytes.fromhex("0a 0e" "0a 02 434e" "12 08" "0a 04 01020300" "10 18")
    assert parse_geoip(data) == {"cn": (net("1.2.3.0/24"),)}


def test_hand_built_geoip():
    v6 = ipaddress.ip_address("2001:db8::1").packed
    private = (
        ld(1, b"PRIVATE")
        + ld(2, ld(1, bytes([10, 0, 0, 0])) + vi(2, b"\x08"))                  # the usual layout
        + ld(2, vi(2, b"\x10") + ld(1, bytes([192, 168, 7, 7])))               # prefix first; host bits set
        + ld(2, ld(1, v6) + vi(2, b"\x80\x01"))                                # /128: a two-byte varint
        + ld(2, ld(1, bytes(4)))                                               # prefix 0 left out, as proto3 does
        + bytes([4 << 3 | 5]) + b"\xde\xad\xbe\xef"                           # unknown fixed32 field: skipped
        + vi(3, b"\x00")                                                       # reverse_match: false
    )
    other = ld(1, b"Xx") + ld(2, ld(1, bytes([8, 8, 8, 8])) + vi(2, b"\x20"))
    data = ld(1, private) + vi(15, b"\x2a") + ld(1, other)                     # unknown varint field in the list
    assert parse_geoip(data) == {
        "private": (net("10.0.0.0/8"), net("192.168.0.0/16"), net("2001:db8::1/128"), net("0.0.0.0/0")),
        "xx": (net("8.8.8.8/32"),),
    }


def test_hand_built_geosite():
    attr_cn = ld(1, b"cn") + vi(2, b"\x01")
    attr_ads_int = ld(1, b"ADS") + vi(3, b"\xff" * 9 + b"\x01")                # int_value -1: a ten-byte varint
    site = (
        ld(1, b"GOOGLE")
        + ld(2, ld(2, b"google"))                                              # type left out: Plain (keyword)
        + ld(2, vi(1, b"\x02") + ld(2, b"google.cn") + ld(3, attr_cn))
        + ld(2, ld(2, "bücher.example".encode()) + vi(1, b"\x03") + ld(3, attr_cn) + ld(3, attr_ads_int))
        + ld(2, vi(1, b"\x01") + ld(2, rb"^g\d+\.com$"))
    )
    assert parse_geosite(ld(1, site)) == {"google": (
        DomainEntry("keyword", "google"),
        DomainEntry("suffix", "google.cn", frozenset({"cn"})),
        DomainEntry("full", "bücher.example", frozenset({"cn", "ads"})),
        DomainEntry("regex", r"^g\d+\.com$"),
    )}


def test_writer_output_spelt_in_hex():
    # The writer's bytes for one entry of each file, checked against the layout v2fly's tools produce.
    assert encode_geoip({"cn": [net("1.2.3.0/24")]}) == bytes.fromhex("0a 0e 0a 02 434e 12 08 0a 04 01020300 10 18")
    assert encode_geosite({"cn": [DomainEntry("suffix", "a.cn", frozenset({"x"}))]}) == bytes.fromhex(
        "0a 15" "0a 02 434e" "12 0f" "08 02" "12 04 612e636e" "1a 05" "0a 01 78" "10 01")


# ---------------------------------------------------------------------------------------------------------------------
# Round trips


def test_geoip_round_trip(datadir):
    assert load_geoip(datadir / GEOIP_FILE) == {tag: tuple(nets) for tag, nets in IPS.items()}


def test_geosite_round_trip(datadir):
    assert load_geosite(datadir / GEOSITE_FILE) == SITES


def test_writers_accept_text_and_normalise_host_bits(tmp_path):
    write_geoip(tmp_path / "x.dat", {"a": ["10.1.2.3/8", "2001:db8::/32"]})
    assert load_geoip(tmp_path / "x.dat") == {"a": (net("10.0.0.0/8"), net("2001:db8::/32"))}


def test_empty_files_and_tags():
    assert parse_geoip(b"") == {}
    assert parse_geosite(encode_geosite({"empty": []})) == {"empty": ()}


def test_domain_entry():
    assert DomainEntry("full", "a", {"x"}).attributes == frozenset({"x"})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not one of"):
        DomainEntry("prefix", "a")  # type: ignore[arg-type]


networks = st.one_of(
    st.builds(lambda a, p: ipaddress.IPv4Network((a, p), strict=False),
              st.integers(0, 2**32 - 1), st.integers(0, 32)),
    st.builds(lambda a, p: ipaddress.IPv6Network((a, p), strict=False),
              st.integers(0, 2**128 - 1), st.integers(0, 128)),
)
tag_names = st.text("abcdefghijklmnopqrstuvwxyz0123456789-!", min_size=1, max_size=12)
domain_entries = st.builds(
    DomainEntry,
    st.sampled_from(["keyword", "regex", "suffix", "full"]),
    st.text(max_size=30),
    st.frozensets(st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=6), max_size=3),
)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(tag_names, st.lists(networks, max_size=8), max_size=5))
def test_geoip_round_trip_property(tags):
    assert parse_geoip(encode_geoip(tags)) == {t: tuple(n) for t, n in tags.items()}


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(tag_names, st.lists(domain_entries, max_size=8), max_size=5))
def test_geosite_round_trip_property(tags):
    assert parse_geosite(encode_geosite(tags)) == {t: tuple(e) for t, e in tags.items()}


# ---------------------------------------------------------------------------------------------------------------------
# GeoData: tags as rules write them, the search path, ext:


def test_ip_set_and_domains(datadir):
    g = GeoData([datadir])
    assert g.ip_set("private") == tuple(IPS["private"])
    assert g.ip_set("CN") == tuple(IPS["cn"])  # tags ignore case, as in v2ray
    assert g.domains("google") == GOOGLE


@pytest.mark.parametrize(("tag", "attribute", "want"), [
    ("google@cn", None, GOOGLE[1:3]),
    ("google", "cn", GOOGLE[1:3]),
    ("Google@CN", None, GOOGLE[1:3]),
    ("google@ads", None, GOOGLE[2:5:2]),
    ("google@cn@ads", None, GOOGLE[2:3]),      # every attribute must be there
    ("google@cn", "ads", GOOGLE[2:3]),
])
def test_attribute_filter(datadir, tag, attribute, want):
    assert GeoData([datadir]).domains(tag, attribute) == want


def test_attribute_nobody_has_is_an_error_naming_the_ones_there(datadir):
    g = GeoData([datadir])
    with pytest.raises(GeoDataError, match=r"no entry of 'google' carries @cm; did you mean @cn\?.*@ads, @cn"):
        g.domains("google@cm")
    with pytest.raises(GeoDataError, match="the tag has no attributes"):
        g.domains("cn@cn")
    with pytest.raises(GeoDataError, match="empty attribute"):
        g.domains("google@")


def test_unknown_tags_suggest_close_ones(datadir):
    g = GeoData([datadir])
    with pytest.raises(GeoDataError, match=r"has no tag 'googel'; did you mean 'google'\?"):
        g.domains("googel")
    with pytest.raises(GeoDataError, match=r"has no tag 'zzzzzz'; it has 2 tags, e.g. cn, private"):
        g.ip_set("zzzzzz")
    with pytest.raises(GeoDataError, match=r"negate the function instead, e.g. !dip\(geoip:cn\)"):
        g.ip_set("!cn")
    with pytest.raises(GeoDataError, match="empty geosite tag"):
        g.domains("")


def test_unknown_tag_in_an_empty_file(tmp_path):
    (tmp_path / GEOIP_FILE).write_bytes(b"")
    with pytest.raises(GeoDataError, match="holds no tags at all"):
        GeoData([tmp_path]).ip_set("cn")


def test_search_path_default():
    assert default_search_path("/etc/daetui") == (Path("/etc/daetui"), *SYSTEM_DIRS)
    assert default_search_path() == SYSTEM_DIRS
    assert GeoData(config_dir="/etc/daetui").search_path[0] == Path("/etc/daetui")
    assert [str(d) for d in SYSTEM_DIRS] == ["/usr/share/v2ray", "/usr/local/share/v2ray", "/usr/share/xray",
                                             "/usr/local/share/xray", "/usr/share/daetui"]


def test_search_path_order(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    write_geoip(second / GEOIP_FILE, {"cn": ["1.0.0.0/8"]})
    g = GeoData([first, second])
    assert g.ip_set("cn") == (net("1.0.0.0/8"),)
    write_geoip(first / GEOIP_FILE, {"cn": ["2.0.0.0/8"]})
    assert GeoData([first, second]).ip_set("cn") == (net("2.0.0.0/8"),)  # the earlier directory wins


def test_missing_file_names_the_paths_searched(tmp_path):
    g = GeoData([tmp_path / "a", tmp_path / "b"])  # nothing is read before a lookup
    with pytest.raises(GeoDataError) as e:
        g.ip_set("cn")
    assert f"geoip.dat not found; searched {tmp_path / 'a'}, {tmp_path / 'b'}" in str(e.value)
    assert "github.com/v2fly/geoip" in str(e.value)
    with pytest.raises(GeoDataError, match="domain-list-community"):
        g.domains("cn")


def test_files_are_read_once(datadir):
    g = GeoData([datadir])
    first = g.ip_set("cn")
    google = g.domains("google")
    (datadir / GEOIP_FILE).unlink()
    (datadir / GEOSITE_FILE).unlink()
    assert g.ip_set("cn") is first
    assert g.domains("GOOGLE") is google
    assert g.domains("google@cn") == GOOGLE[1:3]
    assert g.ip_set("private") == tuple(IPS["private"])  # other tags of a file already read still work


def test_ext(datadir):
    write_geoip(datadir / "office.dat", {"lan": ["10.1.0.0/16"]})
    (datadir / "sub").mkdir()
    write_geosite(datadir / "sub" / "corp.dat", {"internal": [DomainEntry("suffix", "corp.example", {"vpn"}),
                                                              DomainEntry("full", "wiki.corp.example")]})
    g = GeoData([datadir / "nowhere", datadir])
    assert g.ext("office.dat", "lan", "ip") == (net("10.1.0.0/16"),)
    assert g.ext("sub/corp.dat", "internal@vpn", "site") == (DomainEntry("suffix", "corp.example", {"vpn"}),)
    assert len(g.ext(str(datadir / "sub" / "corp.dat"), "INTERNAL", "site")) == 2  # an absolute path
    with pytest.raises(GeoDataError, match=r"missing\.dat not found; searched"):
        g.ext("missing.dat", "x", "ip")
    with pytest.raises(GeoDataError, match="neither 'ip' nor 'site'"):
        g.ext("office.dat", "lan", "dns")  # type: ignore[call-overload]
    # A geosite-format file where a geoip one belongs: refused as not a geoip file, not misread.
    with pytest.raises(GeoDataError, match="not a valid geoip file"):
        g.ext("sub/corp.dat", "internal", "ip")


def test_resolve_rule_parameters(datadir):
    write_geoip(datadir / "office.dat", {"lan": ["10.1.0.0/16"]})
    g = GeoData([datadir])
    assert g.resolve("geoip", "private", "ip") == tuple(IPS["private"])
    assert g.resolve("geosite", "google@cn", "site") == GOOGLE[1:3]
    assert g.resolve("ext", "office.dat:lan", "ip") == (net("10.1.0.0/16"),)
    with pytest.raises(GeoDataError, match=r"use it in dip\(\) or sip\(\)"):
        g.resolve("geoip", "cn", "site")
    with pytest.raises(GeoDataError, match=r"use it in domain\(\)"):
        g.resolve("geosite", "cn", "ip")
    with pytest.raises(GeoDataError, match="'suffix' is not a geo data key"):
        g.resolve("suffix", "cn", "site")
    with pytest.raises(GeoDataError, match=rf"{datadir / 'gone.dat'} not found"):
        g.ext(str(datadir / "gone.dat"), "x", "ip")


def test_split_helpers():
    assert split_attributes("Google@CN@ads") == ("google", ("cn", "ads"))
    assert split_attributes("cn") == ("cn", ())
    assert split_ext("geoip.dat:cn") == ("geoip.dat", "cn")
    assert split_ext("/opt/x:y.dat:tag") == ("/opt/x:y.dat", "tag")
    for bad in ("geoip.dat", "geoip.dat:", ":cn"):
        with pytest.raises(GeoDataError, match="should name a file and a tag"):
            split_ext(bad)


def test_reverse_match_is_refused_for_its_tag_only(tmp_path):
    reversed_tag = ld(1, b"NOTCN") + ld(2, ld(1, bytes([1, 0, 0, 0])) + vi(2, b"\x08")) + vi(3, b"\x01")
    plain = ld(1, b"CN") + ld(2, ld(1, bytes([1, 0, 0, 0])) + vi(2, b"\x08"))
    (tmp_path / GEOIP_FILE).write_bytes(ld(1, reversed_tag) + ld(1, plain))
    g = GeoData([tmp_path])
    assert g.ip_set("cn") == (net("1.0.0.0/8"),)
    with pytest.raises(GeoDataError, match=r"tag 'notcn' sets reverse_match .* does not support"):
        g.ip_set("notcn")
    with pytest.raises(GeoDataError, match="reverse_match"):
        load_geoip(tmp_path / GEOIP_FILE)  # the whole file was asked for, so the whole call fails


def test_unreadable_paths(tmp_path):
    with pytest.raises(GeoDataError, match="cannot read"):
        load_geoip(tmp_path / "absent.dat")
    with pytest.raises(GeoDataError, match="cannot read"):
        load_geosite(tmp_path)  # a directory


# ---------------------------------------------------------------------------------------------------------------------
# Bad input: always GeoDataError, saying where


def corrupt(data: bytes, parse=parse_geoip) -> str:
    with pytest.raises(GeoDataError) as e:
        parse(data)
    return str(e.value)


@pytest.mark.parametrize(("parts", "parse"), [
    ([encode_geoip({t: n}) for t, n in IPS.items()], parse_geoip),
    ([encode_geosite({t: e}) for t, e in SITES.items()], parse_geosite),
])
def test_every_truncation_is_an_error_or_a_shorter_file(parts, parse):
    data = b"".join(parts)
    ends = [sum(map(len, parts[:i + 1])) for i in range(len(parts))]  # a cut here leaves whole entries
    for cut in range(1, len(data)):
        if cut in ends:
            assert len(parse(data[:cut])) == ends.index(cut) + 1
        else:
            with pytest.raises(GeoDataError, match="at byte"):
                parse(data[:cut])


def test_truncation_says_where():
    data = encode_geoip({"cn": ["1.0.0.0/8", "2.0.0.0/8"]})
    msg = corrupt(data[:-3])
    assert msg.startswith("<geoip data>: not a valid geoip file: decoding failed at byte 0: ")
    assert "field of 24 bytes runs past the end of its message (21 bytes left)" in msg
    assert msg.endswith("If so, download it again")


def test_context_names_the_entry_and_item():
    bad_cidr = ld(1, bytes(5)) + vi(2, b"\x08")
    data = ld(1, ld(1, b"CN") + ld(2, ld(1, bytes(4)) + vi(2, b"\x08")) + ld(2, bad_cidr))
    msg = corrupt(data)
    assert "at byte 18 (CIDR #2 of entry 'cn')" in msg
    assert "CIDR address of 5 bytes; expected 4 (IPv4) or 16 (IPv6)" in msg


@pytest.mark.parametrize(("data", "message"), [
    (b"\x0a" + b"\x80" * 10 + b"\x01", "at byte 1: varint longer than 10 bytes"),
    (b"\x0a" + b"\xff" * 9 + b"\x7f", "varint does not fit in 64 bits"),
    (b"\x0a\x80", "truncated varint"),
    (b"\x80" * 11, "at byte 0: varint longer than 10 bytes"),
    (b"\x0a\x05abc", "field of 5 bytes runs past the end of its message"),
    (b"\x00\x00", "field number 0"),
    (b"\x08\x01", r"entry has wire type 0 \(varint\), expected 2 \(length-delimited\)"),
    (b"\x0b", r"wire type 3 \(start-group\) is not supported"),
    (b"\x0c", r"wire type 4 \(end-group\) is not supported"),
    (b"\x0e", r"wire type 6 \(invalid\) is not supported"),
    (b"\x0f", r"wire type 7 \(invalid\) is not supported"),
    (b"\x09\x00\x00", "field of 8 bytes runs past"),
    (b"\x0d\x00", "field of 4 bytes runs past"),
    (ld(1, vi(1, b"\x01")), "country_code has wire type 0"),
    (ld(1, ld(1, b"\xff\xfe")), "country_code is not valid UTF-8"),
    (ld(1, ld(2, b"\x00")), r"at byte 4 \(CIDR #1 of the entry without a country_code\): field number 0"),
    (ld(1, ld(2, vi(1, b"\x04"))), "CIDR.ip has wire type 0"),
    (ld(1, ld(2, ld(2, b"x"))), "CIDR.prefix has wire type 2"),
    (ld(1, ld(2, ld(1, bytes(4)) + vi(2, b"\x21"))), "IPv4 prefix length 33 is over 32"),
    (ld(1, ld(2, ld(1, bytes(16)) + vi(2, b"\x81\x01"))), "IPv6 prefix length 129 is over 128"),
    (ld(1, ld(2, ld(1, b""))), "CIDR address of 0 bytes"),
    (ld(1, vi(2, b"\x01")), "GeoIP.cidr has wire type 0"),
    (ld(1, ld(3, b"")), "GeoIP.reverse_match has wire type 2"),
])
def test_malformed_geoip(data, message):
    msg = corrupt(data)
    assert "not a valid geoip file" in msg
    assert re.search(message, msg), msg


@pytest.mark.parametrize(("data", "message"), [
    (ld(1, ld(2, vi(1, b"\x07"))), r"unknown Domain.type 7 \(known: 0-3\)"),
    (ld(1, ld(2, vi(1, b"\xff" * 9 + b"\x01"))), "unknown Domain.type"),   # a negative enum
    (ld(1, ld(2, ld(1, b"x"))), "Domain.type has wire type 2"),
    (ld(1, ld(2, vi(2, b"\x01"))), "Domain.value has wire type 0"),
    (ld(1, ld(2, ld(2, b"\xc3"))), "Domain.value is not valid UTF-8"),
    (ld(1, ld(2, vi(3, b"\x01"))), "Domain.attribute has wire type 0"),
    (ld(1, ld(2, ld(3, vi(1, b"\x01")))),
     r"\(attribute #1 of domain #1 of the entry without a country_code\): Attribute.key has wire type 0"),
    (ld(1, ld(2, ld(3, ld(2, b"")))), "Attribute.bool_value has wire type 2"),
    (ld(1, ld(2, ld(3, ld(3, b"")))), "Attribute.int_value has wire type 2"),
    (ld(1, vi(2, b"\x01")), "GeoSite.domain has wire type 0"),
])
def test_malformed_geosite(data, message):
    msg = corrupt(data, parse_geosite)
    assert "not a valid geosite file" in msg
    assert re.search(message, msg), msg


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=4, max_size=4) | st.binary(min_size=16, max_size=16), st.integers(0, 128))
def test_usual_and_general_cidr_layouts_agree(ip, prefix):
    # The decoder has a fast path for (ip, one-byte prefix); the same CIDR spelt prefix-first takes the general one.
    prefix = prefix % (len(ip) * 8 + 1)
    pfx = bytes([prefix]) if prefix < 128 else b"\x80\x01"
    usual = ld(1, ld(1, b"T") + ld(2, ld(1, ip) + vi(2, pfx)))
    general = ld(1, ld(1, b"T") + ld(2, vi(2, pfx) + ld(1, ip)))
    want = ipaddress.ip_network((ipaddress.ip_address(ip), prefix), strict=False)
    assert parse_geoip(usual) == parse_geoip(general) == {"t": (want,)}


def test_a_bug_in_the_decoder_still_gives_geodata_error(monkeypatch):
    import daetui.routing.geodata as geodata

    def broken(*_args):
        raise IndexError("index out of range")
    monkeypatch.setattr(geodata, "_decode_domain", broken)
    with pytest.raises(GeoDataError, match=r"<geosite data>: not a valid geosite file \(IndexError: index out of"):
        parse_geosite(encode_geosite(SITES))


def test_geosite_file_read_as_geoip_is_refused():
    msg = corrupt(encode_geosite(SITES))
    assert "Is it really a geoip file?" in msg


def test_garbage_file_through_geodata(tmp_path):
    (tmp_path / GEOSITE_FILE).write_bytes(b"<html>404 Not Found</html>")
    with pytest.raises(GeoDataError, match=rf"{tmp_path / GEOSITE_FILE}: not a valid geosite file"):
        GeoData([tmp_path]).domains("cn")


# ---------------------------------------------------------------------------------------------------------------------
# Property: no input raises anything but GeoDataError, and the error always says where


def _only_geo_errors(data: bytes) -> None:
    for parse in (parse_geoip, parse_geosite):
        try:
            parse(data)
        except GeoDataError as e:
            # "at byte" comes from the decoder's own checks; the catch-all fallback has no offset to give.
            assert "at byte" in str(e) or "reverse_match" in str(e), str(e)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200))
def test_random_bytes_give_only_geodata_error(data):
    _only_geo_errors(data)


_VALID = encode_geoip(IPS), encode_geosite(SITES)


@settings(max_examples=1500, deadline=None)
@given(st.sampled_from(_VALID), st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1,
                                         max_size=4), st.integers(0, 3))
def test_mutated_files_give_only_geodata_error(base, flips, mode):
    # Random bytes rarely get past the first field; damaged real files reach the inner messages.
    data = bytearray(base)
    for pos, value in flips:
        pos %= len(data)
        if mode == 0:
            data[pos] = value
        elif mode == 1:
            data.insert(pos, value)
        elif mode == 2:
            del data[pos]
        else:
            data[pos] ^= 1 << (value % 8)
    _only_geo_errors(bytes(data))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=120))
def test_random_files_through_geodata(tmp_path, data):
    (tmp_path / GEOIP_FILE).write_bytes(data)
    (tmp_path / GEOSITE_FILE).write_bytes(data)
    g = GeoData([tmp_path])
    for call in (lambda: g.ip_set("cn"), lambda: g.domains("cn@x"), lambda: g.domains("")):
        try:
            call()
        except GeoDataError:
            pass


def test_a_bad_regex_in_geosite_is_a_rule_error_not_a_crash(tmp_path):
    from daetui.routing.errors import RuleError
    from daetui.routing.functions import typed_values
    from daetui.routing.parser import parse_rule

    write_geosite(tmp_path / GEOSITE_FILE, {"broken": [DomainEntry("regex", "(unclosed")]})
    rule = parse_rule("domain(geosite:broken) -> direct")
    with pytest.raises(RuleError, match="bad regular expression"):
        typed_values(rule.conditions[0], GeoData([tmp_path]))
