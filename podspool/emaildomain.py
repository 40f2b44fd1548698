"""Domains of email addresses as PoD writes them: plain, `"Name" <user@host>`, `user@host (Comment)`."""

import email.utils
import functools
import re

# A bare `user@host` with none of the characters that need RFC 5322 parsing.
_PLAIN_ADDRESS = re.compile(r'[^\s<>"(),;:\\\[\]@]+@([^\s<>"(),;:\\\[\]@]+)')


@functools.lru_cache(maxsize=4096)
def domains_of(text):
    """Return the lower-case domains of the addresses in one header or envelope string, in order.

    One string may hold several addresses (`a@x, "B" <b@y>`). A trailing dot
    is dropped (`host.` and `host` are one domain). An address without `@`,
    an empty string and the null sender `<>` yield no domain.
    """
    match = _PLAIN_ADDRESS.fullmatch(text)
    if match:
        return (match.group(1).lower().rstrip("."),)
    domains = []
    for _name, address in email.utils.getaddresses([text]):
        _local, at, domain = address.rpartition("@")
        domain = domain.strip().lower().rstrip(".")
        if at and domain:
            domains.append(domain)
    return tuple(domains)


def unique_domains(texts):
    """Return the unique domains of a list of address strings, in first-seen order; raise TypeError on a non-string."""
    seen = {}
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"item {index} is a {type(text).__name__}, not a string")
        for domain in domains_of(text):
            seen.setdefault(domain, None)
    return list(seen)
