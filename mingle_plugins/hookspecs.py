"""The hook specifications: the contract between the Mingle step and plugins.

Every hook is called with keyword arguments; an implementation may accept any
subset of them. Each implementation is called on its own: one that raises or
hangs is skipped alone, named in one log line, and no implementation runs
twice in one call. Built-in implementations (:mod:`mingle_plugins.plugins.builtin`)
give stock Celery behaviour and run last.

Docstrings are Markdown: ``docs/hooks.md`` is generated from them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from .markers import hookspec

if TYPE_CHECKING:
    from celery import Celery

    from .model import HelloOptions, MingleSummary, Reply, Verdicts, WorkerConsumer
    from .settings import MingleSettings, SettingsRegistry

__all__ = [  # in the order a worker calls them
    "mingle_add_settings",
    "mingle_transport_compatible",
    "mingle_tune_hello",
    "mingle_expected_replies",
    "mingle_send_hello",
    "mingle_extra_replies",
    "mingle_on_reply",
    "mingle_adjust_clock",
    "mingle_merge_revoked",
    "mingle_sync_complete",
    "mingle_on_revoke",
    "mingle_record_revoke",
    "mingle_plugin_status",
]


@hookspec
def mingle_add_settings(registry: SettingsRegistry) -> None:
    """Declare this plugin's settings.

    Called once when the worker (or `celery mingle check`) loads the plugins,
    before any other hook. Call `registry.add("<plugin>", MySettings)` where
    `MySettings` is a frozen dataclass whose fields are made with
    `mingle_plugins.setting(default, doc, parser)`. The host reads
    `mingle_plugin_settings["<plugin>"]`, parses every value once (a bad value
    is logged with what is accepted and the default is used; `mingle_strict`
    stops the worker), lists them in `celery mingle check`, and hands them to
    every hook as `settings.plugin(MySettings)`.

    Arguments:

    - `registry`: the `SettingsRegistry` to declare into.

    Returns: ignored. Not `firstresult`: every implementation is called.

    .. versionadded:: 0.2
    """


@hookspec(firstresult=True)
def mingle_transport_compatible(app: Celery, driver_type: str, settings: MingleSettings) -> bool | None:
    """Say whether workers can mingle on this transport.

    Called once, when the consumer's Mingle step is created (before any
    connection is used for a hello), and by `celery mingle check`.

    Arguments:

    - `app`: the Celery application.
    - `driver_type`: the broker transport's `driver_type`, e.g. `"redis"`, `"amqp"`, `"filesystem"`.
    - `settings`: the resolved `MingleSettings`.

    Returns: `True` to claim the transport, `False` to refuse it, `None` to
    abstain. `firstresult`: the first `True` or `False` wins, so return `None`
    for transports you know nothing about. When every plugin abstains, the
    step's `compatible_transports` answers: the stock set of the installed Celery.

    .. versionadded:: 0.1
    .. versionchanged:: 0.2
       `settings`.
    """


@hookspec
def mingle_tune_hello(app: Celery, driver_type: str, options: HelloOptions, settings: MingleSettings) -> None:
    """Adjust how the hello is collected on a transport.

    Called at every mingle, before `mingle_expected_replies`, with `options`
    already filled from the settings (`mingle_hello_timeout`,
    `mingle_quiet_window`). Each implementation may change `options` in place
    (a polling transport typically calls `options.allow_late_replies(window)`).
    Values are checked after the hook: a bad one is logged and replaced by the setting.

    Arguments:

    - `app`: the Celery application.
    - `driver_type`: the broker transport's `driver_type`.
    - `options`: the `HelloOptions` to adjust.
    - `settings`: the resolved `MingleSettings`.

    Returns: ignored. Not `firstresult`: every implementation is called, once.

    .. versionadded:: 0.1
    .. versionchanged:: 0.2
       `settings`.
    """


@hookspec(firstresult=True)
def mingle_expected_replies(
    consumer: WorkerConsumer, driver_type: str, settings: MingleSettings
) -> int | None:
    """Count the neighbours that will answer the hello, when the broker can tell.

    Called at every mingle, right before the hello is sent, only when
    `mingle_expect_replies` is on. Knowing the count lets the collection end as
    soon as every neighbour answered; `0` skips the hello (the worker is alone).

    Arguments:

    - `consumer`: the worker's `Consumer` (`consumer.connection`, `consumer.hostname`).
    - `driver_type`: the broker transport's `driver_type`.
    - `settings`: the resolved `MingleSettings`.

    Returns: the number of *other* nodes that will answer, or `None` when
    unknown. `firstresult`: the first non-`None` count is used. An
    overestimate only costs the timeout; an underestimate loses replies.

    .. versionadded:: 0.1
    .. versionchanged:: 0.2
       `settings`.
    """


@hookspec(firstresult=True)
def mingle_send_hello(
    consumer: WorkerConsumer,
    revoked: Any,
    timeout: float,
    options: HelloOptions,
    settings: MingleSettings,
    verdicts: Verdicts,
) -> Mapping[str, Any] | None:
    """Send the hello to the neighbours and collect their replies.

    Called at every mingle, after `mingle_tune_hello`. The built-in
    implementation broadcasts the stock `hello` control command through the
    pidbox, as the installed Celery does; a transport with its own channel
    implements this hook.

    Arguments:

    - `consumer`: the worker's `Consumer`.
    - `revoked`: what this node sends as its revoked ids, in the installed
      Celery's format (a list of ids on 5.7, the stamp dict before).
    - `timeout`: `options.timeout`, given separately for convenience.
    - `options`: the tuned `HelloOptions`.
    - `settings`: the resolved `MingleSettings`.
    - `verdicts`: this mingle's `Verdicts`. Call `verdicts.judge(node, body)`
      on each body as it arrives and count only those it keeps (a forged,
      unsigned or malformed body must not end a collection);
      `mingle_plugins.hello_exchange(consumer, revoked, options, verdicts)` is
      the core's pidbox hello, for a transport that only tunes the connection.

    Returns: `{node name: reply body}` as received (this node's own reply may
    be left in: it is removed). Each body is judged by the host (again for free
    when the plugin judged it). `firstresult`: return `None` to let the next
    implementation (ultimately the pidbox broadcast) send it.

    .. versionadded:: 0.1
    .. versionchanged:: 0.2
       `settings`.
    .. versionchanged:: 0.2
       `verdicts`.
    """


@hookspec
def mingle_extra_replies(consumer: WorkerConsumer, settings: MingleSettings) -> Mapping[str, Any] | None:
    """Answer the mingle like a neighbour, from somewhere else than the broker (e.g. a store).

    Called at every mingle, right after `mingle_send_hello`, also when no
    hello was sent (the worker is alone, or the hello failed). Each body
    returned takes the path of a neighbour's reply, as a `Reply` whose
    `source` is `"extra"`: the same checks (a bad id dropped alone),
    `mingle_on_reply`, `mingle_adjust_clock` and merge policies, and it is
    counted in the summary under its name like a node, and
    `mingle_trusted_nodes` applies to its name. With `mingle_hmac_keys` it
    needs no reply signature: signatures prove who answered on the broker,
    and this body comes from the plugin, which vouches for its source (the
    revocation store checks a MAC on each entry).

    Arguments:

    - `consumer`: the worker's `Consumer`.
    - `settings`: the resolved `MingleSettings`.

    Returns: `{source name: reply body}` (names of the form `name@host`, as
    node names are checked; a body like a neighbour's, e.g.
    `{"revoked": [ids, oldest first], "clock": None}`), or `None` for nothing.
    A body of `None` says the source could not be reached: its name goes to
    `summary.sources_unreached` and the mingle goes on without it. A name
    already answered by a neighbour, or this worker's own, is ignored. Not
    `firstresult`: every implementation is called, once, and every source kept.

    .. versionadded:: 0.2
    .. versionchanged:: 0.2
       Its bodies are `source == "extra"`: no reply signature is required.
    """


@hookspec
def mingle_on_reply(consumer: WorkerConsumer, reply: Reply, settings: MingleSettings) -> Reply | None:
    """Inspect, transform or reject one neighbour's reply (or hello request).

    Called once per reply that passed the built-in checks and the trust
    settings, in arrival order, on the asking side (`reply.source == "reply"`)
    and on the answering side, for the ids a neighbour's hello request carries
    (`reply.source == "request"`). Implementations are called in plugin order;
    each sees the reply as the previous one returned it.

    Arguments:

    - `consumer`: the worker's `Consumer`.
    - `reply`: the checked `Reply` (node name, clock, ids, sender's stamps).
    - `settings`: the resolved `MingleSettings`.

    Returns: `None` to keep the reply as it is, or a new `Reply` (made with
    `dataclasses.replace(reply, ...)`) to transform it; the result is checked
    again. Raise `RejectReply` to reject the whole reply; any other exception,
    or a hang, also rejects it (fail closed), with the plugin named. Not
    `firstresult`: every implementation is called, once.

    .. versionadded:: 0.1
    .. versionchanged:: 0.2
       Gets the typed `reply` instead of `nodename` and a dict; returns the
       transformed reply instead of changing a dict; also called on the answering side.
    """


@hookspec(firstresult=True)
def mingle_adjust_clock(
    consumer: WorkerConsumer, clock: int | None, reply: Reply | None, settings: MingleSettings
) -> bool | None:
    """Move this node's Lamport clock on a neighbour's clock.

    Called once per accepted reply, before its ids go to the merge policies.
    The step never lets the clock go back, whatever an implementation does.

    Arguments:

    - `consumer`: the worker's `Consumer` (`consumer.app.clock`).
    - `clock`: the neighbour's checked clock, or `None` if it sent none.
    - `reply`: the `Reply` it came with, or `None` when called through a
      subclass's `on_clock_event` outside a reply.
    - `settings`: the resolved `MingleSettings`.

    Returns: `True` when handled. `firstresult`: return `None` to leave it to
    the next one; the built-in does what stock does, `app.clock.adjust(clock)`,
    or `app.clock.forward()` without a clock.

    .. versionadded:: 0.1
    .. versionchanged:: 0.2
       `reply` instead of `nodename`; `settings`.
    """


@hookspec
def mingle_merge_revoked(
    consumer: WorkerConsumer, reply: Reply, ids: tuple[str, ...], settings: MingleSettings
) -> Iterable[str] | None:
    """Decide which of a reply's revoked ids this worker merges: a merge policy.

    Called once per accepted reply (or hello request) that carries ids, with
    the node name in `reply.nodename`, on every path: per-reply merge, bulk
    merge (`mingle_merge = "bulk"`: the policies run per reply, before the
    union) and the answering side. The host then merges the ids every policy
    kept, as the installed Celery merges (`state.merge_revoked` on 5.7, the
    sender's stamps on 5.3-5.6). A policy can only keep or drop a reply's ids:
    it never removes ids the worker already had.

    Arguments:

    - `consumer`: the worker's `Consumer` (`consumer.controller.state.revoked` is the set:
      read it, do not change it).
    - `reply`: the `Reply`, after `mingle_on_reply`.
    - `ids`: the ids to decide on (`reply.ids`).
    - `settings`: the resolved `MingleSettings`.

    Returns: the ids to keep (any iterable; ids not in `ids` are ignored):
    `ids` or `None` keeps all, `()` keeps none. Not `firstresult`: every policy
    is called, once, with the same ids; an id is merged only when every policy
    kept it. What each policy dropped is counted per node and per plugin in
    the summary. A policy that raises, hangs or returns something that is not
    ids fails open (it is passed over for that call, and the fault is counted in
    `mingle status`, `mingle check` and the summary), unless it is marked
    `@mingle_plugins.fail_closed`: then that node's ids are not merged.

    Policies decide per node, also in the fast profile: where several
    neighbours sent the same digest, the one verified full list is given to
    each of them and every policy sees each node's `Reply` in turn; the node
    the list was fetched from is chosen among the neighbours whose reply passed
    the checks, trust, signature and `mingle_on_reply`.

    .. versionadded:: 0.1
    .. versionchanged:: 0.2
       A policy returns the ids to keep and the host merges them; it used to
       merge them itself (`firstresult`, `revoked` and `nodename` arguments).
    .. versionchanged:: 0.2
       `@fail_closed`; a wrong return value is a counted fault.
    """


@hookspec
def mingle_sync_complete(consumer: WorkerConsumer, summary: MingleSummary, settings: MingleSettings) -> None:
    """Observe the outcome of a mingle (for logs, metrics, alerts).

    Called once at the end of every mingle, also when the worker was alone,
    the hello was skipped or every reply was rejected. A mingle runs while the
    worker starts, as stock Mingle does: this hook runs **before** the worker
    logs `ready.` and before it takes its first task (and again after each
    consumer restart, e.g. a lost broker connection). Keep it short: the
    worker's start waits for it (at most `mingle_plugin_timeout`).

    Arguments:

    - `consumer`: the worker's `Consumer`.
    - `summary`: the `MingleSummary` (`summary.nodes` has each node's outcome).
    - `settings`: the resolved `MingleSettings`.

    Returns: ignored. Not `firstresult`: every implementation is called, once.

    .. versionadded:: 0.1
    .. versionchanged:: 0.2
       `settings`.
    """


@hookspec
def mingle_on_revoke(
    consumer: WorkerConsumer, ids: tuple[str, ...], terminate: bool, settings: MingleSettings
) -> None:
    """See the task ids this worker was told to revoke (the `revoke` remote-control command).

    Called each time the worker receives a `revoke` command (`app.control.revoke`,
    `celery control revoke`), after the stock handler put the ids in the revoked
    set, whether or not mingle is on. Not called for ids merged at a mingle, nor
    for `revoke_by_stamped_headers`. The command's answer waits for the
    implementations: do slow work (a network store) in a thread of your own. An
    implementation that raises or hangs is skipped; the revoke itself always stands.

    Arguments:

    - `consumer`: the worker's `Consumer`.
    - `ids`: the revoked ids, as strings of 1 to `mingle_max_id_length` characters
      (others are left out), in the command's order.
    - `terminate`: whether the command also asked to terminate the running tasks.
    - `settings`: the resolved `MingleSettings`.

    Returns: ignored. Not `firstresult`: every implementation is called, once.

    .. versionadded:: 0.2
    """


@hookspec
def mingle_record_revoke(
    app: Celery, ids: tuple[str, ...], terminate: bool, settings: MingleSettings
) -> str | None:
    """Record revokes sent from a client, before they are broadcast.

    Called by `celery mingle revoke ID...` and `mingle_plugins.revoke(app, ids)`, in the
    sending process (no worker), once per call, before `app.control.revoke` broadcasts the
    ids. For plugins that keep revokes beyond the workers' memory (a revocation store), so
    that a revoke sent while no worker is up reaches the first worker that starts.

    Arguments:

    - `app`: the Celery application of the sender.
    - `ids`: the task ids, without duplicates.
    - `terminate`: whether the sender asked to terminate running tasks too.
    - `settings`: the resolved `MingleSettings` of the sender's configuration.

    Returns: where the ids were recorded (e.g. `"store@redis-host"`), or `None` when this
    plugin recorded nothing. Not `firstresult`: every implementation is called, once; one that
    raises or hangs is skipped and logged, and the broadcast is sent anyway.

    .. versionadded:: 0.2
    """


@hookspec
def mingle_plugin_status(consumer: WorkerConsumer, settings: MingleSettings) -> Mapping[str, Any] | None:
    """Say what this plugin's own state is, for `mingle_status` (`celery mingle status`,
    `celery mingle check`).

    Called each time the worker answers the `mingle_status` remote-control command, in the
    worker's remote-control thread: return at once (no network call; report what your
    background work last saw).

    Arguments:

    - `consumer`: the worker's `Consumer`.
    - `settings`: the resolved `MingleSettings`.

    Returns: a JSON-serialisable mapping (e.g. `{"reachable": False, "pending_writes": 3,
    "last_error": "ConnectionError(...)"}`), shown under the plugin's name in the reply's
    `plugin_status`, one line per worker and plugin in `celery mingle status`; a `"problem"` key
    (a string) makes it a problem of `celery mingle check`. `None` for nothing to say. Not
    `firstresult`: every implementation is called, once; one that raises or returns something
    else is a runtime fault of that plugin.

    .. versionadded:: 0.2
    """
