"""Build small MaxMind databases for the GeoIP tests and the pipeline benchmark.

Only the documentation address blocks are used (RFC 5737 for IPv4, RFC 3849
for IPv6), so no real address is ever mapped. The City database has the
shape of GeoLite2-City: an IPv6 tree with IPv4 mapped in, and English names.
The ASN database has the shape of GeoLite2-ASN. It is IPv4-only, so it also
covers an IPv6 lookup in an IPv4 database.
"""

from mmdb_writer import MMDBWriter, MmdbF64, MmdbU32
from netaddr import IPSet


def _place(iso_code, country, city=None, lat=None, lon=None):
    record = {"country": {"iso_code": iso_code, "names": {"en": country, "de": country + " (de)"}}}
    if city is not None:
        record["city"] = {"geoname_id": MmdbU32(1), "names": {"en": city}}
    if lat is not None:
        record["location"] = {"latitude": MmdbF64(lat), "longitude": MmdbF64(lon), "accuracy_radius": 20}
    return record


# network -> record; the expected values the tests check are read from here.
CITY_NETWORKS = {
    "192.0.2.0/24": _place("US", "United States", "Springfield", 39.78, -89.65),
    "198.51.100.0/24": _place("DE", "Germany", "Berlin", 52.52, 13.405),
    # Country-level only, like a GeoLite2-Country record.
    "203.0.113.0/24": _place("JP", "Japan"),
    "2001:db8::/32": _place("NL", "Netherlands", "Amsterdam", 52.37, 4.89),
}

ASN_NETWORKS = {
    "192.0.2.0/24": {"autonomous_system_number": MmdbU32(64496), "autonomous_system_organization": "Example Net A"},
    "198.51.100.0/24": {"autonomous_system_number": MmdbU32(64497), "autonomous_system_organization": "Example Net B"},
}


def write_city_database(path):
    """Write a GeoLite2-City shaped database covering CITY_NETWORKS to PATH and return PATH."""
    writer = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type="GeoLite2-City", languages=["en", "de"])
    for network, record in CITY_NETWORKS.items():
        writer.insert_network(IPSet([network]), record)
    writer.to_db_file(str(path))
    return path


def write_asn_database(path):
    """Write an IPv4-only GeoLite2-ASN shaped database covering ASN_NETWORKS to PATH and return PATH."""
    writer = MMDBWriter(ip_version=4, database_type="GeoLite2-ASN")
    for network, record in ASN_NETWORKS.items():
        writer.insert_network(IPSet([network]), record)
    writer.to_db_file(str(path))
    return path
