"""Answering for a run that another node of the cluster executed.

A run's log file, and the log lines of its stream (`?log=1`), are on the node that executes it.
Asked for them, another node fetches them from that node at the address it advertised (`url` in
the nodes table), streaming: a log is copied chunk by chunk, a stream message by message. The
caller's credentials go along (every node has the same tokens, and tickets are signed with the
cluster's key, so a ticket holds on any node); the request is marked as relayed, so it is never
relayed again. A node that has left, is dead or has no address is a 503 naming it; one that does
not answer in time a 502: never a hang.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web
from aiohttp.abc import AbstractStreamWriter

from jobd.errors import JobdError, Unavailable
from jobd.models import Run, RunStatus
from jobd.summary import TERMINAL
from jobd.web.tickets import TICKETS

if TYPE_CHECKING:
    from jobd.app import Daemon
    from jobd.web.sse.streams import Stream

RELAYED_BY = "X-Jobd-Relayed-By"  # the node that relayed a request: the one that receives it answers itself
# On a stream moved when its run started: open with the lines the run has written so far.
RELAY_FROM = "X-Jobd-Relay-From"
CONNECT_S = 3.0  # to open the connection to the other node
ANSWER_S = 10.0  # for its response's headers
LOG_READ_S = 30.0  # the longest pause inside a log's body
CHUNK = 64 * 1024
# The `reason` of the `error` message that ends a relayed stream whose node stopped answering.
NODE_UNREACHABLE = "node_unreachable"
_FORWARDED = ("Authorization", "X-API-Key", "X-Request-ID", "Accept")


class NodeUnreachable(JobdError):
    status, title, slug = 502, "Bad gateway", "node-unreachable"


class Relay:
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.logger = daemon.log.bind(component="relay")
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            # One connection per relayed stream: as many as server.max_streams allows, not aiohttp's 100.
            connector = aiohttp.TCPConnector(limit=self.daemon.config.server.max_streams + 100)
            self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- which node answers ------------------------------------------------------------------------

    def executed_elsewhere(self, request: web.Request, run: Run) -> str | None:
        """The other node that executes (or executed) `run`, or None when this node answers."""
        cluster = self.daemon.cluster
        if cluster is None or run.node is None or run.node == cluster.node or RELAYED_BY in request.headers:
            return None
        return run.node

    async def follows_elsewhere(self, request: web.Request, run_id: int, *, ended: bool = False) -> str | None:
        """The other node whose log lines a run's stream must relay: the run is PROCESSING there
        (`ended`: or it started there and has just ended). The events do not say which node
        claimed a run: the store does."""
        run = self.daemon.runs.active.get(run_id)
        started = run is not None and run.status is RunStatus.PROCESSING
        if not (started or ended):
            return None
        if run is None or run.node is None:
            run = await self.daemon.store.get_run(run_id)
            if run is None:
                return None
        return self.executed_elsewhere(request, run)

    def lines_so_far(self, request: web.Request, run_id: int) -> list[tuple[str, str]] | None:
        """For a stream another node moved here as its run started (and that subscribed just now):
        the (stream, line) pairs the run wrote before, which no event of this node's carried to it."""
        cluster = self.daemon.cluster
        if cluster is None or RELAYED_BY not in request.headers or request.headers.get(RELAY_FROM) != "start":
            return None
        return cluster.lines_so_far(run_id)

    def may_move(self, request: web.Request) -> bool:
        """Whether a run's stream with log lines may have to move to another node once its run starts."""
        return self.daemon.cluster is not None and RELAYED_BY not in request.headers

    async def _address(self, name: str, run_id: int) -> str:
        cluster = self.daemon.cluster
        assert cluster is not None
        node = await cluster.life.node(name)
        where = f"run {run_id} was executed by node {name!r}"
        if node is None:
            raise Unavailable(f"{where}, which has left the cluster: its log is on that node", node=name)
        if not node.alive:
            age = node.heartbeat_age_ms / 1000
            raise Unavailable(f"{where}, which is not alive (last heartbeat {age:.0f} s ago)", node=name)
        if node.url is None:
            raise Unavailable(f"{where}, which has not said where it answers ([cluster] advertise_url)", node=name)
        return node.url

    async def _get(
        self, request: web.Request, name: str, run_id: int, path_qs: str, read_s: float, extra: dict[str, str]
    ) -> aiohttp.ClientResponse:
        url = await self._address(name, run_id)
        headers = {key: request.headers[key] for key in _FORWARDED if key in request.headers}
        headers[RELAYED_BY] = self.daemon.config.cluster.node_name
        headers.update(extra)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_S, sock_read=read_s)
        try:
            async with asyncio.timeout(ANSWER_S):
                return await self.session.get(url + path_qs, headers=headers, timeout=timeout, allow_redirects=False)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            reason = str(exc) or type(exc).__name__
            self.logger.warning("relay_failed", node=name, url=url, run_id=run_id, error=reason)
            raise NodeUnreachable(
                f"run {run_id} was executed by node {name!r}, which did not answer at {url}: {reason}", node=name
            ) from None

    # -- a run's log -------------------------------------------------------------------------------

    async def run_log(self, request: web.Request, run: Run, name: str) -> web.StreamResponse:
        """GET /runs/{id}/log from node `name`, its body copied as it comes."""
        upstream = await self._get(request, name, run.id, request.path_qs, LOG_READ_S, {})
        try:
            if upstream.status != 200:  # a problem of the other node's (a refused token): passed on
                body = await upstream.content.read(CHUNK)
                return web.Response(status=upstream.status, body=body, content_type=upstream.content_type)
            response = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8", "X-Jobd-Node": name})
            if upstream.content_length is not None:
                response.content_length = upstream.content_length
            await response.prepare(request)
            try:
                async for chunk in upstream.content.iter_chunked(CHUNK):
                    await response.write(chunk)
            except (TimeoutError, aiohttp.ClientError) as exc:
                # The headers are out: a cut connection is how the client hears the body is short.
                self.logger.warning("relay_cut", node=name, run_id=run.id, error=str(exc) or type(exc).__name__)
                if request.transport is not None:
                    request.transport.abort()
                return response
            await response.write_eof()
            return response
        finally:
            upstream.release()

    # -- a run's stream with its log lines ---------------------------------------------------------

    async def connect_stream(
        self, request: web.Request, name: str, run_id: int, resume_from: int | None, *, moved: bool
    ) -> aiohttp.ClientResponse:
        """Node `name`'s stream of run `run_id` with log lines, from `resume_from` on; `moved`:
        this node's stream followed the run until it started there, with no log line yet."""
        query = {key: value for key, value in request.query.items() if key != "last_event_id"}
        path_qs = str(request.rel_url.with_query(query))
        extra = {"Accept": "text/event-stream"}
        if moved:
            extra[RELAY_FROM] = "start"
        if resume_from is not None:
            extra["Last-Event-ID"] = str(resume_from)
        read_s = max(3 * self.daemon.config.server.sse_heartbeat_s, 10.0)  # the other node's heartbeats
        upstream = await self._get(request, name, run_id, path_qs, read_s, extra)
        if upstream.status != 200 or upstream.content_type != "text/event-stream":
            status = upstream.status
            upstream.release()
            raise NodeUnreachable(f"node {name!r} refused the stream of run {run_id}: HTTP {status}", node=name)
        return upstream

    async def pipe(
        self, stream: Stream, writer: AbstractStreamWriter, upstream: aiohttp.ClientResponse, name: str, *, moved: bool
    ) -> None:
        """Pass the other node's messages on until it ends the stream (the run is over), this
        node's stream ends (a shutdown: the caller says so), or the client goes. `moved`: the
        client has this stream's opening already, so the other node's `connected` is left out."""
        reading: asyncio.Future[bytes] | None = None
        pending = b""
        try:
            while stream.ending is None:
                if reading is None:
                    reading = asyncio.ensure_future(upstream.content.readany())
                # Woken at least every second to notice a shutdown; the read itself is not cancelled.
                done, _ = await asyncio.wait({reading}, timeout=1.0)
                if not done:
                    continue
                chunk = reading.result()
                reading = None
                if not chunk:
                    return
                pending += chunk
                *messages, pending = pending.split(b"\n\n")
                for message in messages:
                    if message.startswith((b"retry:", b":")) or not message:
                        continue  # this stream has its own retry hint and heartbeats
                    head, _, data = message.partition(b"\ndata: ")
                    event_id = int(head[4:]) if head.startswith(b"id: ") and head[4:].isdigit() else 0
                    if data.startswith(b'{"type":"log"'):
                        # Numbered by that node's bus, not by the cluster's events: they always pass
                        # and leave the position alone.
                        stream.send(message + b"\n\n")
                        continue
                    if moved and event_id <= stream.position and _known(data):
                        continue
                    stream.send(message + b"\n\n")
                    stream.position = max(stream.position, event_id)
                if stream.behind():
                    await writer.drain()
        except (TimeoutError, aiohttp.ClientError) as exc:
            self.logger.warning("relay_cut", node=name, path=stream.request.path, error=str(exc) or type(exc).__name__)
            stream.fail(
                NODE_UNREACHABLE,
                f"node {name!r}, which executes this run, stopped answering; reconnect with Last-Event-ID to resume",
            )
        except ConnectionError:
            stream.end("gone")
        finally:
            if reading is not None:
                reading.cancel()
            upstream.release()

    # -- the firehose's log lines ------------------------------------------------------------------

    async def firehose_logs(self, request: web.Request, stream: Stream) -> None:
        """Until cancelled (the stream's end): the log lines of the runs the other nodes execute,
        from each live node's firehose, into `stream`, each with the position the stream has
        reached (they are this node's own messages: a reconnect does not replay them)."""
        cluster = self.daemon.cluster
        assert cluster is not None
        readers: dict[str, asyncio.Task[None]] = {}
        try:
            while stream.ending is None:
                try:
                    listed = await cluster.life.nodes()
                except Exception:  # the database is away: the nodes' streams go on meanwhile
                    listed = []
                for node in listed:
                    task = readers.get(node.name)
                    if node.name == cluster.node or not node.alive or node.url is None:
                        continue
                    if task is None or task.done():
                        readers[node.name] = asyncio.create_task(
                            self._firehose_of(request, stream, node.name, node.url), name=f"relay-{node.name}"
                        )
                await asyncio.sleep(self.daemon.config.cluster.heartbeat_s)
        finally:
            for task in readers.values():
                task.cancel()
            await asyncio.gather(*readers.values(), return_exceptions=True)

    async def _firehose_of(self, request: web.Request, stream: Stream, name: str, url: str) -> None:
        headers = {key: request.headers[key] for key in _FORWARDED if key in request.headers}
        headers.update({RELAYED_BY: self.daemon.config.cluster.node_name, "Accept": "text/event-stream"})
        read_s = max(3 * self.daemon.config.server.sse_heartbeat_s, 10.0)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_S, sock_read=read_s)
        query = {key: value for key, value in request.query.items() if key != "last_event_id"}
        path_qs = str(request.rel_url.with_query(query))
        try:
            async with self.session.get(url + path_qs, headers=headers, timeout=timeout) as upstream:
                if upstream.status != 200:
                    self.logger.warning("relay_refused", node=name, path=request.path, status=upstream.status)
                    return
                pending = b""
                async for chunk in upstream.content.iter_any():
                    pending += chunk
                    *messages, pending = pending.split(b"\n\n")
                    for message in messages:
                        _, _, data = message.partition(b"data: ")
                        if data.startswith(b'{"type":"log"') and stream.ending is None:
                            stream.send(b"id: %d\ndata: %s\n\n" % (stream.position, data))
        except (TimeoutError, aiohttp.ClientError, ConnectionError) as exc:
            self.logger.warning("relay_cut", node=name, path=request.path, error=str(exc) or type(exc).__name__)


def _known(data: bytes) -> bool:
    """Whether a client whose stream moved already has this message, numbered at or below its
    position: the other node's `connected`, and states up to there (a node whose feed lags may
    send an older one). A final state always passes: a stream must end with it."""
    try:
        message = json.loads(data)
    except ValueError:
        return False
    return message.get("type") == "connected" or message.get("status") not in TERMINAL


RELAY: web.AppKey[Relay] = web.AppKey("relay", Relay)


def setup(app: web.Application, daemon: Daemon) -> None:
    """The relay, its client session, and (in a cluster) the cluster's ticket key. Call it after
    the daemon's contexts are on the app: the key is read from the open store."""
    relay = app[RELAY] = Relay(daemon)

    async def context(app: web.Application) -> AsyncIterator[None]:
        if daemon.cluster is not None:
            app[TICKETS].use_key(await daemon.cluster.life.cluster_key())
        yield
        await relay.close()

    app.cleanup_ctx.append(context)
