"""User-facing errors: one line naming the input and what is wrong."""


class FastslowError(Exception):
    """An error caused by the user's input or environment, shown as one line without a traceback."""


class DecodeError(FastslowError):
    """A single media item could not be read or decoded; the item is skipped and reported."""


class StorageUnavailableError(FastslowError):
    """Storage could not be reached (connection refused or cut, timeout, 5xx, throttling) after the storage
    layer's retries. Never an item's fault: a job stops on it, keeping what it wrote, rather than report good
    items as unreadable; run again once the store answers."""


def user_error(exc: BaseException) -> FastslowError | None:
    """The FastslowError behind `exc`, following causes and Ray's wrapping of a remote exception (`.cause`)."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        inner = getattr(e, "cause", None)  # Ray's RayTaskError: an instance of the cause's class, with it inside
        if isinstance(e, FastslowError) and not isinstance(inner, BaseException):
            return e
        todo += [inner, e.__cause__, e.__context__]
    return None
