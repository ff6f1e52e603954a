"""HTTP request headers as HTTP defines them: names are case-insensitive.

TorchServe passes a request's headers with their names as the client spelled them
(``X-Team``, ``x-team``, ``X-TEAM`` all arrive as sent), so every place that reads a
header (API keys, the body size, a hook's ``ctx.headers``) goes through :class:`Headers`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping


class Headers(Mapping[str, str]):
    """A read-only mapping of header names to values; lookups ignore case.

    Iterating gives the names lower-cased. When a client sent one name in two spellings,
    the later one wins (TorchServe passes one value per spelling).
    """

    __slots__ = ("_items",)

    def __init__(self, headers: Mapping[str, str] | None = None):
        self._items = {k.lower(): v for k, v in (headers or {}).items()}

    def __getitem__(self, name: str) -> str:
        return self._items[name.lower()]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:  # names only: values may hold keys
        return f"Headers(names={sorted(self._items)!r})"
