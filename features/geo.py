"""Where a customer is: an IANA timezone from a country and, where a country spans several
zones, its state or province.

Stripe keeps no timezone on a Customer (docs/sources.md); Reclaim derives one from the
customer's address, the invoice's customer address, the billing details or, last, the card's
country. Single-zone countries come from the IANA ``zone.tab`` shipped by the ``tzdata``
package; multi-zone countries use the region where known, else their most populous zone.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from importlib import resources

#: Most populous zone of countries that span several (used when the region is unknown).
PRIMARY_ZONE = {
    "US": "America/New_York",
    "CA": "America/Toronto",
    "AU": "Australia/Sydney",
    "BR": "America/Sao_Paulo",
    "MX": "America/Mexico_City",
    "RU": "Europe/Moscow",
    "ID": "Asia/Jakarta",
    "KZ": "Asia/Almaty",
    "AR": "America/Argentina/Buenos_Aires",
    "CL": "America/Santiago",
    "ES": "Europe/Madrid",
    "PT": "Europe/Lisbon",
    "DE": "Europe/Berlin",
    "CN": "Asia/Shanghai",
    "UA": "Europe/Kyiv",
    "NZ": "Pacific/Auckland",
    "EC": "America/Guayaquil",
    "MY": "Asia/Kuala_Lumpur",
    "MN": "Asia/Ulaanbaatar",
    "CD": "Africa/Kinshasa",
    "FR": "Europe/Paris",
    "GB": "Europe/London",
    "NL": "Europe/Amsterdam",
    "DK": "Europe/Copenhagen",
    "IN": "Asia/Kolkata",
    "JP": "Asia/Tokyo",
    "IT": "Europe/Rome",
    "KR": "Asia/Seoul",
}

_US = {
    "America/New_York": "CT DE DC FL GA ME MD MA MI NH NJ NY NC OH PA RI SC VT VA WV IN KY",
    "America/Chicago": "AL AR IL IA KS LA MN MS MO NE ND OK SD TN TX WI",
    "America/Denver": "CO MT NM UT WY ID",
    "America/Phoenix": "AZ",
    "America/Los_Angeles": "CA NV OR WA",
    "America/Anchorage": "AK",
    "Pacific/Honolulu": "HI",
    "America/Puerto_Rico": "PR",
}
_CA = {
    "America/Toronto": "ON QC",
    "America/Vancouver": "BC",
    "America/Edmonton": "AB NT",
    "America/Winnipeg": "MB",
    "America/Regina": "SK",
    "America/Halifax": "NS PE",
    "America/Moncton": "NB",
    "America/St_Johns": "NL",
    "America/Whitehorse": "YT",
    "America/Iqaluit": "NU",
}
_AU = {
    "Australia/Sydney": "NSW ACT",
    "Australia/Melbourne": "VIC",
    "Australia/Brisbane": "QLD",
    "Australia/Adelaide": "SA",
    "Australia/Perth": "WA",
    "Australia/Hobart": "TAS",
    "Australia/Darwin": "NT",
}
#: Zones by (country, region code as Stripe sends it in ``address.state``).
REGION_ZONE: dict[tuple[str, str], str] = {
    (country, region): zone
    for country, table in (("US", _US), ("CA", _CA), ("AU", _AU))
    for zone, regions in table.items()
    for region in regions.split()
}


@lru_cache(maxsize=1)
def _zones_by_country() -> dict[str, list[str]]:
    text = resources.files("tzdata").joinpath("zoneinfo", "zone.tab").read_text()
    zones: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        parts = line.split("\t")
        zones.setdefault(parts[0], []).append(parts[2])
    return zones


def timezone_for(country: str | None, region: str | None = None) -> str | None:
    """The IANA timezone for an ISO country code and optional region, or None if unknown."""
    if not country:
        return None
    country = country.strip().upper()
    if region:
        zone = REGION_ZONE.get((country, region.strip().upper()))
        if zone:
            return zone
    if country in PRIMARY_ZONE:
        return PRIMARY_ZONE[country]
    zones = _zones_by_country().get(country)
    return zones[0] if zones else None


def first_location(
    addresses: Iterable[dict | None], card_country: str | None = None
) -> tuple[str | None, str | None]:
    """The first usable ``(country, timezone)`` from addresses in order of trust, else the card's.

    ``addresses`` are Stripe address dicts (``country``, ``state``), most trusted first:
    customer address, invoice customer address, billing details.
    """
    for address in addresses:
        if address and address.get("country"):
            zone = timezone_for(address["country"], address.get("state"))
            if zone:
                return address["country"].upper(), zone
    if card_country:
        return None, timezone_for(card_country)
    return None, None
