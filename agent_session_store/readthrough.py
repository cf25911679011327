"""The read-through decorator and the protocol a cache backend implements.

The cache knows nothing of sessions: it stores "a pydantic model with an id".

Example, on a host application's own repository::

    class WidgetRepository:
        def __init__(self, factory, cache: ModelCache | None) -> None:
            self.factory, self.cache = factory, cache

        @read_through(Widget, id_field="widget_id")
        async def get_widget(self, widget_id: str) -> Widget | None:
            ...  # read the database

        async def rename(self, widget_id: str, name: str) -> None:
            ...  # write and commit, then:
            if self.cache is not None:
                await self.cache.invalidate(Widget, [widget_id])
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Collection
from typing import Any, Concatenate, Protocol, TypeVar

from pydantic import BaseModel

M = TypeVar("M", bound=BaseModel)
S = TypeVar("S")


class ModelCache(Protocol):
    """What ``read_through`` needs from a cache (``RedisCache`` is the shipped one)."""

    async def fetch(
        self,
        model: type[M],
        key: str,
        load: Callable[[], Awaitable[M | None]],
        *,
        id_field: str,
    ) -> M | None:
        """Return the cached ``model`` for ``key``, or ``await load()`` and cache what it returns.

        Must never raise because of the cache itself (a broken cache is a miss); exceptions
        from ``load`` propagate. ``None`` from ``load`` is returned and not cached. A cached value
        whose ``id_field`` is not ``key`` is a miss.
        """
        ...

    async def invalidate(self, model: type[BaseModel], keys: Collection[str]) -> None:
        """Forget ``keys``; call after the write that changed them has committed. Never raises."""
        ...


def read_through(
    model: type[M], *, id_field: str = "id", cache_attr: str = "cache"
) -> Callable[
    [Callable[Concatenate[S, str, ...], Awaitable[M | None]]],
    Callable[Concatenate[S, str, ...], Awaitable[M | None]],
]:
    """Cache an async get method's result, a ``model`` or ``None``, keyed by its first argument.

    The method's owner holds the cache in the attribute ``cache_attr`` (a ``ModelCache`` or
    ``None``; with ``None`` every call goes straight to the method). Only calls with the key as
    the sole argument are cached; other arguments go straight through.

    Args:
        model: the pydantic model the method returns.
        id_field: the model's field that equals the key (checked on every cached read).
        cache_attr: the attribute of ``self`` that holds the cache.
    """

    def decorate(
        method: Callable[Concatenate[S, str, ...], Awaitable[M | None]],
    ) -> Callable[Concatenate[S, str, ...], Awaitable[M | None]]:
        @functools.wraps(method)
        async def wrapper(self: S, key: str, /, *args: Any, **kwargs: Any) -> M | None:
            cache: ModelCache | None = getattr(self, cache_attr)
            if cache is None or args or kwargs:
                return await method(self, key, *args, **kwargs)
            return await cache.fetch(model, key, lambda: method(self, key), id_field=id_field)

        return wrapper

    return decorate
