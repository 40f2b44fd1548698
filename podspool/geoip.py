"""MaxMind DB readers shared by the geoip processors, and the fields they write.

Readers are opened with maxminddb's MODE_AUTO (the C extension with a memory
map when it is installed) and shared through a reference-counted cache, so
several devices that use one database file hold one reader. The cache key
includes the file's inode, size and modification time: after an operator
replaces the file and the configuration is reloaded, new pipeline runners get
a reader of the new file while old runners keep theirs until they close.

GeoIP2/GeoLite2 City and Country databases store `country`, `city` and
`location` maps; ASN databases store `autonomous_system_number` and
`autonomous_system_organization`. `fields_from_record` reads whichever of them
the record has, so one processor code path serves both shapes.
"""

import functools
import os
import threading

import maxminddb

from podspool.fieldpath import FieldMissing, ProcessorFailure, dotted, get_value, set_value
from podspool.processor_base import UNCHANGED, Option, OptionError, Processor

_cache_lock = threading.Lock()
_cache = {}  # file key -> [Database, reference count]

# Addresses remembered per open database. PoD traffic repeats connecting
# hosts, and decoding a full GeoLite2-City record builds dozens of objects.
FIELDS_CACHE_SIZE = 4096


class Database:
    """One open MaxMind DB file."""

    __slots__ = ("path", "key", "reader", "ipv4_only", "fields")

    def __init__(self, path, key, reader):
        self.path = path
        self.key = key
        self.reader = reader
        self.ipv4_only = reader.metadata().ip_version == 4
        self.fields = functools.lru_cache(maxsize=FIELDS_CACHE_SIZE)(self._fields)

    def _fields(self, address):
        """Return the flat geoip fields of ADDRESS ({} when the database does not contain it).

        The result is cached and shared, so callers copy it before changing it.
        """
        return fields_from_record(self.lookup(address))

    def lookup(self, address):
        """Return the record for ADDRESS, or None when the database has no network holding it.

        An IPv6 address in an IPv4-only database is not in it, so it returns
        None. A value that is not an IP address raises ProcessorFailure.
        """
        if not isinstance(address, str):
            raise ProcessorFailure(f"IP address is a {type(address).__name__}, not a string")
        if self.ipv4_only and ":" in address:
            return None
        try:
            return self.reader.get(address)
        except ValueError as exc:
            # maxminddb's message names the value: "'x' does not appear to be an IPv4 or IPv6 address."
            raise ProcessorFailure(f"lookup in {self.path} failed: {exc}") from None


def _file_key(path):
    info = os.stat(path)
    return (os.path.realpath(path), info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)


def check_database(path):
    """Open PATH as a MaxMind DB and close it again.

    Raises OSError when the file cannot be read and
    maxminddb.InvalidDatabaseError when it is not a MaxMind DB.
    """
    # Opening the file first gives the plain OSError (not found, permission,
    # directory) that maxminddb would report as an invalid database.
    with open(path, "rb"):
        pass
    reader = maxminddb.open_database(path, maxminddb.MODE_AUTO)
    reader.close()


def acquire(path):
    """Return a shared Database for PATH, opening it on first use; pair every call with release()."""
    key = _file_key(path)
    with _cache_lock:
        entry = _cache.get(key)
        if entry is None:
            reader = maxminddb.open_database(path, maxminddb.MODE_AUTO)
            entry = _cache[key] = [Database(path, key, reader), 0]
        entry[1] += 1
        return entry[0]


def release(database):
    """Drop one reference to DATABASE and close its reader when none is left."""
    with _cache_lock:
        entry = _cache.get(database.key)
        if entry is None or entry[0] is not database:
            return
        entry[1] -= 1
        if entry[1] <= 0:
            del _cache[database.key]
            database.fields.cache_clear()
            database.reader.close()


def open_count():
    """Return the number of database files open in the cache."""
    with _cache_lock:
        return len(_cache)


def _english_name(node):
    names = node.get("names")
    if isinstance(names, dict):
        return names.get("en")
    return None


def fields_from_record(record):
    """Map a City, Country or ASN record to the flat fields the geoip processor writes.

    Returns a dict with any of `country_iso_code`, `country_name`,
    `city_name`, `location` {`lat`, `lon`}, `asn` and `as_org`; keys the
    record lacks are left out. Names are the English ones.
    """
    fields = {}
    if not isinstance(record, dict):
        return fields
    country = record.get("country")
    if isinstance(country, dict):
        if country.get("iso_code") is not None:
            fields["country_iso_code"] = country["iso_code"]
        if _english_name(country) is not None:
            fields["country_name"] = _english_name(country)
    city = record.get("city")
    if isinstance(city, dict) and _english_name(city) is not None:
        fields["city_name"] = _english_name(city)
    location = record.get("location")
    if isinstance(location, dict):
        lat, lon = location.get("latitude"), location.get("longitude")
        if lat is not None and lon is not None:
            fields["location"] = {"lat": lat, "lon": lon}
    if record.get("autonomous_system_number") is not None:
        fields["asn"] = record["autonomous_system_number"]
    if record.get("autonomous_system_organization") is not None:
        fields["as_org"] = record["autonomous_system_organization"]
    return fields


class GeoIPProcessor(Processor):
    """Write the location and network owner of an IP address from a MaxMind DB.

    An address the database does not hold writes nothing. When the target is
    already an object the fields are merged into it, so a City and an ASN
    processor can share one target.
    """

    name = "geoip"
    options = {
        "field": Option("path", True, None),
        "target_field": Option("path", True, None),
        "database_file": Option("string", True, None),
    }
    __slots__ = ("field", "target_field", "database_file")

    @classmethod
    def check(cls, options, *, check_files=True):
        path = options["database_file"]
        if not check_files:
            return
        try:
            check_database(path)
        except FileNotFoundError:
            message = "database file not found"
        except PermissionError:
            message = "database file is not readable by this user"
        except OSError as exc:
            message = f"database file cannot be read: {exc.strerror}"
        except maxminddb.InvalidDatabaseError:
            message = "database file is not a MaxMind DB (.mmdb)"
        else:
            return
        raise OptionError("database_file", message, _GEOIP_FIX, value=path)

    def apply(self, event, runner):
        address = get_value(event, self.field)
        if not isinstance(address, str):
            raise ProcessorFailure(f"field {dotted(self.field)} is a {type(address).__name__}, not an IP address string")
        fields = runner.databases[self.database_file].fields(address)
        if not fields:
            return UNCHANGED
        fields = dict(fields)
        if "location" in fields:
            fields["location"] = dict(fields["location"])
        try:
            current = get_value(event, self.target_field)
        except FieldMissing:
            current = None
        if isinstance(current, dict):
            current.update(fields)
        else:
            set_value(event, self.target_field, fields)
        return None


_GEOIP_FIX = (
    "put a GeoLite2/GeoIP2 City, Country or ASN .mmdb file at that path, "
    "or remove the geoip processor"
)
