"""The async half of the ``devtools_testutils`` stand-in (see the package's documentation)."""

from __future__ import annotations

import functools

__all__ = ["recorded_by_proxy_async"]


def recorded_by_proxy_async(test):
    """Runs the coroutine test as it is (live: nothing recorded)."""

    @functools.wraps(test)
    async def run(*args, **kwargs):
        return await test(*args, **kwargs)

    return run
